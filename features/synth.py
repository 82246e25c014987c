"""Synthetic social feed with a known ground truth: users, follow graph, posts and logged impressions with outcomes.

The ground-truth model (version `truth-v1`; every number below is a field of `TruthModel`):

* **Users** have a latent topic preference `pref_u ~ Dirichlet(0.3)` over `n_topics` topics and an activity level
  `act_u ~ LogNormal(0, 0.75)` (labelled low/medium/high/very_high). Authors are a subset of users, drawn in
  proportion to activity; each author has a quality `q_a ~ N(0, 1)`, a popularity `pop_a ~ Pareto(1.2)` and a
  focused topic preference `Dirichlet(0.2)`.
* **Follow graph.** Each user follows about `follows_per_user · act_u` authors, 60% chosen in proportion to
  popularity (power-law in-degree) and 40% among authors of a topic drawn from `pref_u`. A followed user follows
  back with probability `reciprocity`.
* **Posts** are spread over the authors in proportion to `act_a`; created uniformly from two days before the first
  impression day to the last; a primary topic from the author's preference and, half the time, a secondary topic
  (the mixture weight is stored); ids increase with creation time, like Snowflake ids.
* **Logging policy.** Users open requests (slates of `slate_size` positions) at Poisson rates `∝ act_u` on three
  surfaces. Each slot is filled from one of: *in-network recency* (a followee's recent post, newest first, ≤ 48 h),
  *popularity* (posts of the last 48 h weighted by author popularity and freshness) or *exploration* (uniform over
  the same pool). What gets shown is therefore biased towards popular and followed authors, as in real logs.
* **Outcomes.** With `r = w_topic·log(n_topics·match(pref_u, post topics)) + w_aff·(in_network + pair_u,a) +
  w_quality·q_a` (`pair_u,a` a fixed hashed user-author effect in ±`pair_scale`):
  `P(click) = σ(b_click + r − w_fresh·age_h/24 − w_pos·log(1 + position))`; each other positive action `a` has a
  conditional `c_a = σ(b_a + k_a·r + extra_a)` and happens with probability `c_a` after a click and `leak_a·c_a`
  without one (funnel dependence), so `P(a) = c_a·(P(click) + (1 − P(click))·leak_a)`. `follow_author` is 0 when
  the viewer already follows the author. Negative actions do not depend on the click:
  `P(neg) = σ(b_neg − k_neg·r − m_neg·q_a)`. `dwell_time` is log-normal around `exp(2 + 0.4·r)` seconds (longer for
  video) when the user dwelled, a short glance after a bare click, else 0. Every impression stores the true marginal
  probability `p_<action>` of each action.
* **Drift scenarios** from `drift_day` on: `topic_shift` moves every user's preference halfway to topic
  `n_topics − 1` and makes half of the new posts that topic (its share of impressions rises from about 1/n_topics);
  `new_users` adds a cohort (`new_user_frac` of the base) of pt/id-speaking users from BR/ID with few follows,
  created after the onset; `author_spam` adds low-quality accounts (quality −3) that post heavily and game the
  popularity source, which raises the negative-action rate.

Memory is bounded: impressions are generated one (day, user chunk) at a time and streamed to parquet parts.
Same config and seed give byte-identical files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.actions import ACTION_NAMES, DWELL_TIME, prob_column
from core.config import config_dataclass
from core.errors import UserError
from core.io import atomic_dir, atomic_write_text
from core.schema import (
    FOLLOWS,
    IMPRESSIONS,
    MEDIA_TYPES,
    POSTS,
    SCHEMA_VERSION,
    USERS,
    Manifest,
    conform,
    validate,
    write_table,
)

DAY_S = 86_400
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)  # first impression day; fixed so outputs are byte-stable
EPOCH_MS = int(EPOCH.timestamp() * 1000)
DRIFTS = ("none", "topic_shift", "new_users", "author_spam")
COUNTRIES = ("US", "IN", "BR", "GB", "JP", "DE", "FR", "MX", "ID", "NG")
COUNTRY_P = (0.30, 0.14, 0.10, 0.08, 0.08, 0.07, 0.07, 0.06, 0.05, 0.05)
LANGUAGE_OF = {"US": "en", "IN": "hi", "BR": "pt", "GB": "en", "JP": "ja", "DE": "de", "FR": "fr", "MX": "es",
               "ID": "id", "NG": "en"}  # fmt: skip
AGE_BUCKETS = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
AGE_P = (0.06, 0.24, 0.30, 0.18, 0.12, 0.10)
SURFACE_P = (0.7, 0.2, 0.1)  # for_you, following, explore
# Source mix per surface: (in-network, popularity, exploration).
SOURCE_MIX = ((0.5, 0.3, 0.2), (1.0, 0.0, 0.0), (0.0, 0.5, 0.5))
IN_NETWORK_MAX_AGE_S = 48 * 3600


@dataclass(frozen=True)
class TruthModel:
    """Coefficients of the ground-truth outcome model (see the module docstring)."""

    w_topic: float = 0.8
    w_aff: float = 0.7
    w_quality: float = 0.5
    pair_scale: float = 0.6
    b_click: float = -1.2
    w_fresh: float = 0.5
    w_pos: float = 0.35
    # Conditional positive actions: (bias b_a, relevance slope k_a, leak_a without a click).
    conditional: tuple[tuple[str, float, float, float], ...] = (
        ("like", -1.6, 0.8, 0.05),
        ("reply", -3.5, 0.6, 0.02),
        ("repost", -3.0, 0.7, 0.05),
        ("quote", -4.2, 0.6, 0.02),
        ("share", -3.6, 0.7, 0.05),
        ("profile_click", -2.5, 0.5, 0.10),
        ("follow_author", -3.0, 0.8, 0.05),
        ("dwell", 0.5, 0.8, 0.03),
    )
    # Negative actions: (bias, relevance slope k_neg, quality slope m_neg).
    negative: tuple[tuple[str, float, float, float], ...] = (
        ("not_interested", -5.0, 0.9, 0.6),
        ("block_author", -7.0, 0.5, 1.0),
        ("mute_author", -6.5, 0.6, 0.8),
        ("report", -8.5, 0.4, 1.5),
    )


@config_dataclass
class SynthConfig:
    """Everything that determines a synthetic dataset; saved in its manifest."""

    scale: str
    seed: int
    n_users: int
    n_posts: int
    days: int
    impressions_per_user_day: float
    drift: str = "none"
    drift_day: int = 5
    n_topics: int = 16
    author_frac: float = 0.1
    follows_per_user: float = 20.0
    reciprocity: float = 0.2
    slate_size: int = 10
    user_chunk: int = 200_000
    new_user_frac: float = 0.3
    spam_author_frac: float = 0.005
    spam_post_frac: float = 0.08
    truth: TruthModel = field(default_factory=TruthModel)

    @classmethod
    def for_scale(
        cls, scale: str, seed: int = 7, drift: str = "none", drift_day: int | None = None, days: int | None = None
    ) -> SynthConfig:
        """Preset sizes: `small` ≈ 10k users, 100k posts, 2M impressions; medium ×10; large ×100."""
        presets = {
            "nano": dict(n_users=300, n_posts=3_000, days=4, impressions_per_user_day=17.0, drift_day=2),
            "small": dict(n_users=10_000, n_posts=100_000, days=8, impressions_per_user_day=25.0, drift_day=5),
            "medium": dict(n_users=100_000, n_posts=1_000_000, days=8, impressions_per_user_day=25.0, drift_day=5),
            "large": dict(n_users=1_000_000, n_posts=10_000_000, days=8, impressions_per_user_day=25.0, drift_day=5),
        }
        if scale not in presets:
            raise UserError(f"--scale: unknown scale {scale!r} (choose from {', '.join(presets)})")
        kwargs: dict[str, Any] = dict(presets[scale])
        if days is not None:
            # Keep the total impressions per day fixed when the horizon changes.
            kwargs["days"] = days
        if drift_day is not None:
            kwargs["drift_day"] = drift_day
        cfg = cls(scale=scale, seed=seed, drift=drift, **kwargs)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.drift not in DRIFTS:
            raise UserError(f"--drift: unknown scenario {self.drift!r} (choose from {', '.join(DRIFTS)})")
        if self.days < 1:
            raise UserError(f"--days: must be >= 1, got {self.days}")
        if self.drift != "none" and not 0 <= self.drift_day < self.days:
            raise UserError(f"--drift-day: must be in [0, {self.days}) for {self.days} days, got {self.drift_day}")
        if self.seed < 0:
            raise UserError(f"--seed: must be >= 0, got {self.seed}")


# ---------------------------------------------------------------------------------------------------------------
# Entities: users, authors, follows, posts. Internal indices are 0-based; written ids are index + 1.
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class World:
    """The latent state the impressions are drawn from (kept in memory; bounded by users + posts)."""

    cfg: SynthConfig
    user_created_s: np.ndarray  # (U,) int64, seconds relative to EPOCH
    user_act: np.ndarray  # (U,) float64 activity
    user_pref: np.ndarray  # (U, K) float32 topic preference
    is_author: np.ndarray  # (U,) bool
    quality: np.ndarray  # (U,) float32, meaningful for authors
    pop: np.ndarray  # (U,) float64 author popularity weight (0 for non-authors)
    is_spam: np.ndarray  # (U,) bool
    follow_src: np.ndarray  # (F,) int64 follower index, sorted
    follow_dst: np.ndarray  # (F,) int64 followee index
    follow_offsets: np.ndarray  # (U + 1,) CSR offsets into follow_dst
    follow_keys: np.ndarray  # (F,) sorted src << 32 | dst, for membership tests
    post_author: np.ndarray  # (P,) int64 author index; posts sorted by creation time (post index = id - 1)
    post_created_s: np.ndarray  # (P,) int64
    post_topic: np.ndarray  # (P,) int32
    post_topic2: np.ndarray  # (P,) int32, -1 if none
    post_weight: np.ndarray  # (P,) float32
    post_media: np.ndarray  # (P,) int8 index into MEDIA_TYPES
    by_author: np.ndarray  # (P,) post indices ordered by (author, created)
    by_author_keys: np.ndarray  # (P,) author << 32 | (created_s + offset), same order
    user_tables: dict[str, Any] = field(default_factory=dict)

    @property
    def onset_s(self) -> int:
        return self.cfg.drift_day * DAY_S if self.cfg.drift != "none" else 10**12


TIME_OFFSET = 10 * DAY_S  # makes relative times positive inside the packed search keys


def _dirichlet(rng: np.random.Generator, alpha: float, n: int, k: int) -> np.ndarray:
    g = rng.gamma(alpha, 1.0, size=(n, k))
    g += 1e-12
    return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)


def _categorical_rows(rng: np.random.Generator, probs: np.ndarray, chunk: int = 500_000) -> np.ndarray:
    """Draws one category per row of `probs` (N, K), in chunks to bound memory."""
    out = np.empty(len(probs), dtype=np.int32)
    for lo in range(0, len(probs), chunk):
        p = probs[lo : lo + chunk]
        cum = np.cumsum(p, axis=1)
        u = rng.random(len(p))[:, None] * cum[:, -1:]
        out[lo : lo + chunk] = np.minimum((cum < u).sum(axis=1), p.shape[1] - 1)
    return out


def _weighted_choice(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    cum = np.cumsum(weights)
    return np.searchsorted(cum, rng.random(size) * cum[-1], side="right").clip(0, len(weights) - 1)


@dataclass
class _Population:
    """Per-user arrays, drawn before the follow graph and the posts that depend on them."""

    country: np.ndarray  # (U,) index into COUNTRIES
    age: np.ndarray  # (U,) index into AGE_BUCKETS
    act: np.ndarray  # (U,) float64 activity
    created: np.ndarray  # (U,) int64 seconds relative to EPOCH
    pref: np.ndarray  # (U, K) float32 topic preference as a viewer
    is_author: np.ndarray  # (U,) bool
    quality: np.ndarray  # (U,) float32
    pop: np.ndarray  # (U,) float64, 0 for non-authors
    author_pref: np.ndarray  # (U, K) float32 topic preference as an author
    is_spam: np.ndarray  # (U,) bool

    def with_cohort(self, cohort: _Population) -> _Population:
        """This population with `cohort` appended after it."""
        return _Population(
            **{f.name: np.concatenate([getattr(self, f.name), getattr(cohort, f.name)]) for f in fields(self)}
        )


def _base_population(cfg: SynthConfig, rng: np.random.Generator) -> _Population:
    n, k = cfg.n_users, cfg.n_topics
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_P)
    age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_P)
    act = rng.lognormal(0.0, 0.75, size=n)
    created = -rng.integers(30 * DAY_S, 1500 * DAY_S, size=n)
    pref = _dirichlet(rng, 0.3, n, k)
    n_auth = max(2, int(round(cfg.author_frac * n)))
    author_idx = rng.choice(n, size=n_auth, replace=False, p=act / act.sum())
    is_author = np.zeros(n, dtype=bool)
    is_author[author_idx] = True
    quality = rng.normal(0.0, 1.0, size=n).astype(np.float32)
    pop = np.where(is_author, rng.pareto(1.2, size=n) + 1.0, 0.0)
    author_pref = _dirichlet(rng, 0.2, n, k)
    return _Population(country, age, act, created, pref, is_author, quality, pop, author_pref, np.zeros(n, dtype=bool))


def _new_user_cohort(cfg: SynthConfig, rng: np.random.Generator) -> _Population:
    """pt/id speakers from BR and ID who join after the onset, leaning to topics 3 and 7; none of them posts."""
    n, k = int(round(cfg.new_user_frac * cfg.n_users)), cfg.n_topics
    onset, end = cfg.drift_day * DAY_S, cfg.days * DAY_S
    country = rng.choice([COUNTRIES.index("BR"), COUNTRIES.index("ID")], size=n)
    age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_P)
    act = rng.lognormal(0.0, 0.75, size=n)
    created = rng.integers(onset, max(onset + 1, end - 3600), size=n)
    focus = np.zeros((n, k), dtype=np.float32)
    focus[:, [3, 7]] = 0.5
    pref = 0.6 * _dirichlet(rng, 0.3, n, k) + 0.4 * focus
    author_pref = _dirichlet(rng, 0.2, n, k)
    none = np.zeros(n, dtype=bool)
    return _Population(
        country, age, act, created, pref, none, np.zeros(n, dtype=np.float32), np.zeros(n), author_pref, none
    )


def _spam_cohort(cfg: SynthConfig, base: _Population, rng: np.random.Generator) -> _Population:
    """Low-quality accounts created just before the onset that post heavily and barely browse."""
    n, k = max(5, int(round(cfg.spam_author_frac * cfg.n_users))), cfg.n_topics
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_P)
    pref = _dirichlet(rng, 0.3, n, k)
    author_pref = _dirichlet(rng, 0.2, n, k)
    # They game the popularity source: their weight matches the 99th percentile of real authors, x3.
    pop = np.full(n, 3.0 * np.quantile(base.pop[base.is_author], 0.99))
    every = np.ones(n, dtype=bool)
    return _Population(
        country=country,
        age=np.full(n, 1),
        act=np.full(n, 0.1),
        created=np.full(n, cfg.drift_day * DAY_S - 3600),
        pref=pref,
        is_author=every,
        quality=np.full(n, -3.0, dtype=np.float32),
        pop=pop,
        author_pref=author_pref,
        is_spam=every,
    )


@dataclass
class _Follows:
    keys: np.ndarray  # (F,) sorted src << 32 | dst
    src: np.ndarray  # (F,) follower index, sorted
    dst: np.ndarray  # (F,) followee index
    offsets: np.ndarray  # (U + 1,) CSR offsets into dst
    created: np.ndarray  # (F,) int64 seconds relative to EPOCH


def _follow_graph(cfg: SynthConfig, people: _Population, rng: np.random.Generator) -> _Follows:
    """Popularity-driven and topic-driven follows, then reciprocal follows back."""
    n_users, n_base = len(people.act), cfg.n_users
    authors = np.flatnonzero(people.is_author & ~people.is_spam)
    n_follow = rng.poisson(cfg.follows_per_user * np.clip(people.act, 0.2, 4.0))
    if cfg.drift == "new_users":
        n_follow[n_base:] = rng.integers(0, 4, size=n_users - n_base)  # cold-start cohort
    if cfg.drift == "author_spam":
        n_follow[n_base:] = 0
    src = np.repeat(np.arange(n_users), n_follow)
    by_pop = rng.random(len(src)) < 0.6
    dst = np.empty(len(src), dtype=np.int64)
    dst[by_pop] = authors[_weighted_choice(rng, people.pop[authors], int(by_pop.sum()))]
    dst[~by_pop] = _authors_of_wanted_topics(rng, people, authors, src[~by_pop])
    back = rng.random(len(src)) < cfg.reciprocity
    src, dst = np.concatenate([src, dst[back]]), np.concatenate([dst, src[back]])
    keep = src != dst
    keys = np.unique((src[keep] << 32) | dst[keep])
    follow_src, follow_dst = keys >> 32, keys & 0xFFFFFFFF
    created = people.created
    follow_created = np.maximum(created[follow_src], created[follow_dst]) + rng.integers(0, 20 * DAY_S, size=len(keys))
    follow_created = np.minimum(follow_created, -1)  # the graph exists before the first impression day
    # Cohorts created after the epoch follow at their own creation time.
    late = created[follow_src] >= 0
    follow_created[late] = created[follow_src][late]
    offsets = np.searchsorted(follow_src, np.arange(n_users + 1))
    return _Follows(keys, follow_src, follow_dst, offsets, follow_created)


def _authors_of_wanted_topics(
    rng: np.random.Generator, people: _Population, authors: np.ndarray, followers: np.ndarray
) -> np.ndarray:
    """One author per follower, uniform among the authors whose main topic is a topic drawn from the follower's
    preference; by popularity when no author has that topic."""
    author_topic = people.author_pref[authors].argmax(axis=1)
    want_topic = _categorical_rows(rng, people.pref[followers])
    order = np.argsort(author_topic, kind="stable")
    topic_sorted = author_topic[order]
    lo = np.searchsorted(topic_sorted, want_topic, side="left")
    hi = np.searchsorted(topic_sorted, want_topic, side="right")
    has = hi > lo
    pick = lo + np.floor(rng.random(len(want_topic)) * np.maximum(hi - lo, 1)).astype(np.int64)
    fallback = authors[_weighted_choice(rng, people.pop[authors], len(want_topic))]
    return np.where(has, authors[order[np.minimum(pick, len(order) - 1)]], fallback)


@dataclass
class _Posts:
    author: np.ndarray  # (P,) int64, sorted by creation time
    created: np.ndarray  # (P,) int64
    topic: np.ndarray  # (P,) int32
    topic2: np.ndarray  # (P,) int32, -1 if none
    weight: np.ndarray  # (P,) float32
    media: np.ndarray  # (P,) int8


def _posts(cfg: SynthConfig, people: _Population, rng: np.random.Generator) -> _Posts:
    """Regular authors post over [-2 days, end), in proportion to activity; spam accounts over [onset, end)."""
    onset, end, k = cfg.drift_day * DAY_S, cfg.days * DAY_S, cfg.n_topics
    real_authors = np.flatnonzero(people.is_author & ~people.is_spam)
    counts = rng.multinomial(cfg.n_posts, people.act[real_authors] / people.act[real_authors].sum())
    author = np.repeat(real_authors, counts)
    created = rng.integers(-2 * DAY_S, end, size=len(author))
    if cfg.drift == "author_spam":
        spam = np.flatnonzero(people.is_spam)
        n_spam_posts = int(round(cfg.spam_post_frac * cfg.n_posts * (cfg.days - cfg.drift_day) / cfg.days))
        spam_author = spam[rng.integers(0, len(spam), size=max(n_spam_posts, 1))]
        author = np.concatenate([author, spam_author])
        created = np.concatenate([created, rng.integers(onset, end, size=len(spam_author))])
    topic = _categorical_rows(rng, people.author_pref[author])
    topic2 = _categorical_rows(rng, people.author_pref[author])
    two = (rng.random(len(topic)) < 0.5) & (topic2 != topic)
    weight = np.where(two, rng.uniform(0.55, 0.95, size=len(topic)), 1.0).astype(np.float32)
    topic2 = np.where(two, topic2, -1).astype(np.int32)
    if cfg.drift == "topic_shift":
        shifted = (created >= onset) & (rng.random(len(topic)) < 0.5)
        topic = np.where(shifted, k - 1, topic).astype(np.int32)
        topic2 = np.where(shifted & (topic2 == k - 1), -1, topic2).astype(np.int32)
    media = rng.choice(len(MEDIA_TYPES), size=len(topic), p=(0.5, 0.3, 0.2)).astype(np.int8)
    by_time = np.lexsort((author, created))  # ids increase with creation time
    return _Posts(author[by_time], created[by_time], topic[by_time], topic2[by_time], weight[by_time], media[by_time])


def build_world(cfg: SynthConfig) -> World:
    """Draws users, authors, the follow graph and posts."""
    ss = np.random.SeedSequence(cfg.seed)
    r_users, r_follow, r_posts, r_drift = (np.random.default_rng(s) for s in ss.spawn(4))
    # Drift cohorts are appended after the base population, so the base is identical across scenarios.
    people = _base_population(cfg, r_users)
    if cfg.drift == "new_users":
        people = people.with_cohort(_new_user_cohort(cfg, r_drift))
    elif cfg.drift == "author_spam":
        people = people.with_cohort(_spam_cohort(cfg, people, r_drift))
    follows = _follow_graph(cfg, people, r_follow)
    posts = _posts(cfg, people, r_posts)
    by_author = np.lexsort((posts.created, posts.author))
    world = World(
        cfg=cfg,
        user_created_s=people.created.astype(np.int64),
        user_act=people.act,
        user_pref=people.pref,
        is_author=people.is_author,
        quality=people.quality,
        pop=people.pop,
        is_spam=people.is_spam,
        follow_src=follows.src,
        follow_dst=follows.dst,
        follow_offsets=follows.offsets,
        follow_keys=follows.keys,
        post_author=posts.author,
        post_created_s=posts.created.astype(np.int64),
        post_topic=posts.topic.astype(np.int32),
        post_topic2=posts.topic2,
        post_weight=posts.weight,
        post_media=posts.media,
        by_author=by_author,
        by_author_keys=(posts.author[by_author] << 32) | (posts.created[by_author] + TIME_OFFSET),
    )
    world.user_tables = {"country": people.country, "age": people.age, "follow_created": follows.created}
    return world


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(EPOCH_MS + seconds.astype(np.int64) * 1000, type=pa.timestamp("ms", tz="UTC"))


def entity_tables(world: World) -> dict[str, pa.Table]:
    """The users, follows and posts tables in the canonical schema."""
    act = world.user_act
    activity = np.select([act < 0.6, act < 1.3, act < 2.5], ["low", "medium", "high"], "very_high")
    country = np.asarray(COUNTRIES)[world.user_tables["country"]]
    users = pa.table(
        {
            "user_id": np.arange(1, len(act) + 1, dtype=np.int64),
            "created_at": _ts(world.user_created_s),
            "country": country,
            "language": np.vectorize(LANGUAGE_OF.__getitem__)(country),
            "age_bucket": np.asarray(AGE_BUCKETS)[world.user_tables["age"]],
            "activity": activity,
            "is_author": world.is_author,
        }
    )
    follows = pa.table(
        {
            "follower_id": world.follow_src + 1,
            "followee_id": world.follow_dst + 1,
            "created_at": _ts(world.user_tables["follow_created"]),
        }
    )
    posts = pa.table(
        {
            "post_id": np.arange(1, len(world.post_author) + 1, dtype=np.int64),
            "author_id": world.post_author + 1,
            "created_at": _ts(world.post_created_s),
            "topic": world.post_topic,
            "topic_secondary": world.post_topic2,
            "topic_weight": world.post_weight,
            "media_type": np.asarray(MEDIA_TYPES)[world.post_media],
        }
    )
    return {"users": users, "follows": follows, "posts": posts}


# ---------------------------------------------------------------------------------------------------------------
# Impressions: the logging policy and the outcome model, one (day, user chunk) at a time.
# ---------------------------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pair_effect(u: np.ndarray, a: np.ndarray, seed: int) -> np.ndarray:
    """A fixed user-author affinity in [-1, 1] from a splitmix64 hash of (seed, u, a): no (U x A) table needed."""
    with np.errstate(over="ignore"):
        z = (u.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (a.astype(np.uint64) + np.uint64(seed))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0


def _popularity_pool(world: World, day_start: int) -> tuple[np.ndarray, np.ndarray]:
    """Posts of the last 48 h before `day_start` and their popularity weights (author popularity x freshness)."""
    lo = np.searchsorted(world.post_created_s, day_start - IN_NETWORK_MAX_AGE_S, side="left")
    hi = np.searchsorted(world.post_created_s, day_start, side="left")
    pool = np.arange(lo, hi)
    age_h = (day_start - world.post_created_s[pool]) / 3600.0
    weights = world.pop[world.post_author[pool]] * np.exp(-age_h / 24.0)
    return pool, weights


def _in_network_posts(
    world: World, rng: np.random.Generator, users: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A recent post (<= 48 h, newest first) by a random followee of each user; returns (post index, found mask)."""
    deg = world.follow_offsets[users + 1] - world.follow_offsets[users]
    has = deg > 0
    j = world.follow_offsets[users] + np.floor(rng.random(len(users)) * np.maximum(deg, 1)).astype(np.int64)
    followee = world.follow_dst[np.minimum(j, len(world.follow_dst) - 1)] if len(world.follow_dst) else users
    key = (followee << 32) | (t + TIME_OFFSET)
    newest = np.searchsorted(world.by_author_keys, key, side="right") - 1
    newest_c = np.maximum(newest, 0)
    same = (newest >= 0) & ((world.by_author_keys[newest_c] >> 32) == followee)
    back = rng.geometric(0.35, size=len(users)) - 1  # newest first, with a short tail of older posts
    cand = np.maximum(newest_c - back, 0)
    cand = np.where((world.by_author_keys[cand] >> 32) == followee, cand, newest_c)
    post = world.by_author[cand]
    fresh = t - world.post_created_s[post] <= IN_NETWORK_MAX_AGE_S
    return post, has & same & fresh


