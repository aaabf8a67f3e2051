"""Off-policy estimators recover the known value of a target policy on simulated logs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from services.learning.estimators import (
    Estimate,
    LoggedBandit,
    effective_sample_size,
    estimate_all,
    ips,
    snips,
)

CONTEXTS = 30
ACTIONS = 4


@dataclass(frozen=True)
class World:
    """Discrete contexts with known probabilities and a known reward model."""

    context_probability: npt.NDArray[np.float64]  # (CONTEXTS,)
    reward_probability: npt.NDArray[np.float64]  # (CONTEXTS, ACTIONS)


def bounds(estimate: Estimate) -> tuple[float, float]:
    assert estimate.low is not None and estimate.high is not None, estimate
    return estimate.low, estimate.high


def make_world(seed: int) -> World:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(CONTEXTS, 3))
    theta = rng.normal(size=(ACTIONS, 3))
    bias = np.array([-1.5, -1.0, -2.0, -1.2])
    logits = features @ theta.T + bias
    return World(rng.dirichlet(np.ones(CONTEXTS)), 1 / (1 + np.exp(-logits)))


def epsilon_greedy(scores: npt.NDArray[np.float64], epsilon: float) -> npt.NDArray[np.float64]:
    """pi(a | x) for every context: 1 - eps on the best score, eps spread uniformly."""
    policy = np.full(scores.shape, epsilon / scores.shape[1])
    policy[np.arange(len(scores)), scores.argmax(axis=1)] += 1 - epsilon
    return policy


def true_value(world: World, policy: npt.NDArray[np.float64]) -> float:
    """Exactly: sum_x P(x) sum_a pi(a|x) P(reward | x, a)."""
    return float(world.context_probability @ (policy * world.reward_probability).sum(axis=1))


def simulate_logs(
    world: World,
    logging: npt.NDArray[np.float64],
    target: npt.NDArray[np.float64],
    q: npt.NDArray[np.float64],
    n: int,
    seed: int,
) -> LoggedBandit:
    rng = np.random.default_rng(seed)
    contexts = rng.choice(CONTEXTS, size=n, p=world.context_probability)
    # Inverse-CDF sampling of each decision's action from the logging policy.
    cumulative = logging[contexts].cumsum(axis=1)
    actions = (rng.random(n)[:, None] > cumulative).sum(axis=1)
    actions = np.minimum(actions, ACTIONS - 1)
    rewards = (rng.random(n) < world.reward_probability[contexts, actions]).astype(np.float64)
    return LoggedBandit(
        rewards=rewards,
        logged_probability=logging[contexts, actions],
        target_probability=target[contexts, actions],
        q_logged=q[contexts, actions],
        q_target=(target[contexts] * q[contexts]).sum(axis=1),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ips_snips_and_dr_recover_the_true_value_of_a_target_policy(seed: int) -> None:
    world = make_world(seed)
    rng = np.random.default_rng(100 + seed)
    # Logging: epsilon-greedy on a poor guess; target: nearly greedy on the truth.
    logging = epsilon_greedy(rng.normal(size=(CONTEXTS, ACTIONS)), 0.4)
    target = epsilon_greedy(world.reward_probability, 0.1)
    # A deliberately wrong reward model: DR must still be right through its correction.
    q = np.clip(world.reward_probability + 0.15, 0, 1)
    logs = simulate_logs(world, logging, target, q, n=6000, seed=seed)
    truth = true_value(world, target)

    # 99 % intervals: a dozen 95 % ones checked at once would miss now and then.
    estimates = estimate_all(logs, resamples=400, seed=0, level=0.99).values

    assert truth > true_value(world, logging) + 0.1  # the target is really different
    for name in ("IPS", "SNIPS", "DR"):
        found = estimates[name]
        assert bounds(found)[0] <= truth <= bounds(found)[1], (name, found, truth)
        assert found.value == pytest.approx(truth, abs=0.03), name
    # The logged value is the logging policy's, not the target's.
    low, high = bounds(estimates["logged"])
    assert low <= true_value(world, logging) <= high


def test_dr_with_the_true_reward_model_is_tighter_than_ips() -> None:
    world = make_world(7)
    logging = epsilon_greedy(np.random.default_rng(8).normal(size=(CONTEXTS, ACTIONS)), 0.3)
    target = epsilon_greedy(world.reward_probability, 0.0)
    logs = simulate_logs(world, logging, target, world.reward_probability, n=5000, seed=9)
    estimates = estimate_all(logs, resamples=400, seed=0).values
    truth = true_value(world, target)
    width = {
        name: bounds(estimates[name])[1] - bounds(estimates[name])[0] for name in ("IPS", "DR")
    }
    assert width["DR"] < 0.6 * width["IPS"]
    assert bounds(estimates["DR"])[0] <= truth <= bounds(estimates["DR"])[1]


def test_the_logging_policy_evaluated_on_its_own_logs_is_the_mean_reward() -> None:
    world = make_world(4)
    logging = epsilon_greedy(world.reward_probability, 0.2)
    logs = simulate_logs(world, logging, logging, world.reward_probability, n=2000, seed=5)
    assert np.allclose(logs.weights, 1.0)
    mean = float(logs.rewards.mean())
    assert ips(logs.rewards, logs.weights) == pytest.approx(mean)
    assert snips(logs.rewards, logs.weights) == pytest.approx(mean)
    assert effective_sample_size(logs.weights) == pytest.approx(2000)


def test_snips_is_invariant_to_weight_scale_and_ips_is_not() -> None:
    rewards = np.array([1.0, 0.0, 1.0, 0.0])
    weights = np.array([2.0, 1.0, 0.5, 0.5])
    assert snips(rewards, 3 * weights) == pytest.approx(snips(rewards, weights))
    assert ips(rewards, 3 * weights) == pytest.approx(3 * ips(rewards, weights))


def test_bootstrap_is_reproducible_with_its_seed() -> None:
    world = make_world(11)
    policy = epsilon_greedy(world.reward_probability, 0.5)
    logs = simulate_logs(world, policy, policy, world.reward_probability, n=500, seed=1)
    assert estimate_all(logs, resamples=200, seed=3) == estimate_all(logs, resamples=200, seed=3)


def test_a_zero_logged_probability_is_refused() -> None:
    one = np.ones(2)
    with pytest.raises(ValueError, match="logged probabilities"):
        LoggedBandit(one, np.array([0.5, 0.0]), one, one, one)
