"""The A/B readout: its variance, sample-ratio check and decisions on known inputs; its error rate on seeded A/A runs
against the synthetic truth; `ember ab report` over a real exposure log file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli.main import main
from core.errors import UserError
from features.synth import SynthConfig, build_world
from monitoring.ab_report import BLEND, ab_test, item_rewards, ratio_estimate, srm_check
from monitoring.ab_simulation import Policy, error_rates


def users_frame(rewards: dict[str, np.ndarray]) -> pd.DataFrame:
    """One request per user: S = the reward, N = 1."""
    rows = [
        {"variant": v, "user_id": i, "S": float(s), "N": 1.0} for v, arr in rewards.items() for i, s in enumerate(arr)
    ]
    return pd.DataFrame(rows)


def test_ratio_variance_with_one_request_per_user_is_the_variance_of_the_mean() -> None:
    s = np.array([1.0, 4.0, 2.0, 7.0, 0.0])
    e = ratio_estimate(s, np.ones(5))
    assert e.mean == pytest.approx(2.8)
    assert e.var == pytest.approx(s.var(ddof=1) / 5)


def test_ratio_variance_counts_users_not_requests() -> None:
    # Two users with 10 requests each, perfectly correlated within the user: the variance is that of 2 draws.
    s, n = np.array([10.0, 0.0]), np.array([10.0, 10.0])
    e = ratio_estimate(s, n)
    assert e.mean == pytest.approx(0.5) and e.requests == 20
    assert e.var == pytest.approx(np.var([0.5, -0.5], ddof=1) / 2 / 1.0)  # residuals s - R n over 10, n mean 10


def test_sample_ratio_mismatch_is_flagged_only_when_the_split_is_off() -> None:
    assert srm_check({"A": 600, "B": 400}, {"A": 0.5, "B": 0.5})["mismatch"]
    assert not srm_check({"A": 510, "B": 490}, {"A": 0.5, "B": 0.5})["mismatch"]
    assert not srm_check({"A": 905, "B": 95}, {"A": 0.9, "B": 0.1})["mismatch"]


def test_decisions_on_known_effects() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, 1000)
    better = users_frame({"A": base, "B": rng.normal(0.5, 1.0, 1000)})
    r = ab_test(better, "A", {"A": 0.5, "B": 0.5})
    assert r["decision"]["action"] == "ship" and r["decision"]["variant"] == "B"
    lo, hi = r["comparisons"]["B"]["ci"]
    assert lo < 0.5 < hi
    worse = ab_test(users_frame({"A": base, "B": rng.normal(-0.5, 1.0, 1000)}), "A", {"A": 0.5, "B": 0.5})
    assert worse["decision"]["action"] == "keep" and "worse" in worse["decision"]["why"]
    # The same data with a configured 90/10 split: the assignment is broken, no decision.
    broken = ab_test(better, "A", {"A": 0.9, "B": 0.1})
    assert broken["srm"]["mismatch"] and broken["decision"]["action"] == "none"


def test_bad_control_and_alpha_are_user_errors() -> None:
    frame = users_frame({"A": np.zeros(3), "B": np.ones(3)})
    with pytest.raises(UserError, match="--control: 'C'"):
        ab_test(frame, "C")
    with pytest.raises(UserError, match="--alpha"):
        ab_test(frame, "A", alpha=1.5)


def test_reward_is_the_signed_blend_of_the_actions() -> None:
    items = pd.DataFrame({"click": [1, 1], "like": [1, 0], "report": [0, 1], "p_click": [0.5, 0.5]})
    out = item_rewards(items)
    assert out["reward"].tolist() == pytest.approx([BLEND["click"] + BLEND["like"], BLEND["click"] + BLEND["report"]])
    assert out["true_reward"].tolist() == pytest.approx([0.5 * BLEND["click"]] * 2)


def test_seeded_aa_runs_on_the_synthetic_truth_keep_the_error_rate_near_alpha() -> None:
    world = build_world(SynthConfig.for_scale("nano"))
    aa = error_rates(world, Policy(), Policy(), runs=40, n_users=250, requests_per_user=2)
    assert aa["significant_rate"] <= 0.05 + 0.02
    assert aa["srm_rate"] == 0.0
    # A challenger that orders by the true relevance is found on the same budget.
    ab = error_rates(world, Policy(), Policy("relevance", 0.0), runs=10, n_users=250, requests_per_user=2)
    assert ab["true_reward"]["B"] > ab["true_reward"]["A"] and ab["ship_rate"] >= 0.9


def _write_log(path: Path, rng: np.random.Generator) -> pd.DataFrame:
    """An exposure log of two variants (B's users click twice as often) and the outcomes file for it."""
    outcomes = []
    with open(path, "w") as f:
        for user in range(1, 401):
            variant = "A" if user % 2 else "B"
            for r in range(2):
                rid = f"{user}-{r}"
                items = [{"post_id": p, "position": k, "score": 1.0, "source": "x"} for k, p in enumerate((11, 12, 13))]
                f.write(json.dumps({"request_id": rid, "ts": 1.0, "user_id": user, "variant": variant,
                                    "items": items}) + "\n")  # fmt: skip
                rate = 0.2 if variant == "A" else 0.4
                outcomes += [{"request_id": rid, "post_id": it["post_id"], "click": int(rng.random() < rate)}
                             for it in items]  # fmt: skip
        f.write("not json\n")
    return pd.DataFrame(outcomes)


def test_cli_ab_report_reads_the_log_and_decides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log, outcomes = tmp_path / "exposure.jsonl", tmp_path / "outcomes.jsonl"
    _write_log(log, np.random.default_rng(1)).to_json(outcomes, orient="records", lines=True)
    config = tmp_path / "variants.yaml"
    config.write_text(
        "salt: s\nvariants:\n"
        "  - {name: A, share: 0.5, recommender: {kind: popular, stats: x.parquet}}\n"
        "  - {name: B, share: 0.5, recommender: {kind: popular, stats: x.parquet}}\n"
    )
    out = tmp_path / "ab.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["ab", "report", "--exposure", str(log), "--config", str(config), "--outcomes", str(outcomes),
              "--control", "A", "--json", str(out)])  # fmt: skip
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "decision: ship B" in printed
    result = json.loads(out.read_text())
    assert result["variants"]["A"]["users"] == 200 and result["variants"]["B"]["requests"] == 400
    assert result["log"]["malformed"] == 1
    assert 0.15 < result["variants"]["A"]["reward_per_request"] / (3 * BLEND["click"]) < 0.25  # click rate 0.2


def test_cli_ab_report_without_outcomes_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "exposure.jsonl"
    _write_log(log, np.random.default_rng(1))
    config = tmp_path / "variants.yaml"
    config.write_text("salt: s\nvariants:\n  - {name: A, share: 1.0, recommender: {kind: popular, stats: x}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["ab", "report", "--exposure", str(log), "--config", str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--outcomes" in err
