"""What the orchestrator needs from the other services.

In the embedded shape the domain services themselves satisfy these protocols (plain
in-process calls, no serialisation); in the mesh shape the gRPC clients of each service do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from libs.contracts.arbitration import CandidateList, Prioritization, ScoredCandidate
from libs.contracts.context import (
    AppendResult,
    AttributeChange,
    Consent,
    ConsentChange,
    DecisionRecord,
    OutcomeReport,
    OutcomeResult,
    Prediction,
    ProfileContext,
    ProfileEvent,
    ProfileExport,
    RecordedDecision,
)
from libs.contracts.identity import Identifier, ProfileLookup, Resolution
from libs.contracts.scoring import CandidateScore, ScoringCandidate
from libs.errors import DomainError


class IdentityPort(Protocol):
    async def resolve_profile(self, identifiers: list[Identifier]) -> Resolution: ...
    async def lookup_profile(
        self, identifiers: list[Identifier], profile_id: str = ""
    ) -> ProfileLookup: ...
    async def erase_profile(self, profile_id: str) -> int: ...


@runtime_checkable
class BatchIdentityPort(Protocol):
    """Optional: an identity that resolves many identifier sets in one call (TrackEvents
    uses it when the identity port has it). The result holds one Resolution per set, in
    order, each as ``resolve_profile`` would give it; an InvalidArgument names the set by
    its index: ``[3].identifiers[0].value``."""

    async def resolve_profiles(
        self, identifier_sets: Sequence[list[Identifier]]
    ) -> list[Resolution]: ...


@runtime_checkable
class SettlingIdentityPort(Protocol):
    """Optional: an identity that keeps merges unsettled until told their context moved
    (``Resolution.unsettled_merged_ids``); the orchestrator settles them after a successful
    ``ContextPort.merge_profiles``."""

    async def settle_merges(self, survivor_id: str, merged_ids: Sequence[str]) -> int: ...


@runtime_checkable
class ValidatedEventsPort(Protocol):
    """Optional: a context in the same process that takes events the orchestrator already
    validated (``check_event_fields`` against ``event_types``) without checking each again
    (TrackEvents uses it when the context port has it: the embedded shape)."""

    async def append_validated_events(
        self, events: list[ProfileEvent], event_types: frozenset[str]
    ) -> AppendResult: ...


class ContextPort(Protocol):
    async def get_profile_context(self, profile_id: str) -> ProfileContext: ...
    async def append_events(self, events: list[ProfileEvent]) -> AppendResult: ...
    async def record_decision(self, record: DecisionRecord) -> RecordedDecision: ...
    async def record_decisions(
        self, records: Sequence[DecisionRecord]
    ) -> list[RecordedDecision | DomainError]: ...
    async def record_outcome(self, report: OutcomeReport) -> OutcomeResult: ...
    async def export_profile(self, profile_id: str) -> ProfileExport: ...
    async def erase_profile(self, profile_id: str) -> int: ...
    async def merge_profiles(self, survivor_id: str, merged_ids: list[str]) -> int: ...
    async def set_attributes(self, profile_id: str, change: AttributeChange) -> dict[str, Any]: ...
    async def set_predictions(self, profile_id: str, predictions: list[Prediction]) -> int: ...
    async def set_consent(self, profile_id: str, change: ConsentChange) -> Consent: ...
    async def get_consent(self, profile_id: str) -> Consent: ...


class ScoringPort(Protocol):
    async def score_candidates(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> list[CandidateScore]: ...


@runtime_checkable
class ArrayScoringPort(Protocol):
    """Optional: a scoring that answers with arrays aligned with the candidates (the
    propensities, and each one's model version, "" where the prior stood in)."""

    async def score_arrays(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> tuple[npt.NDArray[np.float64], tuple[str, ...]]: ...


class ArbitrationPort(Protocol):
    async def list_candidates(
        self,
        channel: str,
        placement: str,
        request_context: dict[str, object],
        *,
        explain: bool = False,
    ) -> CandidateList: ...
    async def prioritize(
        self,
        scored: list[ScoredCandidate],
        channel: str,
        *,
        explain: bool = False,
        context: ProfileContext | None = None,
        request_context: dict[str, object] | None = None,
        placement: str = "",
        profile_known: bool = True,
        listed_version: str = "",
    ) -> Prioritization: ...


@runtime_checkable
class KernelArbitrationPort(Protocol):
    """Optional: an arbitration in the same process that judges candidates given as the
    kernel's arrays over the plan its listing carries (``CandidateList.plan``/``members``):
    nothing is converted per candidate."""

    async def prioritize_members(
        self,
        plan: Any,
        members: Any,
        propensity: npt.NDArray[np.float64],
        model_versions: tuple[str, ...],
        *,
        explain: bool = False,
        context: ProfileContext,
        request_context: dict[str, object] | None = None,
        placement: str = "",
        profile_known: bool = True,
    ) -> Prioritization: ...


class DecisionObserver(Protocol):
    """Told what the orchestrator did (metrics); plain types so libs/ can implement it."""

    def decided(
        self,
        *,
        channel: str,
        issue: str,
        action_id: str,
        degraded_reason: str,
        elapsed_s: float,
    ) -> None: ...
    def outcome_recorded(self, *, action_id: str, outcome: str, duplicate: bool) -> None: ...
    def events_ingested(self, *, accepted: int, duplicates: int) -> None: ...
    def personal_data_redacted(self, field: str, count: int) -> None: ...


class NoObserver:
    def decided(
        self,
        *,
        channel: str,
        issue: str,
        action_id: str,
        degraded_reason: str,
        elapsed_s: float,
    ) -> None:
        pass

    def outcome_recorded(self, *, action_id: str, outcome: str, duplicate: bool) -> None:
        pass

    def events_ingested(self, *, accepted: int, duplicates: int) -> None:
        pass

    def personal_data_redacted(self, field: str, count: int) -> None:
        pass
