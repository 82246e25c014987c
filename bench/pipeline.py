"""The main job's time as a user meets it: a fresh `git clone` of this repository (its committed HEAD), `make setup`
(timed, no target), then exactly `make run` in a subprocess (the Prefect API start on an empty PREFECT_HOME, the
`ember-pipeline` flow on the embedded default, the feature read, the served smoke request and the lineage), timed
as a whole and per flow step (`ember run --report`), then `make run` again with nothing changed (the no-op rerun).

`python -m bench.pipeline [--repeats N]` measures and writes bench/results/pipeline.json. Each repeat is a new clone
with an empty DVC cache. No PREFECT_*, VIRTUAL_ENV or CI setting of the caller reaches the clone's commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.harness import Row, p99, save

GROUP = "pipeline"
CMD = "python -m bench.pipeline"
REPO = Path(__file__).resolve().parents[1]
TARGET_S, TARGET_NOOP_S = 240.0, 30.0


def clean_env() -> dict[str, str]:
    """The caller's environment without what would make the clone's commands differ from a user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VIRTUAL_ENV", "CI"))}
    venv_bin = str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Runs `argv` in `cwd`; its wall seconds. Raises with the output's tail when it fails."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed in {cwd}: {(proc.stdout + proc.stderr)[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1, help="fresh clones to run (each ~3 min set-up + the job)")
    args = parser.parse_args()
    env = clean_env()
    setup, first, noop = [], [], []
    stages: dict[str, list[float]] = defaultdict(list)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    for _ in range(args.repeats):
        work = Path(tempfile.mkdtemp(prefix="ember-bench-pipeline-"))
        try:
            clone = work / "ember"
            subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
            setup.append(timed(["make", "setup"], clone, env))
            report = work / "run.json"
            first.append(timed(["make", "run", f"RUN_REPORT={report}"], clone, env))
            result = json.loads(report.read_text())
            for name, s in result["seconds"].items():
                stages[name].append(s)
            noop.append(timed(["make", "run", f"RUN_REPORT={report}"], clone, env))
            again = json.loads(report.read_text())
            if again["stages_run"]:
                raise RuntimeError(f"the rerun redid {again['stages_run']}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    settings = (
        f"fresh git clone of {commit.stdout.strip()}, after `make setup`; small synthetic world, params.yaml as "
        "committed, empty DVC cache, Prefect API started by `ember run` on an empty PREFECT_HOME; wall time of the "
        "whole `make run` (flow, feature read, served smoke request, lineage)"
    )
    med, med2 = float(np.median(first)), float(np.median(noop))
    rows = [
        Row(GROUP, "make run from a fresh clone (after set-up)", CMD, settings, len(first), round(med, 1),
            round(p99(first), 1), 0.0, target=f"<= {TARGET_S:.0f} s on 2 cores",
            verdict=("met" if med <= TARGET_S else "missed") + f": {med / TARGET_S:.2f}x the target"),
        Row(GROUP, "make run again, inputs unchanged (no-op)", CMD, settings, len(noop), round(med2, 1),
            round(p99(noop), 1), 0.0, target=f"<= {TARGET_NOOP_S:.0f} s",
            verdict=("met" if med2 <= TARGET_NOOP_S else "missed") + f": {med2 / TARGET_NOOP_S:.2f}x the target"),
        Row(GROUP, "make setup (not in the job's time)", CMD, "fresh git clone, package registries as configured",
            len(setup), round(float(np.median(setup)), 1), round(p99(setup), 1), 0.0),
    ]  # fmt: skip
    from flows.pipeline import BRANCHES

    side_by_side = {stage for branch in BRANCHES for stage in branch}
    for name, values in sorted(stages.items(), key=lambda kv: -float(np.median(kv[1]))):
        share = f"{100 * float(np.median(values)) / med:.0f}% of make run"
        if name in side_by_side:
            share += " (its branch runs beside the other: shares of the two overlap)"
        rows.append(
            Row(GROUP, f"flow step {name}", CMD, settings, len(values), round(float(np.median(values)), 2),
                round(p99(values), 2), 0.0, throughput=share)
        )  # fmt: skip
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
