"""Protocol-neutral domain errors; the RPC layer maps them to status codes in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (e.g. ``identifiers[0].value``) and why."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error a service raises on purpose."""


class InvalidArgument(DomainError):
    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        self.violations = violations if isinstance(violations, list) else [violations]
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


class NotFound(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class AlreadyExists(DomainError):
    """What the request would create is there already (and is not the same thing)."""


class ResourceExhausted(DomainError):
    """A limit on the work or the data one request may cause, or on the server's load."""


class Unavailable(DomainError):
    """A dependency could not answer (down, too slow, or refused).

    ``status``: the name of the gRPC status a peer's call ended with (UNAVAILABLE,
    DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED...), which tells a breaker a peer that is down from
    one that is slow or busy (libs/resilience.py)."""

    def __init__(self, message: str = "", *, status: str = "UNAVAILABLE") -> None:
        super().__init__(message)
        self.status = status


class Unimplemented(DomainError):
    pass


class Unauthenticated(DomainError):
    """The caller did not prove who it is (no, or an unknown, token or client certificate)."""


class PermissionDenied(DomainError):
    """The caller is known but may not call this (e.g. its token lacks the scope)."""


class Violations:
    """Collects field violations while validating a request, then raises them all at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def require(self, condition: bool, field: str, description: str) -> None:
        if not condition:
            self.add(field, description)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def renamed_violations(error: InvalidArgument, prefix: str, new_prefix: str) -> InvalidArgument:
    """``error`` with its fields' ``prefix`` replaced by ``new_prefix`` (put in front where
    a field lacks it): a record's ``record.x`` becomes ``records[3].x`` in a batch."""
    return InvalidArgument(
        [
            FieldViolation(new_prefix + v.field.removeprefix(prefix), v.description)
            for v in error.violations
        ]
    )
