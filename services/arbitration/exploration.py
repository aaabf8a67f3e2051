"""Controlled exploration: which of the contenders is served, and with what probability.

The probability that the served action was chosen under the policy is returned with every
decision (``selection_probability``) so that other policies can be evaluated offline on the
logged decisions (IPS / SNIPS / DR need it):

- ``greedy`` (default): the best contender, probability 1.
- ``epsilon_greedy``: with probability epsilon a contender drawn uniformly, else the best;
  P(a) = (1 - epsilon) [a is the best] + epsilon / n, exact.
- ``thompson``: each contender's propensity is drawn from Beta(p k, (1 - p) k) (mean p, the
  model's propensity; k the ``pseudo_count``: larger = less exploration) and the highest
  sampled priority p~ x C x V x L is served. Its probability has no closed form: it is
  estimated by Monte-Carlo, the share of ``draws`` further independent samplings (plus the
  one that chose it, so it is never 0) in which it also wins: (1 + wins) / (1 + draws), a
  standard error of at most 0.5 / sqrt(draws).

Contenders are the eligible candidates at or above the minimum priority, best first; all
randomness comes from one injectable ``random.Random``. A pick whose volume constraint is
full is not served: the policy chooses again among the rest (``choose_with_volume``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy

from services.arbitration.model import ActionDefinition, CandidateExplanation, Exploration
from services.arbitration.volume import VolumeGate

GREEDY = "greedy"
EPSILON_GREEDY = "epsilon_greedy"
THOMPSON = "thompson"
POLICIES = (GREEDY, EPSILON_GREEDY, THOMPSON)
# Keeps both Beta parameters positive for propensities of exactly 0 or 1.
_TINY = 1e-6


@dataclass(frozen=True)
class Selection:
    """The served contender (None = "no action") and the probability it had."""

    winner: CandidateExplanation | None
    probability: float
    policy: str
    explored: bool = False


def select(
    exploration: Exploration,
    contenders: Sequence[CandidateExplanation],
    rng: random.Random,
    sampled: Sequence[bool] | None = None,
) -> Selection:
    """``sampled[i]``: whether contender i's propensity counts (its factor is on); a
    contender whose propensity is switched off keeps a fixed priority under Thompson."""
    policy = exploration.policy
    if not contenders:
        return Selection(None, 1.0, policy)
    best = contenders[0]
    if policy == EPSILON_GREEDY and len(contenders) > 1:
        epsilon = exploration.epsilon
        chosen = rng.choice(contenders) if rng.random() < epsilon else best
        probability = epsilon / len(contenders) + (1.0 - epsilon if chosen is best else 0.0)
        return Selection(chosen, probability, policy, chosen is not best)
    if policy == THOMPSON and len(contenders) > 1:
        return _thompson(exploration, contenders, rng, sampled or [True] * len(contenders))
    return Selection(best, 1.0, policy)


def _thompson(
    exploration: Exploration,
    contenders: Sequence[CandidateExplanation],
    rng: random.Random,
    sampled: Sequence[bool],
) -> Selection:
    generator = numpy.random.default_rng(rng.getrandbits(64))
    mean = numpy.array([c.propensity for c in contenders], dtype=float)
    rest = numpy.array([c.context_weight * c.value * c.lever for c in contenders], dtype=float)
    fixed = ~numpy.array(sampled, dtype=bool)
    k = exploration.pseudo_count
    alpha = numpy.maximum(mean * k, _TINY)
    beta = numpy.maximum((1.0 - mean) * k, _TINY)
    # Row 0 chooses; the other rows estimate how often that choice wins.
    draws = generator.beta(alpha, beta, size=(exploration.draws + 1, len(contenders)))
    draws[:, fixed] = mean[fixed]
    priorities = draws * rest
    # argmax takes the first maximum: contenders are sorted best first (priority, action id),
    # so exact ties go the same way as in the greedy ranking.
    winners = numpy.argmax(priorities, axis=1)
    chosen = int(winners[0])
    wins = int(numpy.count_nonzero(winners == chosen))
    probability = wins / (exploration.draws + 1)
    return Selection(contenders[chosen], probability, THOMPSON, chosen != 0)


async def choose_with_volume(
    gate: VolumeGate,
    contenders: Sequence[CandidateExplanation],
    choose: Callable[[Sequence[CandidateExplanation]], Selection],
    action_of: Callable[[str], ActionDefinition | None],
    now: datetime,
) -> tuple[Selection, list[CandidateExplanation]]:
    """``choose`` (exploration) picks among ``contenders``; when the pick's volume is full it
    is removed (``volume:<name>``, returned with the others refused) and ``choose`` runs again
    on the rest, until a pick gets its units or none is left. The selection probability is
    then that of the policy on the contenders that could be served, which is what offline
    evaluation needs (a full action had no chance of being served)."""
    refused: list[CandidateExplanation] = []
    remaining = contenders
    while True:
        selection = choose(remaining)
        served = selection.winner
        action = action_of(served.action_id) if served is not None else None
        if served is None or action is None or not action.volume:
            return selection, refused
        refusal = await gate.reserve(
            action.volume,
            action_id=action.action_id,
            issue=action.issue,
            group=action.group,
            now=now,
        )
        if refusal is None:
            return selection, refused
        refused.append(
            replace(
                served,
                eligible=False,
                removed_by=refusal.removed_by,
                reason=refusal.reason,
                priority=0.0,
                rank=0,
            )
        )
        remaining = tuple(c for c in remaining if c.action_id != served.action_id)
