"""Circuit breaker and the orchestrator's fallbacks, with fakes that fail on demand."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from libs.contracts.context import ProfileContext
from libs.contracts.identity import Identifier, Resolution
from libs.contracts.scoring import CandidateScore, ScoringCandidate
from libs.errors import InvalidArgument, ResourceExhausted, Unavailable
from libs.resilience import BreakerState, CircuitBreaker, Outcome, outcome_of
from libs.rpc.guarded import breaker_of, guarded
from services.arbitration.catalog import parse_catalog_yaml
from services.arbitration.service import ArbitrationService
from services.orchestrator.decide import DecisionEngine
from services.orchestrator.model import DecideCommand
from tests.unit.fakes import (
    FakeCatalogStore,
    FakeContext,
    FakeIdentity,
    FakeScoring,
    arbitration_units,
)

COOKIE = [Identifier("cookie_id", "c-1")]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_three_failures_and_probes_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker("scoring", failure_threshold=3, open_s=2.0, clock=clock)
    states: list[BreakerState] = []
    for _ in range(2):
        assert breaker.allow()
        breaker.record(Outcome.FAILURE)
    states.append(breaker.state())
    breaker.record(Outcome.FAILURE)
    states.append(breaker.state())
    assert not breaker.allow()
    clock.now += 2.0
    states.append(breaker.state())
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # nobody else while it is out
    breaker.record(Outcome.FAILURE)
    states.append(breaker.state())
    clock.now += 2.0
    assert breaker.allow()
    breaker.record(Outcome.SUCCESS)
    states.append(breaker.state())
    assert breaker.allow()
    assert states == [
        BreakerState.CLOSED,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.CLOSED,
    ]


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker("context", failure_threshold=3)
    breaker.record(Outcome.FAILURE)
    breaker.record(Outcome.FAILURE)
    breaker.record(Outcome.SUCCESS)
    breaker.record(Outcome.FAILURE)
    breaker.record(Outcome.FAILURE)
    assert breaker.state() is BreakerState.CLOSED


def test_a_connectivity_failure_of_any_method_counts_for_the_whole_dependency() -> None:
    breaker = CircuitBreaker("context", failure_threshold=3, clock=Clock())
    for method in ("get_profile_context", "record_decision", "merge_profiles"):
        breaker.record(Outcome.FAILURE, method)
    assert not breaker.allow("get_profile_context") and not breaker.allow("anything_else")


def test_timeouts_open_a_method_only_past_the_failure_rate_over_enough_calls() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        "context", failure_rate=0.5, min_calls=10, window=20, open_s=2.0, clock=clock
    )
    # A few slow calls in a row, then answers: below the rate, nothing opens.
    for outcome in [Outcome.SLOW] * 4 + [Outcome.SUCCESS] * 6:
        assert breaker.allow("merge_profiles")
        breaker.record(outcome, "merge_profiles")
    assert breaker.state("merge_profiles") is BreakerState.CLOSED
    # Half of the last ten slow: this kind of request is cut off, and only it.
    for _ in range(6):
        breaker.record(Outcome.SLOW, "merge_profiles")
    assert breaker.state("merge_profiles") is BreakerState.OPEN
    assert not breaker.allow("merge_profiles")
    assert breaker.allow("get_profile_context")
    assert breaker.state() is BreakerState.CLOSED
    # It probes back by itself: a slow probe keeps it open, an answer closes it.
    clock.now += 2.0
    assert breaker.allow("merge_profiles") and not breaker.allow("merge_profiles")
    breaker.record(Outcome.SLOW, "merge_profiles")
    assert breaker.state("merge_profiles") is BreakerState.OPEN
    clock.now += 2.0
    assert breaker.allow("merge_profiles")
    breaker.record(Outcome.SUCCESS, "merge_profiles")
    assert breaker.state("merge_profiles") is BreakerState.CLOSED
    # Closed afresh: one slow call after the probe does not reopen it.
    breaker.record(Outcome.SLOW, "merge_profiles")
    assert breaker.allow("merge_profiles")


def test_a_slow_method_is_probed_again_sooner_than_an_unreachable_dependency() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        "scoring", failure_threshold=3, open_s=2.0, slow_open_s=0.25, min_calls=4, clock=clock
    )
    for _ in range(4):
        breaker.record(Outcome.SLOW, "score_candidates")
    assert not breaker.allow("score_candidates")
    clock.now += 0.25  # load clears quickly: one probe goes out
    assert breaker.allow("score_candidates") and not breaker.allow("score_candidates")
    breaker.record(Outcome.SUCCESS, "score_candidates")
    assert breaker.state("score_candidates") is BreakerState.CLOSED

    for _ in range(3):
        breaker.record(Outcome.FAILURE, "score_candidates")  # unreachable: the whole opens
    clock.now += 0.25
    assert not breaker.allow("score_candidates")  # a reconnection takes longer
    clock.now += 1.75
    assert breaker.allow("score_candidates")


def test_old_timeouts_leave_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker("scoring", min_calls=4, window_s=10.0, clock=clock)
    for _ in range(3):
        breaker.record(Outcome.SLOW, "score_candidates")
    clock.now += 11.0
    breaker.record(Outcome.SLOW, "score_candidates")
    assert breaker.state("score_candidates") is BreakerState.CLOSED


def test_shed_and_abandoned_calls_say_nothing_about_the_dependency() -> None:
    clock = Clock()
    breaker = CircuitBreaker("context", failure_threshold=2, min_calls=2, clock=clock)
    for _ in range(20):
        breaker.record(Outcome.SHED, "record_decision")
        breaker.record(Outcome.ABANDONED, "record_decision")
    assert breaker.state("record_decision") is BreakerState.CLOSED
    breaker.record(Outcome.FAILURE)
    breaker.record(Outcome.SHED)
    breaker.record(Outcome.FAILURE)  # two in a row: a shed answer is not a success
    assert breaker.state() is BreakerState.OPEN


def test_a_probe_that_never_reports_does_not_keep_the_circuit_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker("identity", failure_threshold=1, open_s=2.0, clock=clock)
    breaker.record(Outcome.FAILURE)
    clock.now += 2.0
    assert breaker.allow()  # the probe, whose caller then vanishes without a word
    assert not breaker.allow()
    clock.now += 2.0
    assert breaker.allow()  # given up: another probe goes
    breaker.record(Outcome.ABANDONED)
    assert breaker.allow()  # an abandoned probe frees the slot at once
    breaker.record(Outcome.SUCCESS)
    assert breaker.state() is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (TimeoutError(), Outcome.SLOW),
        (Unavailable("context: UNAVAILABLE: connection refused"), Outcome.FAILURE),
        (Unavailable("x", status="DEADLINE_EXCEEDED"), Outcome.SLOW),
        (Unavailable("x", status="RESOURCE_EXHAUSTED"), Outcome.SHED),
        (Unavailable("x", status="INTERNAL"), Outcome.FAILURE),
        (ResourceExhausted("overloaded"), Outcome.SHED),
        (RuntimeError("broken"), Outcome.FAILURE),
    ],
)
def test_outcome_of_an_error(error: Exception, outcome: Outcome) -> None:
    assert outcome_of(error) is outcome


class Broken:
    """Wraps a port: every call raises ``error`` while ``broken`` is set."""

    def __init__(self, inner: Any, error: Exception | None = None) -> None:
        self._inner = inner
        self.broken = True
        self.error = error or Unavailable("peer down")
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.broken:
                raise self.error
            return await target(*args, **kwargs)

        return call


class SlowScoring(FakeScoring):
    async def score_candidates(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> list[CandidateScore]:
        await asyncio.sleep(1.0)
        return await super().score_candidates(context, request_context, channel, candidates)


CATALOG = """
min_priority: 1.0
defaults: {web: cheap}
actions:
  - {id: big, issue: retention, value: 100, prior_propensity: 0.05, model: m}
  - {id: cheap, issue: service, value: 10, prior_propensity: 0.5, model: m}
