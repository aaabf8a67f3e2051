"""Without the customer's profile, nothing her rules, consent or contact policies would
forbid is offered: what the author declared safe, the channel's default, or "no action".
And a decision answered while context is down takes its outcome once context is back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.contracts.context import (
    Contact,
    DecisionRecord,
    Outcome,
    OutcomeReport,
    ProfileContext,
    RecordedDecision,
)
from libs.contracts.identity import Identifier
from libs.errors import Unavailable
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

ANN = [Identifier("customer_id", "ann")]
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)

CATALOG = """
min_priority: 0.0
policies:
  eligibility: "!('contact_ban' in customer.attributes)"
defaults: {web: notice}
actions:
  - {id: promo, issue: sales, value: 100, channels: [web, email], prior_propensity: 0.5}
  - {id: notice, issue: service, value: 1, channels: [web], prior_propensity: 0.5}
  - id: opt_in_news
    issue: service
    value: 50
    channels: [email]
    prior_propensity: 0.5
    consent: [marketing_email]
  - id: capped
    issue: sales
    value: 80
    channels: [email]
    prior_propensity: 0.5
    offer_without_profile: true
    contact_policies: [{name: after_reject, suppress_after: reject, for: 7d}]
"""


class DownContext(FakeContext):
    """A context that cannot be reached while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def get_profile_context(self, profile_id: str) -> ProfileContext:
        if self.down:
            raise Unavailable("context: connection refused")
        return await super().get_profile_context(profile_id)

    async def record_decision(self, record: DecisionRecord) -> RecordedDecision:
        if self.down:
            raise Unavailable("context: connection refused")
        return await super().record_decision(record)


async def engine_with(context: FakeContext) -> DecisionEngine:
    arbitration = ArbitrationService(arbitration_units(FakeCatalogStore()), clock=lambda: NOW)
    await arbitration.apply_catalog(parse_catalog_yaml(CATALOG))
    identity = FakeIdentity({("customer_id", "ann"): "p-ann"})
    return DecisionEngine(identity, context, FakeScoring(), arbitration, clock=lambda: NOW)


BANNED = ProfileContext(
    "p-ann",
    attributes={"contact_ban": "yes"},
    consents={"marketing_email": False},
    contacts=(Contact("capped", "web", "reject", NOW - timedelta(days=1)),),
)


async def test_with_her_profile_the_ban_holds() -> None:
    context = DownContext()
    context.contexts["p-ann"] = BANNED
    engine = await engine_with(context)
    for channel in ("web", "email"):
        decision = await engine.decide(DecideCommand(ANN, channel))
        assert decision.action is None and not decision.degraded


async def test_without_her_profile_only_the_default_or_no_action() -> None:
    context = DownContext()
    context.contexts["p-ann"] = BANNED
    engine = await engine_with(context)
    context.down = True

    web = await engine.decide(DecideCommand(ANN, "web", explain=True))
    email = await engine.decide(DecideCommand(ANN, "email", explain=True))

    # Web: everything reads the profile; the catalog's default for web is served.
    assert web.degraded and web.action is not None and web.action.action_id == "notice"
    assert web.explanation is not None and "default action" in web.explanation.summary
    # Email: the ban, the consent and the suppression could not be checked. The action its
    # author declared safe without the profile is the one offered.
    assert email.degraded and email.action is not None and email.action.action_id == "capped"
    assert email.explanation is not None
    removed = {c.action_id: c.removed_by for c in email.explanation.candidates if not c.eligible}
    assert removed == {"promo": "profile", "opt_in_news": "profile", "notice": "channels"}


async def test_a_decision_answered_while_context_was_down_takes_its_outcome_later() -> None:
    context = DownContext()
    engine = await engine_with(context)
    context.down = True
    decision = await engine.decide(DecideCommand(ANN, "web"))
    report = OutcomeReport(decision.decision_id, Outcome.REJECT, 0.0, "", None)
    with pytest.raises(Unavailable):  # not stored yet: retryable, never NOT_FOUND
        await engine.outbox.flush(decision.decision_id, 0.05)

    context.down = False
    result = await engine.record_outcome(report)

    assert not result.duplicate and result.profile_id == "p-ann"
    assert decision.action is not None
    assert context.decisions[decision.decision_id].action_id == decision.action.action_id
