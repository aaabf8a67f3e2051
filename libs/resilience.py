"""Circuit breakers for the orchestrator's dependencies.

A breaker stops calling a dependency that is failing, so that decisions fall back at once
instead of each waiting for a timeout, and lets it recover by itself. Its policy follows
resilience4j and Polly rather than a bare count of errors: what a call showed about the
dependency decides what counts, and a deadline blown now and then does not open anything.

Use: ask ``allow(method)`` before a call (False: use the fallback, do not call), then tell
``record(outcome, method)`` what the call showed, an ``Outcome`` (``outcome_of`` classifies an
exception). ``method`` names the kind of request (e.g. "merge_profiles"); "" for one without
kinds. Every call that ``allow`` let out must be recorded, ABANDONED when the caller gave up.

- FAILURE (unreachable or broken: UNAVAILABLE, connection refused, INTERNAL...):
  ``failure_threshold`` in a row, whatever the method, open the whole dependency.
- SLOW (no answer within the deadline): one slow kind of request must not cut the others
  off, so slowness is judged per method and by rate: when at least ``failure_rate`` of the
  method's recent calls (the last ``window`` within ``window_s``, once there are at least
  ``min_calls``) were SLOW, that method's circuit opens; the dependency's other methods go
  on. (FAILUREs are the whole dependency's: they do not count in a method's rate.)
- SHED (the dependency refused for load: RESOURCE_EXHAUSTED) and ABANDONED say nothing
  about its health: neither counted nor a verdict on a probe.
- SUCCESS (it answered, a caller's mistake such as INVALID_ARGUMENT included) ends a run of
  failures and closes a circuit.

Open: refused at once for ``open_s`` (the dependency, unreachable) or ``slow_open_s`` (a
method, slow). Then half-open: one call at a time goes out as a probe; SUCCESS closes the
circuit, FAILURE or SLOW opens it again. A probe whose outcome never comes is given up after
the open period, so a circuit cannot stay half-open. Slowness is mostly load, which clears
within a fraction of a second once callers back off, while a peer that went away needs a
reconnection: hence a short open period for a slow method (0.25 s) and a long one for an
unreachable dependency (2 s). With 2 s for both, a burst of timeouts under load turned every
decision of the next 2 s into a fallback (docs/benchmarks.md).

Written here rather than taken from a library: the maintained Python breakers (pybreaker,
aiobreaker) wrap the call themselves and count exceptions only, while the orchestrator needs
to judge each call's outcome and ask "may I call?" before building the request.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from libs.errors import ResourceExhausted, Unavailable


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(StrEnum):
    """What one call showed about the dependency (see the module's docstring)."""

    SUCCESS = "success"
    FAILURE = "failure"
    SLOW = "slow"
    SHED = "shed"
    ABANDONED = "abandoned"


# A peer's gRPC status (libs.errors.Unavailable.status) -> what it says about the peer.
_PEER_STATUS = {
    "DEADLINE_EXCEEDED": Outcome.SLOW,
    "RESOURCE_EXHAUSTED": Outcome.SHED,
}


def outcome_of(error: BaseException) -> Outcome:
    """The outcome of a call that raised ``error`` (not a caller's mistake: those are
    SUCCESS, the dependency answered, and the caller knows them)."""
    if isinstance(error, TimeoutError):
        return Outcome.SLOW
    if isinstance(error, ResourceExhausted):
        return Outcome.SHED
    if isinstance(error, Unavailable):
        return _PEER_STATUS.get(error.status, Outcome.FAILURE)
    return Outcome.FAILURE


@dataclass
class _Circuit:
    opened_at: float | None = None
    probe_since: float | None = None

    def state(self, now: float, open_s: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at >= open_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def probe_out(self, now: float, open_s: float) -> bool:
        return self.probe_since is not None and now - self.probe_since < open_s

    def open(self, now: float) -> None:
        self.opened_at = now
        self.probe_since = None

    def close(self) -> None:
        self.opened_at = None
        self.probe_since = None


@dataclass
class _Lane(_Circuit):
    """One method's circuit and its recent calls: (when, whether it was bad)."""

    calls: deque[tuple[float, bool]] = field(default_factory=deque)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 3,
        open_s: float = 2.0,
        slow_open_s: float = 0.25,
        failure_rate: float = 0.5,
        min_calls: int = 10,
        window: int = 20,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._threshold = failure_threshold
        self._open_s = open_s
        self._slow_open_s = slow_open_s
        self._rate = failure_rate
        self._min_calls = min_calls
        self._window = window
        self._window_s = window_s
        self._clock = clock
        self._failures = 0  # FAILUREs in a row, any method
        self._whole = _Circuit()
        self._lanes: dict[str, _Lane] = {}

    def _lane(self, method: str) -> _Lane:
        lane = self._lanes.get(method)
        if lane is None:
            lane = self._lanes[method] = _Lane(calls=deque(maxlen=self._window))
        return lane

    def state(self, method: str = "") -> BreakerState:
        """The dependency's state when it is not closed, else the method's."""
        now = self._clock()
        whole = self._whole.state(now, self._open_s)
        if whole is not BreakerState.CLOSED:
            return whole
        return self._lane(method).state(now, self._slow_open_s)

    def allow(self, method: str = "") -> bool:
        """May a call of ``method`` go out now? In a half-open circuit, one probe at a time
        (this call, when True)."""
        now = self._clock()
        circuits: list[tuple[_Circuit, float]] = [
            (self._whole, self._open_s),
            (self._lane(method), self._slow_open_s),
        ]
        half_open: list[_Circuit] = []
        for circuit, open_s in circuits:
            state = circuit.state(now, open_s)
            if state is BreakerState.OPEN:
                return False
            if state is BreakerState.HALF_OPEN:
                if circuit.probe_out(now, open_s):
                    return False
                half_open.append(circuit)
        for circuit in half_open:
            circuit.probe_since = now
        return True

    def record(self, outcome: Outcome, method: str = "") -> None:
        """What a call that ``allow`` let out showed about the dependency."""
        now = self._clock()
        lane = self._lane(method)
        if outcome in (Outcome.SHED, Outcome.ABANDONED):
            # No verdict: a half-open circuit lets the next call probe.
            for circuit in (self._whole, lane):
                circuit.probe_since = None
            return
        if outcome is Outcome.SUCCESS:
            self._failures = 0
            self._whole.close()
            if lane.opened_at is not None:
                lane.close()
                lane.calls.clear()
            lane.calls.append((now, False))
            return
        if outcome is Outcome.FAILURE:
            # The whole dependency's to judge; kept out of the method's rate, which would
            # otherwise still hold an outage's failures when the dependency is back.
            self._failures += 1
            if self._failures >= self._threshold or self._whole.probe_since is not None:
                self._whole.open(now)
            lane.probe_since = None
            return
        if self._whole.probe_since is not None:
            self._whole.open(now)  # a slow probe: not back yet
        if lane.probe_since is not None:
            lane.open(now)
            lane.calls.clear()
            return
        lane.calls.append((now, True))
        while lane.calls and now - lane.calls[0][0] > self._window_s:
            lane.calls.popleft()
        bad = sum(1 for _, failed in lane.calls if failed)
        if len(lane.calls) >= self._min_calls and bad >= self._rate * len(lane.calls):
            lane.open(now)
            lane.calls.clear()
