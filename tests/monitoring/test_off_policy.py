"""Off-policy estimators on a bandit whose logging marginals are exact (one slot: the Plackett-Luce marginal is the
softmax), so IPS, SNIPS and DR must recover the target's known value; the sampled marginals match the softmax."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.off_policy import estimates, pl_marginals, pl_sample, top_k_marginals


def test_one_slot_estimates_recover_the_target_value() -> None:
    rng = np.random.default_rng(0)
    R = 20_000
    scores = np.tile(np.array([0.0, 0.5, 1.0, -1.0]), (R, 1))
    mean_reward = np.array([1.0, 2.0, 5.0, -3.0])
    mu = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)  # exact one-slot marginals
    logged = pl_sample(scores, 1.0, 1, rng)  # (R, 1)
    rewards = mean_reward[logged] + rng.normal(0.0, 1.0, logged.shape)
    pi = top_k_marginals(np.tile(mean_reward, (R, 1)), 1)  # the target always shows item 2: value 5
    est = estimates(logged, rewards, mu[:, :, None], pi)
    for name in ("ips", "snips", "dr"):
        assert est[name] == pytest.approx(5.0, rel=0.05), name
    assert est["direct"] == pytest.approx(rewards.mean(), rel=1e-9)  # the per-slot mean model


def test_sampled_marginals_match_the_softmax_in_the_first_slot_and_sum_to_one() -> None:
    rng = np.random.default_rng(1)
    scores = np.array([[0.0, 1.0, 2.0, 0.5, -1.0]])
    m = pl_marginals(scores, 1.0, 3, 40_000, rng)
    softmax = np.exp(scores[0]) / np.exp(scores[0]).sum()
    np.testing.assert_allclose(m[0, :, 0], softmax, atol=0.01)
    np.testing.assert_allclose(m[0].sum(0), 1.0)  # each slot holds one item
    assert (m[0].sum(1) <= 1.0 + 1e-9).all()  # an item takes at most one slot


def test_a_target_item_the_logging_policy_never_shows_is_refused() -> None:
    mu = np.zeros((1, 2, 1))
    mu[0, 0, 0] = 1.0
    pi = np.zeros((1, 2, 1))
    pi[0, 1, 0] = 1.0
    mu[0, 1, 0] = 0.0
    with pytest.raises(ValueError, match="logging probability is 0"):
        estimates(np.array([[1]]), np.array([[1.0]]), mu, pi)
