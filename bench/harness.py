"""Repeated, isolated measurements of a command: wall time and peak resident memory per run, median and p99."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    """One BENCHMARKS.md row: what was run, how often, and the distribution of what was measured."""

    group: str
    name: str
    command: str
    settings: str
    repeats: int
    wall_s_median: float
    wall_s_p99: float
    peak_rss_mb_max: float
    throughput: str = ""
    target: str = ""
    verdict: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_once(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Runs `argv` in a fresh process; returns (wall seconds, peak RSS in MB of that process tree).

    Its stderr goes to a temporary file, read back only on failure: a pipe nobody drains while waiting would block a
    chatty command (Prefect logs every flow run to the console) once the pipe's 64 KiB buffer is full.
    """
    import tempfile

    with tempfile.TemporaryFile() as err_file:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err_file, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err_file.seek(0)
            err = err_file.read().decode(errors="replace")
            raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {err[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0  # ru_maxrss is KiB on Linux


def measure(argv: list[str], repeats: int) -> tuple[list[float], list[float]]:
    walls, rss = [], []
    for _ in range(repeats):
        w, m = run_once(argv)
        walls.append(w)
        rss.append(m)
    return walls, rss


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


# The instruction sets that move CPU timings most (a figure from an AVX2-only machine is not one from AVX-512).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_model_and_flags() -> tuple[str, str]:
    """(model name, the SIMD_FLAGS this CPU has, space-separated) from /proc/cpuinfo; "unknown" where unreadable."""
    cpu, flags = "unknown", "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            elif key.strip() == "flags" and flags == "unknown":
                have = set(value.split())
                flags = " ".join(f for f in SIMD_FLAGS if f in have) or "none of " + " ".join(SIMD_FLAGS)
    except OSError:
        pass
    return cpu, flags


def machine() -> dict[str, str]:
    cpu, flags = cpu_model_and_flags()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": str(os.cpu_count()),
        "memory_gb": f"{mem_gb:.0f}",
        "python": platform.python_version(),
        "os": platform.platform(),
        "commit": commit or "unknown",
    }


def kept_rows(group: str, keep: Callable[[dict[str, Any]], bool]) -> list[Row]:
    """The rows of bench/results/<group>.json that `keep` accepts (a run re-measuring only some of the group), each
    stamped with the time, commit and CPU it was measured at: save() stamps the group with this run's, which would
    otherwise pass an old figure off as measured now, on this machine."""
    old = RESULTS / f"{group}.json"
    if not old.is_file():
        return []
    body = json.loads(old.read_text())
    kept = [Row(**r) for r in body["rows"] if keep(r)]
    for r in kept:
        r.extra.setdefault("measured_at", body["measured_at"])
        r.extra.setdefault("commit", body["machine"]["commit"])
        r.extra.setdefault("cpu", f"{body['machine']['cpu']} ({body['machine'].get('cpu_flags', 'unknown')})")
    return kept


def save(group: str, rows: list[Row]) -> Path:
    """Writes one group's rows with the machine they ran on to bench/results/<group>.json; rows measured now (no load
    recorded yet) get the load average at the end, so a noisy run shows as one."""
    load = [round(x, 2) for x in os.getloadavg()]
    for r in rows:
        r.extra.setdefault("loadavg_1_5_15_after", load)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{group}.json"
    body: dict[str, Any] = {
        "group": group,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    body["rows"] = [asdict(r) for r in rows]
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
