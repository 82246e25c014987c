"""The training loop both models share: seeded epochs, early stopping on a validation metric, resumable checkpoints,
bf16 autocast on CUDA, data-parallel under torchrun.

A model plugs in three things: a loss module (`task(batch, generator) -> () loss`, wrapped in
DistributedDataParallel when distributed), the batches of one epoch, and an `evaluate()` giving the validation
metrics the best epoch is chosen by. `out/` then holds `config.json` (written first), `checkpoint.pt` (model,
optimizer and progress after every epoch, written atomically) and `best/` (the best epoch, written by the model's
own `save_best`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.errors import UserError
from core.io import atomic_write_text

M = TypeVar("M", bound=nn.Module)


# Default torch intra-op threads while training: 1. The presets that train on CPU are small (D 32-64), whose steps are
# hundreds of small kernels; with 2 OpenMP threads each kernel ends at a barrier, and when anything else holds a core
# (the Prefect API, a DuckDB stage, another job) the waiting thread spins until the scheduler lets the other run. On a
# 2-core machine with one other busy process, a nano two-tower step took 2,265 ms at 2 threads and 51-95 ms at 1
# (`python -m bench.threads`). 0 = torch's default, one thread per core.
TRAIN_THREADS = 1


@contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` (0 = leave it) for the block, restored after."""
    if n < 0:
        raise UserError(f"train.threads: {n} is negative")
    previous = torch.get_num_threads()
    torch.set_num_threads(n or previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# Called on every rank after each epoch, once that epoch's checkpoint is written: (the epoch's history entry, the
# directory holding checkpoint.pt, config.json and best/ on rank 0 when the run writes files, else None). A launcher
# that must see each epoch (Ray Train's report, `models.ray_train`) sets it around a training call with `epoch_hook`.
EpochHook = Callable[[dict[str, Any], Path | None], None]
_EPOCH_HOOK: ContextVar[EpochHook | None] = ContextVar("epoch_hook", default=None)


@contextmanager
def epoch_hook(hook: EpochHook) -> Iterator[None]:
    """Runs `hook` after every epoch of the training calls made inside the block (see EpochHook)."""
    token = _EPOCH_HOOK.set(hook)
    try:
        yield
    finally:
        _EPOCH_HOOK.reset(token)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run; the default (world_size 1) is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # distributed_context() initialised the process group, so the caller destroys it

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that evaluates, logs and writes files."""
        return self.rank == 0


def distributed_context() -> DistContext:
    """Joins the process group of a torchrun launch (env WORLD_SIZE > 1, RANK, LOCAL_RANK), creating it unless the
    caller already did: backend nccl with CUDA, gloo without. Anything else is a single-process run."""
    if dist.is_available() and dist.is_initialized():
        rank, world, owns = dist.get_rank(), dist.get_world_size(), False
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world, owns = dist.get_rank(), dist.get_world_size(), True
    else:
        return DistContext()
    ctx = DistContext(rank, world, int(os.environ.get("LOCAL_RANK", "0")), owns)
    if ctx.distributed and torch.cuda.is_available():
        torch.cuda.set_device(ctx.local_rank)
    return ctx


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on Linear weights only: decaying hash-table rows would shrink the rarely seen ones."""
    decay = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    decay_ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in decay_ids]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


