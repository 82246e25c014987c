"""What `ember train ranker` and `ember evaluate ranker` (and the DVC stage `train_ranker`) run.

Splits are temporal and by whole request: a request belongs to the window of its first impression, so no slate is
cut in two and nothing of the future is in training.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError
from core.io import atomic_write_text
from models.config_overrides import coerce
from models.ranker.data import RankerDataset, read_ranker_set
from models.ranker.model import HEAD_MODES, RankerConfig
from models.ranker.tasks import availability
from models.ranker.train import (
    RankerTrainConfig,
    binary_tasks,
    evaluate_ranker,
    sample_requests,
    summary,
    train_ranker,
)
from models.training import input_fingerprint, prepare_work_dir, publish_run

BASELINES = ("logistic", "lightgbm", "mmoe")


def ranker_config(preset: str, overrides: dict[str, Any]) -> RankerConfig:
    """The preset with overrides; an invalid combination is a UserError naming the config."""
    try:
        return RankerConfig.preset(preset, **coerce(RankerConfig, overrides, prefix="model"))
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None


def read_posts(features: Path | None, cfg: RankerConfig) -> pd.DataFrame | None:
    """post_id and the config's attribute columns from the feature store's post_stats (None without one): what
    history posts that were never candidates in the training set are known by."""
    if features is None:
        return None
    file = Path(features) / "post_stats.parquet"
    if not file.is_file():
        raise UserError(f"--features: no post_stats.parquet in {features}")
    import pyarrow.parquet as pq

    names = set(pq.read_schema(file).names)
    cols = ["post_id", *(a for a in cfg.candidate_attributes if a in names)]
    return pd.read_parquet(file, columns=cols).drop_duplicates("post_id", keep="last")


def train_config(overrides: dict[str, Any]) -> RankerTrainConfig:
    return RankerTrainConfig(**coerce(RankerTrainConfig, overrides, prefix="train"))


def request_start(df: pd.DataFrame) -> pd.Series:
    """Each row's request time: the first impression time of its request."""
    return df.groupby("request_id")["event_timestamp"].transform("min")


