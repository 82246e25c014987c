"""Serving latency over what `make run` builds and deploys (small synthetic world): the deployment `make run` writes,
artifacts/deploy/variants.yaml (flows/deploy.py: the gate's champion, its shadow), or serving/variants.yaml before
any run has deployed:

- in-process: `PipelineRecommender.recommend` for many users, the per-stage breakdown from the pipeline's own timing;
- over HTTP: `ember serve` started in its own process, POST /recommend at concurrency 1 and 16 (threads with
  keep-alive connections), latency p50/p99 and throughput.

Every row names the models served (preset and shape of the ranker and the two-tower). The server writes its exposure
log into a temporary directory, never the repository's logs/ (the window the monitor and the promotion gate's drift
check read: a benchmark's random users are not traffic). An answer is a success only when it is a 200 that is not
degraded: a degraded 200 (the popular fallback) is counted and reported, and fails the target like an error.

`python -m bench.serving [--requests N]` measures and writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import Row, save
from bench.load import start_server
from serving.service import inference_threads
from serving.smoke import stop_group

GROUP = "serving"
CMD = "python -m bench.serving"
REPO = Path(__file__).resolve().parents[1]
DEPLOYED = REPO / "artifacts" / "deploy" / "variants.yaml"  # what `make run` serves (flows/deploy.py)
TEMPLATE = REPO / "serving" / "variants.yaml"
CONFIG = DEPLOYED if DEPLOYED.is_file() else TEMPLATE
CONFIG_NAME = str(CONFIG.relative_to(REPO))
TARGET_P99_MS = 30.0


def champion_config() -> Any:
    """The RecommenderConfig of the champion variant of the served config (CONFIG)."""
    from serving.ab import load_config
    from serving.recommender_config import RecommenderConfig

    cfg = load_config(CONFIG)
    variant = next(v for v in cfg.variants if v.name == cfg.champion)
    return RecommenderConfig.from_dict(dict(variant.recommender.params))  # type: ignore[union-attr]


def served_models(cfg: Any) -> str:
    """What the variant serves, e.g. "ranker preset nano (D32, 1 layers), two-tower preset nano (D32, 1 layers)": the
    preset from the training run's metrics.json beside the model directory, the shape from the model's config.json."""
    parts = []
    for label, directory in (("ranker", cfg.ranker), ("two-tower", cfg.retrieval_model)):
        model_dir = REPO / Path(directory)
        try:
            shape = json.loads((model_dir / "config.json").read_text())
            desc = f"D{shape['d_model']}, {shape['n_layers']} layers"
        except (OSError, ValueError, KeyError):
            desc = "no config.json"
        try:
            preset = json.loads((model_dir.parent / "metrics.json").read_text()).get("preset", "unrecorded")
        except (OSError, ValueError):
            preset = "unrecorded"
        parts.append(f"{label} preset {preset} ({desc}) at {directory}")
    return ", ".join(parts)


def user_ids(n: int, seed: int = 0) -> list[int]:
    """n users of the synthetic world (ids 1..10,000 at scale small), seeded."""
    rng = np.random.default_rng(seed)
    return [int(u) for u in rng.integers(1, 10_001, n)]


def ms_stats(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def in_process(n: int) -> list[Row]:
    import torch

    from serving.recommender_pipeline import PipelineRecommender

    torch.set_num_threads(inference_threads())  # as the service's worker runs
    os.chdir(REPO)
    cfg = champion_config()
    rec = PipelineRecommender.load(cfg)
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
    settings = (
        f"{n} users, k 20, {inference_threads()} torch thread(s), champion variant of {CONFIG_NAME}: "
        f"{served_models(cfg)}"
    )
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
            extra={"section": "in-process", "p50_ms": p50, "p99_ms": p99, "degraded": degraded},
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


@dataclass
class Answers:
    """What one load run got back: latency of every request (ms), wall time, and how many were not a full answer."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0  # not a 200 (or no JSON body)
    degraded: int = 0  # a 200 with degraded: true: the fallback slate, not the pipeline's


