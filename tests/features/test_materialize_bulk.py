"""`materialize` into SQLite writes in bulk (`features.store.write_sqlite`) what Feast's own materialization writes,
byte for byte, and records the same intervals in the registry: a first load of the window, then an incremental one."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from features.build import build_features
from features.catalog import VIEWS
from features.store import DEFAULT_WINDOW, StoreConfig, apply, materialize, offline_end, open_store
from features.synth import SynthConfig, generate

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
COLUMNS = "entity_key, feature_name, value, value_text, event_ts, created_ts, vector_value"


def _project(root: Path, synth: Path) -> StoreConfig:
    shutil.copytree(
        REPO / "features" / "repo", root / "features" / "repo", ignore=shutil.ignore_patterns("__pycache__")
    )
    build_features(synth, root / "data" / "features")
    cfg = StoreConfig(repo=root / "features" / "repo")
    apply(cfg)
    return cfg


def _tables(cfg: StoreConfig) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(cfg.data_dir / "feast" / "online.db") as db:
        return {
            name: db.execute(f'SELECT {COLUMNS} FROM "ember_{name}" ORDER BY entity_key, feature_name').fetchall()
            for name in VIEWS
        }


def _ends(cfg: StoreConfig) -> dict[str, datetime | None]:
    return {fv.name: fv.most_recent_end_time for fv in open_store(cfg).list_feature_views()}


def test_bulk_sqlite_materialization_writes_what_feast_writes(tmp_path: Path) -> None:
    synth = tmp_path / "synth"
    generate(SynthConfig.for_scale("nano", seed=3), synth)
    feast_cfg, ours_cfg = _project(tmp_path / "feast", synth), _project(tmp_path / "ours", synth)
    end = offline_end(ours_cfg)
    first = end - DEFAULT_WINDOW / 2  # a first load, then an incremental one that rewrites some rows

    store = open_store(feast_cfg)
    store.materialize(start_date=first - DEFAULT_WINDOW, end_date=first, feature_views=list(VIEWS))
    store.materialize_incremental(end_date=end, feature_views=list(VIEWS))
    materialize(ours_cfg, end=first)
    loaded = materialize(ours_cfg, end=end)

    assert set(loaded["views"]) == set(VIEWS)
    theirs, ours = _tables(feast_cfg), _tables(ours_cfg)
    for name in VIEWS:
        assert len(ours[name]) > 0, name
        assert ours[name] == theirs[name], f"{name}: rows differ from Feast's materialization"
    assert _ends(ours_cfg) == _ends(feast_cfg) == {name: end for name in VIEWS}
