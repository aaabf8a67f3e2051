"""The checks of a Decide or WatchDecisions request, before anything is resolved."""

from __future__ import annotations

import re

from libs.contracts.context_checks import check_id_without_personal_data
from libs.errors import Violations
from services.orchestrator.model import DecideCommand

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
MAX_CONTEXT_BYTES = 16 * 1024


def validate_decide(command: DecideCommand) -> None:
    """Refuse a Decide or WatchDecisions request the caller got wrong, naming each field."""
    problems = Violations()
    problems.require(bool(command.identifiers), "identifiers", "at least one identifier")
    problems.require(
        bool(_NAME.match(command.channel)),
        "channel",
        "required: lower-case name of at most 64 characters (web, mobile, ...)",
    )
    problems.require(
        not command.placement or bool(_NAME.match(command.placement)),
        "placement",
        "lower-case name of at most 64 characters",
    )
    problems.require(len(command.request_id) <= 128, "request_id", "at most 128 characters")
    check_id_without_personal_data(problems, "request_id", command.request_id)
    problems.require(
        len(repr(command.context)) <= MAX_CONTEXT_BYTES,
        "context",
        f"larger than {MAX_CONTEXT_BYTES} bytes",
    )
    problems.raise_if_any()
