"""Data-layer benchmarks: synthetic generation per scale and the real-dataset imports."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.harness import Row, measure, p99, save
from core.schema import Manifest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
EMBER = [sys.executable, "-m", "cli.main"]
# Repeats per scale: enough for a median on a shared, noisy machine within a few minutes in all.
REPEATS = {"nano": 7, "small": 5, "medium": 2, "large": 1}
TARGETS = {"small": (60.0, 2048.0)}
FEATURE_SCALES = ("small", "medium")  # issue 2: small in <= 60 s and <= 2 GB peak on 2 cores


def bench_synth(scales: list[str], work: Path) -> list[Row]:
    rows = []
    for scale in scales:
        out = work / f"synth-{scale}"
        argv = [*EMBER, "data", "synth", "--out", str(out), "--scale", scale, "--seed", "7"]
        walls, rss = measure(argv, REPEATS[scale])
        n = Manifest.load(out).rows["impressions"]
        med = float(np.median(walls))
        row = Row(
            group="data",
            name=f"synth {scale}",
            command=f"ember data synth --out OUT --scale {scale} --seed 7",
            settings=f"{n:,} impressions",
            repeats=len(walls),
            wall_s_median=round(med, 2),
            wall_s_p99=round(p99(walls), 2),
            peak_rss_mb_max=round(max(rss), 1),
            throughput=f"{n / med:,.0f} impressions/s",
        )
        if scale in TARGETS:
            t_s, t_mb = TARGETS[scale]
            row.target = f"<= {t_s:.0f} s, <= {t_mb:.0f} MB"
            ok = med <= t_s and max(rss) <= t_mb
            row.verdict = f"{'met' if ok else 'missed'}: {med / t_s:.2f}x time budget, {max(rss) / t_mb:.2f}x memory"
        rows.append(row)
        if scale in FEATURE_SCALES:
            rows.append(bench_features_build(scale, out, work))
        shutil.rmtree(out, ignore_errors=True)
    return rows


def bench_features_build(scale: str, dataset: Path, work: Path) -> Row:
    """`ember features build` on the dataset just generated: DuckDB with a 2 GB memory limit (it spills beyond)."""
    out = work / f"features-{scale}"
    argv = [*EMBER, "features", "build", "--data", str(dataset), "--out", str(out), "--memory-limit", "2GB"]
    walls, rss = measure(argv, REPEATS[scale])
    n = Manifest.load(dataset).rows["impressions"]
    med = float(np.median(walls))
    shutil.rmtree(out, ignore_errors=True)
    return Row(
        group="data",
        name=f"features build {scale}",
        command=f"ember features build --data DATA --out OUT --memory-limit 2GB  (DATA = synth {scale})",
        settings=f"{n:,} impressions -> 5 snapshot tables",
        repeats=len(walls),
        wall_s_median=round(med, 2),
        wall_s_p99=round(p99(walls), 2),
        peak_rss_mb_max=round(max(rss), 1),
        throughput=f"{n / med:,.0f} impressions/s",
        target="bounded memory (DuckDB memory_limit 2 GB)",
        verdict=f"peak {max(rss) / 1024:.2f} GB",
    )


def bench_imports(work: Path, repeats: int) -> list[Row]:
    rows = []
    for name, src in (("kuairand", SHARED / "kuairand-pure"), ("movielens", SHARED / "movielens-100k")):
        if not src.is_dir():
            continue
        out = work / name
        walls, rss = measure([*EMBER, "data", "import", name, "--src", str(src), "--out", str(out)], repeats)
        n = Manifest.load(out).rows["impressions"]
        med = float(np.median(walls))
        rows.append(
            Row(
                group="data",
                name=f"import {name}",
                command=f"ember data import {name} --src ../shared/data/{src.name} --out OUT",
                settings=f"{n:,} impressions",
                repeats=repeats,
                wall_s_median=round(med, 2),
                wall_s_p99=round(p99(walls), 2),
                peak_rss_mb_max=round(max(rss), 1),
                throughput=f"{n / med:,.0f} rows/s",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", default="nano,small,medium", help="comma-separated synth scales")
    parser.add_argument("--import-repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as tmp:
        rows = bench_synth(args.scales.split(","), Path(tmp))
        rows += bench_imports(Path(tmp), args.import_repeats)
    print(save("data", rows))


if __name__ == "__main__":
    main()