def relevance(world: World, user: np.ndarray, post: np.ndarray, t: np.ndarray, in_network: np.ndarray) -> np.ndarray:
    """The true relevance r of each (user, post) pair at time t (seconds from EPOCH), all arrays broadcastable:
    topic match (with the topic-shift drift after its onset), in-network and user-author affinity, author quality."""
    cfg, tm = world.cfg, world.cfg.truth
    author = world.post_author[post]
    topic, topic2, w = world.post_topic[post], world.post_topic2[post], world.post_weight[post]
    p1 = world.user_pref[user, topic].astype(np.float64)
    p2 = np.where(topic2 >= 0, world.user_pref[user, np.maximum(topic2, 0)], 0.0)
    if cfg.drift == "topic_shift":
        shifted = t >= world.onset_s
        target = cfg.n_topics - 1
        p1 = np.where(shifted, 0.5 * p1 + 0.5 * (topic == target), p1)
        p2 = np.where(shifted, 0.5 * p2 + 0.5 * (topic2 == target), p2)
    match = w * p1 + (1.0 - w) * p2
    pair = tm.pair_scale * _pair_effect(user, author, cfg.seed)
    q = world.quality[author].astype(np.float64)
    return tm.w_topic * np.log(cfg.n_topics * match + 0.05) + tm.w_aff * (in_network + pair) + tm.w_quality * q


