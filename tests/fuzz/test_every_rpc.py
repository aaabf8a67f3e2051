"""Every unary RPC the embedded hub serves, fed any message its descriptor allows.

The public API, the admin services and the internal services (served on the same port in
the embedded shape, reachable by anyone who can reach it) are all held to the same contract:
a deliberate status, the bad field named, nothing stored when refused, still serving.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nextbest.arbitration.v1 import arbitration_pb2
from nextbest.catalog.v1 import catalog_pb2
from nextbest.context.v1 import context_pb2, profile_pb2
from nextbest.decision.v1 import decision_pb2
from nextbest.identity.v1 import identity_pb2
from nextbest.privacy.v1 import privacy_pb2
from nextbest.scoring.v1 import model_pb2, scoring_pb2

from tests.fuzz.harness import FuzzHub, checked, unary
from tests.fuzz.strategies import messages

_MODULES = [
    decision_pb2,
    catalog_pb2,
    model_pb2,
    privacy_pb2,
    profile_pb2,
    identity_pb2,
    context_pb2,
    scoring_pb2,
    arbitration_pb2,
]
_FUZZ = settings(
    max_examples=20,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def _unary_methods() -> list[MethodDescriptor]:
    return [
        method
        for module in _MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if not method.server_streaming and not method.client_streaming
    ]


def _class(descriptor: Any) -> Any:
    return message_factory.GetMessageClass(descriptor)


@pytest.mark.parametrize("method", _unary_methods(), ids=lambda m: m.full_name)
def test_any_message_gets_a_deliberate_answer(fuzz_hub: FuzzHub, method: MethodDescriptor) -> None:
    request_type, response_type = _class(method.input_type), _class(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"

    @_FUZZ
    @given(request=messages(request_type))
    def fuzz(request: Any) -> None:
        if method.full_name == "nextbest.catalog.v1.CatalogService.ApplyCatalog":
            # Validate only: an accepted random catalog would replace the demo one that
            # the other fuzz tests decide against.
            request.dry_run = True
        checked(fuzz_hub, lambda: unary(fuzz_hub, path, request, response_type))

    fuzz()
    assert fuzz_hub.healthy()


def test_the_methods_fuzzed_are_all_the_unary_ones() -> None:
    names = {method.full_name for method in _unary_methods()}
    assert "nextbest.decision.v1.DecisionService.Decide" in names
    assert "nextbest.scoring.v1.ModelService.RegisterModel" in names
    assert len(names) >= 30, sorted(names)


def test_strategy_reaches_huge_and_empty_messages() -> None:
    """The strategy is not stuck on small messages (it must reach the limits)."""
    sizes: list[int] = []

    @settings(max_examples=60, derandomize=True, database=None, deadline=None)
    @given(request=messages(decision_pb2.TrackEventsRequest), pad=st.none())
    def measure(request: decision_pb2.TrackEventsRequest, pad: None) -> None:
        sizes.append(request.ByteSize())

    measure()
    assert min(sizes) == 0 and max(sizes) > 500_000
