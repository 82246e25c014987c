"""Exploration: the final slate drawn at random from the ranked pool, with each served item's propensity.

A deterministic top-k serves every user the same order, so the exposure log says nothing about what another order
would have earned: off-policy estimates (monitoring/off_policy.py) need a logging policy that puts every item of the
pool in every slot with a known, non-zero probability. `PlackettLuceExplorer` runs after the selector and the
post-selection filters (the pool is then fixed by the scores alone) and draws the slate slot by slot without
replacement, each time with probability softmax(z / temperature) over what is left, where z are the pool's final
scores standardised per request (so the temperature is in units of the request's score spread: 0.25 keeps the
top of the ranking mostly intact, 2 is close to uniform). Equivalently: the top k of z / temperature + Gumbel noise.
The propensities cost about 1 ms per request at 2,000 draws (a pool of 50, k 20, one core).

Each served candidate gets:

- `propensity`: P(this post in this slot) under the policy, given the pool and its scores;
- `inclusion`: P(this post anywhere in the first k slots);
- `rank`: its slot in the ranked order the explorer drew from (0 = the best score), so the ranked slate, the policy
  the variant serves without exploration, is an off-policy target the log can evaluate (`ember ab off-policy`).

Plackett-Luce slot marginals have no closed form: both are estimated from `samples` extra draws of the same policy
(seeded by the request's draw, so a request's log is reproducible), and the served slate's own draw is one of them.
The first slot's propensity is exact (the softmax). With 2,000 draws a propensity of 0.05 is estimated within about
+-10% (binomial standard error); off-policy estimators should clip or self-normalise their weights accordingly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from itertools import count
from threading import Lock

import numpy as np

from core.errors import UserError
from serving.component import Component
from serving.types import Candidate, Query


def standardised(scores: np.ndarray) -> np.ndarray:
    """Scores minus their mean over their standard deviation; all-equal (or one) scores give zeros."""
    s = np.where(np.isfinite(scores), scores, np.nan)
    if np.isnan(s).all():
        return np.zeros(len(s))
    s = np.where(np.isnan(s), np.nanmin(s), s)  # a missing score ranks with the lowest, not above it
    sd = float(s.std())
    return (s - s.mean()) / sd if sd > 0 else np.zeros(len(s))


def plackett_luce(
    logits: np.ndarray, k: int, samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Plackett-Luce slate of `k` items out of len(logits) and the slot marginals estimated from `samples` draws.

    Returns:
        slate: (k,) item indices, slot 0 first (the first of the draws).
        slot_marginals: (P, k) share of draws putting item a in slot j; column 0 is the exact softmax.
        inclusion: (P,) share of draws putting item a in any of the k slots.
    """
    P = len(logits)
    k = min(k, P)
    # The exponential race: item a's arrival E_a / w_a with E_a ~ Exp(1), w_a = exp(logit_a); the order of arrival is
    # a Plackett-Luce draw (the same as sorting logits + Gumbel noise, without the logarithms: 4x cheaper).
    arrival = rng.standard_exponential(size=(samples, P)) * np.exp(-(logits - logits.max()))[None, :]
    draws = np.argsort(arrival, axis=1)[:, :k]  # (S, k)
    marginals = np.bincount((draws * k + np.arange(k)).ravel(), minlength=P * k).reshape(P, k) / samples
    z = logits - logits.max()
    marginals[:, 0] = np.exp(z) / np.exp(z).sum()
    inclusion = np.minimum(marginals[:, 1:].sum(1) + marginals[:, 0], 1.0) if k > 1 else marginals[:, 0].copy()
    return draws[0], marginals, inclusion


@dataclass
class PlackettLuceExplorer(Component):
    """Reorders the pool into a sampled slate (see the module doc). temperature > 0; samples >= 1."""

    temperature: float = 0.5
    samples: int = 2000
    seed: int | None = None  # None: fresh entropy per request; an int: reproducible draws (tests, simulations)
    _counter: count = field(default_factory=count, repr=False)
    _lock: Lock = field(default_factory=Lock, repr=False)

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(f"exploration.temperature: must be > 0, got {self.temperature}")
        if self.samples < 1:
            raise UserError(f"exploration.samples: must be >= 1, got {self.samples}")

    def _rng(self, query: Query) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        with self._lock:
            n = next(self._counter)
        return np.random.default_rng(np.random.SeedSequence([self.seed, query.user_id, n]))

    def select(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        if not candidates:
            return []
        scores = np.array([c.score if c.score is not None else np.nan for c in candidates], dtype=np.float64)
        logits = standardised(scores) / self.temperature
        slate, marginals, inclusion = plackett_luce(logits, query.k, self.samples, self._rng(query))
        return [
            replace(candidates[a], propensity=float(marginals[a, j]), inclusion=float(inclusion[a]), rank=int(a))
            for j, a in enumerate(slate)
        ]


@dataclass
class SlotExplorer(Component):
    """Epsilon slots: the ranked order in every slot but the last `slots`, which are drawn uniformly, without
    replacement, from the rest of the ranked pool (what the ranking left out of the slate).

    A greedy slate only shows what the ranker already scores high, so the exposure log never says how users take a
    post the ranker under-rates: after a change of taste (a new topic) no retrain can learn it. A few explored slots
    at the bottom of each slate keep that evidence coming in at a small cost. Each served item gets its propensity
    (1 for a ranked slot; 1 / |rest| for an explored one, the chance of any one post of the rest in that slot), its
    inclusion (1; slots / |rest|) and its rank in the ranked pool. With no more of the pool than the slate holds there
    is nothing to explore: the ranked order stands.
    """

    slots: int = 1
    seed: int | None = None  # None: fresh entropy per request; an int: reproducible draws (tests, simulations)
    _counter: count = field(default_factory=count, repr=False)
    _lock: Lock = field(default_factory=Lock, repr=False)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise UserError(f"exploration.slots: must be >= 1, got {self.slots}")

    def _rng(self, query: Query) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        with self._lock:
            n = next(self._counter)
        return np.random.default_rng(np.random.SeedSequence([self.seed, query.user_id, n, 1]))

    def select(self, query: Query, candidates: list[Candidate]) -> list[Candidate]:
        k = min(query.k, len(candidates))
        kept = max(k - self.slots, 0)
        rest = candidates[kept:]
        n = k - kept
        if len(rest) <= n:  # the pool is no larger than the slate: nothing to explore
            return [replace(c, propensity=1.0, inclusion=1.0, rank=a) for a, c in enumerate(candidates[:k])]
        drawn = self._rng(query).choice(len(rest), size=n, replace=False)
        ranked = [replace(c, propensity=1.0, inclusion=1.0, rank=a) for a, c in enumerate(candidates[:kept])]
        explored = [
            replace(rest[a], propensity=1.0 / len(rest), inclusion=n / len(rest), rank=kept + int(a)) for a in drawn
        ]
        return ranked + explored
