"""Simulated production (issue 18): `ember simulate` on the nano world, the closed loop judged against the truth.

Two runs, each a fresh `ember simulate` process (its own project: the main job builds and deploys, then day by day
the deployed loop serves, its day becomes data, features and the online store follow, the monitor runs and a
failed alarm check retrains through the gate):

- no drift, 20 days, the loop only: the share of days the monitor alarmed (target <= 5%);
- topic_shift from simulated day 3, 6 days, the loop beside the frozen first model, the oracle and random: the
  true reward per day normalised to random = 0, oracle = 1 (monitoring.simulate.recovery), target: the loop back at
  >= 90% of its pre-drift level within 2 days of the onset while the frozen model is not.

`python -m bench.simulate` runs both (about an hour on 2 cores); `--only topic_shift` (or `no-drift`) runs one and
keeps the other's row from bench/results/simulate.json with the time and commit it was measured at; `--reuse
NODRIFT_DIR SHIFT_DIR` reads two finished runs' simulate.json instead (each row then names the run directory and the
command that wrote it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from bench.harness import Row, kept_rows, run_once, save

REPO = Path(__file__).resolve().parents[1]
TMP = REPO / "bench" / "results" / "tmp" / "simulate"
NANO_SEED = 7
RUNS: dict[str, list[str]] = {
    "no drift": ["--days", "20", "--policies", "loop", "--seed", "1"],
    "topic_shift": ["--days", "6", "--drift", "topic_shift", "--drift-day", "3", "--policies",
                    "loop,frozen,oracle,random", "--seed", "1"],
}  # fmt: skip


def ember(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def simulate_argv(data: Path, out: Path, name: str) -> list[str]:
    return ember("simulate", "--data", str(data), "--out", str(out), *RUNS[name])


def no_drift_row(result: dict[str, Any], command: str, wall: float, rss: float) -> Row:
    rows = [r for r in result["rows"] if r["policy"] == "loop"]
    alarms = [r["day"] for r in rows if r["alarm"]]
    share = len(alarms) / len(rows)
    promoted = [r["day"] for r in rows if r["promoted"]]
    rewards = ", ".join(f"{r['true_reward']:.2f}" for r in rows)
    return Row(
        group="simulate",
        name="no drift: days with an alarm",
        command=command,
        settings=f"nano world (seed {NANO_SEED}), {len(rows)} simulated days of {result['requests_per_day']} requests, "
        f"loop only, monitor alarm checks as thresholds.yaml, {_retrain_cadence(result)}, {_live(result)}, 2 cores",
        repeats=1,
        wall_s_median=round(wall, 1),
        wall_s_p99=round(wall, 1),
        peak_rss_mb_max=round(rss, 1),
        throughput=f"{share:.1%} of days ({len(alarms)}/{len(rows)}; days {alarms or 'none'}); retrains "
        f"{sum(r['retrained'] for r in rows)}, promotions on days {promoted or 'none'}; loop true reward per day "
        f"{rewards}",
        target="<= 5% of days alarm over >= 20 days",
        verdict=f"{'met' if share <= 0.05 and len(rows) >= 20 else 'missed'}: {share:.1%} of {len(rows)} days",
        extra={"alarm_days": alarms, "alarm_share": share},
    )


def _live(result: dict[str, Any]) -> str:
    hours = result.get("live_hours")
    if not hours:
        return "each day served from its start's features"
    return f"served {hours} h at a time, engagements pushed live, the materialize flow after each block"


def _retrain_cadence(result: dict[str, Any]) -> str:
    every = result.get("retrain_every")
    if every is None:
        return "retrain cadence not recorded"
    return f"retrained every {every} day(s) besides alarms" if every else "retrained on alarms only"


def _back(name: str, policy: dict[str, Any], share: float) -> str:
    """Whether a policy held `share` of its pre-drift level to the end of the run: "loop at >= 90% of its pre-drift
    0.28 from onset day +2 on" (+0: the onset day itself), "frozen below 90% of its pre-drift 0.27 on the last day
    (4 days from the onset)", or, without a positive pre-drift level to get back to, says so."""
    day, before, after = policy.get("back_from"), policy.get("pre_drift"), policy.get("after", {})
    if before is None or before <= 0:
        return f"{name}: no positive pre-drift level to get back to ({before})"
    if day is not None:
        return f"{name} at >= {share:.0%} of its pre-drift {before:.2f} from onset day +{day} on"
    return f"{name} below {share:.0%} of its pre-drift {before:.2f} on the last day ({len(after)} days from the onset)"