def split_by_request(
    df: pd.DataFrame, fraction: float | None = None, days: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(earlier, later): `later` is the requests of the last `days` days, or the newest `fraction` of requests.

    Raises:
        UserError: neither or both given, a value out of range, or an empty side.
    """
    if (fraction is None) == (days is None):
        raise UserError("split: give exactly one of a fraction and a number of days")
    start = request_start(df)
    if days is not None:
        if days <= 0:
            raise UserError(f"--test-days: must be > 0, got {days}")
        cutoff = df["event_timestamp"].max().normalize() - pd.Timedelta(days=days - 1)
    else:
        assert fraction is not None
        if not 0.0 < fraction < 1.0:
            raise UserError(f"valid_fraction: {fraction} is not in (0, 1)")
        firsts = start.drop_duplicates().sort_values(ignore_index=True)
        cutoff = firsts.iloc[min(int(len(firsts) * (1.0 - fraction)), len(firsts) - 1)]
    later = start >= cutoff
    early, late = df[~later].reset_index(drop=True), df[later].reset_index(drop=True)
    if early.empty or late.empty:
        raise UserError(f"split at {cutoff}: leaves {len(early)} earlier and {len(late)} later rows")
    return early, late


def train_ranker_job(
    training_set: Path,
    out: Path,
    preset: str = "small",
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    valid_fraction: float = 0.2,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    features: Path | None = None,
    work: Path | None = None,
) -> dict[str, Any]:
    """Trains the ranker on a ranker training set; returns (and writes to out/metrics.json) its metrics.

    With `work`, training runs there and `out` is replaced whole at the end (`models.training.publish_run`); a run
    killed midway is resumed from work/checkpoint.pt by the next call with the same settings and inputs.

    `out` holds checkpoint.pt (resumable), config.json, best/ (the model to serve) and metrics.json, written last:
    its presence means the run finished.
    """
    cfg = ranker_config(preset, model_overrides or {})
    tc = train_config(train_overrides or {})
    df, observed = read_ranker_set(training_set)
    train_df, valid_df = split_by_request(df, fraction=valid_fraction)
    out = final = Path(out)
    if work is not None:
        settings = dict(preset=preset, model=model_overrides, train=train_overrides, valid_fraction=valid_fraction)
        key = {"settings": settings, "inputs": input_fingerprint(Path(training_set), features)}
        resume, out = prepare_work_dir(Path(work), key), Path(work)
    if not resume:
        for stale in ("metrics.json", "checkpoint.pt", "config.json", "best"):
            target = out / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    start = time.perf_counter()
    posts = read_posts(features, cfg)
    result = train_ranker(cfg, train_df, valid_df, observed, tc, out=out, resume=resume, log=log, posts=posts)
    seconds = time.perf_counter() - start
    train_seconds = sum(h["seconds"] for h in result.history)
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        **{k: round(v, 5) for k, v in result.best_metrics.items()},
        "train_rows": len(train_df),
        "valid_rows": len(valid_df),
        "observed_actions": list(observed),
        "seconds": round(seconds, 2),
        "train_impressions_per_s": round(len(train_df) * len(result.history) / max(train_seconds, 1e-9)),
        "preset": preset,
        "train_config": asdict(tc),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if work is not None:
        publish_run(out, final)
    return metrics


def compare_rankers(
    models: dict[str, Path],
    training_set: Path,
    valid_fraction: float = 0.2,
    features: Path | None = None,
    max_requests: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Saved rankers scored on one validation window: the newest `valid_fraction` of the training set's requests (a
    seeded sample of `max_requests` beyond that), as training scores its epochs. What the promotion gate compares, so
    a challenger trained on new data is not judged against numbers its champion got on another window.

    Returns:
        {"window": {...}, "<name>": summary metrics (auc_mean, gauc_mean, logloss_mean, ndcg@10, per action)}.
    """
    from models.ranker.model import load_ranker

    df, observed = read_ranker_set(training_set)
    _, valid_df = split_by_request(df, fraction=valid_fraction)
    valid_df = sample_requests(valid_df, max_requests, seed)
    out: dict[str, Any] = {
        "window": {
            "training_set": str(training_set),
            "valid_fraction": valid_fraction,
            "rows": len(valid_df),
            "requests": int(valid_df["request_id"].nunique()),
        }
    }
    for name, model_dir in models.items():
        model = load_ranker(Path(model_dir)).eval()
        ds = RankerDataset(
            valid_df, model.cfg, model.tasks, availability(observed, model.tasks), read_posts(features, model.cfg)
        )
        out[name] = {k: round(v, 5) for k, v in summary(evaluate_ranker(model, ds, observed)[0]).items()}
    return out


def _compact(report: dict[str, Any]) -> dict[str, Any]:
    """A ranking report with rounded numbers."""
    actions = {
        a: {k: (round(v, 5) if isinstance(v, float) else v) for k, v in m.items()} for a, m in report["actions"].items()
    }
    return {"actions": actions, "skipped": report["skipped"], "ndcg": report["ndcg"]}


def _epoch_line(log: Callable[[str], None], mode: str) -> Callable[[str], None]:
    """Keeps the headline numbers of a training epoch's log line."""
    keep = ("epoch=", "train_loss=", "seconds=", "auc_mean=", "gauc_mean=", "auc/click=")

    def line(text: str) -> None:
        log(f"  ranker_{mode}: " + " ".join(w for w in text.split() if w.startswith(keep)))

    return line


def _informed_oracle(training_set: Path, test_df: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """features.oracle.informed_probabilities on the test rows, when the training set names its synthetic source
    dataset (meta.json "source"; training sets built before the informed oracle lack it) and that dataset is still
    there."""
    from features.oracle import informed_probabilities, load_world

    meta_file = Path(training_set) / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    source = Path(meta["source"]) if meta.get("source") else None
    if meta.get("dataset") != "synthetic" or source is None or not (source / "manifest.json").is_file():
        return None
    return informed_probabilities(load_world(source), source, test_df)


def _check_names(head_modes: Sequence[str], baselines: Sequence[str]) -> None:
    unknown = set(head_modes) - set(HEAD_MODES)
    if unknown:
        raise UserError(f"--heads: unknown head modes {sorted(unknown)} (choose from {', '.join(HEAD_MODES)})")
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise UserError(f"--baselines: unknown baselines {sorted(unknown)} (choose from {', '.join(BASELINES)})")


def _train_rankers(
    cfg: RankerConfig,
    head_modes: Sequence[str],
    splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    observed: Sequence[str],
    tc: RankerTrainConfig,
    posts: pd.DataFrame | None,
    log: Callable[[str], None],
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Trains the ranker in each head mode on (train, valid) and reports it on test. Returns {"ranker_<mode>":
    {"seconds", "best_epoch", "report"}} and the binary actions the rankers predict."""
    train_df, valid_df, test_df = splits
    models: dict[str, dict[str, Any]] = {}
    actions: list[str] = []
    for mode in head_modes:
        start = time.perf_counter()
        result = train_ranker(
            replace(cfg, head_mode=mode), train_df, valid_df, observed, tc, posts=posts, log=_epoch_line(log, mode)
        )
        seconds = time.perf_counter() - start
        available = availability(observed, result.model.tasks)
        ds = RankerDataset(test_df, result.model.cfg, result.model.tasks, available, posts)
        report, _ = evaluate_ranker(result.model, ds, observed, tc.eval_batch_size)
        actions = binary_tasks(result.model, observed)
        models[f"ranker_{mode}"] = {"seconds": round(seconds, 2), "best_epoch": result.best_epoch}
        models[f"ranker_{mode}"]["report"] = _compact(report)
        log(f"ranker_{mode}: {seconds:.1f} s, test {summary(report)['auc_mean']:.4f} mean AUC")
    return models, actions


def _baseline_reports(
    baselines: Sequence[str],
    splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    actions: list[str],
    seed: int,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Fits each baseline on (train, valid) and reports it on test: {name: {"seconds", "report"}}."""
    from models.ranker.baselines import run_baselines
    from models.ranker.metrics import ranking_report

    train_df, valid_df, test_df = splits
    labels = test_df[actions].astype(np.float64)
    out: dict[str, dict[str, Any]] = {}
    for name, fitted in run_baselines(train_df, valid_df, test_df, actions, baselines, seed=seed).items():
        report = ranking_report(labels, fitted["probs"], test_df["user_id"], test_df["request_id"], actions)
        out[name] = {"seconds": round(fitted["seconds"], 2), "report": _compact(report)}
        log(f"{name}: {fitted['seconds']:.1f} s, test {summary(report)['auc_mean']:.4f} mean AUC")
    return out


def _oracle_reports(
    training_set: Path, test_df: pd.DataFrame, actions: list[str], max_history: int | None = None
) -> dict[str, dict[str, Any]]:
    """The true probabilities' report ("oracle") when the test rows carry them (synthetic data), the informed
    oracle's when the training set names its source dataset, and the truth with the preference read from each row's
    history (features.oracle.history_informed_probabilities): "oracle_history_<n>" from the newest `max_history`
    events, the ranker's own, and "oracle_history_all" from every event the row holds; {} on other data."""
    from models.ranker.metrics import ranking_report

    if not all(f"p_{a}" in test_df.columns for a in actions):
        return {}
    labels = test_df[actions].astype(np.float64)
    probs = {a: test_df[f"p_{a}"].to_numpy() for a in actions}
    report = ranking_report(labels, probs, test_df["user_id"], test_df["request_id"], actions)
    out = {"oracle": {"seconds": 0.0, "report": _compact(report)}}
    informed = _informed_oracle(training_set, test_df)
    if informed is not None:
        report = ranking_report(labels, informed, test_df["user_id"], test_df["request_id"], actions)
        out["oracle_informed"] = {"seconds": 0.0, "report": _compact(report)}
    out |= _history_oracles(training_set, test_df, actions, max_history)
    return out


def _history_oracles(
    training_set: Path, test_df: pd.DataFrame, actions: list[str], max_history: int | None
) -> dict[str, dict[str, Any]]:
    """The truth with each user's preference read from the clicks of the row's history: the ranker's newest
    `max_history` events and all of them (synthetic training sets with their source dataset and history columns)."""
    from features.oracle import history_informed_probabilities, load_world
    from models.ranker.metrics import ranking_report

    meta_file = Path(training_set) / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    source = Path(meta["source"]) if meta.get("source") else None
    if source is None or not (source / "manifest.json").is_file() or "hist_actions" not in test_df.columns:
        return {}
    world = load_world(source)
    longest = int(test_df["hist_post_ids"].map(lambda v: 0 if v is None else len(v)).max())
    out: dict[str, dict[str, Any]] = {}
    for name, last in ((f"oracle_history_{max_history}", max_history), ("oracle_history_all", longest)):
        if last is None or name in out:
            continue
        probs = history_informed_probabilities(world, test_df, max(int(last), 1))
        if probs is None:
            return {}
        report = ranking_report(test_df[actions].astype(np.float64), probs, test_df["user_id"],
                                test_df["request_id"], actions)  # fmt: skip
        out[name] = {"seconds": 0.0, "report": _compact(report)}
    return out


def _auc_table(models: dict[str, dict[str, Any]], actions: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{action: {model: {"auc", "gauc"}}} for the actions every model reports."""
    return {
        a: {n: {k: m["report"]["actions"][a][k] for k in ("auc", "gauc")} for n, m in models.items()}
        for a in actions
        if all(a in m["report"]["actions"] for m in models.values())
    }


def _wins(table: dict[str, dict[str, dict[str, float]]], baselines: Sequence[str]) -> dict[str, dict[str, bool]]:
    """{action: {"auc", "gauc"}: whether the best ranker mode beats every baseline}."""
    return {
        a: {
            k: max(row[n][k] for n in row if n.startswith("ranker_"))
            > max((row[b][k] for b in baselines if b in row), default=-1.0)
            for k in ("auc", "gauc")
        }
        for a, row in table.items()
    }


def evaluate_ranker_job(
    training_set: Path,
    test_days: float | None = None,
    test_fraction: float | None = None,
    valid_fraction: float = 0.1,
    preset: str = "nano",
    head_modes: Sequence[str] = HEAD_MODES,
    baselines: Sequence[str] = BASELINES,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    features: Path | None = None,
) -> dict[str, Any]:
    """The ranker (each head mode) against the baselines and, on synthetic data, the oracle: one temporal split,
    the same training rows, early stopping on the same validation requests, metrics on the same test requests.

    Returns:
        {"split": sizes and windows, "observed_actions", "models": {name: {"seconds", "report"}}, "table": {action:
        {name: {"auc", "gauc"}}}, "wins": {action: {"auc", "gauc"}: the best ranker mode beats every baseline},
        "oracle_ratio": {name: {action: auc / oracle auc}} (synthetic only; "oracle_informed", when the training
        set names its source dataset: the truth with each user's topic preference estimated from earlier clicks,
        features.oracle.informed_probabilities)}
    """
    log = log or (lambda line: None)
    _check_names(head_modes, baselines)
    cfg = ranker_config(preset, model_overrides or {})
    tc = replace(train_config(train_overrides or {}), seed=seed)
    df, observed = read_ranker_set(training_set)
    posts = read_posts(features, cfg)
    fit_df, test_df = split_by_request(df, fraction=test_fraction, days=test_days)
    train_df, valid_df = split_by_request(fit_df, fraction=valid_fraction)
    split = _split_summary(train_df, valid_df, test_df)
    log(f"split: {split}")
    models, actions = _train_rankers(cfg, head_modes, (train_df, valid_df, test_df), observed, tc, posts, log)
    models |= _baseline_reports(baselines, (train_df, valid_df, test_df), actions, seed, log)
    models |= _oracle_reports(training_set, test_df, actions, cfg.max_history)
    table = _auc_table(models, actions)
    report_out: dict[str, Any] = {
        "training_set": str(training_set),
        "preset": preset,
        "split": split,
        "observed_actions": list(observed),
        "train_config": asdict(tc),
        "models": models,
        "table": table,
        "wins": _wins(table, baselines),
    }
    if "oracle" in models:
        report_out["oracle_ratio"] = _oracle_ratios(models, table)
    return report_out


def _split_summary(train_df: pd.DataFrame, valid_df: pd.DataFrame, test_df: pd.DataFrame) -> dict[str, Any]:
    """Rows per part and the test window (its first request's start, its last impression)."""
    return {
        "train": len(train_df),
        "valid": len(valid_df),
        "test": len(test_df),
        "test_requests": int(test_df["request_id"].nunique()),
        "test_start": str(request_start(test_df).min()),
        "test_end": str(test_df["event_timestamp"].max()),
    }


def _oracle_ratios(models: dict[str, Any], table: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{model: {action: its AUC / the oracle's}} for every model but the oracle."""
    return {
        n: {a: round(row[n]["auc"] / row["oracle"]["auc"], 4) for a, row in table.items()}
        for n in models
        if n != "oracle"
    }
