"""Resilience where the network is: a port reached over gRPC, behind breakers and deadlines.

The composition root wraps the gRPC client of each service the orchestrator reaches in the
mesh (``guarded``); in the embedded shape the same ports are the domain services themselves,
called plainly, since an in-process call cannot be unreachable or late on the wire.

Every async method of the wrapped port gets:
- the time left of the caller's budget (``libs.rpc.client.remaining_s``) as its timeout;
- the dependency's circuit breaker (libs/resilience.py), told what each call showed
  (``Outcome``) under the method's name: connectivity failures of any method open the
  whole dependency; timeouts open only the method that keeps missing its deadline, so one
  slow kind of request does not cut the others off; a peer shedding load is no failure;
- failures turned into ``DependencyFailed`` (an ``Unavailable``: UNAVAILABLE on the wire),
  saying which dependency and how. The caller's own mistakes (``InvalidArgument``,
  ``NotFound``, ``FailedPrecondition``) pass through: the dependency answered.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, TypeVar, cast

from libs.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from libs.resilience import CircuitBreaker, Outcome, outcome_of
from libs.rpc.client import remaining_s

T = TypeVar("T")
ANSWERED = (InvalidArgument, NotFound, FailedPrecondition)


class DependencyFailed(Unavailable):
    """A dependency did not answer: ``kind`` is timeout, overloaded, unavailable or circuit
    open."""

    def __init__(self, dependency: str, kind: str) -> None:
        super().__init__(f"{dependency}: {kind}")
        self.dependency = dependency
        self.kind = kind


# How a degraded decision names a call that did not answer, by its outcome.
_KIND = {Outcome.SLOW: "timeout", Outcome.SHED: "overloaded"}


class _Guarded:
    def __init__(self, port: object, dependency: str, breaker: CircuitBreaker) -> None:
        self._port = port
        self._dependency = dependency
        self.breaker = breaker

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._port, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        breaker = self.breaker
        dependency = self._dependency

        async def call(*args: Any, **kwargs: Any) -> Any:
            if not breaker.allow(name):
                raise DependencyFailed(dependency, "circuit open")
            try:
                async with asyncio.timeout(remaining_s()):
                    result = await attribute(*args, **kwargs)
            except ANSWERED:
                breaker.record(Outcome.SUCCESS, name)
                raise
            except asyncio.CancelledError:
                breaker.record(Outcome.ABANDONED, name)
                raise
            except Exception as error:
                outcome = outcome_of(error)
                breaker.record(outcome, name)
                raise DependencyFailed(dependency, _KIND.get(outcome, "unavailable")) from error
            breaker.record(Outcome.SUCCESS, name)
            return result

        # Made once per method: later lookups find it without __getattr__.
        self.__dict__[name] = call
        return call


def guarded(
    port: T,
    dependency: str,
    *,
    failure_threshold: int = 3,
    open_s: float = 2.0,
    slow_open_s: float = 0.25,
) -> T:
    """``port`` with a deadline and its dependency's breaker on every async method (see the
    module's docstring)."""
    breaker = CircuitBreaker(
        dependency, failure_threshold=failure_threshold, open_s=open_s, slow_open_s=slow_open_s
    )
    return cast(T, _Guarded(port, dependency, breaker))


def breaker_of(port: object) -> CircuitBreaker | None:
    """The breaker of a guarded port (None for a plain one); ``state(method)`` per method."""
    return port.breaker if isinstance(port, _Guarded) else None
