"""The retrieval jobs that `ember train retrieval`, `ember index build`, the DVC stages and the Prefect flow all call.

The served path (dvc.yaml), the model `ember evaluate retrieval --protocol temporal` reports:

dataset (data/synth: click events, posts, users)
    -> train_retrieval_events: the causal two-tower trained one pass per user sequence on the temporal split's
       train events, early-stopped on validation Recall@200, scored on the test targets by the evaluation's own
       function (models.retrieval.evaluate.two_tower_metrics); out/best/{model.pt,config.json}, out/metrics.json
    -> build_event_index: every post of the dataset embedded by that candidate tower from the same post table
       training used (counts over click events, ages at the newest event), checked against exact search on the
       users' newest requests, out/index.faiss

The Feast path (`--training-set`): a point-in-time retrieval training set (features.store.training_set)
    -> train_retrieval: temporal split, two-tower training (models.retrieval.train)
    -> build_retrieval_index: post features from the offline store's post_stats as of the index-build time
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import UserError
from core.io import atomic_write_text
from models.config_overrides import coerce
from models.retrieval.index import IndexConfig
from models.retrieval.model import TwoTowerConfig

TRAINING_SET_FILE = "training_set.parquet"


def read_training_set(path: Path) -> pd.DataFrame:
    """A training set written by `ember features training-set` (the directory or its parquet file)."""
    path = Path(path)
    file = path / TRAINING_SET_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path}: no training set (expected {file}; run `ember features training-set`)")
    return pd.read_parquet(file)


def model_config(preset: str, overrides: dict[str, Any]) -> TwoTowerConfig:
    """The preset with overrides; an invalid combination is a UserError naming the config."""
    try:
        return TwoTowerConfig.preset(preset, **coerce(TwoTowerConfig, overrides, prefix="model"))
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None


def train_retrieval(
    training_set: Path,
    out: Path,
    preset: str = "small",
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    valid_fraction: float = 0.2,
    resume: bool = False,
    log: Any = None,
    work: Path | None = None,
) -> dict[str, Any]:
    """Trains the two-tower on a retrieval training set; returns (and writes to out/metrics.json) its metrics.

    With `work`, training runs there and `out` is replaced whole at the end (`models.training.publish_run`); a run
    killed midway is resumed from work/checkpoint.pt by the next call with the same settings and inputs.

    The last `valid_fraction` of the rows by time is the validation window (early stopping and the reported
    metrics); the corpus is every post clicked in either window. `out` holds `checkpoint.pt` (resumable, rewritten
    atomically each epoch), `config.json`, `best/` (the model to serve) and `metrics.json` (written last: its
    presence means the run finished).
    """
    from models.retrieval.data import corpus_from_rows, temporal_split
    from models.retrieval.train import TrainConfig, train
    from models.training import input_fingerprint, prepare_work_dir, publish_run

    cfg = model_config(preset, model_overrides or {})
    tc = TrainConfig(**coerce(TrainConfig, train_overrides or {}, prefix="train"))
    df = read_training_set(training_set)
    if df.empty:
        raise UserError(f"{training_set}: empty training window (0 rows)")
    train_df, valid_df = temporal_split(df, valid_fraction)
    if train_df.empty or valid_df.empty:
        raise UserError(f"{training_set}: the temporal split left train {len(train_df)} / valid {len(valid_df)} rows")
    out = final = Path(out)
    if work is not None:
        settings = dict(preset=preset, model=model_overrides, train=train_overrides, valid_fraction=valid_fraction)
        key = {"settings": settings, "inputs": input_fingerprint(Path(training_set), None)}
        resume, out = prepare_work_dir(Path(work), key), Path(work)
    if not resume:
        for stale in ("metrics.json", "checkpoint.pt", "config.json", "best"):
            target = out / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    corpus = corpus_from_rows(train_df, valid_df)
    start = time.perf_counter()
    result = train(cfg, train_df, valid_df, corpus, tc, out=out, resume=resume, log=log)
    seconds = time.perf_counter() - start
    steps = sum(int(np.ceil(len(train_df) / tc.batch_size)) for _ in result.history)
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        **{k: round(v, 5) for k, v in result.best_metrics.items()},
        "train_rows": len(train_df),
        "valid_rows": len(valid_df),
        "corpus": len(corpus),
        "seconds": round(seconds, 2),
        "train_examples_per_s": round(len(train_df) * len(result.history) / sum(h["seconds"] for h in result.history)),
        "steps": steps,
        "preset": preset,
        "train_config": asdict(tc),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if work is not None:
        publish_run(out, final)
    return metrics


def train_retrieval_events(
    data: Path,
    out: Path,
    preset: str = "nano",
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    budget_s: float = 60.0,
    seed: int = 0,
    log: Any = None,
) -> dict[str, Any]:
    """Trains the two-tower on a dataset's click sequences exactly as `ember evaluate retrieval --protocol temporal`
    trains and scores its two-tower (same split, corpus, configs and metrics), and publishes that model: `out` is
    replaced whole (best/, metrics.json) only when training and scoring finished.

    Returns the metrics: validation and test Recall/NDCG (test targets ranked against the post table at the test
    cut-off), by engagement before the cut-off, seconds, best epoch; NaN entries are left out.
    """
    from core.io import atomic_dir
    from models.retrieval.baselines import make_corpus
    from models.retrieval.evaluate import make_split, two_tower_configs, two_tower_metrics
    from models.retrieval.model import save
    from models.retrieval.sequences import positive_events

    cfg, tc = two_tower_configs(preset, budget_s, seed, model_overrides or {}, train_overrides or {}, "temporal")
    if tc.context != "full":
        raise UserError("train.context: the served two-tower reads the full request context (context=full)")
    events = positive_events(Path(data))
    split = make_split(events, "temporal")
    if split.valid.empty or split.test.empty:
        raise UserError(f"{data}: the temporal split has no validation or test targets")
    corpus = make_corpus(split.train, split.valid, split.test)
    metrics, retriever = two_tower_metrics(Path(data), split, corpus, cfg, tc, log)
    report: dict[str, Any] = {k: round(float(v), 5) for k, v in metrics.items() if v == v}
    report |= {"train_events": len(split.train), "corpus": len(corpus), "preset": preset, "budget_s": budget_s}
    report["train_config"] = {f: getattr(tc, f) for f in ("context", "snapshot_hours", "select_metric", "seed")}
    with atomic_dir(Path(out)) as tmp:
        save(retriever.model, tmp / "best")
        atomic_write_text(tmp / "metrics.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def compare_retrievers(data: Path, models: dict[str, Path]) -> dict[str, Any]:
    """Saved two-towers scored on one test window: the temporal split of `data` that `train_retrieval_events` scores
    (the newest tenth of the time span; every post created by a target's time ranked, as an index built at the
    cut-off sees it). What the promotion gate compares, so a challenger trained on new data is not judged against
    the Recall@200 its champion got on an older window.

    Returns:
        {"window": {"data", "cutoff_ms", "targets", "corpus"}, "<name>": {"recall@200", "ndcg@10", ...,
        "recall@200_engaged", "recall@200_new"}} (NaN entries left out).
    """
    from models.retrieval.baselines import make_corpus
    from models.retrieval.evaluate import _two_tower_scored, make_split
    from models.retrieval.model import load_two_tower
    from models.retrieval.sequences import positive_events
    from models.retrieval.train_sequences import SequenceRetriever, post_table

    events = positive_events(Path(data))
    split = make_split(events, "temporal")
    if split.test.empty:
        raise UserError(f"{data}: the temporal split has no test targets")
    corpus = make_corpus(split.train, split.valid, split.test)
    out: dict[str, Any] = {
        "window": {
            "data": str(data),
            "cutoff_ms": int(split.test_history["ts_ms"].max()) if len(split.test_history) else None,
            "targets": len(split.test),
            "corpus": len(corpus),
        }
    }
    for name, model_dir in models.items():
        model = load_two_tower(Path(model_dir))
        table = post_table(model.cfg, corpus, split.test_history, Path(data))
        retriever = SequenceRetriever(model, table, "full", Path(data), mask_unborn=True)
        test, parts = _two_tower_scored(retriever, split.test_history, split.test)
        out[name] = {k: round(float(v), 5) for k, v in {**test, **parts}.items() if v == v}
    return out


def model_version(model_dir: Path) -> str:
    """Content hash of a saved model (weights and config): what the index and the serving logs name."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.pt"):
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()[:16]


