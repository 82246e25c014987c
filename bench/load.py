"""Load: the highest rate of POST /recommend `ember serve` sustains on this machine, then that rate held for minutes.

    python -m bench.load                       # search the rate, hold it 10 minutes, write bench/results/load.json
    python -m bench.load --minutes 1 --out /tmp/load.json       # a short smoke run that leaves BENCHMARKS.md alone
    python -m bench.load --rate 20 --minutes 10                 # hold a known rate, no search

The generator is open-loop at a fixed rate (asyncio + httpx, a new request every 1/rate s whatever the server is
doing), so a slow server meets a growing queue, as in production, instead of a politely waiting client; latency is
measured from each request's scheduled time, so the client's own lateness is never hidden (no coordinated omission).
Locust was not used: its users are closed loops, and it would bring gevent into the environment for no gain here.

Sustainable = no errors, every request answered within the step and p99 <= --slo-p99-ms. The search doubles the rate
from --start-rate until a step fails, bisects, then confirms the rate over --confirm-seconds (10% lower until a
confirmation passes: a rate just over capacity needs more than a short step to build its queue). The hold records
errors, degraded answers and p50/p99 per minute, and the resident memory of the server (the BentoML worker that holds
the models, and the whole process tree) at the start and every minute. Verdict: 0 errors, p99 stable (no minute's
p99 above 1.5x the median minute's) and RSS growth < 5%. It serves artifacts/deploy/variants.yaml (what `make run`
serves) when there is one, else serving/variants.yaml, with the exposure log moved to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench.harness import RESULTS, Row, machine, save
from serving.smoke import free_port, stop_group, wait_ready

GROUP = "load"
REPO = Path(__file__).resolve().parents[1]
# What `make run` serves: the deployment generated from the registry, else the hand-written variants.
DEPLOYED = REPO / "artifacts" / "deploy" / "variants.yaml"
CONFIG = DEPLOYED if DEPLOYED.is_file() else REPO / "serving" / "variants.yaml"
P99_STABLE_FACTOR = 1.5  # a minute's p99 above 1.5x the median minute's is a trend, not noise
MAX_RSS_GROWTH = 0.05


@dataclass(frozen=True)
class Sample:
    scheduled: float  # perf_counter when it was due
    sent: float
    done: float
    status: int  # 0: no HTTP answer (refused, reset, timed out)
    degraded: bool

    @property
    def latency_ms(self) -> float:
        return (self.done - self.scheduled) * 1000


def user_ids(n: int, seed: int) -> list[int]:
    """n users of the synthetic world (ids 1..10,000 at scale small), seeded."""
    rng = np.random.default_rng(seed)
    return [int(u) for u in rng.integers(1, 10_001, n)]


async def _one(client: httpx.AsyncClient, scheduled: float, user: int, out: list[Sample]) -> None:
    sent = time.perf_counter()
    status, degraded = 0, False
    try:
        r = await client.post("/recommend", json={"user_id": user, "k": 20})
        status = r.status_code
        degraded = status == 200 and bool(r.json().get("degraded"))
    except (httpx.HTTPError, ValueError):
        pass
    out.append(Sample(scheduled, sent, time.perf_counter(), status, degraded))


async def open_loop(
    url: str,
    rate: float,
    seconds: float,
    users: list[int],
    timeout_s: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,  # tests: a fake server
) -> list[Sample]:
    """Sends round(rate * seconds) requests at fixed intervals; returns when every one is answered or timed out."""
    out: list[Sample] = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, transport=transport) as client:
        tasks = []
        t0 = time.perf_counter() + 0.05
        for i in range(round(rate * seconds)):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, due, users[i % len(users)], out)))
        await asyncio.gather(*tasks)
    return out


def summary(samples: list[Sample]) -> dict[str, Any]:
    lat = [s.latency_ms for s in samples]
    lag = [(s.sent - s.scheduled) * 1000 for s in samples]
    return {
        "requests": len(samples),
        "errors": sum(s.status != 200 for s in samples),
        # Non-200 answers by status; 0 = no HTTP answer (refused, reset or timed out after 30 s).
        "error_statuses": {str(k): v for k, v in sorted(Counter(s.status for s in samples if s.status != 200).items())},
        "degraded": sum(s.degraded for s in samples),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat else None,
        "client_lag_p99_ms": round(float(np.percentile(lag, 99)), 1) if lag else None,
    }


def sustainable(step: dict[str, Any], slo_p99_ms: float) -> bool:
    return step["errors"] == 0 and step["p99_ms"] is not None and step["p99_ms"] <= slo_p99_ms


def find_max_rate(
    url: str, start: float, step_s: float, confirm_s: float, slo_p99_ms: float, bisections: int, seed: int
) -> tuple[float, list[dict[str, Any]]]:
    """The highest rate (req/s) that passes: doubling from `start` until a step fails, bisecting, then confirming
    the result over a longer step (a rate just over capacity needs time to build its queue), 10% lower each time
    the confirmation fails."""
    steps: list[dict[str, Any]] = []

    def trial(rate: float, seconds: float = step_s) -> bool:
        users = user_ids(max(int(rate * seconds), 1), seed + len(steps))
        step = {"rate": round(rate, 2), "seconds": seconds} | summary(asyncio.run(open_loop(url, rate, seconds, users)))
        step["ok"] = sustainable(step, slo_p99_ms)
        steps.append(step)
        print(f"  {rate:7.2f} req/s for {seconds:g} s: p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms, "
              f"{step['errors']} errors "
              f"-> {'ok' if step['ok'] else 'over'}", flush=True)  # fmt: skip
        time.sleep(2)  # let a backlog drain before the next step
        return bool(step["ok"])

    good, bad = 0.0, None
    rate = start
    while bad is None:
        if trial(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
    for _ in range(bisections):
        mid = (good + bad) / 2
        if trial(mid):
            good = mid
        else:
            bad = mid
    while good >= start / 2 and not trial(good, confirm_s):
        good *= 0.9
    return (good if good >= start / 2 else 0.0), steps


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory (MB) of the server's process tree, and of its largest process (the worker with the models)."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    rss = []
    for p in procs:
        try:
            rss.append(p.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            continue
    return {"worker": round(max(rss), 1), "tree": round(sum(rss), 1)}


def hold(url: str, pid: int, rate: float, minutes: float, seed: int) -> dict[str, Any]:
    """`rate` for `minutes` in one open loop; RSS read at the start and after every minute, samples bucketed by the
    minute they were due in."""
    users = user_ids(int(rate * 60) + 1, seed)
    rss = [rss_mb(pid)]

    async def run() -> list[Sample]:
        async def sample_rss() -> None:
            while True:
                await asyncio.sleep(60)
                rss.append(rss_mb(pid))

        sampler = asyncio.create_task(sample_rss())
        try:
            return await open_loop(url, rate, minutes * 60, users)
        finally:
            sampler.cancel()

    samples = asyncio.run(run())
    rss.append(rss_mb(pid))
    t0 = min(s.scheduled for s in samples)
    per_minute = []
    for n in range(int(np.ceil(minutes))):
        bucket = [s for s in samples if n * 60 <= s.scheduled - t0 < (n + 1) * 60]
        row = {"minute": n + 1} | summary(bucket) | {"rss_worker_mb": rss[min(n + 1, len(rss) - 1)]["worker"]}
        per_minute.append(row)
        print(f"  minute {n + 1}: {row['requests']} requests, {row['errors']} errors, p50 {row['p50_ms']} ms, "
              f"p99 {row['p99_ms']} ms, worker RSS {row['rss_worker_mb']} MB", flush=True)  # fmt: skip
    p99s = [m["p99_ms"] for m in per_minute if m["p99_ms"] is not None]
    median_p99 = float(np.median(p99s)) if p99s else 0.0
    growth = (rss[-1]["worker"] - rss[0]["worker"]) / rss[0]["worker"]
    total = summary(samples)
    return {
        "rate": rate,
        "minutes": minutes,
        "total": total,
        "per_minute": per_minute,
        "rss_start_mb": rss[0],
        "rss_end_mb": rss[-1],
        "rss_growth": round(growth, 4),
        "p99_max_over_median": round(max(p99s) / median_p99, 2) if median_p99 else None,
        # One minute has nothing to be stable against.
        "p99_stable": max(p99s) <= P99_STABLE_FACTOR * median_p99 if len(p99s) >= 2 else None,
        "errors_ok": total["errors"] == 0,
        "rss_ok": growth < MAX_RSS_GROWTH,
    }


def start_server(config: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """`ember serve` with `config`, its exposure log (the repo's logs/ are the monitoring window) and its SQLite served
    sets moved under `workdir`; returns the process, its URL and the seconds it took to get ready."""
    body = yaml.safe_load(config.read_text())
    body.setdefault("exposure", {})["path"] = str(workdir / "exposure.jsonl")
    if body.get("fresh_feed", {}).get("store") == "sqlite":  # a benchmark's served sets stay out of the repo's store
        body["fresh_feed"]["sqlite_path"] = str(workdir / "served.db")
    moved = workdir / "variants.yaml"
    moved.write_text(yaml.safe_dump(body))
    port = free_port()
    ember = str(Path(sys.executable).parent / "ember")
    env = dict(os.environ, BENTOML_HOME=str(workdir / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [ember, "serve", "--port", str(port), "--config", str(moved)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        return proc, url, wait_ready(url, proc, 300)
    except BaseException:
        stop_group(proc)
        raise


def rows(result: dict[str, Any], command: str) -> list[Row]:
    h, t = result["hold"], result["hold"]["total"]
    minutes = [f"{m['p99_ms']:.0f}" for m in h["per_minute"]]
    search = "; ".join(f"{s['rate']:g}: p99 {s['p99_ms']} ms{' ok' if s['ok'] else ' over'}" for s in result["search"])
    found = f"max sustainable {result['rate']:.1f} req/s (p99 <= {result['slo_p99_ms']:g} ms, 0 errors)"
    verdict = [
        f"errors {t['errors']}",
        {True: "p99 stable", False: "p99 unstable", None: "p99 stability not measured (< 2 min)"}[h["p99_stable"]]
        + f" (max minute {h['p99_max_over_median']}x median)",
        f"worker RSS {h['rss_start_mb']['worker']} -> {h['rss_end_mb']['worker']} MB ({h['rss_growth']:+.1%})",
    ]
    met = h["errors_ok"] and h["p99_stable"] is not False and h["rss_ok"]
    return [
        Row(
            GROUP,
            "max sustainable rate of POST /recommend (open loop)",
            command,
            f"ember serve {result['config']} (BentoML, 1 worker), ready in {result['ready_s']:.1f} s; "
            f"{result['step_s']:g} s steps from {result['start_rate']:g} req/s, doubling then bisecting, "
            f"confirmed over {result['confirm_s']:g} s",
            len(result["search"]),
            0.0,
            0.0,
            0.0,
            throughput=f"{found}; steps {search}",
            extra={"search": result["search"], "rate": result["rate"]},
        ),
        Row(
            GROUP,
            f"POST /recommend held at {h['rate']:.1f} req/s for {h['minutes']:g} min (open loop)",
            command,
            f"k 20, random users of the small world, httpx keep-alive; p99 per minute (ms): {', '.join(minutes)}",
            t["requests"],
            round(t["p50_ms"] / 1000, 4),
            round(t["p99_ms"] / 1000, 4),
            h["rss_end_mb"]["tree"],
            throughput=f"{t['requests']} requests, p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, "
            f"{t['degraded']} degraded, {t['errors']} errors",
            target=f"0 errors, no minute's p99 > {P99_STABLE_FACTOR:g}x the median, worker RSS growth < 5%",
            verdict=f"{'met' if met else 'missed'}: " + ", ".join(verdict),
            extra={"per_minute": h["per_minute"], "rss_start_mb": h["rss_start_mb"], "rss_end_mb": h["rss_end_mb"]},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to hold the rate (default 10)")
    parser.add_argument("--rate", type=float, default=None, help="hold this rate (req/s) instead of searching")
    parser.add_argument("--start-rate", type=float, default=4.0, help="first rate of the search (req/s)")
    parser.add_argument("--step-seconds", type=float, default=20.0, help="length of each search step")
    parser.add_argument("--bisections", type=int, default=3, help="bisection steps after the first failing rate")
    parser.add_argument("--confirm-seconds", type=float, default=60.0, help="length of the confirmation step")
    parser.add_argument("--slo-p99-ms", type=float, default=500.0, help="p99 a sustainable step stays under")
    parser.add_argument("--config", type=Path, default=CONFIG, help="variants config to serve")
    parser.add_argument("--out", type=Path, default=RESULTS / f"{GROUP}.json", help="results JSON")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    command = "python -m bench.load " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="ember-load-") as tmp:
        proc, url, ready_s = start_server(args.config.resolve(), Path(tmp))
        try:
            asyncio.run(open_loop(url, 5.0, 4.0, user_ids(20, args.seed)))  # warm-up: caches, lazy inits
            if args.rate is None:
                print(f"searching the max sustainable rate (p99 <= {args.slo_p99_ms:g} ms):", flush=True)
                rate, search = find_max_rate(
                    url,
                    args.start_rate,
                    args.step_seconds,
                    args.confirm_seconds,
                    args.slo_p99_ms,
                    args.bisections,
                    args.seed,
                )
                if rate <= 0:
                    raise SystemExit(f"not even {args.start_rate:g} req/s is sustainable: lower --start-rate")
            else:
                rate, search = args.rate, []
            print(f"holding {rate:.2f} req/s for {args.minutes:g} min:", flush=True)
            held = hold(url, proc.pid, rate, args.minutes, args.seed + 1000)
        finally:
            stop_group(proc)
    result = {
        "config": str(args.config),
        "ready_s": ready_s,
        "start_rate": args.start_rate,
        "step_s": args.step_seconds,
        "confirm_s": args.confirm_seconds,
        "slo_p99_ms": args.slo_p99_ms,
        "rate": rate,
        "search": search,
        "hold": held,
    }
    if args.out.resolve() == (RESULTS / f"{GROUP}.json").resolve():
        path = save(GROUP, rows(result, command))
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        body = {"group": GROUP, "machine": machine(), "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        path = args.out
        path.write_text(json.dumps(body | {"result": result, "loadavg": os.getloadavg()}, indent=2) + "\n")
    print(json.dumps({k: held[k] for k in ("rss_start_mb", "rss_end_mb", "rss_growth", "p99_stable")}))
    print(path)


if __name__ == "__main__":
    main()