def click_logit(world: World, rel: np.ndarray, post: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The true click logit at the top of the slate: bias + relevance - freshness decay of the post's age at t."""
    tm = world.cfg.truth
    age_h = (t - world.post_created_s[post]) / 3600.0
    return tm.b_click + rel - tm.w_fresh * age_h / 24.0


def action_probabilities(
    world: World, rel: np.ndarray, post: np.ndarray, t: np.ndarray, position: np.ndarray, in_network: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The true probability of every action of each impression (relevance `rel`, post index, time t in seconds from
    EPOCH, slate position, in-network flag), and each conditional action's probability given a click.

    Returns:
        (probs {action: P(action)}, given_click {conditional action: P(action | click)}); an action without a click
        happens with probability leak * P(action | click).
    """
    tm = world.cfg.truth
    p_click = _sigmoid(click_logit(world, rel, post, t) - tm.w_pos * np.log1p(position))
    probs: dict[str, np.ndarray] = {"click": p_click}
    given_click: dict[str, np.ndarray] = {}
    for name, bias, slope, leak in tm.conditional:
        c = _sigmoid(bias + slope * rel)
        if name == "follow_author":
            c = np.where(in_network, 0.0, c)
        given_click[name] = c
        probs[name] = c * (p_click + (1.0 - p_click) * leak)
    q = world.quality[world.post_author[post]].astype(np.float64)
    for name, bias, k_rel, m_q in tm.negative:
        probs[name] = _sigmoid(bias - k_rel * rel - m_q * q)
    return probs, given_click


def _requests(world: World, rng: np.random.Generator, day: int, lo: int, hi: int) -> tuple[np.ndarray, ...]:
    """The requests users [lo, hi) open on `day` at Poisson rates ∝ activity: (user, time, surface), by time."""
    cfg = world.cfg
    day_start = day * DAY_S
    users = np.arange(lo, hi)
    alive = world.user_created_s[users] < day_start + DAY_S
    rate = cfg.impressions_per_user_day * world.user_act[users] / np.mean(world.user_act[: cfg.n_users])
    n_req = rng.poisson(np.where(alive, rate / cfg.slate_size, 0.0))
    req_user = np.repeat(users, n_req)
    n_r = len(req_user)
    req_t = day_start + np.floor(rng.random(n_r) * DAY_S).astype(np.int64)
    req_t = np.maximum(req_t, world.user_created_s[req_user])
    order = np.lexsort((req_user, req_t))
    req_surface = rng.choice(3, size=n_r, p=SURFACE_P).astype(np.int8)
    return req_user[order], req_t[order], req_surface


def _logged_posts(
    world: World, rng: np.random.Generator, day_start: int, user: np.ndarray, t: np.ndarray, surface: np.ndarray
) -> np.ndarray:
    """The logging policy: a source per slot from the surface's mix, then a post from that source."""
    n = len(user)
    mix = np.asarray(SOURCE_MIX)[surface]
    u = rng.random(n)
    source = (u >= mix[:, 0]).astype(np.int8) + (u >= mix[:, 0] + mix[:, 1]).astype(np.int8)
    post = np.full(n, -1, dtype=np.int64)
    pool, weights = _popularity_pool(world, day_start)
    if len(pool) == 0:
        raise UserError("synthetic config: no posts in the 48 h before the first day (raise n_posts)")
    innet = source == 0
    p_in, ok = _in_network_posts(world, rng, user[innet], t[innet])
    post[innet] = np.where(ok, p_in, -1)
    need_pop = (source == 1) | ((post == -1) & innet)  # no followee post: fall back to popularity
    post[need_pop] = pool[_weighted_choice(rng, weights, int(need_pop.sum()))]
    explore = source == 2
    post[explore] = pool[rng.integers(0, len(pool), size=int(explore.sum()))]
    return post


def draw_outcomes(
    world: World, rng: np.random.Generator, rel: np.ndarray, post: np.ndarray, probs: dict[str, np.ndarray],
    given_click: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], np.ndarray]:  # fmt: skip
    """Draws every action (click first, then each conditional, then each negative action) and the dwell time."""
    tm, n = world.cfg.truth, len(post)
    click = rng.random(n) < probs["click"]
    cols: dict[str, np.ndarray] = {"click": click}
    for name, _, _, leak in tm.conditional:
        cols[name] = rng.random(n) < np.where(click, given_click[name], leak * given_click[name])
    for name, *_ in tm.negative:
        cols[name] = rng.random(n) < probs[name]
    is_video = world.post_media[post] == MEDIA_TYPES.index("video")
    long_dwell = np.exp(2.0 + 0.4 * rel + 0.5 * is_video + rng.normal(0.0, 0.6, n))
    glance = rng.uniform(0.5, 3.0, n)
    return cols, np.where(cols["dwell"], long_dwell, np.where(click, glance, 0.0))


def impressions_chunk(world: World, day: int, lo: int, hi: int, first_id: int, first_request: int) -> pa.Table:
    """Impressions of users [lo, hi) on `day`, with outcomes and their true probabilities."""
    cfg = world.cfg
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, day, lo]))
    day_start = day * DAY_S
    req_user, req_t, req_surface = _requests(world, rng, day, lo, hi)
    n_r, s = len(req_user), cfg.slate_size
    user = np.repeat(req_user, s)
    position = np.tile(np.arange(s, dtype=np.int32), n_r)
    t = np.repeat(req_t, s) + position.astype(np.int64)  # one second per slot down the slate
    # Clamped within the day: a slate started at 23:59:58 must not spill into a day the world does not have (the
    # feature build would add a snapshot one day past the world's end).
    t = np.minimum(t, day_start + DAY_S - 1)
    surface = np.repeat(req_surface, s)
    post = _logged_posts(world, rng, day_start, user, t, surface)
    author = world.post_author[post]
    in_network = np.isin((user << 32) | author, world.follow_keys, assume_unique=False)
    rel = relevance(world, user, post, t, in_network)
    probs, given_click = action_probabilities(world, rel, post, t, position, in_network)
    cols, dwell_time = draw_outcomes(world, rng, rel, post, probs, given_click)

    data: dict[str, Any] = {
        "impression_id": np.arange(first_id, first_id + len(user), dtype=np.int64),
        "request_id": np.repeat(np.arange(first_request, first_request + n_r, dtype=np.int64), s),
        "user_id": user + 1,
        "post_id": post + 1,
        "author_id": author + 1,
        "ts": pa.array(EPOCH_MS + t * 1000, type=pa.timestamp("ms", tz="UTC")),
        "surface": surface,
        "position": position,
        "in_network": in_network,
    }
    for name in ACTION_NAMES:
        data[name] = cols[name].astype(np.int8)
    data[DWELL_TIME] = dwell_time.astype(np.float32)
    for name in ACTION_NAMES:
        data[prob_column(name)] = probs[name].astype(np.float32)
    return pa.table(data)


