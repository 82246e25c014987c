"""POST /events over real HTTP against a served nano world (trained models, Feast online store in SQLite and in
Redis): engagements reach the next request's history, replays are not applied twice, a bad batch applies nothing,
new posts are served at once (in network and out of it), follows change the graph the next request reads; and
`ember events import` applies a file through the same function.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from features.online import OnlineFeatures, SqliteBackend
from tests.project import nano_project
from tests.serving.test_recommender_pipeline import _as_of, _run
from tests.serving.test_service import Server, running

pytestmark = pytest.mark.slow  # the world takes a minute or two to build

REDIS_DB = 14  # a database of its own, flushed by these tests
NEW_AUTHOR = 900_001  # no such author in the world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nano copy of the project with trained models, an index and a materialized SQLite online store."""
    root = nano_project(tmp_path_factory.mktemp("events") / "project")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DO_NOT_TRACK": "1"}
    _run(["dvc", "repro", "build_index", "train_ranker"], root, env)
    _run(["ember", "features", "materialize"], root, env)
    return root


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis(socket_connect_timeout=0.5).ping())
    except redis.ConnectionError:
        return False


def _service_config(world: Path, root: Path, store: str) -> dict[str, Any]:
    """One pipeline variant that serves every candidate surviving the filters (small sources, large selector, no
    author cap), so whether a post is retrievable is read from the slate itself."""
    redis = f"127.0.0.1:6379,db={REDIS_DB}"
    params: dict[str, Any] = {
        "retrieval_model": str(world / "artifacts" / "retrieval" / "best"),
        "index": str(world / "artifacts" / "index"),
        "ranker": str(world / "artifacts" / "ranker" / "best"),
        "features": str(world / "data" / "features"),
        "as_of": _as_of(world),
        "retrieval_max_results": 20,
        "in_network_max_results": 20,
        "top_k": 200,
        "author_cap": 200,
        "warm_posts": 0,
    }
    params |= (
        {"online_store": "redis", "redis": redis}
        if store == "redis"
        else {"sqlite_path": str(world / "data" / "feast" / "online.db")}
    )
    return {
        "variants": [{"name": "pipeline", "share": 1.0, "recommender": {"kind": "pipeline", "params": params}}],
        "shadow": None,
        "exposure": {"path": str(root / store / "exposure.jsonl"), "max_bytes": 1 << 26, "max_files": 2},
        "events": {
            "store": store,
            "feast_repo": str(world / "features" / "repo"),
            "redis": redis,
            "seen_path": str(root / store / "events.db"),
        },
    }


