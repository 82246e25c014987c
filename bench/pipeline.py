"""The main job's time: `ember-pipeline` on the embedded default (small synthetic world, params.yaml as committed) in a
fresh copy of the project with an empty DVC cache, timed per stage, then run again unchanged (the no-op rerun).

`python -m bench.pipeline [--repeats N]` measures and writes bench/results/pipeline.json. Each repeat is a new copy:
the first run does every stage, the second finds every DVC stage cached and the online store current. The flow runs
in its own process against the ephemeral Prefect API, as `ember run` does (the set-up, `make setup`, is not timed).
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

GROUP = "pipeline"
CMD = "python -m bench.pipeline"
REPO = Path(__file__).resolve().parents[1]
TARGET_S, TARGET_NOOP_S = 300.0, 30.0
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


def run_flow(project: Path) -> tuple[float, dict]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
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
    first, noop = [], []
    stages: dict[str, list[float]] = defaultdict(list)
    for i in range(args.repeats):
        shutil.rmtree(work, ignore_errors=True)
        project = work / f"project-{i}"
        fresh_copy(project)
        wall, result = run_flow(project)
        first.append(wall)
        for name, s in result["seconds"].items():
            stages[name].append(s)
        wall2, again = run_flow(project)
        if again["stages_run"]:
            raise RuntimeError(f"the rerun redid {again['stages_run']}")
        noop.append(wall2)
    shutil.rmtree(work, ignore_errors=True)
    settings = "small synthetic world, params.yaml as committed, fresh copy, empty DVC cache, ephemeral Prefect API"
    med, med2 = float(np.median(first)), float(np.median(noop))
    rows = [
        Row(GROUP, "ember-pipeline from scratch (after set-up)", CMD, settings, len(first), round(med, 1),
            round(p99(first), 1), 0.0, target=f"<= {TARGET_S:.0f} s",
            verdict=("met" if med <= TARGET_S else "missed") + f": {med / TARGET_S:.2f}x the target"),
        Row(GROUP, "ember-pipeline rerun, inputs unchanged (no-op)", CMD, settings, len(noop), round(med2, 1),
            round(p99(noop), 1), 0.0, target=f"<= {TARGET_NOOP_S:.0f} s",
            verdict=("met" if med2 <= TARGET_NOOP_S else "missed") + f": {med2 / TARGET_NOOP_S:.2f}x the target"),
    ]  # fmt: skip
    for name, values in sorted(stages.items(), key=lambda kv: -float(np.median(kv[1]))):
        rows.append(
            Row(GROUP, f"stage {name}", CMD, settings, len(values), round(float(np.median(values)), 2),
                round(p99(values), 2), 0.0, throughput=f"{100 * float(np.median(values)) / med:.0f}% of the job")
        )  # fmt: skip
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
