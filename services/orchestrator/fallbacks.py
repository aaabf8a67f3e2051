"""What a decision falls back on when a dependency does not answer (all declared, none
looser than the customer's rules): the last candidates listed for the channel, the
catalog's default action, and P x V x L among the candidates with nothing to check."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from libs.contracts.arbitration import (
    CandidateExplanation,
    CandidateList,
    Prioritization,
    ScoredCandidate,
)
from libs.contracts.scoring import CandidateScore
from libs.logging import get_logger
from libs.priority import rank_candidates
from services.orchestrator.model import DecideCommand

_log = get_logger("nextbest.orchestrator")
# Channels and placements whose last listing is kept (names callers choose: bounded).
_CANDIDATE_CACHE_SIZE = 1024


class DegradedReasons(list[str]):
    """Each dependency that did not answer in a decision, and how ("context: timeout")."""

    @property
    def text(self) -> str:
        return "; ".join(self)


class LastCandidates:
    """The last listing arbitration gave per (channel, placement): the candidates a decision
    falls back on when arbitration does not answer."""

    def __init__(self, size: int = _CANDIDATE_CACHE_SIZE) -> None:
        self._size = size
        self._listings: OrderedDict[tuple[str, str], CandidateList] = OrderedDict()

    def keep_or_recall(self, command: DecideCommand, listed: CandidateList | None) -> CandidateList:
        """The listing arbitration gave, kept per (channel, placement); the last one kept when
        arbitration did not answer (an empty listing when none was ever given)."""
        key = (command.channel, command.placement)
        if listed is not None:
            self._listings[key] = listed
            self._listings.move_to_end(key)
            while len(self._listings) > self._size:
                self._listings.popitem(last=False)
            return listed
        return self._listings.get(key) or CandidateList((), (), "")


def as_scores(
    listed: CandidateList, propensity: npt.NDArray[np.float64], versions: Sequence[str]
) -> list[CandidateScore]:
    """Scoring's arrays as one score per candidate (the fallback paths rank by these)."""
    return [
        CandidateScore(a.action_id, p, v, not v)
        for a, p, v in zip(listed.candidates, propensity.tolist(), versions, strict=True)
    ]


def default_action(
    listed: CandidateList, command: DecideCommand, why: str
) -> Prioritization | None:
    """The catalog's default action for the channel (its author declared it safe to show
    anyone), or None when the catalog declares none."""
    default = next((a for a in listed.candidates if a.action_id == listed.default_action_id), None)
    if default is None:
        return None
    factors = CandidateExplanation(
        action_id=default.action_id,
        eligible=True,
        reason=why,
        propensity=default.prior_propensity,
        context_weight=1.0,
        value=default.value,
        lever=default.lever,
        priority=default.prior_propensity * default.value * default.lever,
        rank=1,
        won=True,
    )
    return Prioritization(
        default,
        factors,
        (factors,) if command.explain else (),
        listed.min_priority,
        f"fallback: the default action for {command.channel!r} ({why})",
    )


def rank_without_arbitration(
    listed: CandidateList, scores: list[CandidateScore], command: DecideCommand
) -> Prioritization:
    """Arbitration could not be asked: the catalog's default action for the channel, else
    P x V x L ranked here among the candidates with nothing to check (fails closed: a
    candidate with rules, consent, contact policies or volume is not offered unchecked)."""
    default = default_action(listed, command, "arbitration unavailable")
    if default is not None:
        return default
    by_id = {a.action_id: a for a in listed.candidates}
    free = listed.unconditional
    ranked = rank_candidates(
        by_id,
        [
            ScoredCandidate(s.action_id, s.propensity, s.model_version)
            for s in scores
            if s.action_id in free
        ],
    )
    shown = ranked if command.explain else ()
    best = ranked[0] if ranked else None
    if best is None or best.priority < listed.min_priority:
        return Prioritization(
            None,
            best,
            shown,
            listed.min_priority,
            "no action: arbitration unavailable, and no candidate without rules to check"
            if best is None
            else "no action (ranked without arbitration)",
        )
    return Prioritization(
        by_id.get(best.action_id),
        replace(best, won=True),
        shown,
        listed.min_priority,
        f"{best.action_id} ranked first without arbitration (it has no rules to check)",
    )
