"""Off-policy estimates of a target policy's reward from slates a randomised logging policy served.

Slates are scored item by item and slot by slot (the item-position model: an item's outcome depends on the item, the
user and its slot, not on its neighbours; the synthetic truth model is of this form). With mu(a, j) the logging
policy's probability of putting item a in slot j of the request (the `propensity` an exploring variant logs,
serving/selectors/explore.py) and pi(a, j) the target's, the estimators of the target's reward per request are

    IPS    V = mean_r sum_j w_rj r_rj,                      w_rj = pi(a_rj, j) / mu(a_rj, j)
    SNIPS  V = sum_j (sum_r w_rj r_rj) / (sum_r w_rj)       (self-normalised per slot: E[w_rj] = 1)
    DR     V = mean_r [sum_j sum_a pi(a, j) q(a, j) + sum_j w_rj (r_rj - q(a_rj, j))]

where a_rj is the item logged in slot j and q a reward model (`fit_reward_model`: per slot, a least-squares line in
the logged score, fitted on the log itself). They are unbiased when mu > 0 wherever pi > 0: the logging policy must
explore. Only the logged items' mu is needed, which is what the exposure log holds.

Their error has a floor the weights do not cause: the blend's signed weights put -234 on `report` and -59 on
`mute_author`, rare events whose noise dominates a request's reward (on the synthetic world a request's reward has a
standard deviation several times its mean), so even the logging policy's own mean needs tens of thousands of
requests to be known within 10%. Report the error with the number of logged requests.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fit_reward_model(features: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Per slot j, least-squares coefficients of reward ~ 1 + features (R, k, F) on the logged rows: (k, F + 1)."""
    R, k, F = features.shape
    coef = np.zeros((k, F + 1))
    for j in range(k):
        x = np.column_stack([np.ones(R), features[:, j, :]])
        coef[j] = np.linalg.lstsq(x, rewards[:, j], rcond=None)[0]
    return coef


def predict_reward(coef: np.ndarray, features: np.ndarray) -> np.ndarray:
    """q(a, j) for features (R, k, F) of the items placed in slots 0..k-1: (R, k)."""
    return coef[None, :, 0] + np.einsum("rkf,kf->rk", features, coef[:, 1:])


def estimates(
    rewards: np.ndarray,
    propensities: np.ndarray,
    target_probs: np.ndarray,
    q_logged: np.ndarray | None = None,
    q_target: np.ndarray | None = None,
) -> dict[str, Any]:
    """IPS, SNIPS and DR estimates of the target's reward per request.

    Args:
        rewards: (R, k) the reward observed for each logged slot.
        propensities: (R, k) mu(a_rj, j), the logging policy's probability of what it put in each slot.
        target_probs: (R, k) pi(a_rj, j), the target's probability of the same placement (0/1 for a deterministic
            target: does it put the logged item in that slot?).
        q_logged: (R, k) reward model at the logged placements; q_target: (R,) sum_j sum_a pi(a, j) q(a, j), the
            model's value of the target's slate. Both None: q = the per-slot mean logged reward.
    """
    rewards, mu, pi = (np.asarray(x, dtype=np.float64) for x in (rewards, propensities, target_probs))
    if rewards.shape != mu.shape or mu.shape != pi.shape:
        raise ValueError(f"off-policy: rewards {rewards.shape}, propensities {mu.shape} and target {pi.shape} differ")
    if not np.isfinite(mu).all() or ((mu <= 0) & (pi > 0)).any() or (mu > 1).any():
        raise ValueError("off-policy: a logged propensity is missing, not in (0, 1], or 0 where the target is not")
    R, k = rewards.shape
    w = np.where(pi > 0, pi / np.where(mu > 0, mu, 1.0), 0.0)
    if q_logged is None or q_target is None:
        slot_mean = rewards.mean(0)
        q_logged = np.broadcast_to(slot_mean[None, :], rewards.shape)
        q_target = np.full(R, slot_mean.sum())  # every slot filled: sum_a pi(a, j) = 1
    ips = float((w * rewards).sum(1).mean())
    snips = float(((w * rewards).sum(0) / np.maximum(w.sum(0), 1e-12)).sum())
    dr = float((q_target + (w * (rewards - q_logged)).sum(1)).mean())
    return {
        "ips": ips,
        "snips": snips,
        "dr": dr,
        "direct": float(np.mean(q_target)),
        "requests": R,
        "max_weight": float(w.max()),
        "effective_sample_share": float((w.sum() ** 2) / (w.size * (w**2).sum())) if w.any() else 0.0,
    }
