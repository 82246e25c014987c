"""MovieLens-100K importer: exact mapped values on hand-written files, byte-stable output, one-line errors."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from core.actions import ACTION_NAMES
from core.schema import TABLES, Manifest, file_sha256, read_table, validate
from features.importers.movielens import import_movielens

REPO = Path(__file__).resolve().parents[2]
DATA, ITEMS, USERS = "u.data", "u.item", "u.user"
# Field names of the header-less files, in order (used by the mutations below and matched in error messages).
FIELDS = {
    DATA: ["user_id", "item_id", "rating", "timestamp"],
    ITEMS: ["movie_id", "title", "release_date", "video_release_date", "IMDb_URL"]
    + ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama"]
    + ["Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"],
    USERS: ["user_id", "age", "gender", "occupation", "zip_code"],
}
SEP = {DATA: "\t", ITEMS: "|", USERS: "|"}

T0, T1, T2 = 874724710, 881250949, 893286638  # 1997-09-20 03:05:10, 1997-12-04 15:55:49, 1998-04-22 23:10:38 UTC
DATA_LINES = [
    f"2\t10\t5\t{T1}",
    f"1\t10\t4\t{T1}",  # same second as the row above: file order breaks the tie
    f"1\t20\t2\t{T1}",  # same user and second as the row above: one request
    f"3\t10\t3\t{T0}",  # the earliest rating: impression 1
    f"3\t30\t1\t{T2}",
]


def _flags(*genres: int) -> str:
    return "|".join("1" if g in genres else "0" for g in range(19))


ITEM_LINES = [
    f"10|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{_flags(3, 4, 5)}",
    # Bare quotes and a latin-1 byte in the title; listed release after its first rating (T1).
    f'20|"Café" Noir (1999)|01-Jan-1999||http://x|{_flags(8)}',
    f"30|unknown||||{_flags(0)}",  # blank release date
    f"40|Never Rated (1990)|01-Jan-1990||http://y|{_flags(18)}",
]
USER_LINES = ["1|24|M|technician|85711", "2|53|F|other|94043", "3|17|M|student|T8H1N", "4|55|F|retired|00000"]


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _write_lines(path: Path, lines: list[str]) -> None:
    data = "".join(f"{line}\n" for line in lines).encode("latin-1")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def write_source(src: Path, gz: bool = False) -> Path:
    src.mkdir(parents=True)
    _write_lines(src / (f"{DATA}.gz" if gz else DATA), DATA_LINES)
    _write_lines(src / ITEMS, ITEM_LINES)
    _write_lines(src / USERS, USER_LINES)
    return src


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("movielens")
    out = root / "out"
    return out, import_movielens(write_source(root / "ml-100k"), out)


def _rows(directory: Path, name: str, key: str) -> dict[int, dict]:
    return {r[key]: r for r in read_table(directory, name).to_pylist()}


def test_impressions_are_ratings_in_time_order(imported: tuple[Path, Manifest]) -> None:
    imp = read_table(imported[0], "impressions").to_pydict()
    assert imp["impression_id"] == [1, 2, 3, 4, 5]
    assert imp["ts"] == [_utc(T0), _utc(T1), _utc(T1), _utc(T1), _utc(T2)]
    assert imp["user_id"] == [3, 2, 1, 1, 3]  # ties at T1 keep u.data order
    assert imp["post_id"] == imp["author_id"] == [10, 10, 10, 20, 30]
    assert imp["request_id"] == [1, 2, 3, 3, 4]  # one per (user, second)
    assert imp["x_rating"] == [3, 5, 4, 2, 1]
    expected = {"click": [1] * 5, "like": [0, 1, 1, 0, 0], "not_interested": [0, 0, 0, 1, 1]}
    for action in ACTION_NAMES:
        assert imp[action] == expected.get(action, [0] * 5), action
    assert imp["surface"] == [0] * 5 and imp["position"] == [-1] * 5 and imp["in_network"] == [False] * 5
    assert imp["dwell_time"] == [0.0] * 5


def test_users_map_age_activity_and_first_rating(imported: tuple[Path, Manifest]) -> None:
    users = _rows(imported[0], "users", "user_id")
    assert [users[u]["age_bucket"] for u in (1, 2, 3, 4)] == ["18-24", "45-54", "<18", "55+"]
    # Rating counts 2, 1, 2, 0: quartiles 0.75, 1.5, 2.0.
    assert [users[u]["activity"] for u in (1, 2, 3, 4)] == ["high", "medium", "high", "low"]
    # The first rating; user 4 has none: the earliest rating overall.
    assert [users[u]["created_at"] for u in (1, 2, 3, 4)] == [_utc(T1), _utc(T1), _utc(T0), _utc(T0)]
    u3 = users[3]
    assert (u3["country"], u3["language"], u3["is_author"]) == ("unknown", "unknown", False)
    assert (u3["x_age"], u3["x_gender"], u3["x_occupation"], u3["x_zip_code"]) == (17, "M", "student", "T8H1N")


def test_posts_map_genres_and_release_dates(imported: tuple[Path, Manifest]) -> None:
    posts = _rows(imported[0], "posts", "post_id")
    pick = ("author_id", "topic", "topic_secondary", "topic_weight", "media_type", "x_genres")
    assert [tuple(posts[i][c] for c in pick) for i in (10, 20, 30, 40)] == [
        (10, 3, 4, 0.5, "video", 0b111000),  # Animation, Children's, Comedy
        (20, 8, -1, 1.0, "video", 1 << 8),
        (30, 0, -1, 1.0, "video", 1),  # the "unknown" genre
        (40, 18, -1, 1.0, "video", 1 << 18),
    ]
    assert [posts[i]["created_at"] for i in (10, 20, 30, 40)] == [
        datetime(1995, 1, 1, tzinfo=UTC),
        _utc(T1),  # released 1999 but rated at T1: created no later than its first impression
        _utc(T0),  # blank release date: the earliest rating
        datetime(1990, 1, 1, tzinfo=UTC),
    ]
    assert posts[20]["x_title"] == '"Café" Noir (1999)'
    assert "duration_ms" not in posts[10]


def test_manifest_counts_hashes_and_observed_actions(imported: tuple[Path, Manifest]) -> None:
    out, manifest = imported
    assert manifest == Manifest.load(out)
    assert (manifest.dataset, manifest.params) == ("movielens", {"src": "ml-100k"})
    assert manifest.rows == {"users": 4, "follows": 0, "posts": 4, "impressions": 5}
    assert manifest.observed_actions == ("click", "like", "not_interested")
    assert set(manifest.files) == {str(p.relative_to(out)) for p in out.rglob("*.parquet")}
    for rel, digest in manifest.files.items():
        assert file_sha256(out / rel) == digest, rel
    for name, schema in TABLES.items():
        table = read_table(out, name)
        validate(table, schema, name)
        assert table.num_rows == manifest.rows[name]


def test_gzipped_ratings_give_the_same_bytes(tmp_path: Path, imported: tuple[Path, Manifest]) -> None:
    src = write_source(tmp_path / "b" / "ml-100k", gz=True)
    assert import_movielens(src, tmp_path / "out").files == imported[1].files


def test_cli_writes_the_dataset(tmp_path: Path) -> None:
    src = write_source(tmp_path / "ml-100k")
    result = CliRunner().invoke(app, ["data", "import", "movielens", "--src", str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "impressions=5" in result.output and (tmp_path / "o" / "manifest.json").is_file()


def _edit(name: str, change: Callable[[list[list[str]]], object]) -> Callable[[Path], None]:
    """A mutation of a source dir: `change` edits the rows (lists of fields) of file `name` in place."""

    def apply(src: Path) -> None:
        rows = [line.split(SEP[name]) for line in (src / name).read_text("latin-1").splitlines()]
        change(rows)
        _write_lines(src / name, [SEP[name].join(r) for r in rows])

    return apply


def _set(name: str, row: int, field: str, value: str) -> Callable[[Path], None]:
    def change(rows: list[list[str]]) -> None:
        rows[row][FIELDS[name].index(field)] = value

    return _edit(name, change)


# (case, mutation of a valid source dir, file the message must name, column it must name or None)
BAD_INPUTS = [
    pytest.param(lambda src: (src / ITEMS).unlink(), ITEMS, None, id="missing-item-file"),
    pytest.param(lambda src: (src / DATA).unlink(), DATA, None, id="missing-ratings"),
    pytest.param(lambda src: shutil.rmtree(src), "ml-100k", None, id="missing-src-dir"),
    pytest.param(_edit(DATA, lambda rows: rows[2].append("9")), DATA, "timestamp", id="extra-field"),
    pytest.param(_edit(DATA, lambda rows: rows[2].pop()), DATA, "timestamp", id="missing-field"),
    pytest.param(_edit(ITEMS, lambda rows: rows[1].pop()), ITEMS, "Western", id="item-missing-field"),
    pytest.param(_edit(USERS, lambda rows: rows[0].pop()), USERS, "zip_code", id="user-missing-field"),
    pytest.param(_set(DATA, 1, "rating", "6"), DATA, "rating", id="rating-above-5"),
    pytest.param(_set(DATA, 1, "rating", "0"), DATA, "rating", id="rating-below-1"),
    pytest.param(_set(DATA, 1, "rating", "4.5"), DATA, "rating", id="fractional-rating"),
    pytest.param(_set(DATA, 1, "rating", ""), DATA, "rating", id="blank-rating"),
    pytest.param(_set(DATA, 0, "user_id", "abc"), DATA, "user_id", id="non-integer-id"),
    pytest.param(_set(DATA, 0, "user_id", "0"), DATA, "user_id", id="zero-id"),
    pytest.param(_set(DATA, 0, "timestamp", "1.5e9"), DATA, "timestamp", id="bad-timestamp"),
    pytest.param(_set(DATA, 4, "item_id", "99"), DATA, "item_id", id="unknown-item"),
    pytest.param(_set(DATA, 4, "user_id", "99"), DATA, "user_id", id="unknown-user"),
    pytest.param(_set(ITEMS, 0, "release_date", "1995-01-01"), ITEMS, "release_date", id="bad-release-date"),
    pytest.param(_set(ITEMS, 0, "Action", "2"), ITEMS, "Action", id="genre-flag-not-binary"),
    pytest.param(_set(ITEMS, 1, "movie_id", "10"), ITEMS, "movie_id", id="duplicate-movie"),
    pytest.param(_set(USERS, 2, "age", "x"), USERS, "age", id="bad-age"),
    pytest.param(lambda src: (src / DATA).write_bytes(b""), DATA, None, id="empty-file"),
    pytest.param(lambda src: (src / USERS).write_bytes(b"\n\n"), USERS, None, id="blank-lines-only"),
    pytest.param(lambda src: _write_lines(src / f"{DATA}.gz", DATA_LINES), DATA, None, id="plain-and-gzip"),
]


@pytest.mark.parametrize(("mutate", "file", "column"), BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, run_cli: Callable, mutate: Callable[[Path], None], file: str, column: str | None
) -> None:
    src = write_source(tmp_path / "ml-100k")
    mutate(src)
    out = tmp_path / "new" / "dataset"
    line = run_cli("data", "import", "movielens", "--src", str(src), "--out", str(out)).error_line()
    assert file in line
    assert column is None or f"'{column}'" in line
    assert not out.exists() and not out.parent.exists()


def test_empty_gzipped_ratings_name_the_file(tmp_path: Path, run_cli: Callable) -> None:
    src = write_source(tmp_path / "ml-100k", gz=True)
    (src / f"{DATA}.gz").write_bytes(gzip.compress(b""))
    line = run_cli("data", "import", "movielens", "--src", str(src), "--out", str(tmp_path / "out")).error_line()
    assert line == f"error: {src / DATA}.gz: empty file"


def test_bad_input_leaves_an_existing_out_unchanged(tmp_path: Path, run_cli: Callable) -> None:
    src = write_source(tmp_path / "ml-100k")
    _set(DATA, 3, "rating", "9")(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("previous")
    line = run_cli("data", "import", "movielens", "--src", str(src), "--out", str(out)).error_line()
    assert DATA in line and "'rating'" in line
    assert [p.name for p in out.iterdir()] == ["manifest.json"] and (out / "manifest.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-100k", "out"]  # no temporary sibling left


def test_cli_process_reports_one_line(tmp_path: Path) -> None:
    src = write_source(tmp_path / "ml-100k")
    _set(DATA, 1, "rating", "6")(src)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "data", "import", "movielens", "--src", str(src), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: {src / DATA}: column 'rating' has 6 in data row 2, expected 1..5\n"
    assert not out.exists()
