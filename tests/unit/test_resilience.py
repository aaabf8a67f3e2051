"""Circuit breaker and the orchestrator's fallbacks, with fakes that fail on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from libs.errors import InvalidArgument, Unavailable
from libs.resilience import BreakerState, CircuitBreaker
from libs.rpc.guarded import breakers_of, guarded
from services.arbitration.service import ArbitrationService
from services.context.model import ProfileContext
from services.identity.model import Identifier
from services.orchestrator.model import DecideCommand
from services.orchestrator.service import DecisionEngine
from services.scoring.model import CandidateScore, ScoringCandidate
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
        breaker.failure()
    states.append(breaker.state)
    breaker.failure()
    states.append(breaker.state)
    assert not breaker.allow()
    clock.now += 2.0
    states.append(breaker.state)
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # nobody else while it is out
    breaker.failure()
    states.append(breaker.state)
    clock.now += 2.0
    assert breaker.allow()
    breaker.success()
    states.append(breaker.state)
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
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED


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
    from services.arbitration.catalog import parse_catalog_yaml

    real_arbitration = ArbitrationService(arbitration_units(FakeCatalogStore()))
    await real_arbitration.apply_catalog(parse_catalog_yaml(CATALOG))
    # The ports as the mesh reaches them: each behind deadlines and breakers.
    engine = DecisionEngine(
        guarded(identity or FakeIdentity(), "identity"),
        guarded(context or FakeContext(), "context"),
        guarded(scoring or FakeScoring({"big": 0.3, "cheap": 0.2}), "scoring"),
        guarded(arbitration or real_arbitration, "arbitration"),
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
    broken = Broken(real)
    broken.broken = False
    engine, real = await engine_with(arbitration=broken)
    broken._inner = real
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
    assert breakers_of(identity)["resolve_profile"].state is BreakerState.CLOSED


async def test_no_candidates_ever_seen_and_arbitration_down_is_no_action() -> None:
    engine, _ = await engine_with(
        arbitration=Broken(ArbitrationService(arbitration_units(FakeCatalogStore())))
    )
    decision = await engine.decide(DecideCommand(COOKIE, "web", explain=True))
    assert decision.action is None and decision.degraded
    assert decision.explanation is not None and decision.explanation.candidates == ()
