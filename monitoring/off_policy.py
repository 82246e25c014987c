"""Off-policy estimates of a target policy's reward from slates a randomized logging policy served.

Slates are scored item by item and slot by slot (the item-position model: an item's outcome depends on the item, the
user and its slot, not on its neighbours; the synthetic truth model is of this form). With mu(a, j) the logging
policy's probability of putting item a in slot j of the request and pi(a, j) the target's, the estimators of the
target's reward per request are

    IPS    V = mean_r sum_j w_rj r_rj,                      w_rj = pi(a_rj, j) / mu(a_rj, j)
    SNIPS  V = sum_j (sum_r w_rj r_rj) / (sum_r w_rj)       (self-normalised per slot: E[w_rj] = 1)
    DR     V = mean_r [sum_j sum_a pi(a, j) q(a, j) + sum_j w_rj (r_rj - q(a_rj, j))]

where a_rj is the item logged in slot j and q a reward model (here the per-slot mean logged reward unless one is
given). They are unbiased when mu > 0 wherever pi > 0: the logging policy must explore. A Plackett-Luce policy (a
softmax over scores / temperature, slot by slot without replacement, i.e. the top k of scores + Gumbel noise)
covers every item; its slot marginals have no closed form and are estimated by sampling (`pl_marginals`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pl_sample(scores: np.ndarray, temperature: float, k: int, rng: np.random.Generator) -> np.ndarray:
    """(R, k) indices of a Plackett-Luce slate per row of `scores` (R, P): the top k of scores / T + Gumbel."""
    g = rng.gumbel(size=scores.shape)
    return np.argsort(-(scores / temperature + g), axis=1)[:, :k]


def pl_marginals(
    scores: np.ndarray, temperature: float, k: int, samples: int, rng: np.random.Generator, chunk: int = 64
) -> np.ndarray:
    """(R, P, k): the share of `samples` Plackett-Luce slates that put item a in slot j, per request."""
    R, P = scores.shape
    out = np.zeros((R, P, k))
    for lo in range(0, R, chunk):
        s = scores[lo : lo + chunk, None, :] / temperature  # (c, 1, P)
        g = rng.gumbel(size=(s.shape[0], samples, P))
        top = np.argsort(-(s + g), axis=2)[:, :, :k]  # (c, samples, k)
        rows = np.arange(s.shape[0])[:, None, None]
        slots = np.arange(k)[None, None, :]
        np.add.at(out[lo : lo + chunk], (np.broadcast_to(rows, top.shape), top, np.broadcast_to(slots, top.shape)), 1)
    return out / samples


def top_k_marginals(scores: np.ndarray, k: int) -> np.ndarray:
    """(R, P, k) one-hot: the deterministic top-k slate."""
    R, P = scores.shape
    top = np.argsort(-scores, axis=1)[:, :k]
    out = np.zeros((R, P, k))
    out[np.arange(R)[:, None], top, np.arange(k)[None, :]] = 1.0
    return out


def estimates(
    logged: np.ndarray, rewards: np.ndarray, mu: np.ndarray, pi: np.ndarray, q: np.ndarray | None = None
) -> dict[str, Any]:
    """IPS, SNIPS and DR estimates of the target's reward per request.

    Args:
        logged: (R, k) the item index the logging policy put in each slot.
        rewards: (R, k) the reward observed for it.
        mu, pi: (R, P, k) slot marginals of the logging and the target policy.
        q: (R, P, k) a reward model; None = the per-slot mean logged reward.
    """
    R, k = logged.shape
    rows, slots = np.arange(R)[:, None], np.arange(k)[None, :]
    mu_logged, pi_logged = mu[rows, logged, slots], pi[rows, logged, slots]
    if ((mu_logged <= 0) & (pi_logged > 0)).any():
        raise ValueError("off-policy: the target puts a logged item where the logging probability is 0")
    w = np.where(pi_logged > 0, pi_logged / np.where(mu_logged > 0, mu_logged, 1.0), 0.0)  # (R, k)
    if q is None:
        q = np.broadcast_to(rewards.mean(0)[None, None, :], mu.shape)
    ips = float((w * rewards).sum(1).mean())
    snips = float(((w * rewards).sum(0) / np.maximum(w.sum(0), 1e-12)).sum())
    direct = (pi * q).sum((1, 2))  # (R,)
    dr = float((direct + (w * (rewards - q[rows, logged, slots])).sum(1)).mean())
    return {
        "ips": ips,
        "snips": snips,
        "dr": dr,
        "direct": float(direct.mean()),
        "requests": R,
        "max_weight": float(w.max()),
        "effective_sample_share": float((w.sum() ** 2) / (w.size * (w**2).sum())) if w.any() else 0.0,
    }
