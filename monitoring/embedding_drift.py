"""Embedding drift of the two-tower outputs (models/retrieval/model.py): the user tower's embeddings of the users served
and the candidate tower's embeddings of the posts served, against those of the training window's users and posts.

The D-dimensional embeddings are projected onto the first principal components of the reference embeddings (PCA
fitted on the reference only, so the axes do not move with the data being judged), and each component is compared
with Evidently 0.7's ValueDrift (normed Wasserstein by default: the shift in reference standard deviations). The
share of drifted components over both towers is the drift share; same verdicts and bad-input rules as drift.py.

Both sides are encoded through the same path (`tower_embeddings`): each user's features are looked up point in time
in the offline tables (user_stats attributes, user_history) at the request time (current) or at the user's last
training row (reference), each post's as of the window's end, so a difference is the data's, not the code's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.config import MonitorConfig
from monitoring.drift import DriftResult, _datasets, _extract

TOWERS = ("user", "post")


def pca_basis(reference: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (D,), components (C, D), explained variance ratio (C,)) of the reference rows (N, D)."""
    mean = reference.mean(axis=0)
    _, s, vt = np.linalg.svd(reference - mean, full_matrices=False)
    c = max(1, min(n_components, vt.shape[0]))
    var = s**2
    ratio = var[:c] / var.sum() if var.sum() > 0 else np.zeros(c)
    # A sign convention (largest loading positive) keeps a component's direction reproducible across runs.
    signs = np.sign(vt[:c][np.arange(c), np.abs(vt[:c]).argmax(axis=1)])
    return mean, vt[:c] * np.where(signs == 0, 1.0, signs)[:, None], ratio


def _clean(name: str, side: str, emb: np.ndarray | None, min_rows: int) -> tuple[np.ndarray | None, list[str]]:
    if emb is None or len(emb) == 0:
        return None, [f"{side} {name} embeddings are empty"]
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        return None, [f"{side} {name} embeddings are not a (N, D) matrix"]
    emb = emb[np.isfinite(emb).all(axis=1)]
    if len(emb) < min_rows:
        return None, [f"{side} {name} embeddings have {len(emb)} finite rows, fewer than min_rows={min_rows}"]
    return emb, []


def embedding_drift(
    reference: Mapping[str, np.ndarray | None], current: Mapping[str, np.ndarray | None], cfg: MonitorConfig
) -> tuple[DriftResult, dict[str, Any]]:
    """Per-component drift of each tower's embeddings ({"user": (N, D), "post": (M, D)}); per_feature is keyed
    "<tower>_pc<i>" with the component's explained variance ratio. Returns (the verdict, {tower: Evidently
    snapshot})."""
    from evidently import Report
    from evidently.metrics import ValueDrift

    ed = cfg.embedding_drift
    result = DriftResult(
        status="insufficient_data", share_drifted=None, threshold=ed.drift_share, kind="embedding_drift"
    )
    snapshots: dict[str, Any] = {}
    towers = [t for t in dict.fromkeys([*reference, *current])]
    if not towers:
        result.reasons.append("no embeddings to check")
    for tower in towers:
        ref, r1 = _clean(tower, "reference", reference.get(tower), cfg.min_rows)
        cur, r2 = _clean(tower, "current", current.get(tower), cfg.min_rows)
        result.reasons += r1 + r2
        if ref is None or cur is None:
            continue
        if ref.shape[1] != cur.shape[1]:
            result.reasons.append(
                f"{tower} embeddings: reference has {ref.shape[1]} dimensions, current {cur.shape[1]}"
            )
            continue
        result.n_reference += len(ref)
        result.n_current += len(cur)
        mean, basis, ratio = pca_basis(ref, ed.n_components)
        columns = [f"{tower}_pc{i}" for i in range(len(basis))]
        ref_frame = pd.DataFrame((ref - mean) @ basis.T, columns=columns)
        cur_frame = pd.DataFrame((cur - mean) @ basis.T, columns=columns)
        metrics = [ValueDrift(column=c, method=ed.method, threshold=ed.threshold) for c in columns]
        try:
            ref_ds, cur_ds = _datasets(ref_frame, cur_frame, columns, cfg)
            snapshot = Report(metrics, include_tests=True).run(current_data=cur_ds, reference_data=ref_ds)
            _, _, per_component = _extract(snapshot)
        except Exception as err:  # an Evidently failure on odd data is no verdict, not a crash of the monitor
            result.reasons.append(f"Evidently could not compute {tower} embedding drift: {type(err).__name__}: {err}")
            continue
        snapshots[tower] = snapshot
        for i, c in enumerate(columns):
            if c in per_component:
                per_component[c]["explained_variance"] = float(ratio[i])
        result.per_feature.update(per_component)
    if result.per_feature:
        n_drifted = sum(v["drifted"] for v in result.per_feature.values())
        result.share_drifted = n_drifted / len(result.per_feature)
    if result.reasons or result.share_drifted is None:
        return result, snapshots
    failed = result.share_drifted >= ed.drift_share
    result.status = "fail" if failed else "pass"
    if failed:
        result.reasons.append(
            f"{result.share_drifted:.0%} of {len(result.per_feature)} embedding components drifted (fails at "
            f"{ed.drift_share:.0%}): " + ", ".join(result.drifted()[:10])
        )
    return result, snapshots