def post_corpus(features: Path, as_of_ms: int | None = None) -> pd.DataFrame:
    """One row per post with the columns the candidate tower reads, from the newest post_stats row at or before
    `as_of_ms` (None: the newest of all).

    Returns:
        post_id, author_id, post_created_at_ms and every post_* count, sorted by post_id.
    """
    import duckdb

    source = Path(features) / "post_stats.parquet"
    if not source.exists():
        raise UserError(f"{features}: no post_stats.parquet (run `ember features build`)")
    where = "" if as_of_ms is None else f"WHERE epoch_ms(event_timestamp::TIMESTAMPTZ) <= {int(as_of_ms)}"
    pattern = f"{source}/**/*.parquet" if source.is_dir() else str(source)
    con = duckdb.connect()
    try:
        frame = con.execute(
            f"""SELECT * EXCLUDE (rn) FROM (
                    SELECT *, row_number() OVER (PARTITION BY post_id ORDER BY event_timestamp DESC) AS rn
                    FROM read_parquet('{pattern}', union_by_name = true) {where})
                WHERE rn = 1 ORDER BY post_id"""
        ).df()
    finally:
        con.close()
    if frame.empty:
        raise UserError(f"{source}: no post rows at or before {as_of_ms}")
    return frame.rename(columns={"post_author_id": "author_id"}).reset_index(drop=True)


