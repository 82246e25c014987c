"""The synthetic feed: determinism, schema, oracle calibration, the documented biases and each drift scenario."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.actions import ACTION_NAMES, prob_column
from core.errors import UserError
from core.schema import TABLES, Manifest, file_sha256, read_table, validate
from features import synth
from features.synth import SynthConfig, generate

REPO = Path(__file__).resolve().parents[2]


def _load(directory: Path) -> dict[str, pd.DataFrame]:
    return {name: read_table(directory, name).to_pandas() for name in TABLES}


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "nano"
    generate(SynthConfig.for_scale("nano", seed=3), out)
    return out


@pytest.fixture(scope="module")
def tables(nano: Path) -> dict[str, pd.DataFrame]:
    return _load(nano)


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, pd.DataFrame], SynthConfig]]:
    runs = {}
    for scenario in ("topic_shift", "new_users", "author_spam"):
        cfg = SynthConfig.for_scale("nano", seed=3, drift=scenario, days=6, drift_day=3)
        out = tmp_path_factory.mktemp("drift") / scenario
        generate(cfg, out)
        runs[scenario] = (_load(out), cfg)
    return runs


def _onset(cfg: SynthConfig) -> pd.Timestamp:
    return pd.Timestamp(synth.EPOCH) + pd.Timedelta(days=cfg.drift_day)


def test_same_seed_gives_identical_bytes(nano: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(SynthConfig.for_scale("nano", seed=3), again)
    first, second = Manifest.load(nano), Manifest.load(again)
    assert first.files == second.files
    assert (nano / "manifest.json").read_bytes() == (again / "manifest.json").read_bytes()
    for rel, digest in first.files.items():
        assert file_sha256(again / rel) == digest


def test_other_seed_gives_other_data(nano: Path, tmp_path: Path) -> None:
    other = generate(SynthConfig.for_scale("nano", seed=4), tmp_path / "other")
    assert other.files["impressions/part-00000.parquet"] != Manifest.load(nano).files["impressions/part-00000.parquet"]


def test_manifest_counts_and_hashes_match_files(nano: Path, tables: dict[str, pd.DataFrame]) -> None:
    manifest = Manifest.load(nano)
    assert manifest.rows == {name: len(df) for name, df in tables.items()}
    for rel, digest in manifest.files.items():
        assert file_sha256(nano / rel) == digest
    assert manifest.observed_actions == ACTION_NAMES
    assert 15_000 <= manifest.rows["impressions"] <= 25_000


def test_tables_follow_the_canonical_schema(nano: Path) -> None:
    for name, schema in TABLES.items():
        validate(read_table(nano, name), schema, name)


def test_referential_integrity_and_time_order(tables: dict[str, pd.DataFrame]) -> None:
    users, posts, imp = tables["users"], tables["posts"], tables["impressions"]
    assert users.user_id.min() >= 1 and posts.post_id.min() >= 1
    joined = imp.merge(posts, on="post_id", suffixes=("", "_post"))
    assert len(joined) == len(imp)
    assert (joined.author_id == joined.author_id_post).all()
    assert (joined.created_at <= joined.ts).all(), "an impression shows a post before it exists"
    assert imp.user_id.isin(users.user_id).all()
    assert imp.impression_id.is_unique
    assert posts.post_id.is_monotonic_increasing and posts.created_at.is_monotonic_increasing


@pytest.mark.parametrize("action", ACTION_NAMES)
def test_sampled_rates_match_oracle_probabilities(tables: dict[str, pd.DataFrame], action: str) -> None:
    imp = tables["impressions"]
    p = imp[prob_column(action)].to_numpy(dtype=np.float64)
    assert ((p >= 0) & (p <= 1)).all()
    rate, mean_p = imp[action].mean(), p.mean()
    tolerance = 4 * np.sqrt(mean_p * (1 - mean_p) / len(p)) + 1e-4
    assert abs(rate - mean_p) <= tolerance


def test_click_is_calibrated_within_probability_bins(tables: dict[str, pd.DataFrame]) -> None:
    imp = tables["impressions"]
    bins = pd.qcut(imp.p_click, 5, labels=False)
    by_bin = imp.groupby(bins).agg(rate=("click", "mean"), p=("p_click", "mean"), n=("click", "size"))
    tolerance = 4 * np.sqrt(by_bin.p * (1 - by_bin.p) / by_bin.n)
    assert ((by_bin.rate - by_bin.p).abs() <= tolerance).all()
    assert by_bin.rate.is_monotonic_increasing


def test_likes_replies_shares_mostly_follow_a_click(tables: dict[str, pd.DataFrame]) -> None:
    imp = tables["impressions"]
    for action in ("like", "reply", "share"):
        assert imp.loc[imp[action] == 1, "click"].mean() >= 0.75, action
    # And the funnel is visible in the probabilities: P(like) is below P(click) everywhere.
    assert (imp.p_like <= imp.p_click + 1e-6).all()


def test_position_bias(tables: dict[str, pd.DataFrame]) -> None:
    imp = tables["impressions"]
    by_pos = imp.groupby("position").p_click.mean()
    assert by_pos.iloc[0] > by_pos.iloc[-1] * 1.2
    assert imp.loc[imp.position == 0, "click"].mean() > imp.loc[imp.position == 9, "click"].mean()


def test_follow_graph_is_power_law_with_reciprocal_follows(tables: dict[str, pd.DataFrame]) -> None:
    follows = tables["follows"]
    indeg = follows.followee_id.value_counts()
    assert indeg.max() >= 10 * indeg.median()
    pairs = set(zip(follows.follower_id, follows.followee_id, strict=True))
    reciprocal = np.mean([(b, a) in pairs for a, b in pairs])
    assert 0.1 <= reciprocal <= 0.6
    assert not (follows.follower_id == follows.followee_id).any()


def test_in_network_flag_matches_the_follow_graph(tables: dict[str, pd.DataFrame]) -> None:
    imp, follows = tables["impressions"], tables["follows"]
    edges = set(zip(follows.follower_id, follows.followee_id, strict=True))
    expected = [(u, a) in edges for u, a in zip(imp.user_id, imp.author_id, strict=True)]
    assert (imp.in_network.to_numpy() == np.asarray(expected)).all()


def test_logging_policy_has_exposure_bias(tables: dict[str, pd.DataFrame]) -> None:
    imp, follows = tables["impressions"], tables["follows"]
    # Popular authors are over-exposed relative to a uniform policy over authors.
    followers = follows.followee_id.value_counts()
    top = set(followers.index[: max(1, len(followers) // 10)])
    assert imp.author_id.isin(top).mean() >= 0.3
    following = imp[imp.surface == 1]
    assert following.in_network.mean() >= 0.6


def test_topic_shift_moves_the_share_of_the_target_topic(drifted: dict) -> None:
    data, cfg = drifted["topic_shift"]
    imp = data["impressions"].merge(data["posts"][["post_id", "topic"]], on="post_id")
    target, onset = cfg.n_topics - 1, _onset(cfg)
    before, after = imp[imp.ts < onset], imp[imp.ts >= onset + pd.Timedelta(days=1)]
    share_before, share_after = (before.topic == target).mean(), (after.topic == target).mean()
    assert share_before < 0.12
    assert share_after >= 0.2 and share_after >= 2 * share_before
    clicks_after = after[after.click == 1]
    assert (clicks_after.topic == target).mean() > share_after  # users now prefer it too


def test_new_users_cohort_arrives_at_onset(drifted: dict) -> None:
    data, cfg = drifted["new_users"]
    users, imp = data["users"], data["impressions"]
    onset = _onset(cfg)
    cohort = users[users.created_at >= onset]
    assert len(cohort) == round(cfg.new_user_frac * cfg.n_users)
    assert set(cohort.country) <= {"BR", "ID"} and set(cohort.language) <= {"pt", "id"}
    from_cohort = imp.user_id.isin(cohort.user_id)
    assert not from_cohort[imp.ts < onset].any()
    assert from_cohort[imp.ts >= onset].mean() >= 0.05


def test_author_spam_raises_negative_actions(drifted: dict) -> None:
    data, cfg = drifted["author_spam"]
    users, imp = data["users"], data["impressions"]
    onset = _onset(cfg)
    spam = users.user_id[users.user_id > cfg.n_users]
    assert len(spam) >= 5 and users.is_author[users.user_id.isin(spam)].all()
    before, after = imp[imp.ts < onset], imp[imp.ts >= onset + pd.Timedelta(days=1)]
    assert not before.author_id.isin(spam).any()
    assert after.author_id.isin(spam).mean() >= 0.05
    negative = ["not_interested", "block_author", "mute_author", "report"]
    assert after[negative].sum(axis=1).gt(0).mean() >= 1.5 * before[negative].sum(axis=1).gt(0).mean()


def test_drift_keeps_the_base_population(tables: dict[str, pd.DataFrame], drifted: dict) -> None:
    for data, cfg in drifted.values():
        base = data["users"][data["users"].user_id <= cfg.n_users].reset_index(drop=True)
        pd.testing.assert_frame_equal(base, tables["users"])


def test_failed_generation_leaves_previous_output_untouched(nano: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    generate(SynthConfig.for_scale("nano", seed=3), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(synth, "impressions_chunk", boom)
    with pytest.raises(RuntimeError):
        generate(SynthConfig.for_scale("nano", seed=5), out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "a temporary directory was left behind"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scale": "huge"}, "--scale"),
        ({"scale": "nano", "drift": "meteor"}, "--drift"),
        ({"scale": "nano", "drift": "topic_shift", "drift_day": 9}, "--drift-day"),
        ({"scale": "nano", "days": 0}, "--days"),
        ({"scale": "nano", "seed": -1}, "--seed"),
    ],
)
def test_bad_config_names_the_parameter(kwargs: dict, field: str) -> None:
    with pytest.raises(UserError, match=field):
        SynthConfig.for_scale(**kwargs)


def test_cli_bad_parameter_is_one_line_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--out", str(out), "--scale", "nano", "--drift", "topic_shift", "--drift-day", "9"]
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "data", "synth", *args], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--drift-day" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_starts_without_heavy_imports() -> None:
    heavy = ("torch", "feast", "pandas", "prefect", "bentoml", "evidently")
    code = f"import sys, cli.main; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""
