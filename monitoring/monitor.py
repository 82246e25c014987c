"""One monitoring run over one window: every check of monitoring/ against its reference, with one verdict.

Three windows take part. reference: the ranker training set (the training window's features and labels, logged
under the logging policy). current: the exposure log (what was served, with the user features the models saw),
joined with outcomes (monitoring/outcomes.py: a file, or simulated from the synthetic ground truth). baseline
(optional): an earlier window served by the model being watched, e.g. the champion's first day(s), read and joined
with outcomes the same way as the current one.

Each check is compared against the window that differs from the current one only by what it is meant to detect:

    data_drift        user features, one row per request, vs the      monitoring/drift.py
                      training window's requests (judged on who asks:
                      attributes, account age, follow graph; action
                      counters reported); post/author features of the
                      served items vs the baseline's
    prediction_drift  per-action predictions (pred_<action>) vs the     monitoring/drift.py
                      baseline's
    target_drift      per-action outcome rates vs the baseline's        monitoring/target_drift.py
    quality           NDCG/precision/recall@k, novelty, diversity, ...  monitoring/quality.py
                      vs the baseline's slates
    embedding_drift   both towers vs the baseline's: the requests'      monitoring/embedding_drift.py
                      users, the served posts
    skew              served feature values vs the offline recompute    monitoring/skew.py

Why two references: which posts are served, and so their post/author features, the predictions on them and what
users do with them (outcome rates, slate quality, the served posts' embeddings), depend on the policy that served
them. The training window was logged by another policy than the served model, so against it these checks "drift" on
every run (measured on the synthetic world, which has no drift: click rate 0.155 in the training labels, 0.41 under
the model's slates; 96% of features and 75% of embedding components drifted) and the monitor flow would retrain
forever. What users did before a request depends on the policy too: their action counters and rates and the
histories the user tower reads are outcomes of earlier slates, and in a young world the 7- and 28-day counters are
still filling (a no-drift simulation of the nano world, its first served day: 74% of user features and every user
embedding component drifted against the training window). Who asks does not depend on the policy: the user side is
judged on the population features (attributes, account age, follow graph) against the training window, one row per
request on both sides (training rows are per impression, so per-row counts would weigh users by slate size), so the
test says whether the people asking changed; the counters are measured and reported beside them, not judged.
Without a baseline the policy-dependent comparisons are "insufficient_data" with the reason "no baseline served
window", never "fail"; quality metrics are still computed and reported.

The run is "fail" when one of the alarming checks (thresholds.yaml `alarm_checks`: data drift, target drift,
quality and skew) fails, "insufficient_data" when no check reached a verdict, else "pass". Prediction and embedding
drift are measured, reported and plotted, but alarm nobody by default: in a no-drift simulation of the nano world,
against the champion's first served day, its second and third days' predictions moved by 0.09-0.80 normed
Wasserstein (13 and 14 of 14 actions over the 0.1 threshold) and the served posts' and users' embeddings by 0.10-0.55
(every component), as every day brings fresh posts and the counters the ranker reads fill, while the outcome rates
and the slates' quality, what users get, stayed within their thresholds. Reports
(Evidently HTML and JSON, the verdicts, `summary.json`) are written file by file with core.io.atomic_write_text, the
summary last, so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.actions import ACTION_NAMES
from core.errors import UserError
from core.io import atomic_write_text
from monitoring.config import MonitorConfig, load_config
from monitoring.drift import DriftResult, Status, data_drift, prediction_drift
from monitoring.outcomes import OutcomeSet, join_outcomes, no_outcomes, read_outcomes, simulate_outcomes
from monitoring.quality import (
    NO_REFERENCE,
    QualityResult,
    evidently_report,
    metric_names,
    save_snapshot,
    slate_quality,
)
from monitoring.skew import TIME, SkewResult

TEST_NAMES = ("data_drift", "prediction_drift", "target_drift", "quality", "embedding_drift", "skew")
_FEATURE = re.compile(r"^(user_|post_|author_)|^hist_length$|^n_followees$")
# The request side of the features (who asks); the rest (post_, author_) describe what was served.
_USER_FEATURE = re.compile(r"^user_|^hist_length$|^n_followees$")
# Of those, what describes the people asking whatever was served to them: attributes, account age, the follow graph.
# The rest (action counts and rates over 1/7/28 days, the history length) are what users did with earlier slates.
POPULATION_FEATURES = ("user_account_age_days", "user_follower_count", "user_followee_count", "n_followees",
                       "user_country", "user_language", "user_age_bucket", "user_activity")  # fmt: skip
NO_BASELINE = "no baseline served window"
_NOT_FEATURES = {"user_id", "post_id", "author_id", "post_author_id", "post_created_at_ms"}


@dataclass
class MonitorResult:
    """Every check's result; `summary()` is the flat dict the dashboards and the flows read."""

    model: str
    window_start: datetime | None
    window_end: datetime | None
    status: Status
    data_drift: DriftResult
    prediction_drift: DriftResult
    target_drift: DriftResult
    quality: QualityResult
    embedding_drift: DriftResult
    skew: SkewResult
    outcomes: dict[str, Any] = field(default_factory=dict)
    prediction_mean: dict[str, float] = field(default_factory=dict)
    alarm_checks: tuple[str, ...] = TEST_NAMES
    notes: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)

    def tests(self) -> dict[str, Status]:
        return {name: getattr(self, name).status for name in TEST_NAMES}

    def summary(self) -> dict[str, Any]:
        q = self.quality
        quality = {name: q.metrics.get(name) for name in metric_names(q.k)}
        return {
            "model": self.model,
            "window_start": None if self.window_start is None else self.window_start.isoformat(),
            "window_end": None if self.window_end is None else self.window_end.isoformat(),
            "status": self.status,
            "data_drift_share": self.data_drift.share_drifted,
            "prediction_mean": dict(self.prediction_mean),
            "quality": quality,
            "skew_rate": self.skew.rate,
            "embedding_drift_share": self.embedding_drift.share_drifted,
            "target_drift_share": self.target_drift.share_drifted,
            "tests": self.tests(),
            "alarms": [name for name in self.alarm_checks if self.tests()[name] == "fail"],
        }

    def to_dict(self) -> dict[str, Any]:
        """The summary plus every check's details, the outcomes' source and notes."""
        out = self.summary()
        out["checks"] = {name: getattr(self, name).to_dict() for name in TEST_NAMES}
        out["outcomes"] = self.outcomes
        out["notes"] = list(self.notes)
        out["reports"] = list(self.reports)
        return out

    def reasons(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name).reasons) for name in TEST_NAMES}


