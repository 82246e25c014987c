"""KuaiRand-Pure importer: exact mapped values on hand-written files, byte-stable output, one-line errors."""

from __future__ import annotations

import csv
import gzip
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from core.actions import ACTION_NAMES
from core.schema import TABLES, Manifest, file_sha256, read_table, validate
from features.importers.kuairand import import_kuairand

REPO = Path(__file__).resolve().parents[2]
LOG = "log_standard_4_25_to_5_05_pure_subset.csv"
USERS = "user_features_pure.csv"
VIDEOS = "video_features_basic_pure.csv"

# Files as they look on disk: the real headers (spelled out here, not taken from the importer, so a typo there is
# caught) and a few rows in the real files' formats.
LOG_LINES = [
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,long_view,"
    "play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab",
    # Clicked, liked and watched long; same millisecond as the next row: one request.
    "0,0,20220425,0,1650812741436,1,1,0,0,0,0,1,61802,87433,0,0,0,0,1",
    "0,1,20220425,0,1650812741436,0,0,0,0,0,1,0,1500,150366,0,0,0,0,1",
    # Follow, comment, forward and profile entry on a picture post (duration 0 in the log).
    "1,2,20220425,100,1650816000000,1,0,1,1,1,0,0,2500,0,12,30,1,0,4",
    # Same millisecond as the next row but another user: two requests.
    "2,3,20220426,1200,1650945600000,0,0,0,0,0,0,0,0,33000,0,0,0,0,14",
    "0,0,20220426,1200,1650945600000,1,0,0,0,0,0,1,90000,87433,0,0,0,0,0",
]
USER_LINES = [
    "user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,follow_user_num,"
    "follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,friend_user_num_range,register_days,"
    "register_days_range,onehot_feat0,onehot_feat1,onehot_feat2,onehot_feat3,onehot_feat4,onehot_feat5,"
    "onehot_feat6,onehot_feat7,onehot_feat8,onehot_feat9,onehot_feat10,onehot_feat11,onehot_feat12,onehot_feat13,"
    "onehot_feat14,onehot_feat15,onehot_feat16,onehot_feat17",
    '0,full_active,0,1,1,514,500+,150,"[100,1k)",34,"[30,60)",799,730+,'
    "1,1,29,949,1.0,0,0,14,135,6,3,0,0.0,1.0,0.0,0.0,0.0,0.0",
    # Blanks in onehot_feat4 and 12..17, as in the real file (pandas wrote those columns as floats).
    '1,UNKNOWN,0,-124,0,8,"(0,10]",26,"[10,100)",3,"[1,5)",10,0-30,0,6,28,27,,0,0,19,378,3,3,0,,,,,,',
    "2,,0,-124,1,0,0,0,0,0,0,0,0-30,1,0,2,1176,2.0,0,0,31,275,5,2,2,0.0,0.0,0.0,1.0,0.0,0.0",
]
VIDEO_LINES = [
    "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,server_height,"
    "music_id,music_type,tag",
    "0,7349781,NORMAL,2022-04-10,LongImport,0.0,87433.0,720.0,1280.0,9155697141,9.0,39",
    '1,0,AD,2022-04-09,UNKNOWN,0.0,150366.0,720.0,1280.0,0,,"20,43"',  # blank music_type
    "2,5,NORMAL,2022-04-11,LongPicture,0.0,,720.0,1440.0,6355540435,8.0,",  # blank duration and tag
    '3,5,NORMAL,2022-04-11,Web,0.0,33000.0,720.0,1280.0,1,9.0,"65,27,42"',
]
FIRST_DAY = datetime(2022, 4, 24, tzinfo=UTC)  # UTC midnight before the first time_ms (2022-04-24 15:05:41 UTC)


