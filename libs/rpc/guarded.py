"""Resilience where the network is: a port reached over gRPC, behind breakers and deadlines.

The composition root wraps the gRPC client of each service the orchestrator reaches in the
mesh (``guarded``); in the embedded shape the same ports are the domain services themselves,
called plainly, since an in-process call cannot be unreachable or late on the wire.

Every async method of the wrapped port gets:
- the time left of the caller's budget (``libs.rpc.client.remaining_s``) as its timeout;
- a circuit breaker of its own (per method, so one slow kind of request does not cut the
  others off: a failing dependency fails all its methods and opens all their breakers);
- failures turned into ``DependencyFailed`` (an ``Unavailable``: UNAVAILABLE on the wire),
  saying which dependency and how. The caller's own mistakes (``InvalidArgument``,
  ``NotFound``, ``FailedPrecondition``) pass through: the dependency answered.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from libs.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from libs.resilience import CircuitBreaker
from libs.rpc.client import remaining_s

T = TypeVar("T")
ANSWERED = (InvalidArgument, NotFound, FailedPrecondition)


class DependencyFailed(Unavailable):
    """A dependency did not answer: ``kind`` is timeout, unavailable or circuit open."""

    def __init__(self, dependency: str, kind: str) -> None:
        super().__init__(f"{dependency}: {kind}")
        self.dependency = dependency
        self.kind = kind


BreakerFactory = Callable[[str], CircuitBreaker]


class _Guarded:
    def __init__(self, port: object, dependency: str, breakers: BreakerFactory) -> None:
        self._port = port
        self._dependency = dependency
        self._new_breaker = breakers
        self.breakers: dict[str, CircuitBreaker] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._port, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        breaker = self.breakers[name] = self._new_breaker(f"{self._dependency}.{name}")
        dependency = self._dependency

        async def call(*args: Any, **kwargs: Any) -> Any:
            if not breaker.allow():
                raise DependencyFailed(dependency, "circuit open")
            try:
                async with asyncio.timeout(remaining_s()):
                    result = await attribute(*args, **kwargs)
            except ANSWERED:
                breaker.success()
                raise
            except Exception as error:
                breaker.failure()
                kind = "timeout" if isinstance(error, TimeoutError) else "unavailable"
                raise DependencyFailed(dependency, kind) from error
            breaker.success()
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
) -> T:
    """``port`` with a deadline and a breaker on every async method (see module doc)."""

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(name, failure_threshold=failure_threshold, open_s=open_s)

    return cast(T, _Guarded(port, dependency, breaker))


def breakers_of(port: object) -> dict[str, CircuitBreaker]:
    """The breakers of a guarded port by method (empty for a plain one)."""
    return port.breakers if isinstance(port, _Guarded) else {}
