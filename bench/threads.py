"""Training step time of the main job's models against torch's intra-op thread count, on a quiet machine and beside
one added busy process (what `models.training.TRAIN_THREADS` is set from). Each row records the load average
before its case: "no added load" is only as quiet as the machine was.

Each case is a fresh process: the nano two-tower (batch 512, 128 uniform negatives, the main job's
`train_retrieval` settings) and the nano ranker (64 requests of 10 candidates, `train_ranker`'s), one AdamW step
(forward, backward, update) on inputs of the training shapes with seeded random ids and values; the step's cost
depends on the shapes only. "busy" starts one CPU-bound process (a pure-Python loop) beside it for the whole case,
as the Prefect API, a DuckDB stage or another job does on a shared machine.

`python -m bench.threads` writes bench/results/threads.json; `--quick` prints a short run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from bench.harness import Row, p99, save

GROUP = "threads"
CMD = "python -m bench.threads"
STEPS, WARMUP = 40, 5


def _steps(model_name: str, threads: int, steps: int) -> list[float]:
    """Seconds of each training step after the warm-up, in this process."""
    import torch

    from models.training import adamw

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model, loss = _two_tower_loss(g) if model_name == "two_tower" else _ranker_loss(g)
    opt = adamw(model, 2e-3, 0.01)
    seconds = []
    for i in range(WARMUP + steps):
        start = time.perf_counter()
        value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
        if i >= WARMUP:
            seconds.append(time.perf_counter() - start)
    return seconds


def _ints(g: Any, high: int, *shape: int) -> Any:
    import torch

    return torch.randint(1, high, shape, generator=g)


def _user(g: Any, cfg: Any, b: int) -> Any:
    """A batch of `b` random users with full histories, shaped for `cfg`."""
    from models.retrieval.model import UserFeatures

    s = cfg.max_history
    return UserFeatures(
        user_ids=_ints(g, 10_000, b),
        attribute_ids=_ints(g, 1_000, b, len(cfg.user_attributes)),
        hist_post_ids=_ints(g, 100_000, b, s),
        hist_author_ids=_ints(g, 1_000, b, s),
        hist_actions=_ints(g, 8, b, s),
        hist_surfaces=_ints(g, 2, b, s),
        hist_gap_ms=_ints(g, 10**9, b, s),
    )


def _two_tower_loss(g: Any) -> tuple[Any, Callable[[], Any]]:
    """The nano two-tower and its training loss on one random batch of 512 (128 sampled negatives from 20,000 posts)."""
    import torch

    from models.retrieval.data import RetrievalBatch
    from models.retrieval.model import CandidateFeatures, TwoTower, TwoTowerConfig
    from models.retrieval.train import TwoTowerTrainTask

    cfg = TwoTowerConfig.preset("nano")
    model = TwoTower(cfg)

    def posts(n: int) -> CandidateFeatures:
        return CandidateFeatures(
            post_ids=_ints(g, 100_000, n),
            author_ids=_ints(g, 1_000, n),
            dense=torch.rand(n, len(cfg.post_features), generator=g) * 100,
            age_ms=_ints(g, 10**9, n),
            attributes=_ints(g, 1_000, n, len(cfg.post_attributes)),
        )

    task = TwoTowerTrainTask(model, posts(20_000), n_negatives=128)
    batch = (_user(g, cfg, 512), posts(512))
    return model, lambda: task(RetrievalBatch(batch[0], batch[1], torch.zeros(512)), g)


def _ranker_loss(g: Any) -> tuple[Any, Callable[[], Any]]:
    """The nano ranker and its multi-task loss on one random batch of 64 requests x 10 candidates."""
    import torch

    from models.ranker.model import CandidateBatch, Ranker, RankerConfig
    from models.ranker.tasks import availability, ranker_loss

    cfg = RankerConfig.preset("nano")
    model = Ranker(cfg)
    b, c = 64, 10
    cands = CandidateBatch(
        post_ids=_ints(g, 100_000, b, c),
        author_ids=_ints(g, 1_000, b, c),
        surfaces=_ints(g, 2, b, c),
        age_ms=_ints(g, 10**9, b, c),
        dense=torch.rand(b, c, len(cfg.candidate_features), generator=g),
        attributes=_ints(g, 1_000, b, c, len(cfg.candidate_attributes)),
        in_network=torch.rand(b, c, generator=g) < 0.3,
        positions=_ints(g, 10, b, c),
        valid=torch.ones(b, c, dtype=torch.bool),
    )
    users = _user(g, cfg, b)
    labels = (torch.rand(b, c, len(model.tasks), generator=g) < 0.2).float()
    available = availability([t.name for t in model.tasks], model.tasks)

    def loss() -> Any:
        out = model(users, cands)
        mask = available[None, None, :] & cands.valid[..., None]
        return ranker_loss(out.logits, labels, mask, model.tasks)[0]

    return model, loss


def _case(model_name: str, threads: int, busy: bool, steps: int) -> list[float]:
    """Runs one case in a fresh process (beside a busy process when `busy`); the per-step seconds."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        call = f"_steps({model_name!r}, {threads}, {steps})"
        code = f"import json; from bench.threads import _steps; print(json.dumps({call}))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return [float(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()


def bench_threads(quick: bool) -> list[Row]:
    steps = 10 if quick else STEPS
    rows: list[Row] = []
    medians: dict[tuple[str, int, bool], float] = {}
    for model_name in ("two_tower", "ranker"):
        for busy in (False, True):
            for threads in (1, 2):
                load = os.getloadavg()[0]  # other jobs on the machine: a "quiet" case is only as quiet as this
                seconds = _case(model_name, threads, busy, steps)
                med = statistics.median(seconds)
                medians[(model_name, threads, busy)] = med
                other = medians.get((model_name, 1, busy))
                rows.append(
                    Row(
                        group=GROUP,
                        name=f"{model_name} nano training step, {threads} thread{'s' if threads > 1 else ''}, "
                        f"{'beside one added busy process' if busy else 'no added load'}",
                        command=CMD,
                        settings=f"{steps} steps after {WARMUP} warm-up, one fresh process per case, seeded inputs "
                        "of the main job's shapes (two-tower batch 512 + 128 negatives; ranker 64 requests x 10); "
                        f"1-min load average before the case {load:.2f} on {os.cpu_count()} cores",
                        repeats=steps,
                        wall_s_median=round(med, 4),
                        wall_s_p99=round(p99(seconds), 4),
                        peak_rss_mb_max=0.0,
                        throughput=f"{1000 * med:.1f} ms per step"
                        + (f" ({med / other:.2f}x the 1-thread step)" if threads > 1 and other else ""),
                        target="",
                        verdict="",
                        extra={
                            "section": "threads",
                            "model": model_name,
                            "threads": threads,
                            "busy": busy,
                            "load": load,
                        },
                    )
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 steps per case; print, save nothing")
    args = parser.parse_args()
    rows = bench_threads(args.quick)
    if args.quick:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
