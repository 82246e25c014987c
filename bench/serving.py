"""Serving latency over what `make run` builds (small synthetic world, the champion variant of serving/variants.yaml):

- in-process: `PipelineRecommender.recommend` for many users, the per-stage breakdown from the pipeline's own timing;
- over HTTP: `ember serve` started in its own process, POST /recommend at concurrency 1 and 16 (threads with
  keep-alive connections), latency p50/p99 and throughput.

`python -m bench.serving [--requests N]` measures and writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import Row, save
from serving.smoke import free_port, stop_group, wait_ready

GROUP = "serving"
CMD = "python -m bench.serving"
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "serving" / "variants.yaml"
TARGET_P99_MS = 30.0


def champion_config() -> Any:
    """The RecommenderConfig of the champion variant in serving/variants.yaml."""
    from serving.ab import load_config
    from serving.recommender_pipeline import RecommenderConfig

    cfg = load_config(CONFIG)
    variant = next(v for v in cfg.variants if v.name == cfg.champion)
    return RecommenderConfig.from_dict(dict(variant.recommender.params))  # type: ignore[union-attr]


def user_ids(n: int, seed: int = 0) -> list[int]:
    """n users of the synthetic world (ids 1..10,000 at scale small), seeded."""
    rng = np.random.default_rng(seed)
    return [int(u) for u in rng.integers(1, 10_001, n)]


def ms_stats(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def in_process(n: int) -> list[Row]:
    import torch

    from serving.recommender_pipeline import PipelineRecommender

    torch.set_num_threads(2)
    os.chdir(REPO)
    rec = PipelineRecommender.load(champion_config())
    users = user_ids(n + 20)
    for u in users[:20]:  # warm-up: caches, lazy inits
        rec.recommend(u, 20)
    walls: list[float] = []
    stages: dict[str, list[float]] = defaultdict(list)
    ranked: list[int] = []
    degraded = 0
    for u in users[20:]:
        start = time.perf_counter()
        out = rec.recommend(u, 20)
        walls.append((time.perf_counter() - start) * 1000)
        degraded += out.degraded
        for s in out.stages:
            stages[f"{s['stage']}:{s['name']}"].append(s["ms"])
            if s["name"] == "RankerScorer":
                ranked.append(int(s["in"]))
    p50, p99 = ms_stats(walls)
    settings = f"{n} users, k 20, 2 torch threads, champion variant of serving/variants.yaml"
    rows = [
        Row(
            GROUP,
            "recommend in-process (PipelineRecommender)",
            CMD,
            settings,
            n,
            round(p50 / 1000, 6),
            round(p99 / 1000, 6),
            0.0,
            throughput=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; ranked candidates median "
            f"{statistics.median(ranked) if ranked else 0:.0f}; degraded {degraded}",
            extra={"section": "in-process", "p50_ms": p50, "p99_ms": p99},
        )  # fmt: skip
    ]
    for name, values in sorted(stages.items(), key=lambda kv: -statistics.median(kv[1])):
        s50, s99 = ms_stats(values)
        rows.append(
            Row(
                GROUP,
                f"stage {name}",
                CMD,
                settings,
                len(values),
                round(s50 / 1000, 6),
                round(s99 / 1000, 6),
                0.0,
                throughput=f"p50 {s50:.2f} ms, p99 {s99:.2f} ms",
                extra={"section": "in-process", "stage": name},
            )  # fmt: skip
        )
    return rows


def _load(port: int, users: list[int], concurrency: int) -> tuple[list[float], float, int]:
    """Sends one POST /recommend per user from `concurrency` threads; returns latencies (ms), wall s, errors."""
    chunks = [users[i::concurrency] for i in range(concurrency)]
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(mine: list[int]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        local: list[float] = []
        for u in mine:
            body = json.dumps({"user_id": u, "k": 20})
            start = time.perf_counter()
            conn.request("POST", "/recommend", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            local.append((time.perf_counter() - start) * 1000)
            if resp.status != 200:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start, errors[0]


def over_http(n: int) -> list[Row]:
    import subprocess
    import sys

    port = free_port()
    ember = str(Path(sys.executable).parent / "ember")
    proc = subprocess.Popen(
        [ember, "serve", "--port", str(port), "--config", str(CONFIG)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows = []
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}", proc, 300)
        _load(port, user_ids(30, seed=1), 1)  # warm-up
        for concurrency in (1, 16):
            latencies, wall, errors = _load(port, user_ids(n, seed=2 + concurrency), concurrency)
            p50, p99 = ms_stats(latencies)
            target = f"p99 <= {TARGET_P99_MS:g} ms at concurrency 1" if concurrency == 1 else ""
            verdict = f"{'met' if p99 <= TARGET_P99_MS else 'missed'}: {p99 / TARGET_P99_MS:.2f}x" * (concurrency == 1)
            rows.append(
                Row(
                    GROUP,
                    f"POST /recommend over HTTP, concurrency {concurrency}",
                    CMD,
                    f"ember serve (BentoML, 1 worker) ready in {ready_s:.1f} s; {n} requests, k 20, keep-alive",
                    len(latencies),
                    round(p50 / 1000, 6),
                    round(p99 / 1000, 6),
                    0.0,
                    throughput=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {len(latencies) / wall:.1f} req/s, "
                    f"{errors} errors",
                    target=target,
                    verdict=verdict,
                    extra={
                        "section": "http",
                        "concurrency": concurrency,
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "rps": len(latencies) / wall,
                        "errors": errors,
                    },
                )  # fmt: skip
            )
    finally:
        stop_group(proc)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    args = parser.parse_args()
    rows = in_process(args.requests) + over_http(args.requests)
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
