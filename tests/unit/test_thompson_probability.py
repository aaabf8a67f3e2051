"""Thompson sampling's logged selection probability against a simulation of the policy.

The probability is computed in closed form (a one-dimensional integral); the simulation
draws the policy's Beta samples many times over (seeded, vectorised, in chunks) and counts
how often each contender wins. The action of interest is served about 0.5 % of the time,
where the former Monte-Carlo share (counting the draw that chose it) logged about twice
the truth.
"""

from __future__ import annotations

import random

import numpy as np
import numpy.typing as npt
import pytest

from libs.contracts.arbitration import CandidateExplanation
from services.arbitration.exploration import beta_parameters, select, thompson_probability
from services.arbitration.model import Exploration

PSEUDO_COUNT = 100.0
MEAN = np.array([0.30, 0.27, 0.22, 0.175])
REST = np.array([1.0, 1.0, 1.0, 1.0])
# Simulated decisions: the relative standard error of a 0.5 % frequency is about 0.5 %.
SIMULATED = 8_000_000


def simulated_frequencies(
    mean: npt.NDArray[np.float64], rest: npt.NDArray[np.float64], fixed: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(2026)
    alpha, beta = beta_parameters(mean, PSEUDO_COUNT)
    wins = np.zeros(len(mean))
    chunk = 1_000_000
    for _ in range(SIMULATED // chunk):
        draws = rng.beta(alpha, beta, size=(chunk, len(mean)))
        draws[:, fixed] = mean[fixed]
        wins += np.bincount(np.argmax(draws * rest, axis=1), minlength=len(mean))
    return wins / SIMULATED


def contenders(mean: npt.NDArray[np.float64]) -> tuple[CandidateExplanation, ...]:
    return tuple(
        CandidateExplanation(
            f"a{n}", True, propensity=float(p), context_weight=1, value=1, lever=1, priority=p
        )
        for n, p in enumerate(mean)
    )


def test_a_rarely_served_action_logs_its_true_selection_probability() -> None:
    fixed = np.zeros(len(MEAN), dtype=bool)
    truth = simulated_frequencies(MEAN, REST, fixed)
    rare = len(MEAN) - 1
    assert 0.003 < truth[rare] < 0.008  # served about 0.5 % of the time

    computed = [thompson_probability(MEAN, REST, fixed, PSEUDO_COUNT, n) for n in range(4)]

    assert computed[rare] == pytest.approx(truth[rare], rel=0.02)
    assert computed == pytest.approx(truth.tolist(), rel=0.02)
    assert sum(computed) == pytest.approx(1.0, abs=1e-6)


def test_select_logs_the_computed_probability_of_the_action_it_served() -> None:
    rng = random.Random(9)
    policy = Exploration("thompson", pseudo_count=PSEUDO_COUNT)
    options = contenders(MEAN)
    fixed = np.zeros(len(MEAN), dtype=bool)
    expected = {f"a{n}": thompson_probability(MEAN, REST, fixed, PSEUDO_COUNT, n) for n in range(4)}

    chosen = [select(policy, options, rng) for _ in range(2_000)]

    served = {s.winner.action_id for s in chosen if s.winner}
    assert {"a0", "a1"} <= served
    for selection in chosen:
        assert selection.winner is not None
        assert selection.probability == pytest.approx(expected[selection.winner.action_id])


def test_switched_off_propensities_and_unequal_factors_match_the_simulation() -> None:
    mean = np.array([0.9, 0.30, 0.25, 0.05])
    rest = np.array([0.3, 1.0, 1.1, 3.0])
    # The first's propensity is off: its priority is 0.9 x 0.3 = 0.27 every time.
    fixed = np.array([True, False, False, False])
    truth = simulated_frequencies(mean, rest, fixed)

    computed = [thompson_probability(mean, rest, fixed, PSEUDO_COUNT, n) for n in range(4)]

    for n in range(4):
        assert computed[n] == pytest.approx(truth[n], rel=0.03, abs=2e-4), n
    assert sum(computed) == pytest.approx(1.0, abs=1e-6)
