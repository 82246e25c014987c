"""Off-policy estimates against the synthetic truth (monitoring/ab_simulation.off_policy_run): slates logged the way
an exploring variant serves them (serving/selectors/explore.py: Plackett-Luce over standardised scores, propensities
from the explorer's own draws), outcomes drawn from the truth model, and the reward of the ranked order (exploration
off) estimated with IPS, SNIPS and DR, each set against that policy's true reward on the same requests.

The error has a floor the estimators do not cause: the blend's signed weights (report -234, mute -59, ...) make a
request's reward noisy (standard deviation ~13 against a mean below 1 on the small world), so the row reports the
number of logged requests with the error. `python -m bench.off_policy` writes bench/results/off-policy.json;
`--quick` runs a small case and prints.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from bench.harness import Row, save

GROUP = "off-policy"
CMD = "python -m bench.off_policy"
REQUESTS, SLATE, POOL, LOG_NOISE, TEMPERATURE, SAMPLES, SEEDS = 200_000, 5, 20, 0.5, 0.25, 1000, (0, 1, 2)
TARGET = 0.10  # issue 18.4: relative error <= 10%


def bench_off_policy(quick: bool) -> list[Row]:
    from features.synth import SynthConfig, build_world
    from monitoring.ab_simulation import off_policy_run

    world = build_world(SynthConfig.for_scale("nano" if quick else "small"))
    requests, seeds = (5_000, (0,)) if quick else (REQUESTS, SEEDS)
    settings = (f"synthetic {world.cfg.scale} world (seed {world.cfg.seed}), {requests:,} logged requests per seed on "
                f"the last day, slates of {SLATE} from {POOL} distinct posts of the last 48 h, logging scores = true "
                f"relevance + N(0, {LOG_NOISE}), Plackett-Luce at temperature {TEMPERATURE} over standardised scores, "
                f"propensities from {SAMPLES} draws; target: the ranked order of the same scores; DR's reward model a "
                f"per-slot line in the logged score; seeds {', '.join(map(str, seeds))}")  # fmt: skip
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    for seed in seeds:
        runs.append(off_policy_run(world, seed, n_requests=requests, k=SLATE, pool=POOL, log_noise=LOG_NOISE,
                                   temperature=TEMPERATURE, target_noise=None, samples=SAMPLES))  # fmt: skip
    seconds = (time.perf_counter() - start) / len(seeds)
    rows = []
    for name in ("ips", "snips", "dr"):
        errors = [r["relative_error"][name] for r in runs]
        worst = max(errors)
        per_seed = ", ".join(f"{r['estimates'][name]:.3f} vs {r['truth']:.3f}" for r in runs)
        rows.append(
            Row(
                group=GROUP,
                name=f"{name.upper()} estimate of the ranked order's true reward",
                command=CMD,
                settings=settings,
                repeats=len(seeds),
                wall_s_median=round(seconds, 2),
                wall_s_p99=round(seconds, 2),
                peak_rss_mb_max=0.0,
                throughput=f"relative error mean {100 * float(np.mean(errors)):.1f}%, worst {100 * worst:.1f}% "
                f"(estimate vs truth per seed: {per_seed}); logging policy's own true reward "
                f"{np.mean([r['logging_truth'] for r in runs]):.3f}, per-request reward sd "
                f"{np.mean([r['reward_sd'] for r in runs]):.1f}, effective sample share "
                f"{np.mean([r['estimates']['effective_sample_share'] for r in runs]):.2f}",
                target=f"relative error <= {100 * TARGET:g}% (issue 18.4), {requests:,} logged requests",
                verdict=f"{'met' if worst <= TARGET else 'missed'}: worst of {len(seeds)} seeds {100 * worst:.1f}%",
                extra={"runs": runs},
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run; print, save nothing")
    args = parser.parse_args()
    rows = bench_off_policy(args.quick)
    if args.quick:
        print(json.dumps([asdict(r) for r in rows], indent=2, default=float))
        return
    print(save(GROUP, rows))


if __name__ == "__main__":
    main()
