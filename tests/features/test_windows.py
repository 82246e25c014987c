"""features/windows.py: training windows and the served `as_of` from the newest data (fast, on the tiny dataset)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import UserError
from features.windows import day_after, features_end, resolve_as_of, training_window
from serving.recommender_config import RecommenderConfig
from tests.features.tiny import ts, write_tiny


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny(tmp_path / "tiny")  # newest impression 2026-01-03 08:30


def test_the_window_is_the_last_whole_days_before_the_newest_impression(tiny: Path) -> None:
    start, end, rule = training_window(tiny, days=2)
    assert (start, end) == (ts(2), ts(4))
    assert rule == {"rule": "last days of the data", "days": 2, "newest_impression": ts(3, 8, 30).isoformat()}
    assert training_window(tiny, days=1)[:2] == (ts(3), ts(4))
    assert training_window(tiny, days=2, as_of=datetime(2026, 1, 3))[:2] == (ts(1), ts(3))  # naive = UTC
    assert training_window(tiny, start=ts(1), end=ts(2))[:2] == (ts(1), ts(2))
    assert day_after(ts(3)) == ts(4)  # midnight starts its day


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "--days"),
        ({"days": 2, "start": ts(1), "end": ts(2)}, "--days"),
        ({"start": ts(1)}, "--end"),
        ({"start": ts(1), "end": ts(2), "as_of": ts(2)}, "--as-of"),
        ({"days": 0}, "--days"),
    ],
)
def test_a_bad_window_request_names_the_option(tiny: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(UserError, match=f"^{field}"):
        training_window(tiny, **kwargs)


def test_the_served_as_of_is_the_newest_feature_snapshot(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.mkdir()
    stamps = pa.array([ts(2), ts(5), ts(3)], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"user_id": [1, 1, 2], "event_timestamp": stamps}), features / "user_stats.parquet")
    assert features_end(features) == ts(5)
    assert resolve_as_of("data", "features", tmp_path) == "2026-01-05T00:00:00+00:00"
    assert resolve_as_of("2026-01-01T00:00:00+00:00", None) == "2026-01-01T00:00:00+00:00"
    assert resolve_as_of(None, None) is None
    cfg = RecommenderConfig(
        retrieval_model=Path("r"), index=Path("i"), ranker=Path("k"), features=features, as_of="data"
    )
    assert cfg.now_at() == datetime(2026, 1, 5, tzinfo=UTC)
    with pytest.raises(UserError, match="recommender.as_of"):
        RecommenderConfig(
            retrieval_model=Path("r"), index=Path("i"), ranker=Path("k"), as_of="data"
        )  # nothing to read it from
    with pytest.raises(UserError, match="user_stats.parquet"):
        features_end(tmp_path)


def test_the_training_set_command_refuses_a_half_window(tiny: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "ts"
    line = run_cli("features", "training-set", "--model", "ranker", "--data", str(tiny), "--start", "2026-01-02",
                   "--out", str(out)).error_line()  # fmt: skip
    assert line.startswith("error: --end: missing")
    assert not out.exists()