class SparseTableAdam:
    """AdamW (`adamw`) for the dense parameters beside torch's SparseAdam for the embedding tables read with sparse
    gradients (`sparse_tables`): a step then moves only the table rows its batch touched (lazy Adam), instead of
    updating every row of every table. For the two-tower's small preset (11.2M of its 11.4M parameters are hash
    rows, a step touches a few thousand) the dense update was 60 ms of a 190 ms step at 2 threads.
    The optimizer surface the training loops use: param_groups (both), zero_grad, step."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float, table_lr_scale: float = 1.0) -> None:
        """`table_lr_scale`: the tables' learning rate over the dense one's (a lazy row moves only when read, so it
        takes fewer steps than a dense parameter; reduce-on-plateau scales both alike)."""
        tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
        sparse_ids = {id(p) for p in tables}
        dense = adamw(model, lr, weight_decay)
        for group in dense.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in sparse_ids]
        self.dense, self.sparse = dense, torch.optim.SparseAdam(tables, lr=lr * table_lr_scale)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [*self.dense.param_groups, *self.sparse.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()


def sparse_tables(model: nn.Module, on: bool = True) -> int:
    """Makes every embedding table of `model` produce sparse gradients (nn.Embedding.sparse; the weights and the
    forward are unchanged), or dense ones again; returns how many tables. Train with `SparseTableAdam` and
    `clip_grad_norm`."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    for m in tables:
        m.sparse = on
    return len(tables)


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ (the 2-norm of all gradients together, scaled down to `max_norm`) for dense and sparse
    gradients alike (torch's own cannot take a sparse one); returns the norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # repeated rows summed: the norm of the real gradient
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.stack([(g.values() if g.is_sparse else g).float().pow(2).sum() for g in grads]).sum().sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        (g.values() if g.is_sparse else g).mul_(scale.to(g.dtype))
    return total


def device_for(ctx: DistContext) -> torch.device:
    """CUDA (this rank's GPU) when present, else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", ctx.local_rank) if ctx.distributed else torch.device("cuda")


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA; plain fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def rank_batches(n: int, batch_size: int, generator: torch.Generator, ctx: DistContext) -> list[torch.Tensor]:
    """This rank's row positions for each step of a data-parallel epoch.

    One seeded permutation of the rows (the same on every rank: same generator, same state) is cut into whole
    batches; rank r takes batches r, r + W, r + 2W, ... Batches past the last whole round of W, and the rows of an
    incomplete batch, are dropped, so every rank runs the same number of steps on exactly `batch_size` rows (the
    dropped rows change with every epoch's permutation).
    """
    steps = n // batch_size // ctx.world_size
    if steps == 0:
        raise UserError(
            f"train: {n} training rows make no batch of {batch_size} for each of {ctx.world_size} ranks; "
            f"lower batch_size"
        )
    batches = torch.randperm(n, generator=generator)[: steps * ctx.world_size * batch_size].split(batch_size)
    return list(batches[ctx.rank :: ctx.world_size])


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, ctx: DistContext) -> list[torch.Tensor]:
    """Row positions of each step of one epoch: a seeded shuffle in batches (the last one may be short), or this
    rank's share (`rank_batches`) when distributed."""
    if ctx.distributed:
        return rank_batches(n, batch_size, generator, ctx)
    return list(torch.randperm(n, generator=generator).split(batch_size))


def input_fingerprint(*paths: Path | None) -> list[list[Any]]:
    """[relative path, size, mtime in ns] of every file under `paths` (a file or a directory; None skipped): what
    a run key compares to tell "the same inputs" without reading them."""
    rows: list[list[Any]] = []
    for root in paths:
        if root is None:
            continue
        root = Path(root)
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            st = f.stat()
            rows.append([str(f), st.st_size, st.st_mtime_ns])
    return rows


def prepare_work_dir(work: Path, key: dict[str, Any]) -> bool:
    """Readies the directory a resumable run trains in (outside DVC's outputs, which DVC deletes before a stage
    runs). Returns True when `work` holds a checkpoint of an interrupted run of the same `key` (settings and input
    fingerprint) to resume from; otherwise empties it, records `key` in work/run.json and returns False."""
    text = json.dumps(key, sort_keys=True, default=str)
    run = work / "run.json"
    if (work / "checkpoint.pt").is_file() and run.is_file() and run.read_text() == text:
        return True
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    atomic_write_text(run, text)
    return False


def publish_run(work: Path, out: Path) -> None:
    """Moves a finished run from `work` to `out` in one rename (the previous `out` stays whole until then), and
    removes `work`: a run killed at any point leaves either the old `out` or the new one, never a mix."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.publish-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.copytree(work, tmp, ignore=shutil.ignore_patterns("run.json"))
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


def write_checkpoint(path: Path, body: dict[str, Any]) -> None:
    """torch.save to a temporary name, then an atomic rename: a killed run never leaves half a checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(body, tmp)
    os.replace(tmp, path)


def _epoch_entry(
    ctx: DistContext, epoch: int, losses: list[float], t0: float, evaluate_model: Callable[[], dict[str, float]]
) -> dict[str, Any]:
    """The epoch's history entry: epoch, train_loss, seconds (since t0, evaluation included) and the metrics.

    Data-parallel: train_loss averages all ranks' steps; rank 0 alone evaluates and broadcasts the entry, from which
    every rank then makes the same best-epoch and early-stopping decision.
    """
    if not ctx.distributed:
        metrics = evaluate_model()
        return {"epoch": epoch, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0, **metrics}
    device = torch.device("cuda", ctx.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([sum(losses), len(losses)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    entry: list[Any] = [None]
    if ctx.is_main:
        metrics = evaluate_model()
        train_loss, seconds = float(total[0] / total[1]), time.perf_counter() - t0
        entry[0] = {"epoch": epoch, "train_loss": train_loss, "seconds": seconds, **metrics}
    dist.broadcast_object_list(entry, src=0, device=device)
    return dict(entry[0])


class SavedConfig(Protocol):
    def to_json(self) -> str: ...


@dataclass(frozen=True)
class Loop:
    """What the shared loop needs to know of a model's training settings."""

    epochs: int
    patience: int  # epochs without a better `select` metric before stopping
    grad_clip: float
    seed: int
    select: str  # the history key (a validation metric, higher is better) the best epoch is chosen by
    settings: str  # JSON of the model's full training settings, stored in the checkpoint


@dataclass
class TrainResult(Generic[M]):
    """What a trainer returns: the model holding the best epoch's weights, that epoch, its validation metrics, the
    per-epoch history (epoch, train_loss, seconds, metrics) and every step's loss run by this call, in order."""

    model: M
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, Any]]
    step_losses: list[float] = field(default_factory=list)


@dataclass
class LoopResult:
    best_epoch: int
    history: list[dict[str, Any]]  # one entry per epoch: epoch, train_loss, seconds, metrics
    step_losses: list[float] = field(default_factory=list)  # every step run by this call (this rank's), in order


@dataclass(frozen=True)
class ModelFiles:
    """How the loop writes a model's files and recognises them when it resumes."""

    config: SavedConfig  # written to out/config.json before the first epoch
    save_best: Callable[[Path], None]  # writes the model to a directory (`out/best`)
    load_best: Callable[[Path], dict[str, torch.Tensor]]  # reads a state_dict back from such a directory
    same_config: Callable[[str], bool]  # whether a saved config.json text describes the same model as `config`


@dataclass
class _Progress:
    """Where the loop stands: what checkpoint.pt keeps besides the weights and the optimizer state."""

    start_epoch: int = 1
    best_epoch: int = 0
    best_metric: float = -math.inf
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the best epoch's weights

    def record(self, epoch: int, entry: dict[str, Any], select: str, model: nn.Module) -> bool:
        """Adds the epoch's history entry; True when it is the best so far (its weights are then kept)."""
        self.history.append(entry)
        metric = entry.get(select, math.nan)
        if metric > self.best_metric or not self.best_state:  # NaN (nothing to rank by) keeps the first epoch as best
            self.best_epoch, self.best_metric, self.bad_epochs = epoch, metric if metric == metric else -math.inf, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return True
        self.bad_epochs += 1
        return False

    def checkpoint(
        self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, settings: str
    ) -> dict[str, Any]:
        """checkpoint.pt's content after `epoch` (what `_resume` reads back)."""
        body = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        body |= {"best_epoch": self.best_epoch, "best_metric": self.best_metric, "bad_epochs": self.bad_epochs}
        return body | {"history": self.history, "train_config": settings}


def _resume(
    ckpt_path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, files: ModelFiles, device: torch.device
) -> _Progress:
    """Loads the weights and the optimizer state of `ckpt_path` and returns the progress it recorded."""
    if ckpt_path is None or not ckpt_path.is_file():
        raise UserError(f"--resume: no checkpoint at {ckpt_path}")
    if not files.same_config((ckpt_path.parent / "config.json").read_text()):
        raise UserError(f"--resume: {ckpt_path.parent / 'config.json'} differs from the requested model config")
    ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return _Progress(
        start_epoch=ckpt["epoch"] + 1,
        best_epoch=ckpt["best_epoch"],
        best_metric=ckpt["best_metric"],
        bad_epochs=ckpt["bad_epochs"],
        history=ckpt["history"],
        best_state=files.load_best(ckpt_path.parent / "best"),
    )


def _train_epoch(
    model: nn.Module,
    task: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Any],
    generator: torch.Generator,
    grad_clip: float,
    device: torch.device,
) -> list[float]:
    """One pass over `batches`; returns each step's loss."""
    model.train()
    losses = []
    for batch in batches:
        with autocast(device):
            loss = task(batch.to(device), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def run_epochs(
    ctx: DistContext,
    model: nn.Module,
    task: nn.Module,
    optimizer: torch.optim.Optimizer,
    loop: Loop,
    files: ModelFiles,
    batches: Callable[[torch.Generator], Iterable[Any]],
    evaluate: Callable[[], dict[str, float]],
    out: Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> LoopResult:
    """Trains `model` through `task` and leaves the best epoch's weights in it.

    Args:
        model: the model (its state_dict is what the checkpoint and the best epoch keep).
        task: module whose forward(batch, generator) returns the () loss of a batch moved to the model's device.
        batches: the batches of one epoch, given that epoch's seeded CPU generator (the same on every rank).
        evaluate: validation metrics of the current weights (run on rank 0 only).
        out: where config.json, checkpoint.pt and best/ go; None keeps everything in memory.
        resume: continue from `out/checkpoint.pt` at the epoch after the saved one; shuffling is seeded by epoch,
            so a resumed run replays exactly what an unbroken one does.
    """
    device = next(model.parameters()).device
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    if resume:
        progress = _resume(ckpt_path, model, optimizer, files, device)
        if log is not None and ctx.is_main:
            log(f"resumed from {ckpt_path} after epoch {progress.start_epoch - 1} (best epoch {progress.best_epoch})")
    else:
        progress = _Progress()
        if out is not None and ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(files.config.to_json())
    if ctx.distributed:  # after resuming: every rank starts from the same weights and optimizer state
        task = DistributedDataParallel(task, device_ids=[ctx.local_rank] if device.type == "cuda" else None)

    step_losses: list[float] = []
    for epoch in range(progress.start_epoch, loop.epochs + 1):
        if progress.bad_epochs >= loop.patience:
            break
        generator = torch.Generator().manual_seed(loop.seed * 1_000_003 + epoch)
        t0 = time.perf_counter()
        losses = _train_epoch(model, task, optimizer, batches(generator), generator, loop.grad_clip, device)
        step_losses += losses
        entry = _epoch_entry(ctx, epoch, losses, t0, evaluate)
        if progress.record(epoch, entry, loop.select, model) and out is not None and ctx.is_main:
            files.save_best(out / "best")
        if log is not None and ctx.is_main:
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
        if ckpt_path is not None and ctx.is_main:
            write_checkpoint(ckpt_path, progress.checkpoint(epoch, model, optimizer, loop.settings))
        if (hook := _EPOCH_HOOK.get()) is not None:
            hook(entry, out if ckpt_path is not None and ctx.is_main else None)

    if not progress.best_state:
        raise UserError(f"train: no epoch ran (epochs={loop.epochs}, resumed at {progress.start_epoch})")
    model.load_state_dict(progress.best_state)
    return LoopResult(progress.best_epoch, progress.history, step_losses)


def settings_json(settings: Any) -> str:
    """A dataclass of training settings as the JSON stored in checkpoints."""
    from dataclasses import asdict

    return json.dumps(asdict(settings))
