"""Model quality against the issue targets, each evaluation run as its own `ember evaluate ...` process (wall time and
peak memory measured around it), its report turned into BENCHMARKS.md rows:

- retrieval-movielens: MovieLens-100K, leave-one-out, full ranking; two-tower vs most-popular, item-kNN and SASRec at
  the same training budget; time for the two-tower to reach SASRec's best validation NDCG@10.
- retrieval-synthetic: the synthetic training window, temporal split; Recall@200 against the oracle's.
- ranker-synthetic: the ranker training set of `dvc repro`, per-action AUC against the oracle's (true probabilities).
- ranker-kuairand: KuaiRand-Pure, the last two days as test; AUC and GAUC against LR, LightGBM and MMoE.

The inputs are what `dvc repro` writes (data/movielens, data/synth, data/features, data/training/ranker); KuaiRand's
features and training set are built here, in bench/results/tmp/kuairand, with a copy of the Feast repo.

`python -m bench.quality [--only a,b] [--budget-s S]` re-measures the named sections and keeps the other rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import RESULTS, Row, run_once, save

GROUP = "quality"
REPO = Path(__file__).resolve().parents[1]
TMP = RESULTS / "tmp" / "quality"
SECTIONS = ("retrieval-movielens", "retrieval-synthetic", "ranker-synthetic", "ranker-kuairand")
RANKER_EPOCHS = {"ranker-synthetic": 5, "ranker-kuairand": 6}
KUAIRAND_ACTIONS = {"click": "is_click", "dwell": "long_view", "like": "is_like"}


def ember(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "ember"), *args]


def _run(argv: list[str]) -> tuple[float, float]:
    print("$", " ".join(argv), flush=True)
    return run_once(argv)


def _row(name: str, command: list[str], wall: float, rss: float, settings: str, **kw: Any) -> Row:
    shown = " ".join(a if not a.startswith(str(REPO)) else os.path.relpath(a, REPO) for a in command)
    shown = shown.replace(str(Path(sys.executable).parent / "ember"), "ember")
    return Row(GROUP, name, shown, settings, 1, round(wall, 2), round(wall, 2), round(rss, 1), **kw)


def retrieval(section: str, budget_s: float) -> list[Row]:
    data = "data/movielens" if section == "retrieval-movielens" else "data/synth"
    protocol = "leave-one-out" if section == "retrieval-movielens" else "temporal"
    out = TMP / f"{section}.json"
    argv = ember("evaluate", "retrieval", "--data", data, "--protocol", protocol, "--preset", "nano",
                 "--budget-s", f"{budget_s:g}", "--out", str(out))  # fmt: skip
    wall, rss = _run(argv)
    report = json.loads(out.read_text())
    settings = f"{protocol} split, full ranking, seen items filtered, preset nano, {budget_s:g} s budget per model"
    rows = []
    models = report["models"]
    for name, m in models.items():
        numbers = f"NDCG@10 {m['ndcg@10']:.4f}, Recall@10 {m['recall@10']:.4f}, Recall@200 {m['recall@200']:.4f}"
        target = verdict = ""
        if section == "retrieval-movielens" and name == "two_tower":
            ratio = report["two_tower_vs_sasrec"]["ndcg@10"]
            target = "NDCG@10 >= 1.05 x SASRec (same split, same budget)"
            verdict = f"{'met' if ratio >= 1.05 else 'missed'}: {ratio:.3f}x SASRec"
        if section == "retrieval-synthetic" and name != "oracle":
            ratio = report["vs_oracle"][name]["recall@200"]
            target = "Recall@200 >= 0.9 x oracle" if name == "two_tower" else ""
            verdict = (
                f"{'met' if ratio >= 0.9 else 'missed'}: " if name == "two_tower" else ""
            ) + f"{ratio:.3f}x oracle"
        rows.append(
            _row(
                f"{section}: {name}",
                argv,
                float(m.get("seconds", 0.0)),
                rss,
                settings,
                throughput=numbers,
                target=target,
                verdict=verdict,
                extra={"section": section, "model": name, **m},
            )  # fmt: skip
        )
    if section == "retrieval-movielens" and "two_tower" in models:
        reach = models["two_tower"].get("seconds_to_reach", math.nan)
        rows.append(
            _row(
                f"{section}: two-tower time to SASRec's best valid NDCG@10",
                argv,
                reach,
                rss,
                settings + ", 2 cores",
                throughput=f"SASRec best valid NDCG@10 {models['sasrec']['valid_ndcg@10']:.4f}",
                target="<= 60 s on 2 cores",
                verdict=f"{'met' if reach <= 60 else 'missed'}: {reach:.1f} s",
                extra={"section": section, "seconds_to_reach": reach},
            )  # fmt: skip
        )
    rows.append(_row(f"{section}: whole command", argv, wall, rss, settings, extra={"section": section}))
    return rows


def kuairand_training_set() -> Path:
    """KuaiRand's offline features and ranker training set, built with a copy of the Feast repo (its data directory is
    <repo>/../../data, so the synthetic feature store is untouched)."""
    root = TMP / "kuairand"
    out = root / "training"
    if (out / "training_set.parquet").is_file():
        return out
    shutil.rmtree(root, ignore_errors=True)
    (root / "features").mkdir(parents=True)
    shutil.copytree(REPO / "features" / "repo", root / "features" / "repo")
    steps = [
        ember("features", "build", "--data", "data/kuairand", "--out", str(root / "data" / "features")),
        ember("features", "apply", "--repo", str(root / "features" / "repo")),
        ember("features", "training-set", "--model", "ranker", "--data", "data/kuairand", "--repo",
              str(root / "features" / "repo"), "--start", "2022-04-24", "--end", "2022-05-06", "--out", str(out)),
    ]  # fmt: skip
    for argv in steps:
        subprocess.run(argv, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def ranker(section: str) -> list[Row]:
    if section == "ranker-kuairand":
        training, features = kuairand_training_set(), TMP / "kuairand" / "data" / "features"
        split_args, split = ["--test-days", "2"], "the last two days as test"
    else:
        training, features = REPO / "data" / "training" / "ranker", REPO / "data" / "features"
        split_args, split = ["--test-fraction", "0.2"], "the newest 20% of requests as test"
    out = TMP / f"{section}.json"
    epochs = RANKER_EPOCHS[section]
    argv = ember("evaluate", "ranker", "--training-set", str(training), "--features", str(features), *split_args,
                 "--preset", "nano", "--set", f"train.epochs={epochs}", "--out", str(out))  # fmt: skip
    wall, rss = _run(argv)
    report = json.loads(out.read_text())
    settings = f"{split}, 10% of the rest for early stopping, ranker preset nano (<= {epochs} epochs), 2 cores"
    rows = []
    baselines = [b for b in ("logistic", "lightgbm", "mmoe") if b in report["models"]]
    for name, m in report["models"].items():
        acts = m["report"]["actions"]
        shown = [a for a in (KUAIRAND_ACTIONS if section == "ranker-kuairand" else acts) if a in acts]
        numbers = "; ".join(f"{a} AUC {acts[a]['auc']:.4f} GAUC {acts[a]['gauc']:.4f}" for a in shown)
        target = verdict = ""
        if name.startswith("ranker_") and section == "ranker-synthetic":
            ratios = report["oracle_ratio"][name]
            worst = min(ratios, key=ratios.get)
            target = "per-action AUC >= 0.95 x oracle"
            met = sum(r >= 0.95 for r in ratios.values())
            verdict = (
                f"{met}/{len(ratios)} actions met; lowest {worst} {ratios[worst]:.3f}x, click {ratios['click']:.3f}x"
            )
        if name.startswith("ranker_") and section == "ranker-kuairand":
            target = "AUC and GAUC of click, long_view (dwell), like above LR, LightGBM and MMoE"
            wins = []
            for a in KUAIRAND_ACTIONS:
                for k in ("auc", "gauc"):
                    best = max(report["table"][a][b][k] for b in baselines)
                    wins.append(f"{a} {k} {'>' if acts[a][k] > best else '<='} {best:.4f}")
            verdict = "; ".join(wins)
        rows.append(
            _row(
                f"{section}: {name}",
                argv,
                float(m["seconds"]),
                rss,
                settings,
                throughput=numbers,
                target=target,
                verdict=verdict,
                extra={"section": section, "model": name, "report": m["report"]},
            )  # fmt: skip
        )
    rows.append(_row(f"{section}: whole command", argv, wall, rss, settings, extra={"section": section}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated of: " + ", ".join(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=60.0, help="retrieval training budget per model")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    if unknown := set(only) - set(SECTIONS):
        parser.error(f"--only: unknown sections {sorted(unknown)}")
    TMP.mkdir(parents=True, exist_ok=True)
    measure: dict[str, Callable[[], list[Row]]] = {
        "retrieval-movielens": lambda: retrieval("retrieval-movielens", args.budget_s),
        "retrieval-synthetic": lambda: retrieval("retrieval-synthetic", args.budget_s),
        "ranker-synthetic": lambda: ranker("ranker-synthetic"),
        "ranker-kuairand": lambda: ranker("ranker-kuairand"),
    }
    rows: list[Row] = []
    for section in only:
        rows += measure[section]()
    old = RESULTS / f"{GROUP}.json"
    if set(only) != set(SECTIONS) and old.is_file():
        kept = [Row(**r) for r in json.loads(old.read_text())["rows"] if r["extra"].get("section") not in only]
        rows = sorted(kept + rows, key=lambda r: SECTIONS.index(r.extra["section"]))
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
