"""The oracle of a synthetic dataset: its ground-truth model rebuilt from the manifest, scoring any (user, post, time).

Models are reported as a fraction of the oracle (../shared/reference/evaluation.md): a retrieval model that ranks the
whole corpus is compared with ranking the same corpus by the true click logit at the top of the slate.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.schema import Manifest
from features.synth import EPOCH_MS, SynthConfig, TruthModel, World, build_world, click_logit, relevance

# Pseudo-clicks of the population's topic share added to each user's clicks (informed_probabilities); chosen on the
# small world (1, 3, 10 pseudo-clicks, counts from days 1-6, the rest of the truth exact: click AUC 0.7690, 0.7708,
# 0.7669 on days 7-8; the choice moves it by < 0.004).
INFORMED_STRENGTH = 3.0


def load_world(dataset: Path) -> World:
    """Rebuilds the latent world of a synthetic dataset from its manifest (same seed: the same world)."""
    manifest = Manifest.load(Path(dataset))
    if manifest.dataset != "synthetic":
        raise UserError(f"{dataset}: the oracle needs a synthetic dataset, this one is {manifest.dataset!r}")
    params = dict(manifest.params)
    truth = params.pop("truth")
    known = {f.name for f in fields(SynthConfig)} - {"truth"}
    truth_known = {f.name for f in fields(TruthModel)}
    truth_args: dict[str, Any] = {
        k: tuple(tuple(row) for row in v) if isinstance(v, list) else v for k, v in truth.items() if k in truth_known
    }
    cfg = SynthConfig(**{k: v for k, v in params.items() if k in known}, truth=TruthModel(**truth_args))
    return build_world(cfg)


def oracle_click_logits(world: World, user_ids: np.ndarray, ts_ms: np.ndarray, post_ids: np.ndarray) -> np.ndarray:
    """True click logits at slate position 0 for every (query, post) pair.

    Args:
        user_ids: (Q,) canonical user ids (index + 1).
        ts_ms: (Q,) request times, epoch ms.
        post_ids: (N,) canonical post ids.

    Returns:
        (Q, N) float64; -inf for posts not yet created at the request time (no policy could show them).
    """
    u = (np.asarray(user_ids, dtype=np.int64) - 1)[:, None]  # (Q, 1)
    t = ((np.asarray(ts_ms, dtype=np.int64) - EPOCH_MS) // 1000)[:, None]  # (Q, 1) seconds from EPOCH
    p = (np.asarray(post_ids, dtype=np.int64) - 1)[None, :]  # (1, N)
    if (u < 0).any() or (u >= len(world.user_act)).any() or (p < 0).any() or (p >= len(world.post_author)).any():
        raise UserError("oracle: user or post id outside the synthetic world")
    author = world.post_author[p]  # (1, N)
    keys = (u << 32) | author  # (Q, N)
    pos = np.clip(np.searchsorted(world.follow_keys, keys), 0, max(len(world.follow_keys) - 1, 0))
    in_network = (world.follow_keys[pos] == keys) if len(world.follow_keys) else np.zeros(keys.shape, bool)
    logit = click_logit(world, relevance(world, u, p, t, in_network.astype(np.float64)), p, t)
    return np.where(world.post_created_s[p] <= t, logit, -np.inf)


def _topic_weights(world: World, post: np.ndarray) -> np.ndarray:
    """(n, K) each post's topic mix as relevance reads it: weight w on its topic, 1 - w on its second topic."""
    k = world.cfg.n_topics
    out = np.zeros((len(post), k))
    rows = np.arange(len(post))
    w = world.post_weight[post].astype(np.float64)
    out[rows, world.post_topic[post]] += w
    second = world.post_topic2[post] >= 0
    out[rows[second], world.post_topic2[post][second]] += 1.0 - w[second]
    return out


