"""Ranker latency, in-process on CPU, with its anchor measured beside it: one request (user + history 127) scoring
C = 64 and C = 512 candidates with the `base` preset (Phoenix's ranking shape: D128, 4 layers), at 1 and 2 threads.

For each thread count, back to back in one run: the CPU's fp32 matmul peak (torch.mm, the reference for GFLOP/s), the
Phoenix ranker (xai-org/x-algorithm's JAX code, bench/phoenix_anchor.py: its own venv, pinned to as many cores, bf16
as its runner sets and fp32 as Ember runs), then Ember by the plain forward pass and by the serving path (encode the
user once, score candidates against the cached keys and values), and the plain forward pass through torch.compile
(inductor, one graph per C; Phoenix's anchor is jit-compiled by XLA too; the served scorer runs eager). Ember's FLOPs
are counted by torch's FlopCounterMode on the same call (the compiled call: the eager forward's), Phoenix's by XLA's
cost analysis of the compiled call; GFLOP/s = FLOPs / median.
Target at C = 64: Ember's median <= 0.33x Phoenix's (the faster of its two dtypes); where the anchor cannot run here
the rows say why instead of comparing with a number from elsewhere.

`python -m bench.ranker` measures and writes bench/results/ranker.json; `--quick` runs tiny sizes and prints;
`--no-phoenix` leaves the anchor out (recorded as not run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import phoenix_anchor
from bench.harness import Row, save
from bench.models import latency_row, one_user, peak_flops, percentiles_ms, timed
from models.ranker.model import CandidateBatch, Ranker, RankerConfig
from models.retrieval.model import UserFeatures

GROUP = "ranker"
CMD = "python -m bench.ranker"
HISTORY = 127
CANDIDATES = (64, 512)
PHOENIX_RATIO = 0.33  # target at C = 64: Ember's median <= this x Phoenix's, both measured in the same run
TARGET_P99_MS = {512: 25.0}  # C = 512: an absolute budget
Prepared = tuple[int, str, Callable[[], object], int]  # candidates, path, the call, its FLOPs
COMPILE_S: dict[int, float] = {}  # seconds the compiled path's first call took at each C (the compile)


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


def paths(
    model: Ranker, user: UserFeatures, cands: CandidateBatch, compiled: Callable[..., Any] | None = None
) -> dict[str, Callable[[], object]]:
    """The ways of scoring one request; each returns (1, C, K) logits. `compiled`: the model through torch.compile
    (the same forward, its graph fused by inductor into C++ kernels), as Phoenix's anchor runs jit-compiled by XLA."""
    out = {
        "forward": lambda: model(user, cands).logits,
        "cached": lambda: model.score_candidates(model.encode_user(user), cands).logits,
    }
    if compiled is not None:
        out["compiled forward"] = lambda: compiled(user, cands).logits
    return out


def _ignore_index(call: Callable[[], object]) -> Callable[[int], object]:
    return lambda i: call()