def generate(cfg: SynthConfig, out: Path, progress: bool = False) -> Manifest:
    """Generates a dataset into `out` (atomically) and returns its manifest."""
    cfg.check()
    world = build_world(cfg)
    rows: dict[str, int] = {}
    files: dict[str, str] = {}
    n_users = len(world.user_act)
    chunks = [
        (d, lo, min(lo + cfg.user_chunk, n_users)) for d in range(cfg.days) for lo in range(0, n_users, cfg.user_chunk)
    ]
    with atomic_dir(out) as tmp:
        for name, table in entity_tables(world).items():
            schema = {"users": USERS, "follows": FOLLOWS, "posts": POSTS}[name]
            table = conform(table, schema)
            validate(table, schema, f"{name}.parquet")
            files[f"{name}.parquet"] = write_table(table, tmp / f"{name}.parquet")
            rows[name] = table.num_rows
        (tmp / "impressions").mkdir()
        next_id, next_request, n_imp = 1, 1, 0
        with _progress(progress, len(chunks)) as advance:
            for i, (day, lo, hi) in enumerate(chunks):
                table = conform(impressions_chunk(world, day, lo, hi, next_id, next_request), IMPRESSIONS)
                validate(table, IMPRESSIONS, "impressions")
                rel = f"impressions/part-{i:05d}.parquet"
                files[rel] = write_table(table, tmp / rel)
                next_id += table.num_rows
                next_request = int(table.column("request_id")[-1].as_py()) + 1 if table.num_rows else next_request
                n_imp += table.num_rows
                advance(i + 1)
        rows["impressions"] = n_imp
        params = asdict(cfg)
        params["epoch"] = EPOCH.isoformat()
        params["truth_model"] = "truth-v1"
        manifest = Manifest(
            dataset="synthetic",
            schema_version=SCHEMA_VERSION,
            rows=rows,
            files=files,
            observed_actions=ACTION_NAMES,
            params=params,
        )
        atomic_write_text(tmp / "manifest.json", manifest.to_json())
    return manifest


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """Yields a callback that advances a rich progress bar (a no-op when disabled); the bar always stops."""
    if not enabled:
        yield lambda done: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("impressions"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True
    ) as bar:
        task = bar.add_task("impressions", total=total)
        yield lambda done: bar.update(task, completed=done)
