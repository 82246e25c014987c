"""Ranker latency, in-process on CPU: one request (user + history 127) scoring C = 64 and C = 512 candidates with the
`base` preset (Phoenix's ranking shape: D128, 4 layers), at 1 and 2 torch threads, by the plain forward pass and by
the serving path (encode the user once, score candidates against the cached keys and values). FLOPs are counted by
torch's FlopCounterMode on the same call; GFLOP/s = FLOPs / median time.

`python -m bench.ranker` measures and writes bench/results/ranker.json; `--quick` runs tiny sizes and prints.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.harness import Row, save
from bench.models import latency_row, one_user, percentiles_ms, timed
from models.ranker import CandidateBatch, Ranker, RankerConfig
from models.two_tower import UserFeatures

GROUP = "ranker"
CMD = "python -m bench.ranker"
HISTORY = 127
PHOENIX_C64_MS = 18.3  # anchor: Phoenix JAX ranker forward, one user, C = 64, same kind of machine
TARGET_MS = {64: 6.0, 512: 25.0}


def candidates(cfg: RankerConfig, C: int, seed: int = 1) -> CandidateBatch:
    g = torch.Generator().manual_seed(seed)
    return CandidateBatch(
        post_ids=torch.randint(1, 10**9, (1, C), generator=g),
        author_ids=torch.randint(1, 10**7, (1, C), generator=g),
        surfaces=torch.randint(0, cfg.n_surfaces, (1, C), generator=g),
        age_ms=torch.randint(0, 86_400_000, (1, C), generator=g),
        dense=torch.rand(1, C, len(cfg.candidate_features), generator=g) * 100,
        attributes=torch.randint(1, 2**40, (1, C, len(cfg.candidate_attributes)), generator=g),
        in_network=torch.rand(1, C, generator=g) < 0.5,
        positions=torch.full((1, C), -1),
        valid=torch.ones(1, C, dtype=torch.bool),
    )


def paths(model: Ranker, user: UserFeatures, cands: CandidateBatch) -> dict[str, Callable[[], object]]:
    """The two ways of scoring one request; both return (1, C, K) logits."""
    return {
        "forward": lambda: model(user, cands).logits,
        "cached": lambda: model.score_candidates(model.encode_user(user), cands).logits,
    }


def _ignore_index(call: Callable[[], object]) -> Callable[[int], object]:
    return lambda i: call()


def count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def bench_ranker(quick: bool, thread_counts: tuple[int, ...]) -> list[Row]:
    reps, warmup = (5, 1) if quick else (200, 20)
    cfg = RankerConfig.preset("base")
    if quick:  # tiny tables: latency does not depend on table size, building them does
        cfg = RankerConfig.preset("base", user_rows=1000, post_rows=1000, author_rows=1000)
    torch.manual_seed(0)
    model = Ranker(cfg).eval()
    user = one_user(cfg, HISTORY)  # type: ignore[arg-type]  # reads max_history, user_attributes, n_actions, ...
    rows = []
    for C in (64, 512):
        cands = candidates(cfg, C)
        with torch.inference_mode():
            calls = paths(model, user, cands)
            ref = calls["forward"]()
            for kind, call in calls.items():
                out = call()
                assert torch.allclose(out, ref, atol=1e-4), f"{kind} path differs from forward"  # type: ignore[arg-type]
                flops = count_flops(call)
                for threads in thread_counts:
                    torch.set_num_threads(threads)
                    seconds = timed(_ignore_index(call), reps, warmup)
                    p50, p99 = percentiles_ms(seconds)
                    gflops = flops / (p50 / 1000) / 1e9
                    target = TARGET_MS[C]
                    anchor = f"; {p99 / PHOENIX_C64_MS:.2f}x Phoenix's {PHOENIX_C64_MS} ms" if C == 64 else ""
                    rows.append(
                        latency_row(
                            f"ranker {kind}, 1 user, S={HISTORY}, C={C}, {threads} thread{'s' * (threads > 1)}",
                            f"preset base (D{cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads}/{cfg.n_kv_heads} "
                            f"heads, {len(model.tasks)} heads out), CPU fp32, torch.inference_mode, {threads} torch "
                            f"threads, {warmup} warm-up calls; {flops / 1e9:.2f} GFLOP per call",
                            f"{CMD}",
                            seconds,
                            target=f"p99 <= {target:g} ms"
                            + (f" (anchor: Phoenix JAX {PHOENIX_C64_MS} ms)" * (C == 64)),
                            verdict=f"{'met' if p99 <= target else 'missed'}: {p99 / target:.2f}x of target{anchor}; "
                            f"{gflops:.1f} GFLOP/s at the median",
                            extra={
                                "section": "ranker",
                                "path": kind,
                                "candidates": C,
                                "torch_threads": threads,
                                "p50_ms": p50,
                                "p99_ms": p99,
                                "flops": flops,
                                "gflops_per_s": gflops,
                            },
                        )
                    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes; print the rows, save nothing")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    args = parser.parse_args()
    threads = tuple(int(t) for t in args.threads.split(",") if t)
    rows = bench_ranker(args.quick, threads)
    if args.quick:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
