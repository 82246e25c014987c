"""Recommendation quality of served slates joined with outcomes: NDCG@k, precision@k, recall@k, novelty, intra-list
diversity, popularity bias and catalogue coverage, with a pass / fail / insufficient_data verdict.

A slate is one request's items ordered by position; an item is relevant when any of the configured actions happened
(binary relevance). The numbers are computed here in numpy/pandas (exact, tested on hand-computed slates); Evidently's
NDCG, PrecisionTopK and RecallTopK are run on the same slates for the HTML/JSON report (`evidently_report`), with
no-feedback slates included, which is what these definitions do too:

- ndcg@k: per slate DCG@k / ideal DCG@k of the same slate's items, 0 for a slate with no relevant item; the mean.
- precision@k: relevant items in the top k / min(k, slate length); the mean over slates.
- recall@k: relevant items in the top k / relevant items in the slate (0 when none); the mean over slates. With
  slates no longer than k it is 1 for every slate with feedback: only longer slates make it informative.
- novelty: mean over top-k items of -log2((u_i + 1) / (U + 1)), u_i the reference users who found item i relevant,
  U the reference users (Evidently's mean inverse user frequency, smoothed so unseen items count instead of
  being dropped).
- diversity: mean over slates of the share of top-k item pairs whose topics differ (items of unknown topic skipped).
- popularity_bias: the average recommendation popularity, mean over slates of the mean u_i / U of its top-k items.
- coverage: distinct top-k items over all slates / the catalogue size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.config import QualityConfig
from monitoring.drift import Status

SLATE = "request_id"
# The reason of a verdict-less result that has the current window's metrics but no reference slates to compare with.
NO_REFERENCE = "no reference slates to compare with"
METRICS = ("ndcg", "precision", "recall", "novelty", "diversity", "popularity_bias", "coverage")


@dataclass
class QualityResult:
    """metrics / reference_metrics: {"ndcg@10": ..., "precision@10": ..., "novelty": ..., ...}."""

    status: Status
    k: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    reference_metrics: dict[str, float | None] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    n_slates: int = 0
    n_reference_slates: int = 0
    relevant_actions: tuple[str, ...] = ()
    kind: str = "quality"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_names(k: int) -> list[str]:
    return [f"{m}@{k}" if m in ("ndcg", "precision", "recall") else m for m in METRICS]


def relevance(frame: pd.DataFrame, actions: tuple[str, ...]) -> pd.Series:
    """1 where any of `actions` happened, else 0 (int8)."""
    return (frame[list(actions)].fillna(0).to_numpy() > 0).any(axis=1).astype("int8")


def _ranked(frame: pd.DataFrame) -> pd.DataFrame:
    """slate, post_id, relevant and the 1-based rank of each item within its slate (by position)."""
    out = frame[[SLATE, "post_id", "position", "relevant"]].copy()
    out = out.sort_values([SLATE, "position"], kind="stable")
    out["rank"] = out.groupby(SLATE, sort=False).cumcount() + 1
    return out


def ranking_metrics(frame: pd.DataFrame, k: int) -> dict[str, float]:
    """ndcg@k, precision@k and recall@k of slates (request_id, position, relevant), averaged over slates."""
    df = _ranked(frame)
    rel = df["relevant"].to_numpy(np.float64)
    rank = df["rank"].to_numpy(np.int64)
    top = rank <= k
    gain = np.where(top, rel / np.log2(rank + 1), 0.0)
    per = pd.DataFrame({SLATE: df[SLATE].to_numpy(), "gain": gain, "hit": rel * top, "rel": rel, "top": top})
    by = per.groupby(SLATE, sort=False)
    dcg = by["gain"].sum()
    n_rel = by["rel"].sum()
    hits = by["hit"].sum()
    size = by["top"].sum()
    # The ideal slate puts its n_rel relevant items first: IDCG@k = sum_{i=1}^{min(n_rel, k)} 1 / log2(i + 1).
    disc = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = disc[np.minimum(n_rel.to_numpy(np.int64), k)]
    ndcg = np.divide(dcg.to_numpy(), idcg, out=np.zeros(len(idcg)), where=idcg > 0)
    precision = hits.to_numpy() / np.maximum(size.to_numpy(), 1)
    recall = np.divide(hits.to_numpy(), n_rel.to_numpy(), out=np.zeros(len(n_rel)), where=n_rel.to_numpy() > 0)
    return {
        f"ndcg@{k}": float(ndcg.mean()),
        f"precision@{k}": float(precision.mean()),
        f"recall@{k}": float(recall.mean()),
    }


def item_popularity(reference: pd.DataFrame) -> tuple[pd.Series, int]:
    """(u_i: distinct reference users with a relevant outcome on each post, U: distinct reference users)."""
    users = int(reference["user_id"].nunique())
    liked = reference.loc[reference["relevant"] > 0]
    return liked.groupby("post_id")["user_id"].nunique(), users


def beyond_accuracy(
    frame: pd.DataFrame, k: int, popularity: pd.Series, n_users: int, topics: pd.Series | None, catalogue_size: int
) -> dict[str, float | None]:
    """novelty, diversity, popularity_bias and coverage of the top-k items of each slate (see the module docstring).

    Args:
        frame: request_id, post_id, position.
        popularity: u_i per post_id (missing = 0); n_users: U.
        topics: topic per post_id (None or missing = unknown: the item takes no part in diversity).
        catalogue_size: the number of recommendable posts (coverage's denominator).
    """
    df = frame[[SLATE, "post_id", "position"]].sort_values([SLATE, "position"], kind="stable")
    df = df[df.groupby(SLATE, sort=False).cumcount() < k]
    u = df["post_id"].map(popularity).fillna(0).to_numpy(np.float64)
    novelty = float(np.mean(-np.log2((u + 1.0) / (n_users + 1.0)))) if len(df) else None
    share = u / n_users if n_users else np.zeros(len(df))
    pop_bias = float(pd.Series(share).groupby(df[SLATE].to_numpy()).mean().mean()) if len(df) else None
    coverage = df["post_id"].nunique() / catalogue_size if catalogue_size > 0 else None
    diversity: float | None = None
    if topics is not None:
        known = pd.DataFrame({"slate": df[SLATE].to_numpy(), "topic": df["post_id"].map(topics).to_numpy()}).dropna()
        # Pairs within a slate that share a topic: sum over its topics of c * (c - 1) / 2.
        c = known.groupby(["slate", "topic"], sort=False).size()
        same = (c * (c - 1) / 2).groupby(level="slate", sort=False).sum()
        n = known.groupby("slate", sort=False).size().reindex(same.index)
        pairs = n * (n - 1) / 2
        has_pairs = pairs > 0
        diversity = float((1.0 - same[has_pairs] / pairs[has_pairs]).mean()) if has_pairs.any() else None
    return {
        "novelty": novelty,
        "diversity": diversity,
        "popularity_bias": pop_bias,
        "coverage": None if coverage is None else float(min(coverage, 1.0)),
    }


def _missing(frame: pd.DataFrame | None, columns: list[str], name: str) -> list[str]:
    if frame is None or len(frame) == 0:
        return [f"{name} window is empty"]
    return [f"column {c!r} is missing from the {name} window" for c in columns if c not in frame.columns]


def slate_quality(
    current: pd.DataFrame | None,
    reference: pd.DataFrame | None,
    cfg: QualityConfig,
    topics: pd.Series | None = None,
    catalogue_size: int | None = None,
    popularity_from: pd.DataFrame | None = None,
) -> QualityResult:
    """Quality of the current slates (served items joined with outcomes) and of the reference slates (the training
    window's logged slates with their labels), and the verdict of cfg's tests.

    Args:
        current / reference: request_id, user_id, post_id, position and the cfg.relevant_actions columns.
        topics: post topic per post_id, for diversity.
        catalogue_size: recommendable posts; None = the distinct posts of both windows.
        popularity_from: the rows item popularity (novelty, popularity bias) is counted on; None = the reference
            (pass the whole training window when `reference` is a sample of its slates).

    Never raises on bad input: an empty window, a missing column or too few slates is "insufficient_data". With
    `reference` None the current window's metrics are computed and reported, with no verdict (NO_REFERENCE).
    """
    k = cfg.k
    result = QualityResult(status="insufficient_data", k=k, relevant_actions=cfg.relevant_actions)
    result.metrics = {name: None for name in metric_names(k)}
    needed = [SLATE, "user_id", "post_id", "position", *cfg.relevant_actions]
    reasons = _missing(current, needed, "current")
    if reference is not None:
        reasons += _missing(reference, needed, "reference")
    if reasons:
        result.reasons = reasons + ([NO_REFERENCE] if reference is None else [])
        return result
    assert current is not None
    cur = _slates(current, cfg)
    ref = _slates(reference, cfg) if reference is not None else cur.iloc[:0]
    result.n_slates = int(cur[SLATE].nunique())
    result.n_reference_slates = int(ref[SLATE].nunique())
    checked = [("current", result.n_slates)] + (
        [("reference", result.n_reference_slates)] if reference is not None else []
    )
    for name, n in checked:
        if n < cfg.min_slates:
            result.reasons.append(f"{name} window has {n} slates with outcomes, fewer than min_slates={cfg.min_slates}")
    if result.n_slates == 0:
        return result
    counted = ref
    if popularity_from is not None and {"user_id", "post_id", *cfg.relevant_actions} <= set(popularity_from.columns):
        counted = popularity_from[["user_id", "post_id"]].assign(
            relevant=relevance(popularity_from, cfg.relevant_actions)
        )
    popularity, n_users = item_popularity(counted)  # novelty and popularity bias are counted on these rows
    size = catalogue_size if catalogue_size is not None else int(pd.concat([cur["post_id"], ref["post_id"]]).nunique())
    result.metrics = {**ranking_metrics(cur, k), **beyond_accuracy(cur, k, popularity, n_users, topics, size)}
    if result.n_reference_slates:
        result.reference_metrics = {
            **ranking_metrics(ref, k),
            **beyond_accuracy(ref, k, popularity, n_users, topics, size),
        }
    if reference is None:
        result.reasons.append(NO_REFERENCE)
    if result.reasons:
        return result
    result.status = "pass"
    failures = _failures(result, cfg)
    if failures:
        result.status = "fail"
        result.reasons.extend(failures)
    return result


def _slates(served: pd.DataFrame, cfg: QualityConfig) -> pd.DataFrame:
    """The served items that belong to a slate (request, post and position known), each marked relevant or not."""
    return served.dropna(subset=[SLATE, "post_id", "position"]).assign(relevant=relevance(served, cfg.relevant_actions))


def _failures(result: QualityResult, cfg: QualityConfig) -> list[str]:
    k, cur, ref = cfg.k, result.metrics, result.reference_metrics
    out: list[str] = []
    ndcg, ref_ndcg = cur.get(f"ndcg@{k}"), ref.get(f"ndcg@{k}")
    dropped = cfg.max_ndcg_drop is not None and ndcg is not None and ref_ndcg is not None
    if dropped and ndcg < ref_ndcg - cfg.max_ndcg_drop:  # type: ignore[operator]
        out.append(f"ndcg@{k} {ndcg:.4f} is more than {cfg.max_ndcg_drop} below the reference's {ref_ndcg:.4f}")
    if cfg.min_ndcg is not None and ndcg is not None and ndcg < cfg.min_ndcg:
        out.append(f"ndcg@{k} {ndcg:.4f} is below min_ndcg={cfg.min_ndcg}")
    coverage = cur.get("coverage")
    if cfg.min_coverage is not None and coverage is not None and coverage < cfg.min_coverage:
        out.append(f"coverage {coverage:.4f} is below min_coverage={cfg.min_coverage}")
    bias = cur.get("popularity_bias")
    if cfg.max_popularity_bias is not None and bias is not None and bias > cfg.max_popularity_bias:
        out.append(f"popularity_bias {bias:.4f} is above max_popularity_bias={cfg.max_popularity_bias}")
    return out


def evidently_report(current: pd.DataFrame, reference: pd.DataFrame | None, cfg: QualityConfig) -> Any:
    """Evidently's NDCG, PrecisionTopK and RecallTopK on the same slates (rank = position order, no-feedback slates
    included; k capped at the longest slate): the snapshot, for its HTML and JSON. Raises what Evidently raises (the
    caller records it)."""
    from evidently import DataDefinition, Dataset, Recsys, Report
    from evidently.metrics import NDCG, PrecisionTopK, RecallTopK

    def prep(frame: pd.DataFrame) -> Any:
        ranked = _ranked(frame.assign(relevant=relevance(frame, cfg.relevant_actions)))
        table = pd.DataFrame(
            {
                "slate": ranked[SLATE].astype(str).to_numpy(),
                "item_id": ranked["post_id"].astype("int64").to_numpy(),
                "target": ranked["relevant"].astype("int64").to_numpy(),
                "prediction": ranked["rank"].astype("int64").to_numpy(),
            }
        )
        definition = DataDefinition(
            numerical_columns=["target", "prediction"],
            ranking=[
                Recsys(
                    user_id="slate",
                    item_id="item_id",
                    target="target",
                    prediction="prediction",
                    recommendations_type="rank",
                )
            ],  # fmt: skip
        )
        return Dataset.from_pandas(table, data_definition=definition)

    # Evidently indexes its curve up to the longest slate: k past it would be a KeyError, not a number.
    longest = int(current.groupby(SLATE).size().max()) if len(current) else 1
    if reference is not None and len(reference):
        longest = min(longest, int(reference.groupby(SLATE).size().max()))
    k = max(1, min(cfg.k, longest))
    metrics = [
        NDCG(k=k, no_feedback_users=True),
        PrecisionTopK(k=k, no_feedback_users=True),
        RecallTopK(k=k, no_feedback_users=True),
    ]
    return Report(metrics).run(
        current_data=prep(current), reference_data=None if reference is None else prep(reference)
    )


def save_snapshot(snapshot: Any, out: Path, stem: str) -> list[Path]:
    """Writes `out/<stem>.html` and `out/<stem>.json` atomically; returns the paths."""
    from core.io import atomic_write_text

    html, js = Path(out) / f"{stem}.html", Path(out) / f"{stem}.json"
    atomic_write_text(html, snapshot.get_html_str(as_iframe=False))
    atomic_write_text(js, snapshot.json())
    return [html, js]