# ---------------------------------------------------------------------------------------------------------------
# Encoding: offline features of the users and posts of a window -> tower outputs.
# ---------------------------------------------------------------------------------------------------------------


def user_inputs(users: pd.DataFrame, features: Path) -> pd.DataFrame:
    """The user-tower input rows of (user_id, time_ms) pairs: user_stats attributes and history, point in time."""
    from monitoring.skew import TIME, point_in_time, read_user_tables

    tables = read_user_tables(features, users["user_id"].to_numpy())
    base = users[["user_id", TIME]].astype("int64").reset_index(drop=True)
    stats = point_in_time(base, tables["user_stats"])
    out = base.assign(event_timestamp=pd.to_datetime(base[TIME], unit="ms", utc=True))
    for c in stats.columns:
        if c.startswith("user_") and c != "user_id":
            out[c] = stats[c]
    history = tables.get("user_history")
    hist_cols = ("hist_post_ids", "hist_author_ids", "hist_actions", "hist_surfaces", "hist_timestamps")
    if history is not None and set(hist_cols) <= set(history.columns):
        joined = point_in_time(base, history[["user_id", "event_timestamp", *hist_cols]])
        for c in hist_cols:
            out[c] = joined[c]
    else:
        for c in hist_cols:
            out[c] = None  # no (complete) history table: read as users without history
    return out


def tower_embeddings(
    model_dir: Path, features: Path, users: pd.DataFrame, post_ids: np.ndarray, as_of: datetime | int
) -> dict[str, np.ndarray]:
    """{"user": (N, D), "post": (M, D)} embeddings of the given users and posts.

    Args:
        users: user_id and _lookup_ms (the time each user's features are taken at).
        post_ids: the posts, one per served item (repeats keep their weight); their post_stats row and age are taken
            as of `as_of` (a datetime or epoch ms); posts post_stats does not hold yet are left out.
    """
    import torch

    from models.retrieval.data import candidate_features, user_features
    from models.retrieval.job import post_corpus
    from models.retrieval.model import load_two_tower
    from models.retrieval.train import embed_corpus

    model = load_two_tower(Path(model_dir))
    out: dict[str, np.ndarray] = {}
    if len(users):
        rows = user_inputs(users, features)
        with torch.inference_mode():
            out["user"] = model.user_embedding(user_features(rows, model.cfg)).float().cpu().numpy()
    as_of_ms = int(as_of.timestamp() * 1000) if isinstance(as_of, datetime) else int(as_of)
    post_ids = np.asarray(post_ids, dtype=np.int64)
    if len(post_ids):
        corpus = post_corpus(features, as_of_ms)
        corpus = corpus[corpus["post_id"].isin(np.unique(post_ids))].reset_index(drop=True)
        if len(corpus):
            with torch.inference_mode():
                emb = embed_corpus(model, candidate_features(corpus, model.cfg, now_ms=as_of_ms))
            row = pd.Series(np.arange(len(corpus)), index=corpus["post_id"].to_numpy())
            found = row.reindex(post_ids).dropna().to_numpy(np.int64)  # one row per item: popular posts weigh more
            out["post"] = emb.float().cpu().numpy()[found]
    return out