def _write_lines(path: Path, lines: list[str]) -> None:
    data = "".join(f"{line}\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def write_source(src: Path, gz: bool = False) -> Path:
    src.mkdir(parents=True)
    ext = ".gz" if gz else ""
    for name, lines in ((LOG, LOG_LINES), (USERS, USER_LINES), (VIDEOS, VIDEO_LINES)):
        _write_lines(src / f"{name}{ext}", lines)
    return src


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("kuairand")
    out = root / "out"
    manifest = import_kuairand(write_source(root / "kuairand-pure"), out)
    return out, manifest


def _rows(directory: Path, name: str) -> list[dict]:
    return read_table(directory, name).to_pylist()


def test_impressions_map_ids_time_surface_and_extras(imported: tuple[Path, Manifest]) -> None:
    out, _ = imported
    first = _rows(out, "impressions")[0]
    assert first.pop("dwell_time") == pytest.approx(61.802)  # play_time_ms / 1000
    assert first == {
        "impression_id": 1,
        "request_id": 1,
        "user_id": 1,
        "post_id": 1,
        "author_id": 7349782,
        "ts": datetime(2022, 4, 24, 15, 5, 41, 436000, tzinfo=UTC),
        "surface": 1,
        "position": -1,
        "in_network": False,
        **{a: int(a in ("click", "like", "dwell")) for a in ACTION_NAMES},
        "x_long_view": 1,
        "x_play_time_ms": 61802,
        "x_duration_ms": 87433,
        "x_profile_stay_time": 0,
        "x_comment_stay_time": 0,
        "x_is_rand": 0,
        "x_date": 20220425,
        "x_hourmin": 0,
    }


def test_impression_columns_over_all_rows(imported: tuple[Path, Manifest]) -> None:
    imp = read_table(imported[0], "impressions").to_pydict()
    assert imp["impression_id"] == [1, 2, 3, 4, 5]
    assert imp["request_id"] == [1, 1, 2, 3, 4]  # one per (user, time_ms), in order of first appearance
    assert imp["user_id"] == [1, 1, 2, 3, 1]
    assert imp["post_id"] == [1, 2, 3, 4, 1]
    assert imp["author_id"] == [7349782, 1, 6, 6, 7349782]  # the video's author + 1
    assert imp["surface"] == [1, 1, 4, 14, 0]
    assert imp["dwell_time"] == pytest.approx([61.802, 1.5, 2.5, 0.0, 90.0])
    expected = {
        "click": [1, 0, 1, 0, 1],
        "like": [1, 0, 0, 0, 0],
        "reply": [0, 0, 1, 0, 0],  # is_comment
        "share": [0, 0, 1, 0, 0],  # is_forward
        "profile_click": [0, 0, 1, 0, 0],
        "follow_author": [0, 0, 1, 0, 0],
        "dwell": [1, 0, 0, 0, 1],  # long_view
        "not_interested": [0, 1, 0, 0, 0],  # is_hate
    }
    for action in ACTION_NAMES:
        assert imp[action] == expected.get(action, [0] * 5), action
    assert imp["x_long_view"] == imp["dwell"]
    assert imp["x_profile_stay_time"] == [0, 0, 12, 0, 0] and imp["x_comment_stay_time"] == [0, 0, 30, 0, 0]


def test_users_map_registration_activity_and_blank_features(imported: tuple[Path, Manifest]) -> None:
    users = {u["user_id"]: u for u in _rows(imported[0], "users")}
    assert sorted(users) == [1, 2, 3]
    u1, u2, u3 = users[1], users[2], users[3]
    assert u1["created_at"] == FIRST_DAY - timedelta(days=799)
    assert u2["created_at"] == FIRST_DAY - timedelta(days=10)
    assert u3["created_at"] == FIRST_DAY
    assert (u1["activity"], u2["activity"], u3["activity"]) == ("full_active", "unknown", "unknown")
    assert (u1["is_author"], u2["is_author"], u3["is_author"]) == (True, False, True)
    assert {u1[c] for c in ("country", "language", "age_bucket")} == {"unknown"}
    assert (u1["x_follow_user_num"], u1["x_fans_user_num_range"], u1["x_is_live_streamer"]) == (514, "[100,1k)", 1)
    assert (u1["x_register_days"], u2["x_register_days_range"]) == (799, "0-30")
    assert (u1["x_onehot_feat3"], u1["x_onehot_feat4"], u1["x_onehot_feat13"]) == (949, 1, 1)
    assert [u2[f"x_onehot_feat{i}"] for i in (3, 4, 12, 17)] == [27, -1, -1, -1]  # blank -> -1


def test_posts_map_tags_media_and_duration(imported: tuple[Path, Manifest]) -> None:
    posts = {p["post_id"]: p for p in _rows(imported[0], "posts")}
    assert sorted(posts) == [1, 2, 3, 4]
    pick = ("author_id", "topic", "topic_secondary", "topic_weight", "media_type", "duration_ms")
    assert [tuple(posts[i][c] for c in pick) for i in (1, 2, 3, 4)] == [
        (7349782, 39, -1, 1.0, "video", 87433),
        (1, 20, 43, 0.5, "video", 150366),
        (6, -1, -1, 1.0, "image", 0),  # no tag, picture post without duration
        (6, 65, 27, 0.5, "video", 33000),  # third tag only in x_tags
    ]
    assert posts[1]["created_at"] == datetime(2022, 4, 10, tzinfo=UTC)
    assert (posts[4]["x_tags"], posts[3]["x_tags"]) == ("65,27,42", "")
    assert (posts[2]["x_video_type"], posts[2]["x_upload_type"], posts[2]["x_music_type"]) == ("AD", "UNKNOWN", -1)
    assert (posts[1]["x_music_id"], posts[3]["x_server_height"], posts[1]["x_visible_status"]) == (9155697141, 1440, 0)


def test_manifest_counts_hashes_and_observed_actions(imported: tuple[Path, Manifest]) -> None:
    out, manifest = imported
    assert manifest == Manifest.load(out)
    assert manifest.dataset == "kuairand"
    assert manifest.rows == {"users": 3, "follows": 0, "posts": 4, "impressions": 5}
    assert manifest.observed_actions == (
        "click", "like", "reply", "share", "profile_click", "follow_author", "dwell", "not_interested"
    )  # fmt: skip
    assert manifest.params == {"src": "kuairand-pure"}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*.parquet")}
    assert set(manifest.files) == on_disk == {
        "users.parquet", "follows.parquet", "posts.parquet", "impressions/part-00000.parquet"
    }  # fmt: skip
    for rel, digest in manifest.files.items():
        assert file_sha256(out / rel) == digest, rel
    for name, schema in TABLES.items():
        table = read_table(out, name)
        validate(table, schema, name)
        assert table.num_rows == manifest.rows[name]
        assert not any(c.startswith("p_") for c in table.column_names)


def test_gzip_and_split_logs_give_the_same_bytes(tmp_path: Path, imported: tuple[Path, Manifest]) -> None:
    src = write_source(tmp_path / "b" / "kuairand-pure", gz=True)
    # Two log files, the second gzipped: concatenated in name order (the default name sorts first).
    (src / f"{LOG}.gz").unlink()
    _write_lines(src / "log_standard_4_25_to_4_25_pure.csv", LOG_LINES[:3])
    _write_lines(src / "log_standard_4_26_to_4_26_pure.csv.gz", LOG_LINES[:1] + LOG_LINES[3:])
    assert import_kuairand(src, tmp_path / "out").files == imported[1].files


def test_cli_writes_the_dataset(tmp_path: Path) -> None:
    src = write_source(tmp_path / "kuairand-pure")
    result = CliRunner().invoke(app, ["data", "import", "kuairand", "--src", str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "impressions=5" in result.output and (tmp_path / "o" / "manifest.json").is_file()


def _edit(name: str, change: Callable[[list[str], list[list[str]]], object]) -> Callable[[Path], None]:
    """A mutation of a source dir: `change` edits the header and rows of the plain CSV file `name` in place."""

    def apply(src: Path) -> None:
        with (src / name).open(newline="") as fh:
            header, *rows = csv.reader(fh)
        change(header, rows)
        with (src / name).open("w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows([header, *rows])

    return apply


def _set(name: str, row: int, column: str, value: str) -> Callable[[Path], None]:
    def change(header: list[str], rows: list[list[str]]) -> None:
        rows[row][header.index(column)] = value

    return _edit(name, change)


def _drop_column(name: str, column: str) -> Callable[[Path], None]:
    def change(header: list[str], rows: list[list[str]]) -> None:
        i = header.index(column)
        for line in (header, *rows):
            del line[i]

    return _edit(name, change)


def _corrupt_gzip(src: Path) -> None:
    (src / LOG).unlink()
    (src / f"{LOG}.gz").write_bytes(gzip.compress(b"user_id,video_id\n")[:12])


# (case, mutation of a valid source dir, file the message must name, column it must name or None)
BAD_INPUTS = [
    pytest.param(lambda src: (src / VIDEOS).unlink(), VIDEOS, None, id="missing-video-file"),
    pytest.param(lambda src: (src / LOG).unlink(), "log_standard_", None, id="missing-log"),
    pytest.param(lambda src: shutil.rmtree(src), "kuairand-pure", None, id="missing-src-dir"),
    pytest.param(_drop_column(LOG, "tab"), LOG, "tab", id="missing-column"),
    pytest.param(_drop_column(USERS, "register_days"), USERS, "register_days", id="missing-user-column"),
    pytest.param(_edit(USERS, lambda h, rows: h.append("country")), USERS, "country", id="unexpected-column"),
    pytest.param(_set(LOG, 1, "user_id", "abc"), LOG, "user_id", id="non-integer-id"),
    pytest.param(_set(LOG, 0, "play_time_ms", "1.5"), LOG, "play_time_ms", id="fractional-int"),
    pytest.param(_set(LOG, 0, "time_ms", ""), LOG, "time_ms", id="blank-required"),
    pytest.param(_set(LOG, 2, "is_click", "2"), LOG, "is_click", id="flag-not-binary"),
    pytest.param(_set(LOG, 0, "tab", "16"), LOG, "tab", id="surface-out-of-vocabulary"),
    pytest.param(_set(LOG, 0, "play_time_ms", "-5"), LOG, "play_time_ms", id="negative-time"),
    pytest.param(_set(LOG, 0, "date", "20221345"), LOG, "date", id="bad-date"),
    pytest.param(_set(VIDEOS, 0, "upload_dt", "10/04/2022"), VIDEOS, "upload_dt", id="bad-upload-date"),
    pytest.param(_set(VIDEOS, 1, "tag", "20;43"), VIDEOS, "tag", id="bad-tag"),
    pytest.param(_set(USERS, 0, "onehot_feat0", "x"), USERS, "onehot_feat0", id="bad-user-feature"),
    pytest.param(_set(LOG, 3, "video_id", "99"), LOG, "video_id", id="unknown-video"),
    pytest.param(_set(LOG, 3, "user_id", "99"), LOG, "user_id", id="unknown-user"),
    pytest.param(_set(USERS, 1, "user_id", "0"), USERS, "user_id", id="duplicate-user"),
    pytest.param(_edit(LOG, lambda h, rows: rows[1].append("7")), LOG, "tab", id="extra-field-in-row"),
    pytest.param(_edit(LOG, lambda h, rows: rows[1].pop()), LOG, "tab", id="short-row"),
    pytest.param(lambda src: (src / USERS).write_bytes(b""), USERS, None, id="empty-file"),
    pytest.param(_edit(LOG, lambda h, rows: rows.clear()), LOG, None, id="header-only"),
    pytest.param(_corrupt_gzip, f"{LOG}.gz", None, id="corrupt-gzip"),
    pytest.param(lambda src: _write_lines(src / f"{USERS}.gz", USER_LINES), USERS, None, id="plain-and-gzip"),
]


@pytest.mark.parametrize(("mutate", "file", "column"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, run_cli: Callable, mutate: Callable[[Path], None], file: str, column: str | None
) -> None:
    src = write_source(tmp_path / "kuairand-pure")
    mutate(src)
    out = tmp_path / "new" / "dataset"
    line = run_cli("data", "import", "kuairand", "--src", str(src), "--out", str(out)).error_line()
    assert file in line
    assert column is None or f"'{column}'" in line
    assert not out.exists() and not out.parent.exists()


def test_bad_input_leaves_an_existing_out_unchanged(tmp_path: Path, run_cli: Callable) -> None:
    src = write_source(tmp_path / "kuairand-pure")
    _set(LOG, 0, "is_like", "yes")(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("previous")
    line = run_cli("data", "import", "kuairand", "--src", str(src), "--out", str(out)).error_line()
    assert LOG in line and "'is_like'" in line
    assert [p.name for p in out.iterdir()] == ["manifest.json"] and (out / "manifest.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kuairand-pure", "out"]  # no temporary sibling left


def test_cli_process_reports_one_line(tmp_path: Path) -> None:
    src = write_source(tmp_path / "kuairand-pure")
    _drop_column(VIDEOS, "author_id")(src)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "data", "import", "kuairand", "--src", str(src), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: {src / VIDEOS}: missing column 'author_id'\n"
    assert not out.exists()