def _load(port: int, users: list[int], concurrency: int, keep_alive: bool = True) -> Answers:
    """Sends one POST /recommend per user from `concurrency` threads, keep-alive or a new connection per request (its
    connect and close inside the timed span); counts errors and degraded 200s."""
    chunks = [users[i::concurrency] for i in range(concurrency)]
    got = Answers()
    lock = threading.Lock()

    def worker(mine: list[int]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        local: list[float] = []
        errors = degraded = 0
        for u in mine:
            body = json.dumps({"user_id": u, "k": 20})
            start = time.perf_counter()
            if not keep_alive:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/recommend", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = resp.read()
            if not keep_alive:
                conn.close()
            local.append((time.perf_counter() - start) * 1000)
            if resp.status != 200:
                errors += 1
                continue
            try:
                degraded += bool(json.loads(payload).get("degraded"))
            except (ValueError, AttributeError):
                errors += 1
        conn.close()
        with lock:
            got.latencies.extend(local)
            got.errors += errors
            got.degraded += degraded

    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got.wall_s = time.perf_counter() - start
    return got


def http_row(concurrency: int, got: Answers, settings: str, keep_alive: bool = True) -> Row:
    """One HTTP row; at concurrency 1 the verdict needs the p99 within target and every answer full (no error, none
    degraded)."""
    p50, p99 = ms_stats(got.latencies)
    n = len(got.latencies)
    failed = f"{got.degraded} degraded, {got.errors} errors of {n}"
    target = verdict = ""
    if concurrency == 1:
        target = f"p99 <= {TARGET_P99_MS:g} ms at concurrency 1, every answer a full (not degraded) 200"
        met = p99 <= TARGET_P99_MS and got.errors == 0 and got.degraded == 0
        verdict = f"{'met' if met else 'missed'}: {p99 / TARGET_P99_MS:.2f}x of target; {failed}"
    return Row(
        GROUP,
        f"POST /recommend over HTTP, concurrency {concurrency}" + ("" if keep_alive else ", a new connection each"),
        CMD,
        settings,
        n,
        round(p50 / 1000, 6),
        round(p99 / 1000, 6),
        0.0,
        throughput=f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {n / got.wall_s:.1f} req/s, {failed}",
        target=target,
        verdict=verdict,
        extra={"section": "http", "concurrency": concurrency, "p50_ms": p50, "p99_ms": p99, "rps": n / got.wall_s,
               "errors": got.errors, "degraded": got.degraded, "keep_alive": keep_alive},
    )  # fmt: skip


def over_http(n: int) -> list[Row]:
    models = served_models(champion_config())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        # start_server moves the exposure log (and BentoML's home) into tmp: the repo's logs/ stay untouched.
        proc, url, ready_s = start_server(CONFIG, Path(tmp))
        port = int(url.rsplit(":", 1)[1])
        try:
            _load(port, user_ids(30, seed=1), 1)  # warm-up
            for concurrency, keep_alive in ((1, True), (1, False), (16, True)):
                got = _load(port, user_ids(n, seed=2 + concurrency), concurrency, keep_alive)
                settings = (
                    f"ember serve {CONFIG_NAME} (BentoML, 1 worker, {inference_threads()} torch thread(s)), "
                    f"exposure log in a temporary directory, ready in {ready_s:.1f} s; {n} requests, k 20, "
                    f"{'keep-alive' if keep_alive else 'a new connection per request'}; {models}"
                )
                rows.append(http_row(concurrency, got, settings, keep_alive))
        finally:
            stop_group(proc)
    return rows


def main() -> None:
    global CONFIG, CONFIG_NAME
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="requests per measurement")
    parser.add_argument("--config", type=Path, default=None, help=f"variants config to serve (default {CONFIG_NAME})")
    args = parser.parse_args()
    if args.config is not None:
        CONFIG = args.config.resolve()
        CONFIG_NAME = str(CONFIG.relative_to(REPO)) if CONFIG.is_relative_to(REPO) else str(CONFIG)
    rows = in_process(args.requests) + over_http(args.requests)
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