def index_inputs(
    model_dir: Path, features: Path, training_set: Path, valid_fraction: float = 0.2, max_queries: int = 2_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the index is built and checked on: (post ids (N,), candidate-tower embeddings (N, D), held-out user
    embeddings (Q, D)).

    Post features and ages are taken as of the newest training-set time (the index-build time); the queries are the
    user embeddings of the training set's validation window (users the index was never tuned on).
    """
    import torch

    from models.retrieval.data import candidate_features, epoch_ms, temporal_split, user_features
    from models.retrieval.model import load_two_tower
    from models.retrieval.train import embed_corpus

    model = load_two_tower(Path(model_dir))
    if model.cfg.history_gaps == "predecessor":
        raise UserError(f"{model_dir}: trained on event sequences; build its index from the dataset (--data)")
    df = read_training_set(training_set)
    if df.empty:
        raise UserError(f"{training_set}: empty training window (0 rows)")
    now_ms = int(epoch_ms(df["event_timestamp"]).max())
    corpus_df = post_corpus(features, now_ms)
    corpus = candidate_features(corpus_df, model.cfg, now_ms=now_ms)
    item_emb = embed_corpus(model, corpus).cpu().numpy()
    _, valid_df = temporal_split(df, valid_fraction)
    valid_df = valid_df.sample(min(max_queries, len(valid_df)), random_state=0) if len(valid_df) else df.tail(1)
    with torch.inference_mode():
        queries = model.user_embedding(user_features(valid_df, model.cfg)).cpu().numpy()
    return corpus.post_ids.numpy(), item_emb, queries


def event_index_inputs(
    model_dir: Path, data: Path, max_queries: int = 2_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the index of an event-trained two-tower is built and checked on: (post ids (N,), candidate-tower
    embeddings (N, D), user embeddings (Q, D)).

    Every post of the dataset, with the post table training used (models.retrieval.train_sequences.post_table:
    counts over the click events, ages at the newest one); the queries are the newest click of up to `max_queries`
    users, each embedded from the events before it (the request a user makes after their history)."""
    from core.schema import read_table
    from models.retrieval.model import load_two_tower
    from models.retrieval.sequences import positive_events
    from models.retrieval.train import embed_corpus
    from models.retrieval.train_sequences import SequenceRetriever, post_table

    model = load_two_tower(Path(model_dir))
    if model.cfg.history_gaps != "predecessor":
        raise UserError(f"{model_dir}: not trained on event sequences (build its index with --features)")
    events = positive_events(Path(data))
    posts = read_table(Path(data), "posts", columns=["post_id"]).column("post_id").to_numpy()
    corpus = np.union1d(np.asarray(posts, dtype=np.int64), events["post_id"].to_numpy(dtype=np.int64))
    table = post_table(model.cfg, corpus, events, Path(data))
    item_emb = embed_corpus(model, table.features).cpu().numpy()
    last = events.groupby("user_id", sort=False).tail(1)
    last = last.sample(min(max_queries, len(last)), random_state=0)
    queries = SequenceRetriever(model, table, "full", Path(data)).user_embeddings(events, last)
    return corpus, item_emb, queries


def build_event_index(
    model_dir: Path, data: Path, out: Path, index_cfg: IndexConfig | None = None, max_queries: int = 2_000
) -> dict[str, Any]:
    """`build_retrieval_index` for a two-tower trained on event sequences (`event_index_inputs`)."""
    from models.retrieval.index import publish

    ids, item_emb, queries = event_index_inputs(model_dir, data, max_queries)
    return publish(Path(out), ids, item_emb, queries, index_cfg or IndexConfig(), model_version(model_dir))


def build_retrieval_index(
    model_dir: Path,
    features: Path,
    training_set: Path,
    out: Path,
    index_cfg: IndexConfig | None = None,
    valid_fraction: float = 0.2,
    max_queries: int = 2_000,
) -> dict[str, Any]:
    """Embeds every post with the candidate tower and publishes a faiss index (models.retrieval.index.publish) that
    passes the recall gate on held-out users (`index_inputs`)."""
    from models.retrieval.index import publish

    ids, item_emb, queries = index_inputs(model_dir, features, training_set, valid_fraction, max_queries)
    return publish(Path(out), ids, item_emb, queries, index_cfg or IndexConfig(), model_version(model_dir))
