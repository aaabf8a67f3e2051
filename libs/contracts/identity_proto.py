"""Identifiers on the wire: protobuf <-> libs/contracts/identity.py (identity's API and the
orchestrator's public API both carry them)."""

from __future__ import annotations

from typing import Any

from nextbest.decision.v1 import decision_pb2

from libs.contracts.identity import Identifier


def identifiers_from_proto(items: Any) -> list[Identifier]:
    return [Identifier(type=item.type, value=item.value) for item in items]


def identifiers_to_proto(items: list[Identifier]) -> list[decision_pb2.Identifier]:
    return [decision_pb2.Identifier(type=item.type, value=item.value) for item in items]
