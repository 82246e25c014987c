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
