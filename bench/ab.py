"""A/B readout validity on the synthetic `small` world (monitoring/ab_simulation.py): the false-positive rate over
seeded A/A runs and the share of right decisions over seeded A/B runs whose challenger has a known higher true
reward, with the readout `ember ab report` uses (monitoring/ab_report.py: fixed-horizon Welch z-test over users,
delta-method variance, alpha 0.05, sample-ratio check).

`python -m bench.ab` writes bench/results/ab.json; `--quick` runs a few small runs and prints.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

from bench.harness import Row, save

GROUP = "ab"
CMD = "python -m bench.ab"
ALPHA = 0.05
AA_RUNS, AB_RUNS = 200, 100
USERS, REQUESTS, SLATE, POOL = 2_000, 3, 10, 50


def bench_ab(quick: bool) -> list[Row]:
    from features.synth import SynthConfig, build_world
    from monitoring.ab_simulation import Policy, error_rates

    world = build_world(SynthConfig.for_scale("nano" if quick else "small"))
    aa_runs, ab_runs, users = (10, 10, 200) if quick else (AA_RUNS, AB_RUNS, USERS)
    kw: dict[str, Any] = dict(n_users=users, requests_per_user=REQUESTS, k=SLATE, pool=POOL, alpha=ALPHA)
    settings = (f"synthetic {world.cfg.scale} world (seed {world.cfg.seed}), {users:,} users split 50/50 by the "
                f"service's sticky hash (a fresh salt per run), {REQUESTS} requests each on the last day, slates of "
                f"{SLATE} from {POOL} recent posts, outcomes drawn from the truth model; fixed-horizon two-sided "
                f"Welch z-test over users, alpha {ALPHA}")  # fmt: skip
    rows = []
    cases = [
        ("A/A: random vs random", Policy(), Policy(), aa_runs, "aa"),
        ("A/B: random vs relevance + N(0, 10)", Policy(), Policy("relevance", 10.0), ab_runs, "ab"),
        ("A/B: random vs relevance + N(0, 20) (smaller effect)", Policy(), Policy("relevance", 20.0), ab_runs, "ab"),
    ]
    for name, control, challenger, runs, kind in cases:
        start = time.perf_counter()
        r = error_rates(world, control, challenger, runs, **kw)
        seconds = time.perf_counter() - start
        truth = r["true_reward"]
        lift = (truth["B"] - truth["A"]) / abs(truth["A"])
        if kind == "aa":
            fp = r["significant_rate"]
            target = f"false-positive rate <= {100 * (ALPHA + 0.02):g}% (alpha + 0.02)"
            verdict = f"{'met' if fp <= ALPHA + 0.02 else 'missed'}: {100 * fp:.1f}% of {runs} runs significant"
        else:
            right = r["ship_rate"]
            target = "right decision (ship the challenger) >= 90%" if "smaller" not in name else ""
            verdict = f"{'met' if right >= 0.9 else 'missed'}: {100 * right:.1f}% of {runs} runs shipped"
            if not target:
                verdict = f"power {100 * right:.1f}% of {runs} runs (no target: shows the test's reach)"
        rows.append(
            Row(
                group=GROUP,
                name=name,
                command=CMD,
                settings=settings,
                repeats=runs,
                wall_s_median=round(seconds / runs, 4),
                wall_s_p99=round(seconds / runs, 4),
                peak_rss_mb_max=0.0,
                throughput=f"true reward per request A {truth['A']:.3f}, B {truth['B']:.3f} ({100 * lift:+.1f}%); "
                f"decisions {r['decisions']}; SRM alarms {100 * r['srm_rate']:.1f}%",
                target=target,
                verdict=verdict,
                extra={"section": kind, **r},
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few small runs; print, save nothing")
    args = parser.parse_args()
    rows = bench_ab(args.quick)
    if args.quick:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
