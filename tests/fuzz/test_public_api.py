"""The public DecisionService and the admin services fed near-valid requests: valid enough
to pass the first checks, adversarial in one place (a Struct, a time, a number, a list)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nextbest.catalog.v1 import catalog_pb2
from nextbest.context.v1 import context_pb2, profile_pb2
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc
from nextbest.privacy.v1 import privacy_pb2
from nextbest.scoring.v1 import model_pb2

from tests.fuzz.harness import FuzzHub, Outcome, checked, outcome_of, unary
from tests.fuzz.strategies import (
    CHANNELS,
    INT32,
    doubles,
    identifiers,
    structs,
    text,
    timestamps,
)

_FUZZ = settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
_DECISION = "/nextbest.decision.v1.DecisionService"
_CHANNEL = st.one_of(st.sampled_from(CHANNELS), text())
_KNOWN = [decision_pb2.Identifier(type="customer_id", value="fuzz-customer")]


def _decide(hub: FuzzHub, request: decision_pb2.DecideRequest) -> Outcome:
    return unary(hub, f"{_DECISION}/Decide", request, decision_pb2.DecideResponse)


@pytest.fixture(scope="module")
def decision_id(fuzz_hub: FuzzHub) -> str:
    """A real decision, so that RecordOutcome gets past NOT_FOUND."""
    outcome = _decide(fuzz_hub, decision_pb2.DecideRequest(identifiers=_KNOWN, channel="web"))
    assert outcome.code == grpc.StatusCode.OK, outcome.details
    return str(outcome.response.decision.decision_id)


@_FUZZ
@given(
    ids=st.one_of(identifiers(), st.just(_KNOWN)),
    channel=_CHANNEL,
    placement=st.one_of(st.just(""), text()),
    context=structs(),
    request_id=st.one_of(st.just(""), text()),
    explain=st.booleans(),
)
def test_decide(
    fuzz_hub: FuzzHub,
    ids: list[decision_pb2.Identifier],
    channel: str,
    placement: str,
    context: struct_pb2.Struct,
    request_id: str,
    explain: bool,
) -> None:
    request = decision_pb2.DecideRequest(
        identifiers=ids,
        channel=channel,
        placement=placement,
        context=context,
        request_id=request_id,
        explain=explain,
    )
    checked(fuzz_hub, lambda: _decide(fuzz_hub, request))


@_FUZZ
@given(
    known=st.booleans(),
    other_id=text(),
    outcome=st.one_of(st.integers(1, 6), st.integers(*INT32)),
    value=doubles(),
    key=st.one_of(st.just(""), text()),
    occurred_at=timestamps(),
)
def test_record_outcome(
    fuzz_hub: FuzzHub,
    decision_id: str,
    known: bool,
    other_id: str,
    outcome: int,
    value: float,
    key: str,
    occurred_at: Any,
) -> None:
    request = decision_pb2.RecordOutcomeRequest(
        decision_id=decision_id if known else other_id,
        outcome=outcome,  # type: ignore[arg-type]
        value=value,
        idempotency_key=key,
        occurred_at=occurred_at,
    )
    checked(
        fuzz_hub,
        lambda: unary(
            fuzz_hub, f"{_DECISION}/RecordOutcome", request, decision_pb2.RecordOutcomeResponse
        ),
    )


_EVENT = st.builds(
    decision_pb2.Event,
    event_id=st.one_of(st.sampled_from(["e-1", "e-2"]), text()),
    identifiers=st.one_of(identifiers(), st.just(_KNOWN)),
    type=st.one_of(st.sampled_from(["page_view", "purchase"]), text()),
    channel=_CHANNEL,
    occurred_at=timestamps(),
    attributes=structs(),
)


@_FUZZ
@given(
    events=st.one_of(
        st.lists(_EVENT, max_size=4),
        _EVENT.map(lambda event: [event] * 3),  # duplicated event ids in one batch
        # Over the batch limit (small events: the size of the message is not the point).
        st.just([decision_pb2.Event(event_id="e", identifiers=_KNOWN, type="t")] * 1001),
    )
)
def test_track_events(fuzz_hub: FuzzHub, events: list[decision_pb2.Event]) -> None:
    request = decision_pb2.TrackEventsRequest(events=events)
    checked(
        fuzz_hub,
        lambda: unary(
            fuzz_hub, f"{_DECISION}/TrackEvents", request, decision_pb2.TrackEventsResponse
        ),
    )


@settings(_FUZZ, max_examples=15)
@given(
    ids=st.one_of(identifiers(), st.just(_KNOWN)),
    channel=_CHANNEL,
    placement=st.one_of(st.just(""), text()),
    context=structs(),
)
def test_watch_decisions(
    fuzz_hub: FuzzHub,
    ids: list[decision_pb2.Identifier],
    channel: str,
    placement: str,
    context: struct_pb2.Struct,
) -> None:
    """The first message of the stream (the current decision) or a deliberate refusal."""
    assert fuzz_hub.channel is not None
    stub = decision_pb2_grpc.DecisionServiceStub(fuzz_hub.channel)
    request = decision_pb2.WatchDecisionsRequest(
        identifiers=ids, channel=channel, placement=placement, context=context
    )

    def first() -> Outcome:
        stream = stub.WatchDecisions(request, timeout=10)
        try:
            return outcome_of(lambda: next(stream))
        finally:
            stream.cancel()

    checked(fuzz_hub, first)


_ACTION = st.builds(
    catalog_pb2.ActionDefinition,
    action_id=st.one_of(st.sampled_from(["gold_card", "retention"]), text()),
    name=text(),
    issue=st.one_of(st.sampled_from(["retention", "sales"]), text()),
    group=text(),
    channels=st.lists(_CHANNEL, max_size=3),
    value=doubles(),
    lever=doubles(),
    model=st.one_of(st.just(""), st.just("demo_propensity"), text()),
    disabled=st.booleans(),
    treatments=structs(),
    prior_propensity=doubles(),
)


@_FUZZ
@given(
    actions=st.one_of(
        st.lists(_ACTION, max_size=4),
        _ACTION.map(lambda action: [action] * 2),  # duplicated ids
        # Over the catalog limit (small actions: the size of the message is not the point).
        st.just([catalog_pb2.ActionDefinition(action_id="a", channels=["web"], value=1)] * 2001),
    ),
    min_priority=doubles(),
    defaults=st.dictionaries(text(), text(), max_size=3),
)
def test_apply_catalog(
    fuzz_hub: FuzzHub,
    actions: list[catalog_pb2.ActionDefinition],
    min_priority: float,
    defaults: dict[str, str],
) -> None:
    request = catalog_pb2.ApplyCatalogRequest(
        catalog=catalog_pb2.Catalog(actions=actions, min_priority=min_priority, defaults=defaults),
        dry_run=True,  # an accepted catalog would replace the demo one the other tests use
    )
    checked(
        fuzz_hub,
        lambda: unary(
            fuzz_hub,
            "/nextbest.catalog.v1.CatalogService/ApplyCatalog",
            request,
            catalog_pb2.ApplyCatalogResponse,
        ),
    )


_FEATURE = st.builds(model_pb2.FeatureSpec, name=text(), default_value=doubles())


@settings(_FUZZ, max_examples=25)
@given(
    name=st.one_of(st.just("demo_propensity"), text()),
    version=st.one_of(st.just("1"), text()),
    onnx=st.one_of(st.binary(max_size=200), st.just(b""), st.just(b"\x08\x07" * 5000)),
    features=st.one_of(st.lists(_FEATURE, max_size=4), _FEATURE.map(lambda f: [f] * 600)),
    activate=st.booleans(),
)
def test_register_model(
    fuzz_hub: FuzzHub,
    name: str,
    version: str,
    onnx: bytes,
    features: list[model_pb2.FeatureSpec],
    activate: bool,
) -> None:
    request = model_pb2.RegisterModelRequest(
        name=name, version=version, onnx_model=onnx, features=features, activate=activate
    )
    outcome = checked(
        fuzz_hub,
        lambda: unary(
            fuzz_hub,
            "/nextbest.scoring.v1.ModelService/RegisterModel",
            request,
            model_pb2.RegisterModelResponse,
        ),
    )
    assert outcome.code != grpc.StatusCode.OK  # random bytes are never a valid model


_PRIVACY = "/nextbest.privacy.v1.PrivacyService"
_PROFILE = "/nextbest.context.v1.ProfileService"


@_FUZZ
@given(
    ids=st.one_of(identifiers(), st.just(_KNOWN)),
    level=st.one_of(st.integers(0, 3), st.integers(*INT32)),
    purposes=st.lists(
        st.builds(context_pb2.PurposeConsent, purpose=text(), granted=st.booleans()), max_size=3
    ),
    source=st.one_of(st.just("web_form"), text()),
    occurred_at=timestamps(),
)
def test_set_consent(
    fuzz_hub: FuzzHub,
    ids: list[decision_pb2.Identifier],
    level: int,
    purposes: list[context_pb2.PurposeConsent],
    source: str,
    occurred_at: Any,
) -> None:
    request = privacy_pb2.SetConsentRequest(
        identifiers=ids,
        level=level,  # type: ignore[arg-type]
        purposes=purposes,
        source=source,
        occurred_at=occurred_at,
    )
    checked(
        fuzz_hub,
        lambda: unary(fuzz_hub, f"{_PRIVACY}/SetConsent", request, privacy_pb2.SetConsentResponse),
    )


@_FUZZ
@given(
    ids=st.one_of(identifiers(), st.just(_KNOWN)),
    attributes=structs(),
    remove=st.lists(text(), max_size=3),
    predictions=st.lists(
        st.builds(
            context_pb2.Prediction,
            name=text(),
            value=doubles(),
            version=text(),
            predicted_at=timestamps(),
        ),
        max_size=3,
    ),
)
def test_profile_admin(
    fuzz_hub: FuzzHub,
    ids: list[decision_pb2.Identifier],
    attributes: struct_pb2.Struct,
    remove: list[str],
    predictions: list[context_pb2.Prediction],
) -> None:
    set_attributes = profile_pb2.SetProfileAttributesRequest(
        identifiers=ids, attributes=attributes, remove_keys=remove
    )
    set_predictions = profile_pb2.SetProfilePredictionsRequest(
        identifiers=ids, predictions=predictions
    )
    checked(
        fuzz_hub,
        lambda: unary(
            fuzz_hub,
            f"{_PROFILE}/SetProfileAttributes",
            set_attributes,
            profile_pb2.SetProfileAttributesResponse,
        ),
    )
    checked(
        fuzz_hub,
        lambda: unary(
            fuzz_hub,
            f"{_PROFILE}/SetProfilePredictions",
            set_predictions,
            profile_pb2.SetProfilePredictionsResponse,
        ),
    )
    assert fuzz_hub.healthy()
