"""Normalisation, validation and pseudonymisation of identifiers.

Values are normalised first (so ``Ann@X.com `` and ``ann@x.com`` link), placeholder values
that many channels send for "unknown" are dropped (they would link strangers together), and
what is stored is only an HMAC-SHA256 of type and value under a secret key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from libs.errors import Violations
from services.identity.model import Identifier

MAX_IDENTIFIERS = 32
MAX_VALUE_LENGTH = 256
_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
BLOCKED_VALUES = frozenset(
    {
        "",
        "null",
        "none",
        "nil",
        "undefined",
        "anonymous",
        "unknown",
        "n/a",
        "na",
        "0",
        "-1",
        "test",
        "guest",
    }
)
# Higher wins when a request's identifiers disagree (see the identity stitching rules).
TYPE_PRIORITY = {"customer_id": 50, "email": 40, "phone": 30, "device_id": 20, "cookie_id": 10}


@dataclass(frozen=True)
class KeyedIdentifier:
    """A normalised identifier reduced to what the database may hold."""

    type: str
    digest: str

    @property
    def priority(self) -> int:
        return TYPE_PRIORITY.get(self.type, 0)


def _normalise_value(kind: str, value: str) -> str:
    value = value.strip()
    if kind == "email":
        return value.lower()
    if kind == "phone":
        digits = re.sub(r"[^\d+]", "", value)
        return "+" + digits.lstrip("+") if digits.startswith("+") else digits
    return value


def _is_placeholder(value: str) -> bool:
    return value.lower() in BLOCKED_VALUES or set(value) <= {"0", "-", " "}


class IdentifierKeyring:
    """Validates, normalises and hashes identifiers with the configured secret key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def digest(self, kind: str, normalised_value: str) -> str:
        message = f"{kind}\x00{normalised_value}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def prepare(
        self, identifiers: list[Identifier], field: str = "identifiers"
    ) -> list[KeyedIdentifier]:
        """Validate every identifier (naming the bad field) and return the usable ones.

        Placeholder values are not an error (channels send them routinely); they are
        dropped. The result may be empty when every identifier was a placeholder.
        """
        problems = Violations()
        problems.require(bool(identifiers), field, "at least one identifier is required")
        problems.require(
            len(identifiers) <= MAX_IDENTIFIERS, field, f"at most {MAX_IDENTIFIERS} identifiers"
        )
        keyed: dict[tuple[str, str], KeyedIdentifier] = {}
        for index, identifier in enumerate(identifiers[:MAX_IDENTIFIERS]):
            where = f"{field}[{index}]"
            if not _TYPE_PATTERN.match(identifier.type):
                problems.add(f"{where}.type", "must match [a-z][a-z0-9_]{0,31}")
                continue
            if len(identifier.value) > MAX_VALUE_LENGTH:
                problems.add(f"{where}.value", f"longer than {MAX_VALUE_LENGTH} characters")
                continue
            value = _normalise_value(identifier.type, identifier.value)
            if _is_placeholder(value):
                continue
            if identifier.type == "email" and not _EMAIL_PATTERN.match(value):
                problems.add(f"{where}.value", "not an e-mail address")
                continue
            if identifier.type == "phone" and not re.fullmatch(r"\+?\d{6,15}", value):
                problems.add(f"{where}.value", "not a phone number")
                continue
            item = KeyedIdentifier(identifier.type, self.digest(identifier.type, value))
            keyed[(item.type, item.digest)] = item
        problems.raise_if_any()
        return sorted(keyed.values(), key=lambda k: (-k.priority, k.type, k.digest))
