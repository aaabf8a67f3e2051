"""The one detector of personal data in free text: e-mail addresses and phone numbers.

PRODUCT.md §7: no raw e-mail or phone in the database or the logs. Two rules share it:

- the **log rule** (``libs/logging.py``): a bare run of 10 to 15 digits is a phone number too;
  logs can afford a false positive now and then;
- the **storage rule** (``redact_for_storage``, the context service's free-form values): a
  phone number must be written as one (a ``+``, separators or parentheses). A bare run of
  digits is kept: a numeric id or an epoch-millisecond timestamp cannot be told apart from
  an unformatted phone, and replacing it would corrupt stored data.

Tokens that only resemble a phone number (timestamps, dates, times, IPv4 addresses, UUIDs,
hex ids, words with digits) are matched first and kept as they are, under both rules.
"""

from __future__ import annotations

import re
from typing import Any

EMAIL = "[email]"
PHONE = "[phone]"

_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~-]"  # what an e-mail's local part may hold
_HEX = "[0-9A-Fa-f]"
_PII = re.compile(
    rf"""
    (?P<email>(?<!{_LOCAL}){_LOCAL}+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{{2,}})
    |(?P<uuid>\b{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}\b)
    |(?P<datetime>(?<![\d.])\d{{4}}-\d{{2}}-\d{{2}}
        (?:[T\x20]\d{{2}}:\d{{2}}(?::\d{{2}}(?:[.,]\d+)?)?(?:Z|[+-]\d{{2}}:?\d{{2}})?)?(?!\d))
    |(?P<date>(?<![\d.])(?:\d{{1,2}}[./-]\d{{1,2}}[./-]\d{{4}}|\d{{4}}[./]\d{{1,2}}[./]\d{{1,2}})
        (?![\d.]))
    |(?P<time>(?<!\d)\d{{1,2}}:\d{{2}}(?::\d{{2}}(?:[.,]\d+)?)?(?!\d))
    |(?P<ipv4>(?<![\d.])\d{{1,3}}(?:\.\d{{1,3}}){{3}}(?::\d{{1,5}})?(?![\d.]))
    |(?P<phone>(?<!\w)
        (?:\+\x20?(?:\(\d{{1,4}}\)|\d{{1,15}})|\(\d{{1,5}}\)|\d{{1,15}})
        (?:(?:[\x20.-]|\x20?\(\d{{1,5}}\)\x20?)\d{{1,15}}){{0,7}}
        (?!\w))
    |(?P<word>\w+)
    """,
    re.VERBOSE,
)
_DIGIT = re.compile(r"\d")
# The fast path: nothing in a text without an '@' or seven digits can be replaced (an
# address needs its '@', a phone number at least 7 digits), so such a text is returned as it
# is without running the detector. Most values are like that (names, short numbers, paths).
_SEVEN_DIGITS = re.compile(r"\d(?:\D*+\d){6}")


def _may_hold_pii(text: str) -> bool:
    return "@" in text or _SEVEN_DIGITS.search(text) is not None


def _phone_like(text: str, bare_digits_are_phones: bool) -> bool:
    digits = len(_DIGIT.findall(text))
    if not 7 <= digits <= 15:  # E.164 has at most 15 digits; 7 is a short local number
        return False
    if text.startswith("+"):
        return True
    if text.isdigit():  # a bare number: only as long as a national number with area code
        return bare_digits_are_phones and digits >= 10
    if "." in text and not any(separator in text for separator in " -()"):
        return text.count(".") >= 2  # 555.123.4567, not a decimal like 1234.56789
    return True


def _replacement(match: re.Match[str], bare_digits_are_phones: bool) -> str:
    if match.lastgroup == "email":
        return EMAIL
    if match.lastgroup == "phone" and _phone_like(match.group(), bare_digits_are_phones):
        return PHONE
    return match.group()


def _for_logs(match: re.Match[str]) -> str:
    return _replacement(match, True)


def _for_storage(match: re.Match[str]) -> str:
    return _replacement(match, False)


def redact_text(text: str, *, bare_digits_are_phones: bool = True) -> str:
    """``text`` with e-mail addresses and phone numbers replaced by ``[email]``/``[phone]``.

    ``bare_digits_are_phones``: whether 10 to 15 digits alone (no ``+``, no separator) count
    as a phone number: yes for logs (the default), no for stored values (module docstring).
    """
    if not _may_hold_pii(text):
        return text
    # A value that is one token (a timestamp, an id, a number) is the detector's first match
    # and its only one: what the substitution would give, without running it over the text.
    first = _PII.match(text)
    if first is not None and first.end() == len(text):
        return _replacement(first, bare_digits_are_phones)
    return _PII.sub(_for_logs if bare_digits_are_phones else _for_storage, text)


def contains_email(text: str) -> bool:
    """Whether ``text`` holds an e-mail address (as the detector sees one)."""
    if "@" not in text:
        return False
    return any(match.lastgroup == "email" for match in _PII.finditer(text))


def redact_for_storage(value: Any) -> tuple[Any, int]:
    """``value`` with the storage rule applied to every string at any depth (values of
    dicts, items of lists and tuples; keys are names validated elsewhere, kept as they are),
    and how many strings were changed. Anything else (numbers, booleans, None) is kept.

    One walk, and nothing is copied unless something changed: when the count is 0 the very
    object given is returned (the common case costs no allocation)."""
    if isinstance(value, str):
        redacted = redact_text(value, bare_digits_are_phones=False)
        return (value, 0) if redacted == value else (redacted, 1)
    if isinstance(value, dict | list | tuple):
        return _redact_container(value)
    return value, 0


def _redact_container(value: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> tuple[Any, int]:
    """A dict's values or a list's or tuple's items, each redacted; copied on first change."""
    entries = value.items() if isinstance(value, dict) else enumerate(value)
    copy: dict[Any, Any] | list[Any] | None = None
    count = 0
    for key, item in entries:
        redacted, changed = redact_for_storage(item)
        if changed:
            if copy is None:
                copy = dict(value) if isinstance(value, dict) else list(value)
            copy[key] = redacted
            count += changed
    if copy is None:
        return value, 0
    return (tuple(copy) if isinstance(value, tuple) else copy), count
