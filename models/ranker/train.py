"""Training the ranker: multi-task loss (BCE per available action, Huber on log1p dwell seconds) over request groups,
AdamW, early stopping on the validation mean AUC of the recorded actions, resumable checkpoints, DDP under torchrun
(the loop of `models.training`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from core.actions import BY_NAME
from core.errors import UserError
from models.model_config import config_dataclass
from models.ranker.data import RankerBatch, RankerDataset, RankerTrainTask, predict
from models.ranker.metrics import ranking_report
from models.ranker.model import Ranker, RankerConfig, load_ranker, save_ranker
from models.ranker.task_table import TaskKind
from models.ranker.tasks import availability
from models.training import (
    TRAIN_THREADS,
    DistContext,
    Loop,
    ModelFiles,
    TrainResult,
    adamw,
    device_for,
    distributed_context,
    epoch_batches,
    intra_op_threads,
    run_epochs,
    settings_json,
)

PAIR_SCOPES = ("group", "user")


def user_batches(keys: np.ndarray, batch_size: int, generator: torch.Generator, ctx: DistContext) -> list[torch.Tensor]:
    """Group positions of each step of one epoch, user by user: the users in a seeded random order, each user's
    groups together (in a seeded random order too), cut into batches of `batch_size` groups. A user's groups then
    share a batch (but for the one cut at a batch's end), which a user-scoped pairwise loss needs. Distributed, rank
    r takes batches r, r + W, ... of the whole rounds of W."""
    n = len(keys)
    if n == 0:
        return []
    _, user = np.unique(keys, return_inverse=True)
    user_rank = torch.randperm(int(user.max()) + 1, generator=generator).numpy()
    within = torch.randperm(n, generator=generator).numpy()
    order = np.lexsort((within, user_rank[user]))
    batches = list(torch.from_numpy(order).split(batch_size))
    if ctx.distributed:
        rounds = len(batches) // ctx.world_size
        if rounds == 0:
            raise UserError(f"train: {n} groups make no batch of {batch_size} for each of {ctx.world_size} ranks")
        batches = batches[: rounds * ctx.world_size][ctx.rank :: ctx.world_size]
    return batches


@config_dataclass
class RankerTrainConfig:
    """Optimisation and evaluation settings (the model's own settings are in RankerConfig)."""

    epochs: int = 10
    batch_size: int = 64  # request groups per step
    lr: float = 2e-3
    weight_decay: float = 0.01  # on Linear weights only (hash-table rows of rare ids would shrink to nothing)
    grad_clip: float = 1.0
    patience: int = 2
    max_eval_requests: int = 20_000  # validation request groups (a seeded sample beyond this)
    eval_batch_size: int = 256
    seed: int = 0
    # Early stopping and the best epoch on the mean validation AUC and GAUC of these actions ("select" in the epoch
    # history); empty = the mean AUC of every recorded action that is not noisy ("auc_mean").
    select_actions: tuple[str, ...] = ()
    # Weight of the within-group pairwise ranking loss (`models.ranker.tasks.pairwise_loss`) beside the pointwise one; 0
    # = off.
    pair_weight: float = 0.0
    # Which candidates the pairwise loss compares: "group" = one request group's; "user" = every group of one user in
    # the batch, with batches built user by user (`user_batches`), so pairs span a user's requests as GAUC does.
    pair_scope: str = "group"
    # The actions the pairwise loss ranks; empty = every binary action.
    pair_actions: tuple[str, ...] = ()
    threads: int = TRAIN_THREADS  # torch intra-op threads while training (models.training.TRAIN_THREADS); 0 = torch's

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "max_eval_requests", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"train.lr: must be > 0, got {self.lr}")
        if self.threads < 0:
            raise UserError(f"train.threads: must be >= 0, got {self.threads}")
        if self.pair_scope not in PAIR_SCOPES:
            raise UserError(f"train.pair_scope: unknown {self.pair_scope!r} (choose from {', '.join(PAIR_SCOPES)})")
        unknown = [a for a in self.pair_actions if a not in BY_NAME]
        if unknown:
            raise UserError(f"train.pair_actions: unknown action {unknown[0]!r} (choose from {', '.join(BY_NAME)})")


RankerTrainResult = TrainResult[Ranker]


def binary_tasks(model: Ranker, observed: Sequence[str]) -> list[str]:
    """The model's binary tasks the dataset records, in head order."""
    avail = availability(observed, model.tasks)
    return [t.name for t, a in zip(model.tasks, avail.tolist(), strict=True) if a and t.kind is TaskKind.BINARY]


def evaluate_ranker(
    model: Ranker, ds: RankerDataset, observed: Sequence[str], batch_size: int = 256
) -> tuple[dict[str, Any], np.ndarray]:
    """The per-action report (`models.ranker.metrics.ranking_report`) of the model on ds, and its (N, K) predictions.

    Only recorded actions are reported; NDCG@10 uses the report's default +1/-1 blend of them.
    """
    preds = predict(model, ds, batch_size)
    names = binary_tasks(model, observed)
    col = {t.name: k for k, t in enumerate(model.tasks)}
    probs = {a: preds[:, col[a]] for a in names}
    labels = ds.df[names].astype(np.float64)
    report = ranking_report(labels, probs, ds.user_ids, ds.request_ids, names)
    return report, preds


def summary(report: dict[str, Any]) -> dict[str, float]:
    """Flat numbers of a report for the epoch history: mean AUC / GAUC / logloss over the actions that are not
    noisy (all reported ones if every action is), per-action AUC and GAUC, and NDCG@k."""
    actions = report["actions"]
    solid = {a: m for a, m in actions.items() if not m["noisy"]} or actions
    out: dict[str, float] = {
        "auc_mean": float(np.mean([m["auc"] for m in solid.values()])) if solid else float("nan"),
        "gauc_mean": float(np.nanmean([m["gauc"] for m in solid.values()])) if solid else float("nan"),
        "logloss_mean": float(np.mean([m["logloss"] for m in solid.values()])) if solid else float("nan"),
        f"ndcg@{report['ndcg']['k']}": float(report["ndcg"]["value"]),
    }
    for a, m in actions.items():
        out[f"auc/{a}"], out[f"gauc/{a}"] = float(m["auc"]), float(m["gauc"])
    return out


def train_ranker(
    config: RankerConfig,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    observed: Sequence[str],
    train_cfg: RankerTrainConfig | None = None,
    out: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    posts: pd.DataFrame | None = None,
) -> RankerTrainResult:
    """Trains the ranker with early stopping on the validation mean AUC (`summary`'s auc_mean).

    Args:
        config: the model.
        train_df, valid_df: ranker training-set rows (`models.retrieval.data.temporal_split` of one), whole
            requests each.
        observed: the actions the dataset records; the others are masked out of the loss and the metrics.
        out: config.json, checkpoint.pt (every epoch) and best/ (`save_ranker` of the best epoch); None = memory.
        resume: continue from out/checkpoint.pt.
        log: one line per epoch.
        posts: post attributes for history posts that are not candidates in the frames (`RankerDataset`).
    """
    tc = train_cfg or RankerTrainConfig()
    if len(train_df) == 0 or len(valid_df) == 0:
        raise UserError(f"train: empty input (train {len(train_df)} rows, valid {len(valid_df)} rows)")
    with intra_op_threads(tc.threads):
        return _train(config, train_df, valid_df, observed, tc, out, resume, log, posts)


def sample_requests(df: pd.DataFrame, max_requests: int, seed: int) -> pd.DataFrame:
    """At most `max_requests` whole requests of `df`: a seeded sample, or `df` itself when it holds no more."""
    requests = df["request_id"].unique()
    if len(requests) <= max_requests:
        return df
    keep = np.random.default_rng(seed).choice(requests, max_requests, replace=False)
    return df[df["request_id"].isin(keep)].reset_index(drop=True)


def _train(
    config: RankerConfig,
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    observed: Sequence[str],
    tc: RankerTrainConfig,
    out: Path | None,
    resume: bool,
    log: Callable[[str], None] | None,
    posts: pd.DataFrame | None,
) -> RankerTrainResult:
    ctx = distributed_context()
    try:
        torch.manual_seed(tc.seed)
        device = device_for(ctx)
        model = Ranker(config)
        available = availability(observed, model.tasks)
        if not available.any():
            raise UserError(f"train: the dataset records none of the model's tasks {list(config.tasks)}")
        train_ds = RankerDataset(train_df, config, model.tasks, available, posts)
        valid_df = sample_requests(valid_df, tc.max_eval_requests, tc.seed)
        valid_ds = RankerDataset(valid_df, config, model.tasks, available, posts)
        model.fit_dense_stats(train_ds.train_dense())
        if config.head_bias_init:
            model.fit_head_bias(train_ds.labels[:-1], available)  # the last row is padding
        model = model.to(device)
        optimizer = adamw(model, tc.lr, tc.weight_decay)
        task = RankerTrainTask(model, available, tc.pair_weight, tc.pair_scope, tc.pair_actions).to(device)
        group_users = train_ds.user.user_ids.numpy()

        def batches(generator: torch.Generator) -> Iterable[RankerBatch]:
            if tc.pair_scope == "user":
                steps = user_batches(group_users, tc.batch_size, generator, ctx)
            else:
                steps = epoch_batches(len(train_ds), tc.batch_size, generator, ctx)
            return (train_ds[rows] for rows in steps)

        unknown = set(tc.select_actions) - set(binary_tasks(model, observed))
        if unknown:
            raise UserError(f"train.select_actions: {sorted(unknown)} are not recorded binary tasks of this model")

        def evaluate() -> dict[str, float]:
            out = summary(evaluate_ranker(model, valid_ds, observed, tc.eval_batch_size)[0])
            if tc.select_actions:
                parts = [out[f"{m}/{a}"] for a in tc.select_actions for m in ("auc", "gauc")]
                out["select"] = float(np.nanmean(parts))
            return out

        metric = "select" if tc.select_actions else "auc_mean"
        loop = Loop(tc.epochs, tc.patience, tc.grad_clip, tc.seed, metric, settings_json(tc))
        files = ModelFiles(
            config,
            save_best=lambda path: save_ranker(model, path),
            load_best=lambda path: load_ranker(path).state_dict(),
            same_config=lambda text: RankerConfig.from_json(text) == config,
        )
        done = run_epochs(ctx, model, task, optimizer, loop, files, batches, evaluate, out=out, resume=resume, log=log)
        if ctx.distributed:
            dist.barrier()  # rank 0's last writes are done before any rank returns
    finally:
        if ctx.owns_group:
            dist.destroy_process_group()
    best = next(h for h in done.history if h["epoch"] == done.best_epoch)
    metrics = {k: v for k, v in best.items() if k not in ("epoch", "train_loss", "seconds")}
    return RankerTrainResult(model.eval(), done.best_epoch, metrics, done.history, done.step_losses)
