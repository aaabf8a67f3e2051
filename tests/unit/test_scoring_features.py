"""Features by name added for consent, string request values, contact history and types;
the champion/challenger split point; the v2 protocol contract against Triton's client."""

from __future__ import annotations

from datetime import timedelta

import pytest

from libs.clock import utc_now
from libs.contracts.context import Contact, PersonalizationLevel, ProfileContext
from libs.contracts.scoring import ScoringCandidate
from libs.errors import InvalidArgument
from services.scoring.features import FeatureBuilder, ScoringInput, resolve_features
from services.scoring.inference import parse_backend
from services.scoring.model import FeatureSpec, FeatureType
from services.scoring.service import challenger_point

NOW = utc_now()
GOLD = ScoringCandidate("gold_card", "m", "cross_sell", "cards", 10.0, 1.0, 0.1)
LOAN = ScoringCandidate("loan", "m", "cross_sell", "loans", 50.0, 1.0, 0.1)


def values(
    features: list[FeatureSpec],
    profile: ProfileContext,
    request: dict[str, object] | None = None,
    candidate: ScoringCandidate = GOLD,
) -> list[float]:
    builder = FeatureBuilder(resolve_features(features))
    matrix = builder.matrix(ScoringInput(profile, request or {}, "web", NOW), [candidate])
    return [float(x) for x in matrix[0]]


def test_personalization_level_and_consent_per_purpose() -> None:
    features = [
        FeatureSpec("personalization=full"),
        FeatureSpec("personalization=basic"),
        FeatureSpec("consent:profiling"),
        FeatureSpec("consent:marketing", 1.0),
    ]
    basic = ProfileContext(
        "p1", personalization=PersonalizationLevel.BASIC, consents={"profiling": False}
    )
    assert values(features, basic) == [0.0, 1.0, 0.0, 1.0]  # marketing never asked: default
    full = ProfileContext("p1", consents={"profiling": True, "marketing": False})
    assert values(features, full) == [1.0, 0.0, 1.0, 0.0]


def test_string_request_values_are_one_hot() -> None:
    features = [
        FeatureSpec("request:device=mobile"),
        FeatureSpec("request:device=desktop"),
        FeatureSpec("request:logged_in=true"),
        FeatureSpec("request:basket"),
        FeatureSpec("attribute:tier=gold"),
    ]
    profile = ProfileContext("p1", attributes={"tier": "gold"})
    request = {"device": "mobile", "logged_in": True, "basket": 42.5}
    assert values(features, profile, request) == [1.0, 0.0, 1.0, 42.5, 1.0]
    assert values(features, ProfileContext("p1"), {}) == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert [f.type for f in resolve_features(features)] == [
        FeatureType.BOOLEAN,
        FeatureType.BOOLEAN,
        FeatureType.BOOLEAN,
        FeatureType.NUMBER,
        FeatureType.BOOLEAN,
    ]


def test_contact_counts_per_action_and_window() -> None:
    def contact(action: str, kind: str, days_ago: float) -> Contact:
        return Contact(action, "web", kind, NOW - timedelta(days=days_ago))

    profile = ProfileContext(
        "p1",
        contacts=(
            contact("gold_card", "decision", 0.5),
            contact("gold_card", "decision", 3),
            contact("gold_card", "reject", 2),
            contact("gold_card", "decision", 20),
            contact("loan", "decision", 0.1),
        ),
    )
    features = [
        FeatureSpec("contact_count_24h:decision"),
        FeatureSpec("contact_count_7d:decision"),
        FeatureSpec("contact_count_7d:reject"),
        FeatureSpec("contact_count_30d:any"),
    ]
    assert values(features, profile) == [1.0, 2.0, 1.0, 4.0]
    assert values(features, profile, candidate=LOAN) == [1.0, 1.0, 0.0, 1.0]


def test_a_number_declared_boolean_reads_as_a_flag() -> None:
    features = [
        FeatureSpec("action.value", 0.0, FeatureType.BOOLEAN),
        FeatureSpec("action.value"),
        FeatureSpec("attribute:age", 1.0, FeatureType.BOOLEAN),
    ]
    assert values(features, ProfileContext("p1", attributes={"age": 0})) == [1.0, 10.0, 0.0]
    assert values(features, ProfileContext("p1")) == [1.0, 10.0, 1.0]


def test_bad_features_are_named_with_their_position() -> None:
    with pytest.raises(InvalidArgument) as refused:
        resolve_features(
            [
                FeatureSpec("action.value"),
                FeatureSpec("contact_count_7d:waved"),
                FeatureSpec("personalization=maximal"),
                FeatureSpec("channel=web", 0.5),
                FeatureSpec("action.lever", float("inf")),
                FeatureSpec("no_such_thing"),
            ]
        )
    assert [v.field for v in refused.value.violations] == [
        "features[1] (contact_count_7d:waved)",
        "features[2] (personalization=maximal)",
        "features[3] (channel=web).default",
        "features[4] (action.lever).default",
        "features[5] (no_such_thing)",
    ]
    assert "waved" in refused.value.violations[0].description


def test_challenger_point_is_stable_uniform_and_per_model() -> None:
    # Fixed by sha256: the same on every replica, release and process.
    assert challenger_point("m", "p1") == challenger_point("m", "p1")
    assert challenger_point("m", "p1") != challenger_point("other", "p1")
    points = [challenger_point("m", f"p{i}") for i in range(4000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert 0.08 < sum(p < 0.1 for p in points) / len(points) < 0.12
    assert 0.47 < sum(p < 0.5 for p in points) / len(points) < 0.53


def test_scoring_backend_setting() -> None:
    assert parse_backend("onnxruntime") is None
    assert parse_backend("oip:triton.models:8001") == "triton.models:8001"
    for bad in ("triton:8001", "oip:8001", "oip:host:port"):
        with pytest.raises(ValueError):
            parse_backend(bad)


def test_our_v2_messages_match_the_protocol_as_tritonclient_knows_it() -> None:
    """Field names, numbers, types and cardinality of every message we declare are those of
    Triton's client (package "inference"), so tritonclient and KServe can talk to us."""
    from google.protobuf.descriptor import Descriptor
    from nextbest.inference.v2 import open_inference_pb2 as ours
    from tritonclient.grpc import service_pb2 as theirs  # type: ignore[import-untyped]

    def compare(mine: Descriptor, reference: Descriptor) -> list[str]:
        problems = []
        for field in mine.fields:
            other = reference.fields_by_name.get(field.name)
            if other is None or (other.number, other.type, other.is_repeated) != (
                field.number,
                field.type,
                field.is_repeated,
            ):
                problems.append(f"{mine.full_name}.{field.name}")
        for nested in mine.nested_types:
            if not nested.GetOptions().map_entry:
                problems += compare(nested, reference.nested_types_by_name[nested.name])
        return problems

    problems = []
    for name, message in ours.DESCRIPTOR.message_types_by_name.items():
        problems += compare(message, theirs.DESCRIPTOR.message_types_by_name[name])
    assert problems == []
    service = theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    for method in ours.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        assert service.methods_by_name[method.name].input_type.name == method.input_type.name