"""


async def engine_with(
    *, identity: Any = None, context: Any = None, scoring: Any = None, arbitration: Any = None
) -> tuple[DecisionEngine, ArbitrationService]:
    real_arbitration = ArbitrationService(arbitration_units(FakeCatalogStore()))
    await real_arbitration.apply_catalog(parse_catalog_yaml(CATALOG))

    # The ports as the mesh reaches them: each behind deadlines and breakers (a test that
    # watches a breaker passes the port it guarded itself).
    def guard(port: Any, name: str) -> Any:
        return port if breaker_of(port) is not None else guarded(port, name)

    engine = DecisionEngine(
        guard(identity or FakeIdentity(), "identity"),
        guard(context or FakeContext(), "context"),
        guard(scoring or FakeScoring({"big": 0.3, "cheap": 0.2}), "scoring"),
        guard(arbitration or real_arbitration, "arbitration"),
        budget_ms=200,
    )
    return engine, real_arbitration


async def test_healthy_decision_is_not_degraded() -> None:
    engine, _ = await engine_with()
    decision = await engine.decide(DecideCommand(COOKIE, "web"))
    assert not decision.degraded and decision.action and decision.action.action_id == "big"


async def test_scoring_down_uses_each_actions_prior() -> None:
    engine, _ = await engine_with(scoring=Broken(FakeScoring({})))
    decision = await engine.decide(DecideCommand(COOKIE, "web", explain=True))
    assert decision.degraded and "scoring: unavailable" in decision.degraded_reason
    # Priors: big 0.05 x 100 = 5, cheap 0.5 x 10 = 5 -> tie broken by id.
    assert decision.action is not None and decision.propensity in (0.05, 0.5)
    assert decision.model_version == ""


async def test_slow_scoring_is_cut_at_the_budget() -> None:
    engine, _ = await engine_with(scoring=SlowScoring({"big": 0.3, "cheap": 0.2}))
    started = asyncio.get_running_loop().time()
    decision = await engine.decide(DecideCommand(COOKIE, "web"))
    assert asyncio.get_running_loop().time() - started < 0.5
    assert decision.degraded and "scoring: timeout" in decision.degraded_reason


async def test_identity_and_context_down_decide_for_an_anonymous_visitor() -> None:
    identity = Broken(FakeIdentity())
    context = Broken(FakeContext())
    engine, _ = await engine_with(identity=identity, context=context)
    decision = await engine.decide(DecideCommand(COOKIE, "web"))
    assert decision.degraded and decision.profile_id == ""
    assert decision.action is not None
    assert "identity: unavailable" in decision.degraded_reason
    # Answered all the same: the decision waits in the outbox until context is back.
    assert engine.outbox.is_queued(decision.decision_id)


async def test_arbitration_down_after_a_first_call_falls_back_to_the_channel_default() -> None:
    real = ArbitrationService(arbitration_units(FakeCatalogStore()))
    await real.apply_catalog(parse_catalog_yaml(CATALOG))
    broken = Broken(real)
    broken.broken = False
    engine, _ = await engine_with(arbitration=broken)
    await engine.decide(DecideCommand(COOKIE, "web"))  # candidates now remembered
    broken.broken = True
    decision = await engine.decide(DecideCommand(COOKIE, "web", explain=True))
    assert decision.degraded and decision.action is not None
    assert decision.action.action_id == "cheap"  # the declared default for web
    assert decision.explanation is not None
    assert "default action" in decision.explanation.summary


async def test_circuit_opens_after_three_failures_and_stops_calling() -> None:
    scoring = Broken(FakeScoring({"big": 0.3, "cheap": 0.2}))
    engine, _ = await engine_with(scoring=scoring)
    for _ in range(5):
        await engine.decide(DecideCommand(COOKIE, "web"))
    assert scoring.calls == 3  # the last two never went out
    decision = await engine.decide(DecideCommand(COOKIE, "web"))
    assert "scoring: circuit open" in decision.degraded_reason


async def test_a_callers_mistake_is_not_absorbed_as_an_outage() -> None:
    identity = guarded(Broken(FakeIdentity(), InvalidArgument([])), "identity")
    arbitration = ArbitrationService(arbitration_units(FakeCatalogStore()))
    engine = DecisionEngine(identity, FakeContext(), FakeScoring(), arbitration)
    with pytest.raises(InvalidArgument):
        await engine.decide(DecideCommand(COOKIE, "web"))
    breaker = breaker_of(identity)
    assert breaker is not None and breaker.state("resolve_profile") is BreakerState.CLOSED


async def test_no_candidates_ever_seen_and_arbitration_down_is_no_action() -> None:
    engine, _ = await engine_with(
        arbitration=Broken(ArbitrationService(arbitration_units(FakeCatalogStore())))
    )
    decision = await engine.decide(DecideCommand(COOKIE, "web", explain=True))
    assert decision.action is None and decision.degraded
    assert decision.explanation is not None and decision.explanation.candidates == ()


class LoginIdentity(FakeIdentity):
    """Every resolve with a ``login`` identifier merges a profile of the same name into it,
    as a login that joins two anonymous profiles does; its profile ids go to ``logins``."""

    def __init__(self) -> None:
        super().__init__()
        self.logins: set[str] = set()

    async def resolve_profile(self, identifiers: list[Identifier]) -> Resolution:
        resolution = await super().resolve_profile(identifiers)
        names = [i.value for i in identifiers if i.type == "login"]
        if names:
            self.logins.add(resolution.profile_id)
        return replace(resolution, merged_profile_ids=tuple(f"anon-{n}" for n in names))


class SlowForLogins(FakeContext):
    """A context where a login's reads run out of time (its merge is slow and takes the
    rest of the budget with it), and every other customer's are answered."""

    def __init__(self, logins: set[str]) -> None:
        super().__init__()
        self.logins = logins

    async def merge_profiles(self, survivor_id: str, merged_ids: list[str]) -> int:
        raise TimeoutError

    async def get_profile_context(self, profile_id: str) -> ProfileContext:
        if profile_id in self.logins:
            raise TimeoutError
        return await super().get_profile_context(profile_id)


