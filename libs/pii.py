"""The one detector of personal data in free text: e-mail addresses and phone numbers.

PRODUCT.md §7: no raw e-mail or phone in the database or the logs. Two rules share it:

- the **log rule** (``libs/logging.py``): a bare run of 10 to 15 digits is a phone number too;
  logs can afford a false positive now and then;
- the **storage rule** (``redact_for_storage``, the context service's free-form values and
  their keys; ``holds_personal_data``, the ids and names it stores as given): a phone number
  must be written as one (a ``+``, separators or parentheses). A bare run of digits is kept:
  a numeric id or an epoch-millisecond timestamp cannot be told apart from an unformatted
  phone, and replacing it would corrupt stored data.

Tokens that only resemble a phone number (timestamps, dates, times, IPv4 addresses, UUIDs,
hex ids, words with digits) are matched first and kept as they are, under both rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

EMAIL = "[email]"
PHONE = "[phone]"

_LOCAL = r"[\w.!#$%&'*+/=?^`{|}~-]"  # what an e-mail's local part may hold
_HEX = "[0-9A-Fa-f]"
_EMAIL = rf"(?P<email>(?<!{_LOCAL}){_LOCAL}+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{{2,}})"
# What else a text is made of, matched as tokens so that what only resembles a phone number is
# kept whole; a word is anything else.
_TOKENS = rf"""
    (?P<uuid>\b{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}\b)
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
    """
_PII = re.compile(rf"{_EMAIL}|{_TOKENS}", re.VERBOSE)
# The same detector for a text without an '@', where no address can match: it does not try
# every word as an address's local part first.
_NO_EMAIL = re.compile(_TOKENS, re.VERBOSE)
_DIGIT = re.compile(r"\d")
# The fast paths: nothing in a text without an '@' or seven digits can be replaced (an
# address needs its '@', a phone number at least 7 digits), so such a text is returned as it
# is without running the detector. Most values are like that (names, short numbers, paths).
_SEVEN_DIGITS = re.compile(r"\d(?:\D*+\d){6}")
# Under the storage rule a phone number is not bare digits, so it holds a '+', a separator
# or a parenthesis besides its seven digits: hex ids and paths skip the digit count too.
_STORED_MARK = re.compile(r"[@+\x20.(-]")


def _may_hold_pii(text: str) -> bool:
    return "@" in text or _SEVEN_DIGITS.search(text) is not None


def _may_hold_stored_pii(text: str) -> bool:
    if _STORED_MARK.search(text) is None:
        return False
    return "@" in text or _SEVEN_DIGITS.search(text) is not None


def _phone_like(text: str, bare_digits_are_phones: bool) -> bool:
    if text.isdigit():  # a bare number: only as long as a national number with area code
        return bare_digits_are_phones and 10 <= len(text) <= 15
    digits = len(_DIGIT.findall(text))
    if not 7 <= digits <= 15:  # E.164 has at most 15 digits; 7 is a short local number
        return False
    if text.startswith("+"):
        return True
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
    if bare_digits_are_phones:
        if not _may_hold_pii(text):
            return text
    elif not _may_hold_stored_pii(text):
        return text
    # A value that is one token (a timestamp, an id, a number) is the detector's first match
    # and its only one: what the substitution would give, without running it over the text.
    detector = _PII if "@" in text else _NO_EMAIL
    first = detector.match(text)
    if first is not None and first.end() == len(text):
        return _replacement(first, bare_digits_are_phones)
    return detector.sub(_for_logs if bare_digits_are_phones else _for_storage, text)


def contains_email(text: str) -> bool:
    """Whether ``text`` holds an e-mail address (as the detector sees one)."""
    if "@" not in text:
        return False
    return any(match.lastgroup == "email" for match in _PII.finditer(text))


def holds_personal_data(text: str) -> bool:
    """Whether the storage rule would change ``text``: it holds an e-mail address or a
    phone number written as one. For the ids and names stored as given (a bare run of
    digits is a numeric id as far as anyone can tell)."""
    if not _may_hold_stored_pii(text):
        return False
    for match in (_PII if "@" in text else _NO_EMAIL).finditer(text):
        kind = match.lastgroup
        if kind == "email" or (kind == "phone" and _phone_like(match.group(), False)):
            return True
    return False


def may_hold_personal_data(texts: Iterable[str]) -> bool:
    """False when none of ``texts`` can hold personal data under the storage rule, from one
    look at all of them (the usual answer for ids); True: ask ``holds_personal_data`` of
    each."""
    return _may_hold_stored_pii("\n".join(texts))


def redact_for_storage(value: Any) -> tuple[Any, int]:
    """``value`` with the storage rule applied to every string at any depth (dict keys and
    values, items of lists and tuples), and how many strings were changed. Anything else
    (numbers, booleans, None) is kept.

    Keys that become equal once redacted are all kept: taken in the order of their original
    text, the first is named ``[email]`` (say), the next ``[email] 2``, and so on, skipping
    a name the dict already holds, so no value is lost and the names do not depend on the
    order the keys came in.

    One walk, and nothing is copied unless something changed: when the count is 0 the very
    object given is returned (the common case costs no allocation)."""
    if isinstance(value, str):
        redacted = redact_text(value, bare_digits_are_phones=False)
        return (value, 0) if redacted == value else (redacted, 1)
    if isinstance(value, dict):
        return _redact_dict(value)
    if isinstance(value, list | tuple):
        return _redact_sequence(value)
    return value, 0


# Values that hold no text: a dict of strings and these is checked in one pass (below).
_PLAIN = frozenset({int, float, bool, type(None)})


def _redact_dict(value: dict[Any, Any]) -> tuple[Any, int]:
    # The common dict (a request context, an event's attributes) has names for keys and
    # short plain values: its keys, then its string values when none is a container, are
    # joined and checked at once, which is what checking each would say when nothing is
    # found (a mark or seven digits across two texts only costs the walk).
    try:
        keys = _may_hold_stored_pii("\n".join(value))
    except TypeError:  # a key that is not a string
        keys = True
    texts = []
    for item in value.values():
        kind = type(item)
        if kind is str:
            texts.append(item)
        elif kind not in _PLAIN:
            break
    else:
        if not _may_hold_stored_pii("\n".join(texts)):
            return _redact_dict_entries(value, values=False) if keys else (value, 0)
    return _redact_dict_entries(value, keys=keys)


def _redact_dict_entries(
    value: dict[Any, Any], *, keys: bool = True, values: bool = True
) -> tuple[Any, int]:
    """The walk of a dict's keys and/or values, one by one; copied on first change."""
    renamed: dict[str, str] = {}
    changed_items: dict[Any, Any] = {}
    count = 0
    for key, item in value.items():
        if keys and isinstance(key, str):
            name = redact_text(key, bare_digits_are_phones=False)
            if name != key:
                renamed[key] = name
        if values:
            redacted, changed = redact_for_storage(item)
            if changed:
                changed_items[key] = redacted
                count += changed
    if not renamed and not changed_items:
        return value, 0
    names = _unique_names(value, renamed) if renamed else {}
    copy = {names.get(key, key): changed_items.get(key, item) for key, item in value.items()}
    return copy, count + len(renamed)


def _unique_names(value: dict[Any, Any], renamed: dict[str, str]) -> dict[str, str]:
    """A distinct new name for each renamed key (see ``redact_for_storage``)."""
    taken = {key for key in value if key not in renamed}
    names: dict[str, str] = {}
    for key in sorted(renamed):
        name = base = renamed[key]
        number = 1
        while name in taken:
            number += 1
            name = f"{base} {number}"
        taken.add(name)
        names[key] = name
    return names


def _redact_sequence(value: list[Any] | tuple[Any, ...]) -> tuple[Any, int]:
    """A list's or tuple's items, each redacted; copied on first change."""
    copy: list[Any] | None = None
    count = 0
    for index, item in enumerate(value):
        redacted, changed = redact_for_storage(item)
        if changed:
            if copy is None:
                copy = list(value)
            copy[index] = redacted
            count += changed
    if copy is None:
        return value, 0
    return (tuple(copy) if isinstance(value, tuple) else copy), count
