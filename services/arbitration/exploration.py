"""Controlled exploration: which of the contenders is served, and with what probability.

The probability that the served action was chosen under the policy is returned with every
decision (``selection_probability``) so that other policies can be evaluated offline on the
logged decisions (IPS / SNIPS / DR need it):

- ``greedy`` (default): the best contender, probability 1.
- ``epsilon_greedy``: with probability epsilon a contender drawn uniformly, else the best;
  P(a) = (1 - epsilon) [a is the best] + epsilon / n, exact.
- ``thompson``: each contender's propensity is drawn from Beta(p k, (1 - p) k) (mean p, the
  model's propensity; k the ``pseudo_count``: larger = less exploration) and the highest
  sampled priority p~ x C x V x L is served. Its probability is computed, not sampled:
  P(a) = integral over x of f_a(x) prod_j F_j(x r_a / r_j), with f and F the Beta density
  and CDF and r = C x V x L (a one-dimensional integral, scipy's adaptive quadrature, to a
  relative 1e-5). A Monte-Carlo share of further draws counting the draw that chose the
  action never fell below 1 / (1 + draws) and was too high for rarely served actions, which
  biased every off-policy estimate of a policy serving them (docs/learning.md).

Contenders are the eligible candidates at or above the minimum priority, best first; all
randomness comes from one injectable ``random.Random``. A pick whose volume constraint is
full is not served: the policy chooses again among the rest (``choose_with_volume``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy

from libs.contracts.arbitration import CandidateExplanation
from services.arbitration.model import ActionDefinition, Exploration
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
    alpha, beta = beta_parameters(mean, exploration.pseudo_count)
    draw = generator.beta(alpha, beta)
    draw[fixed] = mean[fixed]
    # argmax takes the first maximum: contenders are sorted best first (priority, action id),
    # so exact ties go the same way as in the greedy ranking.
    chosen = int(numpy.argmax(draw * rest))
    probability = thompson_probability(mean, rest, fixed, exploration.pseudo_count, chosen)
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


def beta_parameters(
    mean: numpy.ndarray[Any, Any], pseudo_count: float
) -> tuple[numpy.ndarray[Any, Any], numpy.ndarray[Any, Any]]:
    """Beta(p k, (1 - p) k), both parameters kept positive for p of exactly 0 or 1."""
    return (
        numpy.maximum(mean * pseudo_count, _TINY),
        numpy.maximum((1.0 - mean) * pseudo_count, _TINY),
    )


def thompson_probability(
    mean: numpy.ndarray[Any, Any],
    rest: numpy.ndarray[Any, Any],
    fixed: numpy.ndarray[Any, Any],
    pseudo_count: float,
    chosen: int,
) -> float:
    """P(contender ``chosen`` has the highest sampled priority), exactly (up to quadrature).

    Contender j's priority is X_j r_j, X_j ~ Beta (or the constant ``mean[j]`` when
    ``fixed[j]``); ties between constants go to the lower index, as argmax does. Never
    below ``_FLOOR``: a served action had a positive probability, and the estimators divide
    by it."""
    from scipy import integrate, special

    alpha, beta = beta_parameters(mean, pseudo_count)
    # A contender whose rest is 0 has priority 0 whatever its draw: a constant.
    constant = fixed | (rest <= 0)
    level = numpy.where(constant, numpy.where(rest > 0, mean * rest, 0.0), 0.0)
    others = numpy.arange(len(mean)) != chosen
    rivals = others & constant
    sampled = others & ~constant
    if constant[chosen]:
        mine = level[chosen]
        for j in numpy.flatnonzero(rivals):
            if level[j] > mine or (level[j] == mine and j < chosen):
                return _FLOOR
        below = numpy.clip(mine / rest[sampled], 0.0, 1.0)
        found = float(numpy.prod(special.betainc(alpha[sampled], beta[sampled], below)))
        return max(found, _FLOOR)
    r_a, a, b = rest[chosen], alpha[chosen], beta[chosen]
    # Every constant rival must be beaten: x r_a above the highest of them.
    lower = float(level[rivals].max() / r_a) if rivals.any() else 0.0
    if lower >= 1.0:
        return _FLOOR
    ratio = r_a / rest[sampled]
    alphas, betas = alpha[sampled], beta[sampled]

    def others_below(x: float) -> float:
        return float(numpy.prod(special.betainc(alphas, betas, numpy.minimum(x * ratio, 1.0))))

    # The Beta density's x^(a-1) (1-x)^(b-1) goes in quad's algebraic weight so that its
    # end-point singularities (a or b below 1) are integrated exactly.
    if lower == 0.0:
        integral = integrate.quad(
            others_below, 0.0, 1.0, weight="alg", wvar=(a - 1.0, b - 1.0), **_QUAD
        )[0]
    else:
        integral = integrate.quad(
            lambda x: others_below(x) * x ** (a - 1.0),
            lower,
            1.0,
            weight="alg",
            wvar=(0.0, b - 1.0),
            **_QUAD,
        )[0]
    found = float(integral / special.beta(a, b))
    return min(max(found, _FLOOR), 1.0)


# Relative accuracy asked of the quadrature (an absolute bound would be meaningless for the
# rarely served actions that matter most) and the subintervals it may use; full_output
# returns quad's round-off notes instead of warning on every decision.
_QUAD: dict[str, Any] = {"epsabs": 0.0, "epsrel": 1e-5, "limit": 200, "full_output": 1}
# The smallest probability logged: below it, the quadrature's own error dominates.
_FLOOR = 1e-12