MonitorRun = MonitorResult  # the name monitoring/dashboards.py's docstring uses


def overall_status(statuses: list[Status], alarming: list[Status] | None = None) -> Status:
    """ "fail" when an alarming check (`alarming`, default: all) failed; "insufficient_data" when no check reached a
    verdict; else "pass"."""
    if "fail" in (statuses if alarming is None else alarming):
        return "fail"
    if all(s == "insufficient_data" for s in statuses):
        return "insufficient_data"
    return "pass"


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------


def read_reference(path: Path) -> pd.DataFrame:
    """The reference training set (a directory holding training_set.parquet, or a parquet file), flat columns only
    (the history lists are not drift features; embedding drift reads history from the feature tables)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    file = path / "training_set.parquet" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path}: reference not found (expected a training set parquet file or its directory)")
    try:
        schema = pq.read_schema(file)
        flat = [f.name for f in schema if not pa.types.is_nested(f.type)]
        return pq.read_table(file, columns=flat).to_pandas()
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"{file}: not a readable parquet file: {str(err).splitlines()[0]}") from None


def read_current(path: Path, name: str = "current window") -> tuple[pd.DataFrame, list[str]]:
    """(the served items, notes): an exposure log file or directory (rotated files included), or a parquet file.
    `name` is the window's name in messages ("current window", "baseline")."""
    from monitoring.exposure_frame import read_exposure

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: {name} not found (expected an exposure log file or directory)")
    if path.is_file() and path.suffix == ".parquet":
        try:
            return pd.read_parquet(path), []
        except Exception as err:  # pyarrow raises several types for a bad file
            raise UserError(f"{path}: not a readable parquet file: {str(err).splitlines()[0]}") from None
    read = read_exposure(path)
    label = "exposure log" if name == "current window" else f"{name} exposure log"
    note = f"{label}: {len(read.files)} files, {read.records} records, {len(read.frame)} served items"
    if read.malformed:
        note += f", {read.malformed} malformed lines skipped"
    return read.frame, [note]


