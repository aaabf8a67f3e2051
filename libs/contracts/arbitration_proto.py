"""Candidate explanations on the wire: protobuf <-> libs/contracts/arbitration.py
(arbitration's API and the orchestrator's Decide both carry them)."""

from __future__ import annotations

from dataclasses import asdict, fields

from nextbest.decision.v1 import decision_pb2

from libs.contracts.arbitration import CandidateExplanation


def explanation_to_proto(item: CandidateExplanation) -> decision_pb2.CandidateExplanation:
    # The dataclass and the message share their field names.
    return decision_pb2.CandidateExplanation(**asdict(item))


def explanation_from_proto(item: decision_pb2.CandidateExplanation) -> CandidateExplanation:
    return CandidateExplanation(
        **{field.name: getattr(item, field.name) for field in fields(CandidateExplanation)}
    )
