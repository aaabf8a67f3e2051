"""ArbitrationService and CatalogService over gRPC, and the arbitration client."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import numpy as np
from nextbest.arbitration.v1 import arbitration_pb2, arbitration_pb2_grpc
from nextbest.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from nextbest.decision.v1 import decision_pb2

from libs.contracts.arbitration import (
    CandidateList,
    CandidateTable,
    ListedAction,
    Prioritization,
    ScoredCandidate,
)
from libs.contracts.arbitration_proto import explanation_from_proto, explanation_to_proto
from libs.contracts.context import ProfileContext
from libs.contracts.context_proto import ProfileContextEncoder, profile_context_from_proto
from libs.rpc.client import call_peer
from libs.rpc.convert import checked_struct, datetime_to_timestamp, dict_to_struct, struct_to_dict
from libs.rpc.server import ServiceBinding
from services.arbitration.catalog import catalog_to_document
from services.arbitration.model import ActionDefinition, Catalog
from services.arbitration.parsing import CatalogParser
from services.arbitration.service import ArbitrationService

ARBITRATION_SERVICE = arbitration_pb2.DESCRIPTOR.services_by_name["ArbitrationService"].full_name
CATALOG_SERVICE = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]


def action_to_proto(action: ListedAction) -> catalog_pb2.ActionDefinition:
    return catalog_pb2.ActionDefinition(
        action_id=action.action_id,
        name=action.name,
        issue=action.issue,
        group=action.group,
        channels=list(action.channels),
        value=action.value,
        lever=action.lever,
        model=action.model,
        disabled=not action.enabled,
        treatments=dict_to_struct(action.treatments),
        prior_propensity=action.prior_propensity,
    )


def action_document(message: catalog_pb2.ActionDefinition, where: str = "action") -> dict[str, Any]:
    """A message as the plain document parse_catalog validates (same rules as YAML)."""
    document: dict[str, Any] = {
        "id": message.action_id,
        "name": message.name or message.action_id,
        "issue": message.issue,
        "group": message.group or "default",
        "channels": list(message.channels),
        "value": message.value,
        "model": message.model,
        "enabled": not message.disabled,
        "treatments": checked_struct(message.treatments, f"{where}.treatments"),
    }
    if message.HasField("lever"):
        document["lever"] = message.lever
    if message.HasField("prior_propensity"):
        document["prior_propensity"] = message.prior_propensity
    return document


def action_from_proto(message: catalog_pb2.ActionDefinition) -> ActionDefinition:
    return ActionDefinition(
        action_id=message.action_id,
        name=message.name,
        issue=message.issue,
        group=message.group,
        value=message.value,
        lever=message.lever if message.HasField("lever") else 1.0,
        channels=tuple(message.channels),
        model=message.model,
        enabled=not message.disabled,
        treatments=struct_to_dict(message.treatments),
        prior_propensity=(
            message.prior_propensity if message.HasField("prior_propensity") else 0.05
        ),
    )


def catalog_to_proto(catalog: Catalog) -> catalog_pb2.Catalog:
    return catalog_pb2.Catalog(
        actions=[action_to_proto(a) for a in catalog.actions],
        min_priority=catalog.min_priority,
        version=catalog.version,
        defaults=dict(catalog.defaults),
        applied_at=datetime_to_timestamp(catalog.applied_at),
    )


class ArbitrationServicer(arbitration_pb2_grpc.ArbitrationServiceServicer):
    def __init__(self, service: ArbitrationService) -> None:
        self._service = service

    async def ListCandidates(
        self, request: arbitration_pb2.ListCandidatesRequest, context: Context
    ) -> arbitration_pb2.ListCandidatesResponse:
        listed = await self._service.list_candidates(
            request.channel,
            request.placement,
            checked_struct(request.request_context, "request_context"),
            explain=request.explain,
        )
        return arbitration_pb2.ListCandidatesResponse(
            candidates=[action_to_proto(a) for a in listed.candidates],
            removed=[explanation_to_proto(r) for r in listed.removed],
            catalog_version=listed.catalog_version,
            min_priority=listed.min_priority,
            default_action_id=listed.default_action_id,
            unconditional_action_ids=sorted(listed.unconditional),
        )

    async def Prioritize(
        self, request: arbitration_pb2.PrioritizeRequest, context: Context
    ) -> arbitration_pb2.PrioritizeResponse:
        result = await self._service.prioritize(
            [
                ScoredCandidate(c.action_id, c.propensity, c.model_version)
                for c in request.candidates
            ],
            request.channel,
            explain=request.explain,
            context=profile_context_from_proto(request.profile_context),
            request_context=checked_struct(request.request_context, "request_context"),
            placement=request.placement,
            profile_known=not request.profile_unread,
            listed_version=request.catalog_version,
        )
        response = arbitration_pb2.PrioritizeResponse(
            ranked=[explanation_to_proto(r) for r in result.ranked],
            min_priority=result.min_priority,
            summary=result.summary,
            selection_probability=result.selection_probability,
            exploration=result.exploration,
        )
        table = result.table
        if table is not None and len(table.action_ids) == len(request.candidates):
            response.factors.CopyFrom(
                arbitration_pb2.CandidateFactors(
                    catalog_version=table.catalog_version,
                    positions=table.positions.tolist(),
                    context_weights=table.context_weight.tolist(),
                    priorities=table.priority.tolist(),
                    removed_by=table.removed_by,
                )
            )
        if result.winner is not None:
            winner = result.winner
            response.action.CopyFrom(
                decision_pb2.Action(
                    action_id=winner.action_id,
                    name=winner.name,
                    issue=winner.issue,
                    group=winner.group,
                    treatment=dict_to_struct(winner.treatment_for(request.channel)),
                )
            )
        if result.best is not None:
            response.winner.CopyFrom(explanation_to_proto(result.best))
        return response


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, service: ArbitrationService, parser: CatalogParser) -> None:
        self._service = service
        # Off the event loop, one at a time, size-bounded (parsing.py).
        self._parser = parser

    async def ApplyCatalog(
        self, request: catalog_pb2.ApplyCatalogRequest, context: Context
    ) -> catalog_pb2.ApplyCatalogResponse:
        if request.document:
            # The whole document (policies, issues...), validated by the same rules as YAML.
            answer = await self._parser.validate(request.document, dry_run=request.dry_run)
            if request.dry_run:
                version, count = answer
                return catalog_pb2.ApplyCatalogResponse(version=version, action_count=count)
            catalog = await self._parser.build(answer)
        else:
            catalog = await self._parser.parse(
                {
                    "min_priority": request.catalog.min_priority,
                    "actions": [
                        action_document(a, f"catalog.actions[{i}]")
                        for i, a in enumerate(request.catalog.actions)
                    ],
                    "defaults": dict(request.catalog.defaults),
                }
            )
        applied = await self._service.apply_catalog(catalog, dry_run=request.dry_run)
        return catalog_pb2.ApplyCatalogResponse(
            version=applied.version, action_count=len(applied.actions)
        )

    async def GetCatalog(
        self, request: catalog_pb2.GetCatalogRequest, context: Context
    ) -> catalog_pb2.GetCatalogResponse:
        catalog = await self._service.catalog()
        document = json.dumps(catalog_to_document(catalog)) if catalog.actions else ""
        return catalog_pb2.GetCatalogResponse(catalog=catalog_to_proto(catalog), document=document)


def arbitration_bindings(
    service: ArbitrationService, parser: CatalogParser
) -> list[ServiceBinding]:
    arbitration = ArbitrationServicer(service)
    catalog = CatalogServicer(service, parser)
    return [
        ServiceBinding(
            ARBITRATION_SERVICE,
            lambda server: arbitration_pb2_grpc.add_ArbitrationServiceServicer_to_server(
                arbitration, server
            ),
        ),
        ServiceBinding(
            CATALOG_SERVICE,
            lambda server: catalog_pb2_grpc.add_CatalogServiceServicer_to_server(catalog, server),
        ),
    ]


# Channels and placements whose listing a client keeps (names callers choose: bounded).
_KEPT_LISTINGS = 1024


class ArbitrationClient:
    """The arbitration port over gRPC, for the orchestrator of the mesh shape.

    A channel's listing (its candidates with their treatments) is kept for ``listing_ttl_s``
    and for as long as Prioritize reports the same catalog version, so a decision makes one
    arbitration call, not two: a new catalog or a validity window that opens reaches the
    decisions of this orchestrator within that time."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        listing_ttl_s: float = 1.0,
        encoder: ProfileContextEncoder | None = None,
    ) -> None:
        self._stub = arbitration_pb2_grpc.ArbitrationServiceStub(channel)
        self._encoder = encoder or ProfileContextEncoder()
        self._listing_ttl_s = listing_ttl_s
        self._listings: dict[tuple[str, str], tuple[float, CandidateList]] = {}

    async def list_candidates(
        self,
        channel: str,
        placement: str,
        request_context: dict[str, object],
        *,
        explain: bool = False,
    ) -> CandidateList:
        key = (channel, placement)
        if not explain and self._listing_ttl_s > 0:
            kept = self._listings.get(key)
            if kept is not None and time.monotonic() - kept[0] < self._listing_ttl_s:
                return kept[1]
        response = await call_peer(
            "arbitration",
            self._stub.ListCandidates,
            arbitration_pb2.ListCandidatesRequest(
                channel=channel,
                placement=placement,
                request_context=dict_to_struct(request_context),
                explain=explain,
            ),
        )
        listed = CandidateList(
            tuple(action_from_proto(a) for a in response.candidates),
            tuple(explanation_from_proto(r) for r in response.removed),
            response.catalog_version,
            response.min_priority,
            response.default_action_id,
            frozenset(response.unconditional_action_ids),
        )
        if not explain and self._listing_ttl_s > 0:
            if len(self._listings) >= _KEPT_LISTINGS:
                self._listings.clear()
            self._listings[key] = (time.monotonic(), listed)
        return listed

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
    ) -> Prioritization:
        request = arbitration_pb2.PrioritizeRequest(
            candidates=[
                arbitration_pb2.ScoredCandidate(
                    action_id=c.action_id, propensity=c.propensity, model_version=c.model_version
                )
                for c in scored
            ],
            channel=channel,
            explain=explain,
            request_context=dict_to_struct(request_context or {}),
            placement=placement,
            profile_unread=not profile_known,
            catalog_version=listed_version,
        )
        if context is not None:
            request.profile_context.CopyFrom(self._encoder.encode(context))
        response = await call_peer("arbitration", self._stub.Prioritize, request)
        served = response.factors.catalog_version
        if served and listed_version and served != listed_version:
            self._listings.clear()  # a new catalog: list again
        winner = None
        if response.HasField("action"):
            action = response.action
            winner = ActionDefinition(
                action_id=action.action_id,
                name=action.name,
                issue=action.issue,
                group=action.group,
                value=response.winner.value,
                lever=response.winner.lever,
                treatments={channel: struct_to_dict(action.treatment)},
            )
        return Prioritization(
            winner=winner,
            best=explanation_from_proto(response.winner) if response.HasField("winner") else None,
            ranked=tuple(explanation_from_proto(r) for r in response.ranked),
            min_priority=response.min_priority,
            summary=response.summary,
            selection_probability=response.selection_probability,
            exploration=response.exploration,
            table=_table_from_proto(response.factors, scored)
            if response.HasField("factors")
            else None,
        )


def _table_from_proto(
    factors: arbitration_pb2.CandidateFactors, scored: list[ScoredCandidate]
) -> CandidateTable | None:
    if len(factors.priorities) != len(scored):
        return None
    return CandidateTable(
        catalog_version=factors.catalog_version,
        action_ids=tuple(c.action_id for c in scored),
        positions=np.array(factors.positions, dtype=np.int64),
        propensity=np.array([c.propensity for c in scored], dtype=np.float64),
        model_versions=tuple(c.model_version for c in scored),
        context_weight=np.array(factors.context_weights, dtype=np.float64),
        priority=np.array(factors.priorities, dtype=np.float64),
        removed_by=dict(factors.removed_by),
    )
