"""The main job's time: `ember-pipeline` on the embedded default (small synthetic world, params.yaml as committed) in a
fresh copy of the project with an empty DVC cache, timed per stage, then run again unchanged (the no-op rerun).

`python -m bench.pipeline [--repeats N]` measures and writes bench/results/pipeline.json. Each repeat is a new copy:
the first run does every stage, the second finds every DVC stage cached and the online store current. The flow runs
in its own process, as `ember run` does without PREFECT_API_URL, against a local `prefect server start` (flows/api.py
`local_server`, not Prefect's ephemeral API, whose 20 s start-up limit a first start misses) with PREFECT_HOME
`.prefect/` inside the copy: one server per copy, started on an empty home (a new database, migrated) before the
first run and stopped after the rerun. Its start-up is a row of its own and not in the job's time. No PREFECT_*
setting of the caller reaches the server or the flow; the set-up, `make setup`, is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.harness import RESULTS, Row, p99, save
from flows.api import local_server, server_env

GROUP = "pipeline"
CMD = "python -m bench.pipeline"
REPO = Path(__file__).resolve().parents[1]
TARGET_S, TARGET_NOOP_S = 300.0, 30.0
PREFECT_HOME = ".prefect"  # in the copy, as in the repo (git-ignored there too)
RUN = (
    "import json, sys; from flows.pipeline import ember_pipeline; "
    "print(json.dumps(ember_pipeline(project=sys.argv[1]), default=str))"
)


def fresh_copy(dst: Path) -> None:
    """The tracked and not-ignored files of the working tree, as a new git repository (DVC needs one)."""
    from tests.project import copy_project, git_commit

    dst.mkdir(parents=True)
    copy_project(dst)
    git_commit(dst)


def run_flow(project: Path, api: str) -> tuple[float, dict]:
    """`ember_pipeline(project)` in a new process against the Prefect API `api`; returns (wall seconds, its result)."""
    env = server_env(project / PREFECT_HOME, {"PREFECT_API_URL": api})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN, str(project)], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ember-pipeline failed: {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1, help="fresh copies to run (each ~3-5 min)")
    args = parser.parse_args()
    work = RESULTS / "tmp" / "pipeline"
    first, noop, ready = [], [], []
    stages: dict[str, list[float]] = defaultdict(list)
    for i in range(args.repeats):
        shutil.rmtree(work, ignore_errors=True)
        project = work / f"project-{i}"
        fresh_copy(project)
        start = time.perf_counter()
        with local_server(home=project / PREFECT_HOME) as api:
            ready.append(time.perf_counter() - start)
            wall, result = run_flow(project, api)
            wall2, again = run_flow(project, api)
        first.append(wall)
        for name, s in result["seconds"].items():
            stages[name].append(s)
        if again["stages_run"]:
            raise RuntimeError(f"the rerun redid {again['stages_run']}")
        noop.append(wall2)
    shutil.rmtree(work, ignore_errors=True)
    settings = (
        "small synthetic world, params.yaml as committed, fresh copy, empty DVC cache, "
        "local Prefect server (flows/api.py), its start-up not included"
    )
    med, med2 = float(np.median(first)), float(np.median(noop))
    rows = [
        Row(GROUP, "ember-pipeline from scratch (after set-up)", CMD, settings, len(first), round(med, 1),
            round(p99(first), 1), 0.0, target=f"<= {TARGET_S:.0f} s",
            verdict=("met" if med <= TARGET_S else "missed") + f": {med / TARGET_S:.2f}x the target"),
        Row(GROUP, "ember-pipeline rerun, inputs unchanged (no-op)", CMD, settings, len(noop), round(med2, 1),
            round(p99(noop), 1), 0.0, target=f"<= {TARGET_NOOP_S:.0f} s",
            verdict=("met" if med2 <= TARGET_NOOP_S else "missed") + f": {med2 / TARGET_NOOP_S:.2f}x the target"),
        Row(GROUP, "local Prefect server healthy (before the runs)", CMD,
            "prefect server start on loopback, empty PREFECT_HOME in the copy: a new SQLite database, migrated",
            len(ready), round(float(np.median(ready)), 1), round(p99(ready), 1), 0.0),
    ]  # fmt: skip
    for name, values in sorted(stages.items(), key=lambda kv: -float(np.median(kv[1]))):
        rows.append(
            Row(GROUP, f"stage {name}", CMD, settings, len(values), round(float(np.median(values)), 2),
                round(p99(values), 2), 0.0, throughput=f"{100 * float(np.median(values)) / med:.0f}% of the job")
        )  # fmt: skip
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