class Flaky(FakeContext):
    """A context whose next ``slow`` reads run out of time, or whose next ``busy`` reads it
    sheds (RESOURCE_EXHAUSTED, as a peer's deadline guard answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = 0
        self.busy = 0

    async def get_profile_context(self, profile_id: str) -> ProfileContext:
        if self.slow:
            self.slow -= 1
            raise TimeoutError
        if self.busy:
            self.busy -= 1
            raise ResourceExhausted("overloaded: retry with backoff")
        return await super().get_profile_context(profile_id)


async def test_slow_logins_do_not_cut_the_other_customers_off_context() -> None:
    identity = LoginIdentity()
    context = SlowForLogins(identity.logins)
    context_port = guarded(context, "context")
    engine, _ = await engine_with(identity=identity, context=context_port)
    others = [[Identifier("customer_id", f"known-{n}")] for n in range(3)]
    for known in others:
        await engine.decide(DecideCommand(known, "web"))  # created: context is not read
    answered: list[str] = []
    for n in range(15):
        login = await engine.decide(DecideCommand([Identifier("login", f"u{n}")], "web"))
        assert "context: " in login.degraded_reason
        for known in others:
            decision = await engine.decide(DecideCommand(known, "web"))
            assert not decision.degraded, decision.degraded_reason
            answered.append(decision.decision_id)
    await engine.flush_decisions()
    assert set(answered) <= set(context.decisions)
    # The kind of request that keeps failing is cut off for now: merging.
    breaker = breaker_of(context_port)
    assert breaker is not None
    assert breaker.state("merge_profiles") is BreakerState.OPEN
    assert breaker.state("get_profile_context") is BreakerState.CLOSED


async def test_a_few_timeouts_in_a_row_do_not_open_the_circuit() -> None:
    context = Flaky()
    engine, _ = await engine_with(context=context)
    known = [Identifier("customer_id", "known")]
    await engine.decide(DecideCommand(known, "web"))  # created: context is not read
    context.slow = 3
    for _ in range(3):
        slow = await engine.decide(DecideCommand(known, "web"))
        assert "context: timeout" in slow.degraded_reason
    decision = await engine.decide(DecideCommand(known, "web"))
    assert not decision.degraded, decision.degraded_reason


async def test_a_dependency_shedding_load_is_not_taken_for_down() -> None:
    context = Flaky()
    engine, _ = await engine_with(context=context)
    known = [Identifier("customer_id", "known")]
    await engine.decide(DecideCommand(known, "web"))
    context.busy = 10
    for _ in range(10):
        busy = await engine.decide(DecideCommand(known, "web"))
        assert "context: overloaded" in busy.degraded_reason
    decision = await engine.decide(DecideCommand(known, "web"))
    assert not decision.degraded, decision.degraded_reason


class Hanging:
    """A port whose one method fails, answers, or waits until its caller gives up."""

    def __init__(self) -> None:
        self.mode = "fail"

    async def ping(self) -> str:
        if self.mode == "fail":
            raise Unavailable("peer: UNAVAILABLE: connection refused")
        if self.mode == "hang":
            await asyncio.Event().wait()
        return "pong"


async def test_a_probe_whose_caller_gave_up_does_not_keep_the_circuit_half_open() -> None:
    port = Hanging()
    peer = guarded(port, "peer", failure_threshold=3, open_s=0.05)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await peer.ping()
    await asyncio.sleep(0.06)  # half-open: the next call is the probe
    port.mode = "hang"
    probe = asyncio.ensure_future(peer.ping())
    await asyncio.sleep(0.01)
    probe.cancel()  # its caller is gone (a cancelled Decide)
    with contextlib.suppress(asyncio.CancelledError):
        await probe
    port.mode = "answer"
    assert await peer.ping() == "pong"  # another probe went, and closed the circuit


def test_an_outage_does_not_count_against_a_method_once_the_dependency_is_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker("context", failure_threshold=3, min_calls=4, open_s=2.0, clock=clock)
    for _ in range(3):
        breaker.record(Outcome.FAILURE, "record_decision")  # down: the whole opens
    for _ in range(3):  # its probes fail while it stays down
        clock.now += 2.0
        assert breaker.allow("record_decision")
        breaker.record(Outcome.FAILURE, "record_decision")
    clock.now += 2.0
    assert breaker.allow("record_decision")
    breaker.record(Outcome.SUCCESS, "record_decision")  # back
    breaker.record(Outcome.SLOW, "record_decision")  # a busy first moment
    assert breaker.state("record_decision") is BreakerState.CLOSED
