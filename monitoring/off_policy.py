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


def ranked_target_from_log(
    exposure: Any, variant: str | None = None, outcomes: Any = None, synthetic: Any = None, seed: int = 0
) -> dict[str, Any]:
    """`ember ab off-policy`: what an exploring variant would earn serving its ranked order instead, estimated from
    its exposure log (each item's logged propensity and rank, serving/selectors/explore.py) and the outcomes the
    slates received (a file, or drawn from a synthetic world's truth).

    The target puts the post of rank j in slot j, so pi(a_rj, j) = 1 when the logged post's rank equals its slot.
    Requests are kept when every item has a propensity and the slate has the variant's usual length.
    """
    from pathlib import Path

    from core.errors import UserError
    from monitoring.ab_report import item_rewards
    from monitoring.exposure_frame import read_exposure
    from monitoring.outcomes import join_outcomes, read_outcomes, simulate_outcomes

    served = read_exposure(Path(exposure)).frame
    if served.empty:
        raise UserError(f"{exposure}: no served records in the exposure log")
    if "propensity" not in served.columns or "rank" not in served.columns:
        raise UserError(f"{exposure}: no item has a logged propensity (no variant explored: explore_temperature)")
    explored = served.groupby("variant")["propensity"].apply(lambda p: p.notna().any())
    choices = sorted(explored[explored].index)
    if variant is None:
        if len(choices) != 1:
            raise UserError(f"ab off-policy: give --variant (exploring variants in the log: {', '.join(choices)})")
        variant = choices[0]
    if variant not in choices:
        raise UserError(f"ab off-policy: variant {variant!r} logged no propensities (exploring: {', '.join(choices)})")
    items = served[served["variant"] == variant]
    complete = items.groupby("request_id")["propensity"].transform(lambda p: p.notna().all())
    items = items[complete]
    length = items.groupby("request_id")["post_id"].transform("size")
    k = int(length.mode().iloc[0])
    items = items[length == k].sort_values(["request_id", "position"], kind="stable")
    if outcomes is not None:
        outcome_set = join_outcomes(items, read_outcomes(Path(outcomes)), f"outcomes file {outcomes}")
    elif synthetic is not None:
        from features.oracle import load_world

        outcome_set = simulate_outcomes(items, load_world(Path(synthetic)), seed=seed)
    else:
        raise UserError("ab off-policy: give --outcomes (a file) or --synthetic (a world to draw outcomes from)")
    rewarded = item_rewards(outcome_set.frame)
    R = len(rewarded) // k
    shape = (R, k)
    rewards = rewarded["reward"].to_numpy(dtype=np.float64).reshape(shape)
    mu = rewarded["propensity"].to_numpy(dtype=np.float64).reshape(shape)
    pi = rewarded["rank"].to_numpy(dtype=np.float64) == rewarded["position"].to_numpy(dtype=np.float64)
    est = estimates(rewards, mu, pi.reshape(shape).astype(np.float64))
    per_request = rewards.sum(1)
    out: dict[str, Any] = {
        "variant": variant,
        "slate_length": k,
        "requests": R,
        "requests_dropped": int(served[served["variant"] == variant]["request_id"].nunique() - R),
        "logged_reward_per_request": float(per_request.mean()),
        "logged_reward_se": float(per_request.std(ddof=1) / np.sqrt(R)) if R > 1 else float("nan"),
        "ranked_target": est,
        "outcomes": outcome_set.describe(),
    }
    if "true_reward" in rewarded.columns:
        out["logged_true_reward_per_request"] = float(rewarded["true_reward"].to_numpy().reshape(shape).sum(1).mean())
    return out
