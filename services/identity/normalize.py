"""Normalisation, validation and pseudonymisation of identifiers.

Values are normalised first (so ``Ann@X.com `` and ``ann@x.com`` link, and so do
``+44 20 7946 0958`` and ``020 7946 0958`` in region GB), placeholder values that many
channels send for "unknown" are dropped (they would link strangers together), and what is
stored is only an HMAC-SHA256 of type and value under a secret key.

Key rotation: with a previous key configured, every identifier also gets its digest under
that key, so that identifiers stored before the rotation are still found (and re-keyed to
the current key by the service when it sees them).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import phonenumbers

from libs.contracts.identity import Identifier
from libs.errors import Violations
from services.identity.rules import DEFAULT_BLOCKED_VALUES, IdentifierType, IdentityRules

if TYPE_CHECKING:
    from libs.config import Settings

MAX_IDENTIFIERS = 32
MAX_VALUE_LENGTH = 256
MAX_EMAIL_LENGTH = 254
_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Only zeros and punctuation: "000000", "0-0", "---", the all-zero advertising id.
_ZEROS_PATTERN = re.compile(r"[0\W_]*")
_POSSIBLE = phonenumbers.ValidationResult.IS_POSSIBLE
# The built-in list (configuration may replace it: IdentityRules.blocked_values).
BLOCKED_VALUES = DEFAULT_BLOCKED_VALUES


@dataclass(frozen=True)
class KeyedIdentifier:
    """A normalised identifier reduced to what the database may hold.

    Equal (and hashed) by type and digest; the priority comes from the type's rules and the
    previous digest is set only while a key rotation is in progress.
    """

    type: str
    digest: str
    priority: int = field(default=0, compare=False)
    previous_digest: str | None = field(default=None, compare=False)

    @property
    def digests(self) -> tuple[str, ...]:
        """Every digest it may be stored under: the current key's first."""
        if self.previous_digest is None:
            return (self.digest,)
        return (self.digest, self.previous_digest)


class InvalidValue(ValueError):
    """A value that cannot be an identifier of its type; the message says why."""


def is_placeholder(value: str, blocked: frozenset[str] = BLOCKED_VALUES) -> bool:
    cleaned = value.strip().lower()
    return cleaned in blocked or _ZEROS_PATTERN.fullmatch(cleaned) is not None


def normalise_value(kind: IdentifierType, value: str, phone_region: str) -> str:
    """The canonical form of a value (raises InvalidValue when it cannot be one)."""
    value = value.strip()
    if kind.normalizer == "email":
        value = value.lower()
        if len(value) > MAX_EMAIL_LENGTH or not _EMAIL_PATTERN.match(value):
            raise InvalidValue("not an e-mail address")
        return value
    if kind.normalizer == "phone":
        # International (+44 20 7946 0958) or national form of the configured region.
        problem = "not a phone number"
        try:
            number = phonenumbers.parse(value, phone_region)
        except phonenumbers.NumberParseException:
            raise InvalidValue(problem) from None
        # A possible number of its country (length), dialable from anywhere. Not "valid"
        # (allocated range): fictional ranges (Ofcom's drama numbers) and ranges newer than
        # the library's metadata must still link, they only need one canonical form.
        if phonenumbers.is_possible_number_with_reason(number) != _POSSIBLE:
            raise InvalidValue(problem)
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return value


class IdentifierKeyring:
    """Validates, normalises and hashes identifiers with the configured secret key(s)."""

    def __init__(
        self,
        key: bytes,
        previous_key: bytes | None = None,
        rules: IdentityRules | None = None,
    ) -> None:
        self._key = key
        self._previous_key = previous_key if previous_key != key else None
        self.rules = rules if rules is not None else IdentityRules()

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentifierKeyring:
        previous = settings.hash_key_previous
        return cls(
            settings.hash_key.get_secret_value().encode(),
            previous.get_secret_value().encode() if previous is not None else None,
            IdentityRules.from_settings(settings),
        )

    @property
    def rotating(self) -> bool:
        """A previous key is configured: lookups try it too."""
        return self._previous_key is not None

    def digest(self, kind: str, normalised_value: str) -> str:
        return _hmac(self._key, kind, normalised_value)

    def prepare(
        self, identifiers: list[Identifier], field: str = "identifiers"
    ) -> list[KeyedIdentifier]:
        """Validate every identifier (naming the bad field) and return the usable ones,
        highest priority first.

        Placeholder values are not an error (channels send them routinely); they are
        dropped. The result may be empty when every identifier was a placeholder. More
        values of one type than a profile may hold (two customer_ids) is an error.
        """
        # Runs on every Decide: field names and messages are built only for a problem.
        problems = Violations()
        if not identifiers:
            problems.add(field, "at least one identifier is required")
        elif len(identifiers) > MAX_IDENTIFIERS:
            problems.add(field, f"at most {MAX_IDENTIFIERS} identifiers")
        rules = self.rules
        keyed: dict[tuple[str, str], KeyedIdentifier] = {}
        per_type: dict[str, int] = {}
        for index, identifier in enumerate(identifiers[:MAX_IDENTIFIERS]):
            if not _TYPE_PATTERN.match(identifier.type):
                problems.add(f"{field}[{index}].type", "must match [a-z][a-z0-9_]{0,31}")
                continue
            if len(identifier.value) > MAX_VALUE_LENGTH:
                problems.add(
                    f"{field}[{index}].value", f"longer than {MAX_VALUE_LENGTH} characters"
                )
                continue
            if is_placeholder(identifier.value, rules.blocked_values):
                continue
            kind = rules.type(identifier.type)
            try:
                value = normalise_value(kind, identifier.value, rules.phone_region)
            except InvalidValue as error:
                problems.add(f"{field}[{index}].value", str(error))
                continue
            item = KeyedIdentifier(
                kind.name,
                _hmac(self._key, kind.name, value),
                kind.priority,
                _hmac(self._previous_key, kind.name, value) if self._previous_key else None,
            )
            if (item.type, item.digest) in keyed:
                continue
            per_type[kind.name] = per_type.get(kind.name, 0) + 1
            if kind.limit is not None and per_type[kind.name] > kind.limit:
                problems.add(
                    f"{field}[{index}].value",
                    f"more than {kind.limit} {kind.name} in one request "
                    f"(a profile holds at most {kind.limit})",
                )
                continue
            keyed[(item.type, item.digest)] = item
        problems.raise_if_any()
        if len(keyed) == 1:  # the usual request: nothing to sort
            return list(keyed.values())
        return sorted(keyed.values(), key=lambda k: (-k.priority, k.type, k.digest))


def _hmac(key: bytes, kind: str, normalised_value: str) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC (the same bytes as hmac.new(...).digest()).
    return hmac.digest(key, f"{kind}\x00{normalised_value}".encode(), "sha256").hex()
