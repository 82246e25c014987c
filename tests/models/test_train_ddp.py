"""Data-parallel retrieval training: two CPU processes (gloo) launched the way torchrun launches them (env WORLD_SIZE,
RANK, LOCAL_RANK) stay in lockstep, learn, write files from rank 0 only and resume exactly."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models import training
from models.retrieval import train as train_retrieval
from models.retrieval.data import corpus_from_rows, temporal_split
from models.retrieval.train import TrainConfig, train
from serving.smoke import free_port
from tests.models.test_train_retrieval import CFG, rows

WORLD = 2
DDP_CFG = TrainConfig(epochs=2, batch_size=32, lr=3e-3, n_negatives=16, patience=2, seed=0)


def _free_ports(n: int) -> tuple[int, ...]:
    """n distinct ports that were free a moment ago, below the ephemeral range (serving.smoke.free_port)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def _record_writes(rank: int, log: Path) -> None:
    """Makes this process note every checkpoint and best-model write it does in `log`."""
    write_checkpoint, save = training.write_checkpoint, train_retrieval.save

    def logged_checkpoint(path: Path, body: dict[str, Any]) -> None:
        with log.open("a") as f:
            f.write(f"rank {rank} checkpoint {path.name}\n")
        write_checkpoint(path, body)

    def logged_save(model: Any, path: Path) -> None:
        with log.open("a") as f:
            f.write(f"rank {rank} save {path.name}\n")
        save(model, path)

    training.write_checkpoint, train_retrieval.save = logged_checkpoint, logged_save


def _worker(rank: int, tmp: Path, ports: tuple[int, ...]) -> None:
    """One rank: trains 1 epoch into tmp/run (train() creates and destroys the process group), then in a group of
    its own making resumes to 2 epochs and runs 2 epochs in one go; saves what the parent compares."""
    torch.set_num_threads(1)
    os.environ |= {"WORLD_SIZE": str(WORLD), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(ports[0])}
    _record_writes(rank, tmp / f"writes{rank}.txt")
    tr, va = temporal_split(rows(), 0.25)
    corpus = corpus_from_rows(tr, va)
    lines: list[str] = []
    first = train(CFG, tr, va, corpus, replace(DDP_CFG, epochs=1), out=tmp / "run", log=lines.append)
    created_and_destroyed = not dist.is_initialized()

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{ports[1]}", rank=rank, world_size=WORLD)
    resumed = train(CFG, tr, va, corpus, DDP_CFG, out=tmp / "run", resume=True, log=lines.append)
    whole = train(CFG, tr, va, corpus, DDP_CFG)
    kept_callers_group = dist.is_initialized()
    dist.destroy_process_group()
    torch.save(
        {
            "state": whole.model.state_dict(),
            "resumed_state": resumed.model.state_dict(),
            "history": whole.history,
            "best_epoch": whole.best_epoch,
            "steps": (first.step_losses, resumed.step_losses, whole.step_losses),
            "log_lines": lines,
            "group": (created_and_destroyed, kept_callers_group),
        },
        tmp / f"rank{rank}.pt",
    )


@pytest.mark.timeout(300)  # a rank stuck in a collective would otherwise wait out the whole suite's limit
def test_ddp_ranks_stay_identical_learn_and_only_rank_0_writes(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(tmp_path, _free_ports(2)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))

    assert r0["group"] == r1["group"] == (True, True)  # train() destroys only a group it created
    for key in ("state", "resumed_state"):
        assert r0[key].keys() == r1[key].keys()
        for name in r0[key]:
            assert torch.equal(r0[key][name], r1[key][name]), (key, name)
    # Every rank got rank 0's history and so made the same early-stopping choice.
    assert r0["history"] == r1["history"] and r0["best_epoch"] == r1["best_epoch"]
    history = r0["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"], history
    # 360 training rows, batches of 32: 11 whole batches, 5 steps per rank per epoch (the 11th batch is dropped).
    first, resumed, whole = r0["steps"]
    assert len(first) == 5 and len(whole) == 10
    assert r0["steps"][2] != r1["steps"][2]  # the ranks trained on different batches
    # Resuming on every rank replays the uninterrupted run, rank by rank.
    for r in (r0, r1):
        first, resumed, whole = r["steps"]
        assert first + resumed == whole
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r0["resumed_state"][name]), name

    assert r1["log_lines"] == []  # rank 0 alone logs: epoch 1, the resume, epoch 2
    assert [line.split()[0] for line in r0["log_lines"]] == ["epoch=1", "resumed", "epoch=2"]
    writes0 = (tmp_path / "writes0.txt").read_text().splitlines()
    assert not (tmp_path / "writes1.txt").exists()
    assert writes0.count("rank 0 checkpoint checkpoint.pt") == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best", "checkpoint.pt", "config.json"]
