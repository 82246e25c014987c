"""Exposure log (JSONL, rotated) -> one row per served item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import UserError
from monitoring.exposure_frame import count_requests, exposure_files, read_exposure


def record(request_id: str, user: int, n_items: int, kind: str = "exposure") -> dict:
    return {
        "kind": kind,
        "endpoint": "recommend",
        "request_id": request_id,
        "ts": 1.0,
        "user_id": user,
        "surface": 0,
        "variant": "champion",
        "version": "v1",
        "degraded": False,
        "fallback": None,
        "items": [{"post_id": 100 + i, "position": i, "score": 1.0 - i / 10, "source": "oon"} for i in range(n_items)],
        "features": {"user_follower_count": 10 * user, "hist_length": 3, "missing_views": ["a"]},
    }


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_reads_rotated_files_oldest_first_and_skips_malformed(tmp_path: Path) -> None:
    write(tmp_path / "exposure.jsonl.2", [json.dumps(record("r1", 1, 2))])
    write(tmp_path / "exposure.jsonl.1", [json.dumps(record("r2", 2, 3)), '{"truncated": '])
    write(
        tmp_path / "exposure.jsonl",
        [
            json.dumps(record("r3", 3, 1)),
            "not json",
            json.dumps({"no": "items"}),
            json.dumps(record("r3", 3, 2, kind="shadow")),
            "",
        ],
    )
    (tmp_path / "other.txt").write_text("ignored")
    assert [p.name for p in exposure_files(tmp_path)] == ["exposure.jsonl.2", "exposure.jsonl.1", "exposure.jsonl"]
    read = read_exposure(tmp_path)
    assert read.records == 3 and read.malformed == 3 and read.skipped_shadow == 1
    df = read.frame
    assert len(df) == 6  # 2 + 3 + 1 served items
    assert list(df["request_id"].unique()) == ["r1", "r2", "r3"]
    assert df["user_follower_count"].tolist() == [10, 10, 20, 20, 20, 30]
    assert df["score"].dtype.kind == "f" and df["n_missing_views"].eq(1).all()
    assert {"post_id", "position", "variant", "hist_length", "degraded"} <= set(df.columns)


def test_a_record_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    f = tmp_path / "exposure.jsonl"
    whole = json.dumps(record("r2", 2, 3))
    f.write_text(json.dumps(record("r1", 1, 2)) + "\n" + whole[: len(whole) // 2])  # the server mid-append
    read = read_exposure(f)
    assert read.records == 1 and read.malformed == 0 and len(read.frame) == 2
    with open(f, "a") as handle:
        handle.write(whole[len(whole) // 2 :] + "\n")
    assert read_exposure(f).records == 2 and len(read_exposure(f).frame) == 5


def test_single_file_and_missing_path(tmp_path: Path) -> None:
    f = tmp_path / "exposure.jsonl"
    write(f, [json.dumps(record("r1", 1, 2))])
    assert len(read_exposure(f).frame) == 2
    with pytest.raises(UserError, match="not found"):
        read_exposure(tmp_path / "nope")


def test_empty_directory_gives_empty_frame(tmp_path: Path) -> None:
    read = read_exposure(tmp_path)
    assert read.frame.empty and read.records == 0


def test_hex_request_ids_stay_text_and_features_become_numbers(tmp_path: Path) -> None:
    # pandas.to_numeric (2.3.3) segfaults on this id ("548e2828..." reads as a float with a huge exponent): the
    # reader must never hand ids to it.
    write(tmp_path / "exposure.jsonl", [json.dumps(record("548e28289411455ea62e854a161d9391", 7, 2))])
    frame = read_exposure(tmp_path).frame
    assert frame["request_id"].tolist() == ["548e28289411455ea62e854a161d9391"] * 2
    assert frame["user_id"].dtype.kind in "if"


def test_item_actions_become_pred_columns_and_absent_ones_stay_missing(tmp_path: Path) -> None:
    rec = record("r1", 1, 3)
    rec["items"][0]["actions"] = {"click": 0.25, "not_interested": 0.01, "dwell_time": 4.5}
    rec["items"][1]["actions"] = {"click": "0.5", "like": None, "Bad Name": 1.0, "report": float("nan")}
    # items[2] has no "actions" (an unranked item, or a service from before the field): missing, not 0.
    write(tmp_path / "exposure.jsonl", [json.dumps(rec), json.dumps(record("r2", 2, 1))])
    frame = read_exposure(tmp_path).frame
    preds = sorted(c for c in frame.columns if c.startswith("pred_"))
    assert preds == ["pred_click", "pred_dwell_time", "pred_like", "pred_not_interested", "pred_report"]
    assert all(frame[c].dtype.kind == "f" for c in preds)
    assert frame["pred_click"].tolist()[:2] == [0.25, 0.5]
    assert frame["pred_click"].iloc[2:].isna().all()  # the item without actions and the record without any
    assert frame["pred_dwell_time"].iloc[0] == 4.5 and frame["pred_dwell_time"].iloc[1:].isna().all()
    assert frame["pred_like"].isna().all() and frame["pred_report"].isna().all()
    assert frame["pred_click"].mean() == pytest.approx(0.375)  # what summary()["prediction_mean"] reports


def test_count_requests_counts_served_records_of_the_window_only(tmp_path: Path) -> None:
    lines = []
    for i, ts in enumerate((5.0, 10.0, 15.0, 20.0)):
        lines.append(json.dumps({**record(f"r{i}", i, 2), "ts": ts}))
    lines.append(json.dumps({**record("s", 9, 2, kind="shadow"), "ts": 12.0}))  # not served to anyone
    lines.append("{not json")
    (tmp_path / "exposure.jsonl.1").write_text(lines[0] + "\n")  # a rotated, older file counts too
    (tmp_path / "exposure.jsonl").write_text("\n".join(lines[1:]) + "\n")
    assert count_requests(tmp_path, 0.0) == 4
    assert count_requests(tmp_path, 10.0) == 3
    assert count_requests(tmp_path, 10.0, 20.0) == 2  # [start, end)
    assert count_requests(tmp_path, 21.0) == 0