def _ts_seconds(frame: pd.DataFrame) -> pd.Series:
    if "ts" not in frame.columns:
        return pd.Series(np.nan, index=frame.index)
    ts = frame["ts"]
    if pd.api.types.is_datetime64_any_dtype(ts):
        return (pd.to_datetime(ts, utc=True) - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return pd.to_numeric(ts, errors="coerce")


def _window(
    current: pd.DataFrame, start: datetime | None, end: datetime | None
) -> tuple[pd.DataFrame, datetime | None, datetime | None]:
    """The rows of [start, end) (by ts, epoch seconds) and the window's bounds (given, else the data's)."""
    ts = _ts_seconds(current)
    keep = pd.Series(True, index=current.index)
    if start is not None:
        keep &= ts >= start.timestamp()
    if end is not None:
        keep &= ts < end.timestamp()
    window = current.loc[keep].reset_index(drop=True)
    seen = _ts_seconds(window).dropna()
    if start is None and len(seen):
        start = datetime.fromtimestamp(float(seen.min()), UTC)
    if end is None and len(seen):
        end = datetime.fromtimestamp(float(seen.max()), UTC)
    return window, start, end


def per_request(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per request (its first), so each request counts once whatever its slate size; the frame itself when
    it has no request_id."""
    if "request_id" not in frame.columns or len(frame) == 0:
        return frame
    return frame.drop_duplicates("request_id").reset_index(drop=True)


def is_user_feature(name: str) -> bool:
    """A feature of who asks (user_*, hist_length, n_followees), not of what was served (post_*, author_*)."""
    return bool(_USER_FEATURE.search(name))


def default_features(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """The numeric model inputs both frames hold (the exposure log holds the user's)."""
    return [
        c
        for c in reference.columns
        if _FEATURE.search(c)
        and c not in _NOT_FEATURES
        and c in current.columns
        and pd.api.types.is_numeric_dtype(reference[c])
        and pd.api.types.is_numeric_dtype(current[c])
    ]


def _sample_slates(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """Whole slates (request_ids), seeded, up to about max_rows rows."""
    if len(frame) <= max_rows or "request_id" not in frame.columns:
        return frame
    ids = frame["request_id"].drop_duplicates()
    n = max(1, int(len(ids) * max_rows / len(frame)))
    chosen = ids.sample(n=n, random_state=seed)
    return frame[frame["request_id"].isin(chosen)].reset_index(drop=True)


def _outcomes(
    current: pd.DataFrame, given: pd.DataFrame | None, detail: str, world: Any, seed: int, as_of: datetime | None
) -> OutcomeSet:
    """The served items joined with the given outcomes, else simulated in `world`, else none."""
    if len(current) == 0 or not {"request_id", "post_id"} <= set(current.columns):
        return no_outcomes(pd.DataFrame({"request_id": [], "post_id": []}))  # nothing served to join outcomes to
    if given is not None:
        return join_outcomes(current, given, detail)
    if world is not None:
        return simulate_outcomes(current, world, seed=seed, as_of=as_of)
    return no_outcomes(current)


def _post_catalogue(
    features: Path | None, reference: pd.DataFrame, end: datetime | None
) -> tuple[pd.Series, int | None]:
    """(topic per post_id, recommendable posts at the window's end): from post_stats when a features directory is
    given, else the reference's posts (and no catalogue size: coverage then counts the posts of both windows)."""
    if features is not None and (Path(features) / "post_stats.parquet").exists():
        import pyarrow.parquet as pq

        table = pq.read_table(
            Path(features) / "post_stats.parquet", columns=["post_id", "post_topic", "post_created_at_ms"]
        )
        posts = table.to_pandas().drop_duplicates("post_id", keep="last")
        if end is not None:
            posts = posts[posts["post_created_at_ms"] <= end.timestamp() * 1000]
        return posts.set_index("post_id")["post_topic"], len(posts)
    if {"post_id", "post_topic"} <= set(reference.columns):
        return reference.drop_duplicates("post_id", keep="last").set_index("post_id")["post_topic"], None
    return pd.Series(dtype="float64"), None


def _served_ms(frame: pd.DataFrame, as_of: datetime | None) -> pd.Series:
    """The time (epoch ms) each served row's features are taken at: the service's fixed `as_of`, else the row's ts."""
    if as_of is not None:
        return pd.Series(np.int64(as_of.timestamp() * 1000), index=frame.index)
    return (_ts_seconds(frame).fillna(0) * 1000).astype("int64")


def _request_users(frame: pd.DataFrame, ms: pd.Series, n: int, seed: int) -> pd.DataFrame:
    """user_id and lookup time of up to n requests (one row per request: users weigh by how often they ask)."""
    rows = frame[[c for c in ("request_id", "user_id") if c in frame.columns]].assign(**{TIME: ms})
    rows = per_request(rows).dropna(subset=["user_id"])
    return rows.sample(n=min(n, len(rows)), random_state=seed)[["user_id", TIME]]


def _served_posts(frame: pd.DataFrame, n: int, seed: int) -> np.ndarray:
    """Up to n post ids, one per served item (popular posts weigh more)."""
    posts = pd.to_numeric(frame["post_id"], errors="coerce").dropna()
    return posts.sample(n=min(n, len(posts)), random_state=seed).to_numpy(np.int64)


def _embedding_drift(
    cur: pd.DataFrame,
    base: pd.DataFrame | None,
    as_of: datetime | None,
    model_dir: Path,
    features: Path,
    cfg: MonitorConfig,
) -> tuple[DriftResult, dict[str, Any]]:
    """Embedding drift against the baseline's served window (not compared without one): the user tower on the
    requests' users, the candidate tower on the served posts. Both depend on the serving policy: which posts are
    served, and the engagement histories the user tower reads are what users did with earlier slates (against the
    training window, a no-drift simulation drifted on every component from its first served day, its histories
    filled by the model's own slates).

    Both sides are traffic-weighted samples: users per request (at the request's time), posts per served item. A
    sample of distinct entities would not do: a sample of a window over-represents its active users and popular
    posts among its distinct ones, and a replay of the reference itself would drift (measured: 50% of components).
    """
    from monitoring.embedding_drift import embedding_drift, tower_embeddings

    n, seed = cfg.embedding_drift.max_entities, cfg.seed
    no_users = pd.DataFrame({"user_id": pd.Series(dtype="int64"), TIME: pd.Series(dtype="int64")})
    no_posts = np.zeros(0, dtype=np.int64)
    if base is None:
        return _insufficient("embedding_drift", f"towers not compared: {NO_BASELINE}"), {}
    cur_ms = _served_ms(cur, as_of)
    cur_end = int(cur_ms.max()) if len(cur_ms) else 0
    cur_users, cur_posts = _request_users(cur, cur_ms, n, seed), _served_posts(cur, n, seed)
    current = tower_embeddings(model_dir, features, cur_users, cur_posts, cur_end)
    base_ms = _served_ms(base, as_of)
    base_end = int(base_ms.max()) if len(base_ms) else 0
    base_users = _request_users(base, base_ms, n, seed) if "user_id" in base.columns else no_users
    posts = _served_posts(base, n, seed) if "post_id" in base.columns else no_posts
    reference = tower_embeddings(model_dir, features, base_users, posts, base_end)
    refs: dict[str, np.ndarray | None] = {"user": reference.get("user"), "post": reference.get("post")}
    curs: dict[str, np.ndarray | None] = {"user": current.get("user"), "post": current.get("post")}
    return embedding_drift(refs, curs, cfg)


def _combine(kind: str, parts: list[DriftResult], threshold: float | None) -> DriftResult:
    """One verdict of several comparisons of disjoint columns: fail if any failed, pass if any passed (and none
    failed), else no verdict; the drifted share over all compared columns."""
    if len(parts) == 1:
        return parts[0]
    per_feature = {name: entry for part in parts for name, entry in part.per_feature.items()}
    share = None
    if any(part.share_drifted is not None for part in parts) and per_feature:
        share = sum(bool(v["drifted"]) for v in per_feature.values()) / len(per_feature)
    return DriftResult(
        status=overall_status([part.status for part in parts]),
        share_drifted=share,
        per_feature=per_feature,
        reasons=[r for part in parts for r in part.reasons],
        threshold=threshold,
        n_reference=parts[0].n_reference,
        n_current=parts[0].n_current,
        kind=kind,
    )


def _insufficient(kind: str, reason: str) -> DriftResult:
    return DriftResult(status="insufficient_data", share_drifted=None, reasons=[reason], kind=kind)


@dataclass
class _RunLog:
    """What a run leaves besides its verdicts: the report files written under `out` (none without it), in the order
    they were written, and notes."""

    out: Path | None
    notes: list[str]
    reports: list[Path] = field(default_factory=list)

    def html(self, name: str) -> Path | None:
        return None if self.out is None else self.out / name

    def snapshot(self, snapshot: Any, name: str) -> None:
        if self.out is not None:
            self.reports += save_snapshot(snapshot, self.out, name)


def _read_windows(
    reference: Path | pd.DataFrame,
    current: Path | pd.DataFrame,
    baseline: Path | pd.DataFrame | None,
    window_start: datetime | None,
    window_end: datetime | None,
    notes: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, datetime | None, datetime | None]:
    """(reference, the current window's served items, baseline, the window's bounds), each read unless a frame."""
    ref = read_reference(Path(reference)) if not isinstance(reference, pd.DataFrame) else reference
    if isinstance(current, pd.DataFrame):
        cur_all = current
    else:
        cur_all, read_notes = read_current(Path(current))
        notes += read_notes
    base: pd.DataFrame | None = None
    if isinstance(baseline, pd.DataFrame):
        base = baseline
    elif baseline is not None:
        base, read_notes = read_current(Path(baseline), "baseline")
        notes += read_notes
    cur, start, end = _window(cur_all, window_start, window_end)
    return ref, cur, base, start, end


def _outcome_source(
    outcomes: Path | pd.DataFrame | None, synthetic: Path | None
) -> tuple[pd.DataFrame | None, str, Any]:
    """(the given outcomes and where they came from, else the synthetic world to simulate them in, else neither)."""
    if isinstance(outcomes, pd.DataFrame):
        return outcomes, "outcomes given as a frame", None
    if outcomes is not None:
        return read_outcomes(Path(outcomes)), f"outcomes file {outcomes}", None
    if synthetic is not None:
        from features.oracle import load_world

        return None, "", load_world(Path(synthetic))
    return None, "", None


def _skew_tables(features: Path | None, cur: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The offline feature rows of the current window's users and candidates, which skew recomputes against."""
    if features is None or not len(cur) or "user_id" not in cur.columns:
        return {}
    from monitoring.skew import read_candidate_tables, read_user_tables

    users = pd.to_numeric(cur["user_id"], errors="coerce").dropna().to_numpy(np.int64)
    return read_user_tables(Path(features), users) | read_candidate_tables(Path(features), cur)


def _check_data_drift(
    ref: pd.DataFrame, cur: pd.DataFrame, base: pd.DataFrame | None, cfg: MonitorConfig, log: _RunLog
) -> DriftResult:
    """Who asks (user features, one row per request) against the training window's requests, judged on the
    population features only (the behaviour counters are reported beside them); what was served (post/author
    features) against the baseline, if both hold any."""
    shared = default_features(ref, cur) if len(cur) else []
    if not shared and len(cur):
        log.notes.append("no numeric user_/post_/author_ feature is shared by the reference and the served items")
    user_cols = [c for c in shared if is_user_feature(c)]
    user_cols += [c for c in POPULATION_FEATURES if c not in user_cols and c in ref.columns and c in cur.columns]
    population = [c for c in user_cols if c in POPULATION_FEATURES]
    users_html, served_html = log.html("data_drift.html"), log.html("data_drift_served.html")
    parts = [data_drift(per_request(ref), per_request(cur), user_cols, cfg, html=users_html, judged=population)]
    served_cols = [c for c in cur.columns if _FEATURE.search(c) and not is_user_feature(c) and c not in _NOT_FEATURES]
    served_cols = [c for c in served_cols if pd.api.types.is_numeric_dtype(cur[c])]
    if base is not None and served_cols:
        parts.append(data_drift(base, cur, served_cols, cfg, html=served_html))
    dd = _combine("data_drift", parts, cfg.data_drift.drift_share)
    if base is None and served_cols:
        dd.reasons.append(f"{len(served_cols)} post/author features not compared: {NO_BASELINE}")
    log.reports += [p for p in (users_html, served_html) if p is not None and p.exists()]
    return dd


def _check_prediction_drift(
    cur: pd.DataFrame, base: pd.DataFrame | None, cfg: MonitorConfig
) -> tuple[DriftResult, dict[str, float]]:
    """Prediction drift against the baseline's predictions of the items it served, and the current mean per
    action."""
    pred_actions = [c.removeprefix("pred_") for c in cur.columns if c.startswith("pred_")]
    if base is not None and pred_actions:
        pdr = prediction_drift(base, cur, pred_actions, cfg)
    else:
        why = [NO_BASELINE] if base is None else []
        why += [] if pred_actions else ["the served items carry no pred_<action> columns"]
        pdr = DriftResult(status="insufficient_data", share_drifted=None, reasons=why, kind="prediction_drift")
    return pdr, {a: float(cur[f"pred_{a}"].mean()) for a in pred_actions if cur[f"pred_{a}"].notna().any()}


_NO_OUTCOMES = "no outcomes for the served items (give an outcomes file or --synthetic)"
_NO_BASELINE_OUTCOMES = "no outcomes for the baseline's served items"


def _check_target_drift(
    current: OutcomeSet, base: pd.DataFrame | None, base_served: pd.DataFrame | None, cfg: MonitorConfig, log: _RunLog
) -> DriftResult:
    """Per-action outcome rates against the baseline's."""
    if not current.actions:
        return _insufficient("target_drift", _NO_OUTCOMES)
    if base is None:
        return _insufficient("target_drift", NO_BASELINE)
    if base_served is None:
        return _insufficient("target_drift", _NO_BASELINE_OUTCOMES)
    from monitoring.target_drift import target_drift

    label_actions = [a for a in current.actions if a in ACTION_NAMES]
    td, snapshot = target_drift(base_served, current.frame, label_actions, cfg)
    if snapshot is not None:
        log.snapshot(snapshot, "target_drift")
    return td


def _check_quality(
    current: OutcomeSet,
    base: pd.DataFrame | None,
    base_served: pd.DataFrame | None,
    catalogue: tuple[pd.Series, int | None],
    ref: pd.DataFrame,
    cfg: MonitorConfig,
    log: _RunLog,
) -> QualityResult:
    """The slates' quality against the baseline's; reported even without one. `catalogue`: (topic per post_id,
    recommendable posts)."""
    served = current.frame
    if current.actions:
        # Item popularity (novelty, popularity bias) is counted on the training labels for both windows: one scale.
        topics, size = catalogue
        quality = slate_quality(
            served, base_served, cfg.quality, topics=topics, catalogue_size=size, popularity_from=ref
        )
        if base is None or base_served is None:
            lacking = NO_BASELINE if base is None else _NO_BASELINE_OUTCOMES
            quality.reasons = [lacking if r == NO_REFERENCE else r for r in quality.reasons]
    else:
        quality = slate_quality(None, base_served, cfg.quality)
        quality.reasons = [_NO_OUTCOMES] + ([NO_BASELINE] if base is None else [])
    if log.out is not None and quality.n_slates:
        try:
            log.snapshot(evidently_report(served, base_served, cfg.quality), "quality")
        except Exception as err:  # the numbers above stand; only Evidently's report is missing
            log.notes.append(f"Evidently's recsys report failed: {type(err).__name__}: {err}".splitlines()[0])
    return quality


def _check_skew(
    cur: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    features: Path | None,
    cfg: MonitorConfig,
    as_of: datetime | None,
) -> SkewResult:
    """Served feature values against the offline recompute."""
    from monitoring.skew import train_serve_skew

    if features is None:
        return SkewResult(
            status="insufficient_data", rate=None, reasons=["no offline feature tables given (--features)"]
        )
    return train_serve_skew(cur, tables, cfg.skew, as_of)


def _check_embedding_drift(
    cur: pd.DataFrame,
    base: pd.DataFrame | None,
    as_of: datetime | None,
    retrieval_model: Path | None,
    features: Path | None,
    cfg: MonitorConfig,
    log: _RunLog,
) -> DriftResult:
    """The towers' outputs against the baseline's (`_embedding_drift`); no verdict when they cannot be computed."""
    if retrieval_model is None or features is None:
        return _insufficient("embedding_drift", "embedding drift needs --retrieval-model and --features")
    if len(cur) == 0 or not {"user_id", "post_id"} <= set(cur.columns):
        return _insufficient("embedding_drift", "current window is empty")
    try:
        ed, snapshots = _embedding_drift(cur, base, as_of, Path(retrieval_model), Path(features), cfg)
    except UserError as err:  # e.g. no post_stats table, a model of other code: no verdict, the rest stands
        return _insufficient("embedding_drift", f"could not encode the windows: {err}")
    for tower, snapshot in snapshots.items():
        log.snapshot(snapshot, f"embedding_drift_{tower}")
    return ed


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorInputs:
    """What one monitoring window reads (run_monitor).

    Attributes:
        reference: the ranker training set (directory or parquet) or its frame: the request population's reference.
        current: the exposure log (file or directory of rotated files), a parquet of served items, or a frame.
        baseline: a served window of the same model (exposure log, parquet or frame; e.g. the champion's first
            day(s)): the reference of everything the serving policy shapes (served post/author features,
            predictions, outcome rates, quality, served posts' embeddings). None: those are "insufficient_data".
        outcomes: an outcomes file (JSONL/parquet: request_id, post_id, action flags) or frame; takes precedence.
            It serves both the current window and the baseline (joined on request_id, post_id).
        synthetic: a synthetic dataset directory: without `outcomes`, outcomes are simulated from its ground truth
            (the baseline's with another seed, so the two windows' draws are independent).
        features: the offline feature tables (data/features): needed by skew and embedding drift, and for topics
            (diversity) and the catalogue size (coverage).
        retrieval_model: a saved two-tower (artifacts/retrieval/best): needed by embedding drift.
        as_of: the time the service ran at when it served a fixed-time world (variants.yaml's `as_of`): feature
            lookups, simulated outcomes and post ages use it instead of the log's wall-clock ts (both windows).
        window_start / window_end: keep served items with ts in [start, end); None = all, bounds from the data.
        model: the monitored model's name in the result.
    """

    reference: Path | pd.DataFrame
    current: Path | pd.DataFrame
    baseline: Path | pd.DataFrame | None = None
    outcomes: Path | pd.DataFrame | None = None
    synthetic: Path | None = None
    features: Path | None = None
    retrieval_model: Path | None = None
    as_of: datetime | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    model: str = "ranker"


def run_monitor(inputs: MonitorInputs, out: Path | None = None, cfg: MonitorConfig | None = None) -> MonitorResult:
    """Runs every check over one window of `inputs` (MonitorInputs) and (when `out` is given) writes the reports
    there.

    Raises:
        UserError: a missing or unreadable input file (bad data inside readable files is insufficient_data).
    """
    cfg = cfg or load_config()
    log = _RunLog(Path(out) if out is not None else None, notes=[])
    # Every input is read (and bad input reported) before the first report is written.
    i = inputs
    ref, cur, base, start, end = _read_windows(
        i.reference, i.current, i.baseline, i.window_start, i.window_end, log.notes
    )
    given, given_detail, world = _outcome_source(i.outcomes, i.synthetic)
    features, as_of, retrieval_model = i.features, i.as_of, i.retrieval_model
    tables = _skew_tables(features, cur)
    if retrieval_model is not None and not (Path(retrieval_model) / "config.json").is_file():
        raise UserError(f"{retrieval_model}: not a saved two-tower model (no config.json)")

    dd = _check_data_drift(ref, cur, base, cfg, log)
    pdr, prediction_mean = _check_prediction_drift(cur, base, cfg)
    outcome_set, base_served = _window_outcomes(cur, base, (given, given_detail, world), cfg, as_of, log)
    td = _check_target_drift(outcome_set, base, base_served, cfg, log)
    catalogue = _post_catalogue(features, ref, end)
    quality = _check_quality(outcome_set, base, base_served, catalogue, ref, cfg, log)
    sk = _check_skew(cur, tables, features, cfg, as_of)
    ed = _check_embedding_drift(cur, base, as_of, retrieval_model, features, cfg, log)

    checks: dict[str, DriftResult | QualityResult | SkewResult] = {"data_drift": dd, "prediction_drift": pdr,
        "target_drift": td, "quality": quality, "embedding_drift": ed, "skew": sk}  # fmt: skip
    result = MonitorResult(
        model=i.model,
        window_start=start,
        window_end=end,
        status=overall_status(
            [c.status for c in checks.values()], [c.status for name, c in checks.items() if name in cfg.alarm_checks]
        ),
        data_drift=dd,
        prediction_drift=pdr,
        target_drift=td,
        quality=quality,
        embedding_drift=ed,
        skew=sk,
        outcomes=outcome_set.describe(),
        prediction_mean=prediction_mean,
        notes=log.notes,
        alarm_checks=tuple(cfg.alarm_checks),
    )
    if log.out is not None:
        _write_result(result, log)
    return result


def _window_outcomes(
    cur: pd.DataFrame,
    base: pd.DataFrame | None,
    source: tuple[Any, str, Any],
    cfg: MonitorConfig,
    as_of: datetime | None,
    log: _RunLog,
) -> tuple[OutcomeSet, pd.DataFrame | None]:
    """The current window's outcomes and a sample of the baseline's served slates with theirs (None without a
    baseline or baseline outcomes); the baseline's simulated draws use another seed, so the two are independent.
    `source`: (given outcomes, their description, the synthetic world) of `_outcome_source`."""
    given, detail, world = source
    outcome_set = _outcomes(cur, given, detail, world, cfg.seed, as_of)
    log.notes.append(f"outcomes: {outcome_set.source}: {outcome_set.detail}")
    if base is None:
        return outcome_set, None
    base_set = _outcomes(base, given, detail, world, cfg.seed + 1, as_of)
    log.notes.append(f"baseline outcomes: {base_set.source}: {base_set.detail}")
    return outcome_set, _sample_slates(base_set.frame, cfg.max_rows, cfg.seed) if base_set.actions else None


def _write_result(result: MonitorResult, log: _RunLog) -> None:
    """result.json and summary.json beside the reports, each written whole (atomically)."""
    assert log.out is not None
    result.reports = [str(p) for p in [*log.reports, log.out / "result.json", log.out / "summary.json"]]
    atomic_write_text(log.out / "result.json", json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    atomic_write_text(log.out / "summary.json", json.dumps(result.summary(), indent=2, default=str) + "\n")


def monitor_summary(reference: Path, current: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
    """`run_monitor` with the default thresholds, writing its reports to `out`; returns the summary (what a
    process boundary carries back: the flows run this in a process of their own, flows.isolated)."""
    from monitoring.config import load_config

    summary = run_monitor(MonitorInputs(reference, current, **kwargs), out, load_config()).summary()
    return dict(json.loads(json.dumps(summary, default=str)))  # as summary.json holds it