def count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def pin(cpus: set[int]) -> None:
    """Every thread of this process (torch's pool too) onto `cpus`: Ember and Phoenix then run on the same cores."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), cpus)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def phoenix_rows(anchor: dict[str, Any], cores: int, warmup: int, peak: float) -> tuple[list[Row], dict[int, dict]]:
    """The anchor's rows, and per candidate count its faster dtype's {dtype, p50_ms, p99_ms} (empty if not run)."""
    if "error" in anchor:
        row = Row(
            GROUP,
            f"Phoenix ranker (x-algorithm, JAX), anchor, {_plural(cores, 'core')}",
            CMD,
            "not measured",
            0,
            0.0,
            0.0,
            0.0,
            target="side-by-side anchor",
            verdict=f"not runnable here: {anchor['error']}",
            extra={"section": "phoenix", "cores": cores, "error": anchor["error"]},
        )  # fmt: skip
        return [row], {}
    rows: list[Row] = []
    best: dict[int, dict[str, Any]] = {}
    digest = ", ".join(f"{k} {v}" for k, v in anchor["source_sha256_12"].items())
    for res in anchor["results"]:
        seconds, C, dtype = res["seconds"], res["candidates"], res["dtype"]
        p50, p99 = percentiles_ms(seconds)
        gflops = res["flops"] / (p50 / 1000) / 1e9
        row = latency_row(
            f"Phoenix ranker (x-algorithm, JAX {dtype}), 1 user, S={HISTORY}, C={C}, {_plural(cores, 'core')}",
            f"{anchor['shape']}, {anchor['params']:,} weights (random); jax {anchor['jax']}, haiku {anchor['haiku']}, "
            f"jit, pinned to {_plural(anchor['cpus'], 'CPU')}, {warmup} warm-up calls after the compiling one "
            f"({res['first_call_s']:.1f} s); {res['flops'] / 1e9:.2f} GFLOP per call (XLA cost analysis); code "
            f"{anchor['source']} (sha256/12: {digest})",
            CMD,
            seconds,
            target="side-by-side anchor",
            extra={"section": "phoenix", "candidates": C, "dtype": dtype, "cores": cores, "p50_ms": p50,
                   "p99_ms": p99, "flops": res["flops"], "gflops_per_s": gflops, "jax": anchor["jax"],
                   "source": anchor["source"], "source_sha256_12": anchor["source_sha256_12"]},
        )  # fmt: skip
        row.group = GROUP
        row.throughput += f"; {gflops:.1f} GFLOP/s at the median ({gflops * 1e9 / peak:.0%} of the fp32 matmul peak)"
        rows.append(row)
        if C not in best or p50 < best[C]["p50_ms"]:
            best[C] = {"dtype": dtype, "p50_ms": p50, "p99_ms": p99}
    return rows, best


def ember_verdict(C: int, p50: float, p99: float, phoenix: dict | None, reason: str) -> tuple[str, str, float | None]:
    """(target, verdict head, median ratio to Phoenix) of one Ember row."""
    ratio = p50 / phoenix["p50_ms"] if phoenix else None
    vs = (
        f"{ratio:.2f}x Phoenix's median ({p50:.2f} vs {phoenix['p50_ms']:.2f} ms, Phoenix {phoenix['dtype']}; "
        f"p99 {p99:.2f} vs {phoenix['p99_ms']:.2f} ms)"
        if phoenix and ratio is not None
        else f"Phoenix not measured ({reason})"
    )
    if C in TARGET_P99_MS:
        budget = TARGET_P99_MS[C]
        head = f"{'met' if p99 <= budget else 'missed'}: {p99 / budget:.2f}x of target; {vs}"
        return f"p99 <= {budget:g} ms", head, ratio
    target = f"median <= {PHOENIX_RATIO:g}x Phoenix's median (same run and cores, its faster dtype)"
    if ratio is None:
        return target, f"not measured: the Phoenix anchor is not runnable here: {reason}", None
    return target, f"{'met' if ratio <= PHOENIX_RATIO else 'missed'}: {vs}", ratio


def bench_ranker(quick: bool, thread_counts: tuple[int, ...], phoenix: bool = True, compile: bool = True) -> list[Row]:
    reps, warmup = (5, 1) if quick else (200, 20)
    cfg = RankerConfig.preset("base")
    if quick:  # tiny tables: latency does not depend on table size, building them does
        cfg = RankerConfig.preset("base", user_rows=1000, post_rows=1000, author_rows=1000)
    torch.manual_seed(0)
    model = Ranker(cfg).eval()
    compiled = torch.compile(model, dynamic=False) if compile else None  # one graph per C, compiled by its first call
    user = one_user(cfg, HISTORY)  # type: ignore[arg-type]  # reads max_history, user_attributes, n_actions, ...
    prepared: list[Prepared] = []
    with torch.inference_mode():
        for C in CANDIDATES:
            calls = paths(model, user, candidates(cfg, C), compiled)
            ref = calls["forward"]()
            flops: dict[str, int] = {}
            for kind, call in calls.items():
                start = time.perf_counter()
                assert torch.allclose(call(), ref, atol=1e-4), f"{kind} path differs from forward"  # type: ignore[arg-type]
                COMPILE_S[C] = time.perf_counter() - start if kind == "compiled forward" else COMPILE_S.get(C, 0.0)
                # inductor's kernels bypass the op counter: the compiled call does the eager forward's arithmetic
                flops[kind] = flops["forward"] if kind == "compiled forward" else count_flops(call)
                prepared.append((C, kind, call, flops[kind]))
    rows: list[Row] = []
    allowed = sorted(os.sched_getaffinity(0))
    try:
        for threads in thread_counts:
            pin(set(allowed[:threads]))  # the CPUs phoenix_anchor.measure pins the anchor to
            rows += _measure_at(threads, prepared, cfg, len(model.tasks), quick, phoenix, reps, warmup)
    finally:
        pin(set(allowed))
    return rows


def _measure_at(
    threads: int,
    prepared: list[Prepared],
    cfg: RankerConfig,
    n_tasks: int,
    quick: bool,
    phoenix: bool,
    reps: int,
    warmup: int,
) -> list[Row]:
    """Back to back on `threads` cores: the matmul peak, the Phoenix anchor, then every Ember (C, path)."""
    rows: list[Row] = []
    load_before = [round(x, 2) for x in os.getloadavg()]  # another job on these 2 cores shows here
    peak = peak_flops(threads, n=256 if quick else 2048, repeats=3 if quick else 10)
    rows.append(
        Row(
            GROUP,
            f"CPU peak fp32 matmul, {_plural(threads, 'thread')} (reference for GFLOP/s)",
            CMD,
            f"torch.mm {256 if quick else 2048}^3, best of {3 if quick else 10}",
            3 if quick else 10,
            0.0,
            0.0,
            0.0,
            throughput=f"{peak / 1e9:.1f} GFLOP/s",
            extra={"section": "peak", "torch_threads": threads, "peak_flops": peak},
        )  # fmt: skip
    )
    anchor = (
        phoenix_anchor.measure(CANDIDATES, threads, reps, warmup) if phoenix else {"error": "left out by --no-phoenix"}
    )
    anchor_rows, best = phoenix_rows(anchor, threads, warmup, peak)
    rows += anchor_rows
    for r in rows[-len(anchor_rows) - 1 :]:
        r.extra["loadavg_1_5_15_before"] = load_before
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for C, kind, call, flops in prepared:
            seconds = timed(_ignore_index(call), reps, warmup)
            p50, p99 = percentiles_ms(seconds)
            gflops = flops / (p50 / 1000) / 1e9
            target, verdict, ratio = ember_verdict(C, p50, p99, best.get(C), anchor.get("error", ""))
            row = latency_row(
                f"ranker {kind}, 1 user, S={HISTORY}, C={C}, {_plural(threads, 'thread')}",
                f"preset base (D{cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads}/{cfg.n_kv_heads} heads, "
                f"{n_tasks} heads out), CPU fp32, torch.inference_mode, {threads} torch threads, "
                + (f"torch.compile (inductor, dynamic=False; the first call compiled it in {COMPILE_S[C]:.1f} s), "
                   if kind == "compiled forward" else "")
                + f"{warmup} warm-up calls; {flops / 1e9:.2f} GFLOP per call (FlopCounterMode"
                + (" of the eager forward)" if kind == "compiled forward" else ")"),
                CMD,
                seconds,
                target=target,
                verdict=f"{verdict}; {gflops:.1f} GFLOP/s at the median, {gflops * 1e9 / peak:.0%} of the "
                f"{threads}-thread matmul peak",
                extra={"section": "ranker", "path": kind, "candidates": C, "torch_threads": threads,
                       "p50_ms": p50, "p99_ms": p99, "flops": flops, "gflops_per_s": gflops,
                       "peak_gflops_per_s": peak / 1e9, "phoenix": best.get(C), "ratio_to_phoenix_p50": ratio,
                       "loadavg_1_5_15_before": load_before},
            )  # fmt: skip
            row.group = GROUP
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes; print the rows, save nothing")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (and Phoenix cores)")
    parser.add_argument("--no-phoenix", action="store_true", help="leave the Phoenix anchor out (recorded as such)")
    args = parser.parse_args()
    threads = tuple(int(t) for t in args.threads.split(",") if t)
    rows = bench_ranker(args.quick, threads, phoenix=not args.no_phoenix)
    extra_args = (f" --threads {args.threads}" if args.threads != "1,2" else "") + " --no-phoenix" * args.no_phoenix
    for r in rows:
        r.command = CMD + extra_args  # the rows name the command that made them
    if args.quick:
        print(json.dumps([asdict(r) for r in rows], indent=2, default=float))
        return
    print(save(GROUP, rows))
    for r in rows:
        print(f"{r.name}: {r.throughput} | {r.verdict}")


if __name__ == "__main__":
    main()
