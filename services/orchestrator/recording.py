"""Recording a decision: what it knew (its snapshot), the predictions kept with it, and its
hand-over to the outbox (stored behind the answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from libs.contracts.arbitration import CandidateList, Prioritization
from libs.contracts.context import (
    PROFILING,
    DecisionRecord,
    PersonalizationLevel,
    Prediction,
    ProfileContext,
)
from libs.contracts.snapshot import SNAPSHOT_KEY, compact_snapshot, decision_snapshot
from libs.pii import redact_for_storage
from libs.rpc.client import remaining_s
from services.orchestrator.fallbacks import as_scores
from services.orchestrator.model import DecideCommand, Decision
from services.orchestrator.outbox import DecisionOutbox
from services.orchestrator.ports import DecisionObserver

# The metric label of redactions of a Decide's request context (see snapshot_of).
REQUEST_CONTEXT = "request_context"


def kept_predictions(
    profile: ProfileContext,
    groups: tuple[tuple[str, npt.NDArray[np.int64]], ...],
    propensity: npt.NDArray[np.float64],
    model_versions: Sequence[str],
    at: datetime,
) -> tuple[Prediction, ...]:
    """Per model, the best propensity it gave the customer in this decision: kept by the
    context as her latest prediction of that model (feature ``prediction:<model>``), when
    her consent allows predictions (level full, profiling not refused). ``groups``: the
    candidates' indexes per model name (scoring runs one batch per model, so a group's
    candidates share a model version, "" where the prior stood in)."""
    if (
        not profile.profile_id
        or profile.personalization != PersonalizationLevel.FULL
        or profile.consents.get(PROFILING) is False
    ):
        return ()
    best: dict[str, tuple[float, str]] = {}
    for model, members in groups:
        version = model_versions[int(members[0])]
        if not version:  # the prior stood in: no model spoke
            continue
        top = int(members[int(np.argmax(propensity[members]))])
        name = model or version.partition(":")[0]
        score = float(propensity[top])
        known = best.get(name)
        if known is None or score > known[0]:
            best[name] = (score, model_versions[top])
    return tuple(
        Prediction(model, score, version, at) for model, (score, version) in sorted(best.items())
    )


def snapshot_of(
    profile: ProfileContext,
    command: DecideCommand,
    listed: CandidateList,
    result: Prioritization,
    propensity: npt.NDArray[np.float64],
    versions: Sequence[str],
    observer: DecisionObserver,
) -> dict[str, Any]:
    """What the decision knew, for its payload (libs/contracts/snapshot.py)."""
    # The request's situational context is the one part of the recorded payload that
    # comes straight from the caller: no raw e-mail or phone may reach the decision log
    # (PRODUCT.md §7; libs/pii.py). Rules saw it as sent.
    request_context, redacted = redact_for_storage(command.context)
    if redacted:
        observer.personal_data_redacted(REQUEST_CONTEXT, redacted)
    if result.table is not None:  # the kernel's arrays: the compact format
        snapshot = compact_snapshot(
            profile,
            request_context,
            command.channel,
            command.placement,
            result.table,
            result.min_priority,
        )
    else:  # ranked here without arbitration (a fallback): one dict per candidate
        snapshot = decision_snapshot(
            profile,
            request_context,
            command.channel,
            command.placement,
            listed,
            as_scores(listed, propensity, versions),
            result,
        )
    return snapshot


async def hand_to_outbox(
    outbox: DecisionOutbox,
    command: DecideCommand,
    decision: Decision,
    predictions: tuple[Prediction, ...] = (),
    *,
    snapshot: dict[str, Any] | None = None,
) -> Decision:
    """Hand the decision to the outbox; ``snapshot`` (what it knew,
    libs/contracts/snapshot.py) is kept in its payload for the learning loop. A
    request with a request_id waits for the write, since a retry must get the decision
    stored first (a replay returns that one)."""
    structlog.contextvars.bind_contextvars(decision_id=decision.decision_id)
    payload = decision.to_payload()
    if snapshot is not None:
        payload[SNAPSHOT_KEY] = snapshot
    stored = outbox.add(
        DecisionRecord(
            decision_id=decision.decision_id,
            request_id=command.request_id,
            profile_id=decision.profile_id,
            channel=decision.channel,
            placement=decision.placement,
            action_id=decision.action.action_id if decision.action else "",
            decided_at=decision.decided_at,
            payload=payload,
            predictions=predictions,
        ),
        waited_for=bool(command.request_id),
    )
    if not command.request_id:
        return decision
    try:
        recorded = await asyncio.wait_for(asyncio.shield(stored), remaining_s())
    except Exception:  # stays queued: stored when context is back
        return decision
    if recorded.replayed:
        return Decision.from_payload(recorded.record.payload)
    return decision