def history_informed_probabilities(
    world: World, frame: Any, last: int, clicks_only: bool = True, strength: float = INFORMED_STRENGTH
) -> dict[str, np.ndarray] | None:
    """The ground truth with each user's topic preference estimated from the history the ranker reads: the topic
    mix of the newest `last` events of the row's history (hist_post_ids / hist_actions, frozen at the day's start),
    only those with a click when `clicks_only`, smoothed towards the uniform mix with `strength` pseudo-events.
    Everything else stays true, as in `informed_probabilities`: the AUC it reaches is what a model that knew the
    rest exactly could reach from that history, a reference for how far the ranker's history can take it.

    Args:
        frame: training-set rows with user_id, post_id, event_timestamp, position, in_network, hist_post_ids and
            hist_actions.

    Returns:
        {action: (n,) probability}, or None for a world whose topic preference drifts (topic_shift).
    """
    import pandas as pd

    from core.actions import ACTION_NAMES
    from features.synth import action_probabilities, relevance

    if world.cfg.drift == "topic_shift":
        return None
    k, w_topic = world.cfg.n_topics, world.cfg.truth.w_topic
    click_bit = np.int64(1) << ACTION_NAMES.index("click")
    counts = np.zeros((len(frame), k))
    for i, (posts, actions) in enumerate(zip(frame["hist_post_ids"], frame["hist_actions"], strict=True)):
        if posts is None or len(posts) == 0:
            continue
        ids = np.asarray(posts, dtype=np.int64)[-last:]
        if clicks_only:
            ids = ids[(np.asarray(actions, dtype=np.int64)[-last:] & click_bit) != 0]
        if len(ids):
            counts[i] = _topic_weights(world, ids - 1).sum(axis=0)
    pref = (counts + strength / k) / (counts.sum(axis=1, keepdims=True) + strength)
    u = frame["user_id"].to_numpy(np.int64) - 1
    p = frame["post_id"].to_numpy(np.int64) - 1
    ts_ms = pd.to_datetime(frame["event_timestamp"], utc=True).to_numpy("datetime64[ms]").astype(np.int64)
    t = (ts_ms - EPOCH_MS) // 1000
    in_network = frame["in_network"].to_numpy().astype(np.float64)
    topics = _topic_weights(world, p)
    true_match = (topics * world.user_pref[u].astype(np.float64)).sum(axis=1)
    rel = relevance(world, u, p, t, in_network) - w_topic * np.log(k * true_match + 0.05)
    rel = rel + w_topic * np.log(k * (topics * pref).sum(axis=1) + 0.05)
    probs, _ = action_probabilities(world, rel, p, t, frame["position"].to_numpy(np.int64), in_network)
    return probs


def informed_probabilities(
    world: World, dataset: Path, frame: Any, strength: float = INFORMED_STRENGTH
) -> dict[str, np.ndarray] | None:
    """The ground truth with one thing a model cannot observe replaced by its estimate: each user's topic
    preference, estimated from that user's clicks strictly before the impression (topic mix of the clicked posts,
    smoothed towards the population's click share with `strength` pseudo-clicks). Everything else (in-network,
    user-author affinity, author quality, freshness, the logged position) stays true, so the gap to the oracle is
    the price of not knowing the preference vector, and the result is a reference, not a bound: a better estimator
    of the preference (one that reads unclicked impressions too) could do better.

    Args:
        frame: impressions with user_id, post_id, event_timestamp (or ts), position, in_network.

    Returns:
        {action: (n,) probability}, or None for a world whose topic preference drifts (topic_shift).
    """
    import pandas as pd

    from features.synth import action_probabilities, relevance

    if world.cfg.drift == "topic_shift":
        return None
    clicks = pd.read_parquet(Path(dataset) / "impressions", columns=["user_id", "post_id", "ts", "click"])
    clicks = clicks[clicks["click"] == 1]
    # One sorted key per click, (user, time since EPOCH in ms): a query's clicks strictly before it are the keys in
    # [(user, 0), (user, its time)).
    cu = clicks["user_id"].to_numpy(np.int64) - 1
    keys = (cu << 42) | (clicks["ts"].to_numpy("datetime64[ms]").astype(np.int64) - EPOCH_MS)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    weights = _topic_weights(world, clicks["post_id"].to_numpy(np.int64)[order] - 1)
    cum = np.vstack([np.zeros((1, weights.shape[1])), np.cumsum(weights, axis=0)])  # cum[i] = sum of rows < i
    time_col = "event_timestamp" if "event_timestamp" in frame.columns else "ts"
    u = frame["user_id"].to_numpy(np.int64) - 1
    p = frame["post_id"].to_numpy(np.int64) - 1
    ts_ms = pd.to_datetime(frame[time_col], utc=True).to_numpy("datetime64[ms]").astype(np.int64)
    before = (keys & ((1 << 42) - 1)) < ts_ms.min() - EPOCH_MS  # the population share from before the frame
    prior = weights[before].sum(axis=0) / max(weights[before].sum(), 1e-12)
    lo = np.searchsorted(keys, u << 42, side="left")
    upto = np.searchsorted(keys, (u << 42) | (ts_ms - EPOCH_MS), side="left")
    counts = cum[upto] - cum[lo]  # the user's clicks strictly before the impression
    pref = (counts + strength * prior) / (counts.sum(axis=1, keepdims=True) + strength)

    t = (ts_ms - EPOCH_MS) // 1000
    in_network = frame["in_network"].to_numpy().astype(np.float64)
    rel = relevance(world, u, p, t, in_network)
    topics = _topic_weights(world, p)
    k, w_topic = world.cfg.n_topics, world.cfg.truth.w_topic
    true_match = (topics * world.user_pref[u].astype(np.float64)).sum(axis=1)
    estimated_match = (topics * pref).sum(axis=1)
    rel = rel - w_topic * np.log(k * true_match + 0.05) + w_topic * np.log(k * estimated_match + 0.05)
    position = frame["position"].to_numpy(np.int64)
    probs, _ = action_probabilities(world, rel, p, t, position, in_network)
    return probs