@pytest.fixture(scope="module")
def sqlite_server(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("events-sqlite")
    with running(root, "sqlite", _service_config(world, root, "sqlite")) as s:
        yield s


@pytest.fixture(scope="module")
def redis_server(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not _redis_available():
        if os.environ.get("CI"):
            pytest.fail("Redis is not running on 127.0.0.1:6379 in CI")
        pytest.skip("Redis is not running on 127.0.0.1:6379 (not CI)")
    import redis

    redis.Redis(db=REDIS_DB).flushdb()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DO_NOT_TRACK": "1"}
    _run(["ember", "features", "materialize", "--online-store", "redis", "--redis", f"127.0.0.1:6379,db={REDIS_DB}"],
         world, env)  # fmt: skip
    root = tmp_path_factory.mktemp("events-redis")
    try:
        with running(root, "redis", _service_config(world, root, "redis")) as s:
            yield s
    finally:
        redis.Redis(db=REDIS_DB).flushdb()


def _as_of_ms(world: Path) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(_as_of(world)).timestamp() * 1000)


def _user_with_room(world: Path, skip: set[int] = set()) -> tuple[int, set[int]]:  # noqa: B006
    """A user with some history (under 120 engagements) and followees: (user_id, followee ids)."""
    reader = OnlineFeatures(SqliteBackend(world / "data" / "feast" / "online.db"))
    for user_id in range(1, 300):
        u = reader.user(user_id)
        if user_id not in skip and 0 < u.history["hist_length"] < 120 and u.graph["followee_ids"]:
            return user_id, set(u.graph["followee_ids"])
    raise AssertionError("no user with a short history and followees in the world")


def _recommend(server: Server, user_id: int, k: int = 200) -> dict[str, Any]:
    r = server.http.post("/recommend", json={"user_id": user_id, "k": k})
    assert r.status_code == 200, r.text
    return r.json()


def _features(server: Server, request_id: str) -> dict[str, Any]:
    """The user features the request read (its exposure record, written off the response path)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for f in server.exposure.parent.glob("exposure.jsonl*"):
            # Only finished lines: the server appends while this reads, and a last line may be half written.
            for line in f.read_text().split("\n")[:-1]:
                record = json.loads(line)
                if record["request_id"] == request_id and record["kind"] == "exposure":
                    return dict(record["features"])
        time.sleep(0.1)
    raise AssertionError(f"no exposure record for {request_id}")


def _history_length(server: Server, user_id: int) -> int:
    return int(_features(server, _recommend(server, user_id, k=1)["request_id"])["hist_length"])


def _events(server: Server, events: list[dict[str, Any]]) -> Any:
    return server.http.post("/events", json={"events": events})


def _engagement(user_id: int, post_id: int, event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"type": "engagement", "event_id": event_id or uuid.uuid4().hex, "user_id": user_id, "post_id": post_id}
    return body | {"author_id": 5, "actions": ["click", "like"]} | extra


def _engagement_reaches_the_next_request(server: Server, user_id: int) -> float:
    before_features = _features(server, _recommend(server, user_id, k=1)["request_id"])
    before = int(before_features["hist_length"])
    start = time.perf_counter()
    r = _events(server, [_engagement(user_id, 424_242, ts_ms=int(time.time() * 1000))])
    after = _recommend(server, user_id, k=1)
    seen_in_s = time.perf_counter() - start
    assert r.status_code == 200, r.text
    assert r.json() == {
        "received": 1,
        "applied": 1,
        "replayed": 0,
        "applied_by_type": {"engagement": 1, "impression": 0, "post": 0, "follow": 0},
    }
    after_features = _features(server, after["request_id"])
    assert after_features["hist_length"] == before + 1
    # Pushed after the day's offline snapshot: logged as live, so the skew check expects it (monitoring/skew.py).
    assert after_features["hist_live"] == before_features["hist_live"] + 1
    return seen_in_s


def test_an_engagement_is_in_the_next_requests_history_sqlite(sqlite_server: Server, world: Path) -> None:
    user_id, _ = _user_with_room(world)
    seen_in_s = _engagement_reaches_the_next_request(sqlite_server, user_id)
    assert seen_in_s < 1.0, seen_in_s


def test_an_engagement_is_in_the_next_requests_history_redis(redis_server: Server, world: Path) -> None:
    user_id, _ = _user_with_room(world)
    seen_in_s = _engagement_reaches_the_next_request(redis_server, user_id)
    assert seen_in_s < 1.0, seen_in_s


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_replayed_event_is_acknowledged_not_applied_twice(request: pytest.FixtureRequest, store: str) -> None:
    server: Server = request.getfixturevalue(f"{store}_server")
    world_dir: Path = request.getfixturevalue("world")
    user_id, _ = _user_with_room(world_dir, skip={_user_with_room(world_dir)[0]})
    before = _history_length(server, user_id)
    event = _engagement(user_id, 515_151)
    first = _events(server, [event]).json()
    again = _events(server, [event, event]).json()  # replayed, and twice in one batch
    assert first["applied"] == 1 and first["replayed"] == 0
    assert again["received"] == 2 and again["applied"] == 0 and again["replayed"] == 2
    assert _history_length(server, user_id) == before + 1


def test_a_batch_with_one_bad_event_is_refused_whole(sqlite_server: Server, world: Path) -> None:
    user_id, followees = _user_with_room(world)
    before = _history_length(sqlite_server, user_id)
    good = _engagement(user_id, 616_161)
    post = {"type": "post", "event_id": uuid.uuid4().hex, "post_id": 7_000_001, "author_id": min(followees)}
    bad = _engagement(user_id, 616_162, actions=["click", "nope"])
    r = _events(sqlite_server, [good, post | {"ts_ms": _as_of_ms(world) - 60_000}, bad])
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "events[2].actions[1]" and "nope" in r.json()["error"]
    slate = _recommend(sqlite_server, user_id)
    assert _features(sqlite_server, slate["request_id"])["hist_length"] == before  # the good engagement: not applied
    assert 7_000_001 not in {i["post_id"] for i in slate["items"]}  # nor the post
    assert _events(sqlite_server, [good]).json()["applied"] == 1  # its id was not recorded as applied either


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"event_id": "x", "user_id": 1}, "events[0].type"),
        ({"type": "like", "event_id": "x"}, "events[0].type"),
        ({"type": "follow", "event_id": "x", "user_id": "1", "author_id": 2}, "events[0].user_id"),
        ({"type": "follow", "event_id": "x", "user_id": 1, "author_id": 0}, "events[0].author_id"),
        ({"type": "follow", "event_id": "", "user_id": 1, "author_id": 2}, "events[0].event_id"),
        ({"type": "follow", "event_id": "x", "user_id": 1, "author_id": 2, "extra": 1}, "events[0].extra"),
        ({"type": "impression", "event_id": "x", "user_id": 1, "post_id": 2, "surface": 99}, "events[0].surface"),
        ({"type": "post", "event_id": "x", "post_id": 3, "author_id": 2, "ts_ms": -1}, "events[0].ts_ms"),
        ({"type": "engagement", "event_id": "x", "user_id": 1, "post_id": 2, "author_id": 3}, "events[0].actions"),
    ],
)
def test_bad_events_are_a_400_naming_the_field(sqlite_server: Server, event: dict[str, Any], field: str) -> None:
    r = _events(sqlite_server, [event])
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field, r.text
    assert "Traceback" not in r.text


def test_an_empty_or_oversized_batch_is_refused(sqlite_server: Server) -> None:
    assert _events(sqlite_server, []).json()["field"] == "events"
    many = [{"type": "follow", "event_id": str(i), "user_id": 1, "author_id": 2} for i in range(1001)]
    assert _events(sqlite_server, many).json()["field"] == "events"


def test_a_new_post_is_served_at_once_in_and_out_of_network(sqlite_server: Server, world: Path) -> None:
    follower, followees = _user_with_room(world)
    author = min(followees)
    other = next(u for u in range(1, 300) if u not in (follower, author) and author not in _followees(world, u))
    post = {"type": "post", "event_id": uuid.uuid4().hex, "post_id": 8_000_001, "author_id": author, "topic": 1}
    start = time.perf_counter()
    r = _events(sqlite_server, [post | {"media_type": "video", "ts_ms": _as_of_ms(world) - 60_000}])
    first = _recommend(sqlite_server, follower)
    served_in_s = time.perf_counter() - start
    assert r.status_code == 200 and r.json()["applied_by_type"]["post"] == 1, r.text
    mine = [i for i in first["items"] if i["post_id"] == 8_000_001]
    assert mine and mine[0]["in_network"] and mine[0]["source"] == "InNetworkSource", first["items"][:3]
    theirs = [i for i in _recommend(sqlite_server, other)["items"] if i["post_id"] == 8_000_001]
    assert theirs and not theirs[0]["in_network"] and theirs[0]["source"] == "FreshSource"
    assert served_in_s < 1.0, served_in_s


def _followees(world: Path, user_id: int) -> set[int]:
    reader = OnlineFeatures(SqliteBackend(world / "data" / "feast" / "online.db"))
    return set(reader.user(user_id).graph["followee_ids"])


def test_a_follow_changes_the_graph_the_next_request_reads(sqlite_server: Server, world: Path) -> None:
    user_id = 3
    post = {"type": "post", "event_id": uuid.uuid4().hex, "post_id": 8_000_002, "author_id": NEW_AUTHOR}
    assert _events(sqlite_server, [post | {"ts_ms": _as_of_ms(world) - 30_000}]).status_code == 200
    before = [i for i in _recommend(sqlite_server, user_id)["items"] if i["post_id"] == 8_000_002]
    assert before and not before[0]["in_network"]
    follow = {"type": "follow", "event_id": uuid.uuid4().hex, "user_id": user_id, "author_id": NEW_AUTHOR}
    assert _events(sqlite_server, [follow]).json()["applied_by_type"]["follow"] == 1
    after = [i for i in _recommend(sqlite_server, user_id)["items"] if i["post_id"] == 8_000_002]
    assert after and after[0]["in_network"] and after[0]["source"] == "InNetworkSource"
    assert NEW_AUTHOR in _followees(world, user_id)
    assert _features(sqlite_server, _recommend(sqlite_server, user_id, k=1)["request_id"])["n_followees"] == len(
        _followees(world, user_id)
    )


def test_events_are_refused_when_off(tmp_path: Path) -> None:
    with running(tmp_path, "off") as s:  # the popular test config: no events section
        r = s.http.post("/events", json={"events": [{"type": "follow", "event_id": "a", "user_id": 1, "author_id": 2}]})
    assert r.status_code == 404 and "events.store" in r.json()["error"]


# The importer -------------------------------------------------------------------------------------------------------


def test_the_importer_applies_a_file_and_refuses_a_bad_line(
    world: Path,
    tmp_path: Path,
    run_cli: Any,
) -> None:
    import yaml

    config = tmp_path / "variants.yaml"
    body = _service_config(world, tmp_path, "sqlite")
    config.write_text(yaml.safe_dump({"salt": "s", **body}))
    user_id = 11
    reader = OnlineFeatures(SqliteBackend(world / "data" / "feast" / "online.db"))
    before = list(reader.user(user_id).history["hist_post_ids"])
    good = [_engagement(user_id, 9_100_000 + i, ts_ms=int(time.time() * 1000) + i) for i in range(3)]
    follow = {"type": "follow", "event_id": uuid.uuid4().hex, "user_id": user_id, "author_id": NEW_AUTHOR + 1}
    lines = [json.dumps(e) for e in [*good, follow]]

    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text("\n".join([lines[0], '{"type": "engagement", "event_id": "z", "user_id": 1}', *lines[1:]]))
    line = run_cli("events", "import", str(bad_file), "--config", str(config)).error_line()
    assert str(bad_file) in line and ":2:" in line and "post_id" in line
    assert list(reader.user(user_id).history["hist_post_ids"]) == before  # nothing applied

    good_file = tmp_path / "good.jsonl"
    good_file.write_text("\n".join(lines) + "\n")
    out = run_cli("events", "import", str(good_file), "--config", str(config))
    assert out.code == 0, out.stderr
    assert "4 applied" in out.stdout
    history = reader.user(user_id)
    assert list(history.history["hist_post_ids"]) == [*before, 9_100_000, 9_100_001, 9_100_002][-128:]
    assert NEW_AUTHOR + 1 in set(history.graph["followee_ids"])
    again = run_cli("events", "import", str(good_file), "--config", str(config))
    assert "0 applied" in again.stdout and "4 replayed" in again.stdout
    assert list(reader.user(user_id).history["hist_post_ids"])[-3:] == [9_100_000, 9_100_001, 9_100_002]
    assert len(reader.user(user_id).history["hist_post_ids"]) == min(len(before) + 3, 128)
