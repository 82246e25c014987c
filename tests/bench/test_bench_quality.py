"""bench/quality.py: a section whose input is missing stops the run before anything is measured, naming the stage."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.quality as quality


def test_a_missing_input_names_the_dvc_stage_that_builds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "REPO", tmp_path)
    with pytest.raises(
        SystemExit, match=r"retrieval-movielens reads data/movielens/manifest.json.*dvc repro import_movielens"
    ):
        quality._check_inputs(["retrieval-movielens"])
    (tmp_path / "data" / "synth").mkdir(parents=True)
    (tmp_path / "data" / "synth" / "manifest.json").write_text("{}")
    quality._check_inputs(["retrieval-synthetic", "ranker-kuairand"])  # present, or nothing to read: no exit
    with pytest.raises(SystemExit, match=r"dvc repro training_set_ranker"):
        quality._check_inputs(["ranker-synthetic"])
