"""Off-policy estimators: on a bandit whose logging propensities are exact (one slot: the Plackett-Luce marginal is
the softmax) IPS, SNIPS and DR recover the target's known value; on slates logged by the serving explorer
(serving/selectors/explore.py) with its sampled propensities, they recover a ranked target's value; bad logs are
refused."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.off_policy import estimates, fit_reward_model, predict_reward
from serving.selectors.explore import plackett_luce


def test_one_slot_estimates_recover_the_target_value() -> None:
    rng = np.random.default_rng(0)
    R = 20_000
    scores = np.array([0.0, 0.5, 1.0, -1.0])
    mean_reward = np.array([1.0, 2.0, 5.0, -3.0])
    mu = np.exp(scores) / np.exp(scores).sum()  # exact one-slot marginals
    logged = rng.choice(4, size=(R, 1), p=mu)
    rewards = mean_reward[logged] + rng.normal(0.0, 1.0, logged.shape)
    target = (logged == 2).astype(float)  # the target always shows item 2: value 5
    est = estimates(rewards, mu[logged], target)
    for name in ("ips", "snips", "dr"):
        assert est[name] == pytest.approx(5.0, rel=0.05), name
    assert est["direct"] == pytest.approx(rewards.mean(), rel=1e-9)  # the per-slot mean model


def test_slates_the_explorer_logs_give_the_ranked_targets_value() -> None:
    # Item-position rewards r(a, j) = value_a * examination_j + noise; the target serves the ranked order.
    rng = np.random.default_rng(3)
    R, P, k = 4000, 8, 3
    value = rng.normal(1.0, 1.0, (R, P))
    exam = np.array([1.0, 0.6, 0.3])
    scores = value + rng.normal(0.0, 0.5, (R, P))  # the model that logged and that the target ranks
    logged = np.empty((R, k), dtype=np.int64)
    mu = np.empty((R, k))
    for r in range(R):
        slate, marginals, _ = plackett_luce(scores[r], k, 2000, rng)
        logged[r], mu[r] = slate, marginals[slate, np.arange(k)]
    rewards = np.take_along_axis(value, logged, 1) * exam + rng.normal(0.0, 0.5, (R, k))
    target = np.argsort(-scores, axis=1)[:, :k]
    truth = float((np.take_along_axis(value, target, 1) * exam).sum(1).mean())
    pi = (logged == target).astype(float)
    coef = fit_reward_model(np.take_along_axis(scores, logged, 1)[:, :, None], rewards)
    q_logged = predict_reward(coef, np.take_along_axis(scores, logged, 1)[:, :, None])
    q_target = predict_reward(coef, np.take_along_axis(scores, target, 1)[:, :, None]).sum(1)
    est = estimates(rewards, mu, pi, q_logged, q_target)
    logging_value = float(rewards.sum(1).mean())
    assert truth > logging_value + 0.3  # the target is really different from what was logged
    for name in ("ips", "snips", "dr"):
        assert est[name] == pytest.approx(truth, rel=0.05), (name, est[name], truth)
    assert abs(est["dr"] - truth) <= abs(est["direct"] - truth) + 0.05  # the correction does not hurt the model


def test_bad_logs_are_refused() -> None:
    with pytest.raises(ValueError, match="propensity"):
        estimates(np.array([[1.0]]), np.array([[0.0]]), np.array([[1.0]]))  # shown with probability 0
    with pytest.raises(ValueError, match="propensity"):
        estimates(np.array([[1.0]]), np.array([[np.nan]]), np.array([[1.0]]))  # not logged
    with pytest.raises(ValueError, match="differ"):
        estimates(np.ones((2, 3)), np.ones((2, 2)), np.ones((2, 3)))