def shift_row(result: dict[str, Any], command: str, wall: float, rss: float) -> Row:
    from monitoring.simulate import normalised_rewards, recovery

    rec = recovery(result["rows"], result["drift_day"])
    norm = normalised_rewards(result["rows"])
    per_day = "; ".join(
        f"day {d}: loop {norm.loc[d, 'loop']:.2f}, frozen {norm.loc[d, 'frozen']:.2f}" for d in norm.index
    )
    days = result["rows"]
    events = [
        f"day {r['day']}: {'alarm ' if r['alarm'] else ''}{'retrain ' if r['retrained'] else ''}"
        f"{'promotion' if r['promoted'] else ''}".strip()
        for r in days
        if r["policy"] == "loop" and (r["alarm"] or r["retrained"] or r["promoted"])
    ]
    loop, frozen, share = rec.get("loop", {}), rec.get("frozen", {}), rec.get("share", 0.9)
    ok = bool(loop.get("recovered")) and not frozen.get("recovered")
    return Row(
        group="simulate",
        name="topic_shift: recovery of the true reward",
        command=command,
        settings=f"nano world (seed {NANO_SEED}), {result['days']} simulated days of {result['requests_per_day']} "
        f"requests, topic_shift from day {result['drift_day']}; true reward normalised per day to random = 0, "
        "oracle = 1; 2 cores",
        repeats=1,
        wall_s_median=round(wall, 1),
        wall_s_p99=round(wall, 1),
        peak_rss_mb_max=round(rss, 1),
        throughput=f"pre-drift loop {loop.get('pre_drift')}, frozen {frozen.get('pre_drift')}; {per_day}; "
        f"events: {'; '.join(events) or 'none'}",
        target="loop >= 90% of its pre-drift level within 2 days of the onset, frozen not",
        verdict=f"{'met' if ok else 'missed'}: {_back('loop', loop, share)}; {_back('frozen', frozen, share)}",
        extra={"recovery": rec},
    )


ROWS = {"no drift": no_drift_row, "topic_shift": shift_row}
ROW_NAMES = {"no drift": "no drift: days with an alarm", "topic_shift": "topic_shift: recovery of the true reward"}


def nano_world() -> Path:
    """The nano world both runs simulate from (generated once under TMP)."""
    import subprocess

    data = TMP / "nano"
    if not (data / "manifest.json").is_file():
        subprocess.run(ember("data", "synth", "--scale", "nano", "--seed", str(NANO_SEED), "--out", str(data)),
                       cwd=REPO, check=True)  # fmt: skip
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", nargs=2, type=Path, metavar=("NODRIFT_DIR", "SHIFT_DIR"))
    parser.add_argument("--only", choices=[n.replace(" ", "-") for n in RUNS],
                        help="run this one only; the other's row is kept from bench/results/simulate.json")  # fmt: skip
    args = parser.parse_args()
    rows: list[Row] = []
    if args.only:
        name = args.only.replace("-", " ")
        data = nano_world()
        out = TMP / args.only
        argv = simulate_argv(data, out, name)
        wall, rss = run_once(argv)
        result = json.loads((out / "simulate.json").read_text())
        rows = kept_rows("simulate", lambda r: r["name"] != ROW_NAMES[name])
        rows.insert(list(RUNS).index(name), ROWS[name](result, shlex.join(["ember", *argv[3:]]), wall, rss))
    elif args.reuse:
        for name, out, make in zip(RUNS, args.reuse, (no_drift_row, shift_row), strict=True):
            result = json.loads((out / "simulate.json").read_text())
            command = shlex.join(["ember", *simulate_argv(Path(result["data"]), out, name)[3:]])
            rows.append(make(result, command + f"  (run read from {out}/simulate.json)", 0.0, 0.0))
    else:
        data = nano_world()
        for name, make in zip(RUNS, (no_drift_row, shift_row), strict=True):
            out = TMP / name.replace(" ", "-")
            argv = simulate_argv(data, out, name)
            wall, rss = run_once(argv)
            result = json.loads((out / "simulate.json").read_text())
            rows.append(make(result, shlex.join(["ember", *argv[3:]]), wall, rss))
    print(save("simulate", rows))


if __name__ == "__main__":
    main()
