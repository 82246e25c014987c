"""`ember train retrieval` and `ember index build` end to end on a tiny training set, and how they treat bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.config_overrides import coerce, split_overrides
from models.retrieval.job import post_corpus
from models.retrieval.model import TwoTowerConfig, load_two_tower
from models.retrieval.train import TrainConfig
from tests.conftest import CliResult
from tests.models.test_train_retrieval import rows

Cli = Callable[..., CliResult]
TRAIN = ("--preset", "nano", "--set", "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.n_negatives=16")


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training set and a post_stats table (two snapshots per post, the newest wins) like the pipeline writes."""
    root = tmp_path_factory.mktemp("retrieval")
    df = rows()
    (root / "training").mkdir()
    df.to_parquet(root / "training" / "training_set.parquet", index=False)
    posts = df.drop_duplicates("post_id")[["post_id", "author_id", "post_created_at_ms"]]
    snaps = []
    for k, at in enumerate([df.event_timestamp.min(), df.event_timestamp.max()]):
        snap = posts.rename(columns={"author_id": "post_author_id"}).assign(
            event_timestamp=at, post_impressions=10 * (k + 1), post_click_count=k, post_like_count=k
        )
        snaps.append(snap)
    extra = posts.head(1).rename(columns={"author_id": "post_author_id"}).assign(
        post_id=10_000, event_timestamp=df.event_timestamp.max(), post_impressions=0, post_click_count=0,
        post_like_count=0,
    )  # fmt: skip
    (root / "features").mkdir()
    pd.concat([*snaps, extra]).to_parquet(root / "features" / "post_stats.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def trained(project: Path) -> Path:
    from cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["train", "retrieval", "--training-set", str(project / "training"), "--out", str(project / "model"),
              "--metrics", str(project / "metrics.json"), *TRAIN])  # fmt: skip
    assert done.value.code == 0
    return project / "model"


def test_train_writes_a_loadable_model_its_config_and_metrics(project: Path, trained: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics == json.loads((project / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["train_rows"] + metrics["valid_rows"] == len(rows())
    assert 0.0 <= metrics["recall@10"] <= metrics["recall@50"] <= metrics["recall@200"] <= 1.0
    model = load_two_tower(trained / "best")
    assert model.cfg == TwoTowerConfig.preset("nano")
    assert (trained / "checkpoint.pt").is_file()


def test_index_build_embeds_every_post_as_of_the_build_time(project: Path, trained: Path, run_cli: Cli) -> None:
    out = project / "index"
    result = run_cli("index", "build", "--model", str(trained / "best"), "--features", str(project / "features"),
                     "--training-set", str(project / "training"), "--out", str(out))  # fmt: skip
    assert result.code == 0, result.stderr
    meta = json.loads((out / "index.json").read_text())
    n_posts = rows().post_id.nunique() + 1  # the never-clicked post is indexed too
    assert meta["kind"] == "exact" and meta["n_items"] == n_posts and meta["recall_at_100"] == 1.0
    assert len(meta["model"]) == 16
    assert sorted(np.load(out / "item_ids.npy").tolist())[-1] == 10_000


def test_post_corpus_takes_the_newest_snapshot_at_or_before_the_time(project: Path) -> None:
    df = rows()
    newest = post_corpus(project / "features")
    assert (newest.post_impressions == 20).sum() == df.post_id.nunique()
    oldest = post_corpus(project / "features", int(df.event_timestamp.min().value // 1_000_000))
    assert set(oldest.post_impressions) == {10}  # the extra post did not exist yet
    assert len(oldest) == df.post_id.nunique()


def test_index_build_without_features_fails_by_name_and_keeps_the_old_index(
    project: Path, trained: Path, run_cli: Cli
) -> None:
    out = project / "kept"
    args = ["index", "build", "--model", str(trained / "best"), "--training-set", str(project / "training"),
            "--out", str(out)]  # fmt: skip
    assert run_cli(*args, "--features", str(project / "features")).code == 0
    before = _tree(out)
    line = run_cli(*args, "--features", str(project / "nowhere")).error_line()
    assert "nowhere" in line and "post_stats" in line
    assert _tree(out) == before


def test_unknown_or_mistyped_config_keys_are_one_line_errors(project: Path, run_cli: Cli, tmp_path: Path) -> None:
    base = ["train", "retrieval", "--training-set", str(project / "training"), "--out", str(tmp_path / "m")]
    assert "model.d_modle" in run_cli(*base, "--set", "model.d_modle=64").error_line()
    assert "train.epochs" in run_cli(*base, "--set", "train.epochs=three").error_line()
    assert "--set" in run_cli(*base, "--set", "lr=0.1").error_line()
    assert "n_heads" in run_cli(*base, "--preset", "nano", "--set", "model.n_heads=3").error_line()
    assert "preset" in run_cli(*base, "--preset", "huge").error_line()
    assert not (tmp_path / "m").exists()


def test_empty_training_window_is_a_one_line_error(tmp_path: Path, run_cli: Cli) -> None:
    (tmp_path / "ts").mkdir()
    rows().head(0).to_parquet(tmp_path / "ts" / "training_set.parquet", index=False)
    line = run_cli("train", "retrieval", "--training-set", str(tmp_path / "ts"), "--out", str(tmp_path / "m"),
                   *TRAIN).error_line()  # fmt: skip
    assert "empty training window" in line and str(tmp_path / "ts") in line
    assert "no training set" in run_cli("train", "retrieval", "--training-set", str(tmp_path / "nope")).error_line()
    assert not (tmp_path / "m").exists()


def test_a_checkpoint_from_other_code_is_refused_by_name(trained: Path, tmp_path: Path, run_cli: Cli) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.pt").write_bytes((trained / "best" / "model.pt").read_bytes())
    config = json.loads((trained / "best" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "n_experts": 4}))
    line = run_cli("index", "build", "--model", str(bad), "--out", str(tmp_path / "i")).error_line()
    assert "config.json" in line and "n_experts" in line
    (bad / "config.json").write_text(json.dumps({**config, "d_model": 64, "n_heads": 2}))
    line = run_cli("index", "build", "--model", str(bad), "--out", str(tmp_path / "i")).error_line()
    assert "model.pt" in line and "do not match" in line
    assert (
        "no config.json"
        in run_cli("index", "build", "--model", str(tmp_path), "--out", str(tmp_path / "i")).error_line()
    )
    assert not (tmp_path / "i").exists()


def test_overrides_are_typed_by_the_config_fields() -> None:
    sets = split_overrides(["model.d_model=64", "model.user_attributes=country,language", "train.lr=1e-3"])
    assert coerce(TwoTowerConfig, sets["model"]) == {"d_model": 64, "user_attributes": ("country", "language")}
    assert coerce(TrainConfig, sets["train"]) == {"lr": 0.001}
    assert coerce(TrainConfig, {"logq_correction": "false"}) == {"logq_correction": False}
