"""structlog, configured once per process: JSON lines in production, console in development."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal

import structlog

# Personal data must never reach the logs (PRODUCT.md §7). Tokens that look like personal
# data are replaced; tokens that only resemble a phone number (timestamps, dates, times,
# IPv4 addresses, UUIDs, hex ids, words with digits) are matched first and kept as they are.
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


def _phone_like(text: str) -> bool:
    digits = len(_DIGIT.findall(text))
    if not 7 <= digits <= 15:  # E.164 has at most 15 digits; 7 is a short local number
        return False
    if text.startswith("+"):
        return True
    if text.isdigit():  # a bare number: only as long as a national number with area code
        return digits >= 10
    if "." in text and not any(separator in text for separator in " -()"):
        return text.count(".") >= 2  # 555.123.4567, not a decimal like 1234.56789
    return True


def _redact_match(match: re.Match[str]) -> str:
    if match.lastgroup == "email":
        return "[email]"
    if match.lastgroup == "phone" and _phone_like(match.group()):
        return "[phone]"
    return match.group()


def redact_text(text: str) -> str:
    """``text`` with e-mail addresses and phone numbers replaced by ``[email]``/``[phone]``."""
    if not any(character.isdigit() or character == "@" for character in text):
        return text
    return _PII.sub(_redact_match, text)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {_redact(key): _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(item) for item in value]
    # Anything else (an exception, a Path...) is rendered by its repr, as the renderers do.
    return redact_text(repr(value))


def redact_pii(
    logger: Any, method_name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """structlog processor: redact e-mails and phone numbers in every key and string value,
    nested dicts and lists included."""
    redacted: structlog.types.EventDict = _redact(event_dict)
    return redacted


def configure_logging(level: str = "info", fmt: Literal["json", "console"] = "json") -> None:
    """Route structlog and the standard library through one JSON (or console) renderer."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            # Redaction last, after tracebacks are text, so nothing reaches a renderer raw.
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_pii,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
