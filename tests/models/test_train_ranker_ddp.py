"""Data-parallel ranker training: two CPU processes (gloo), launched the way torchrun launches them, end with
identical weights after training on different batches."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from models.ranker.job import split_by_request
from models.ranker.train import train_ranker
from tests.models.test_train_ddp import _free_ports
from tests.models.test_train_ranker import CFG, FAST, OBSERVED, rows

WORLD = 2


def _worker(rank: int, tmp: Path, port: int) -> None:
    torch.set_num_threads(1)
    os.environ |= {"WORLD_SIZE": str(WORLD), "RANK": str(rank), "LOCAL_RANK": str(rank)}
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    tr, va = split_by_request(rows(), fraction=0.25)
    result = train_ranker(replace(CFG, head_mode="funnel"), tr, va, OBSERVED, replace(FAST, batch_size=8))
    state = {k: v.clone() for k, v in result.model.state_dict().items()}
    torch.save({"state": state, "steps": result.step_losses, "history": result.history}, tmp / f"rank{rank}.pt")


@pytest.mark.timeout(300)
def test_ranker_ddp_ranks_end_identical_after_different_batches(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(tmp_path, _free_ports(1)[0]), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert r0["state"].keys() == r1["state"].keys()
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), name
    assert r0["steps"] != r1["steps"]  # each rank saw its own share of the batches
    # 270 training requests in batches of 8: 33 whole batches, 16 steps per rank per epoch.
    assert len(r0["steps"]) == len(r1["steps"]) == 2 * 16
    assert r0["history"] == r1["history"]  # rank 0 evaluated and broadcast, so both made the same choices
    assert r0["history"][-1]["train_loss"] < r0["history"][0]["train_loss"]
