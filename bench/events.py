"""Events in, measured (issue 21.1): how soon what `POST /events` receives shows in what `ember serve` answers, over
real HTTP, for each online store (SQLite, the default, and Redis):

- engagement -> the next /recommend: the delay from sending a one-event batch until the first /recommend answer of
  that user whose request read the longer history (the `hist_length` its exposure record logs, as the tests read
  it); target <= 1 s (median and p99 over the repeats);
- new post -> in network: a post by an author the viewer follows, until a /recommend answer of that viewer serves it
  from InNetworkSource; new post -> the retrieval corpus: the same for a viewer who does not follow the author,
  served from FreshSource (the fresh-post source: the out-of-network path for posts newer than the ANN index);
- POST /events throughput: sequential batches of 1 and of 100 engagements on one keep-alive connection, events/s
  and each batch's latency.

What runs is the served champion variant (artifacts/deploy/variants.yaml, else serving/variants.yaml, of the world
served) with `events` on, the exposure log, the fresh feed's served sets, the applied event ids and the Feast online
store all in a temporary directory (a copy of the world's Feast repo and registry, materialized there, or into a
Redis database of its own that is flushed before and after): the repository's logs/ and data/feast stay untouched.
Beside the champion ("served": engagements and throughput) runs a "probe" variant of the same models that serves
every candidate surviving the filters (small sources, a wide selector, no author cap, k 200, as the tests do), so
whether a new post was retrieved is read from the slate itself; users are split between them by the A/B hash.

The world is the repository's when `dvc repro` has built it (artifacts/ranker/best, artifacts/index, the Feast
registry), else a nano world built in a temporary directory the way the tests build theirs (tests/project.py:
nano synthetic scale and presets, `dvc repro build_index train_ranker`): the rows say which. A post's creation time
is the served world's clock (`as_of`) minus a minute: a post from the wall clock would be in that world's future.

`python -m bench.events [--repeats N] [--stores sqlite,redis] [--world DIR]` measures and writes
bench/results/events.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.harness import Row, save
from bench.load import start_server
from core.errors import UserError
from serving.smoke import stop_group

GROUP = "events"
CMD = "python -m bench.events"
REPO = Path(__file__).resolve().parents[1]
REDIS_DB = 13  # a database of its own (the tests use 14), flushed before and after
TARGET_ENGAGEMENT_S = 1.0
HISTORY_CAP = 128  # features/live.py EventsSettings.history_length: a longer history does not grow
VISIBLE_WITHIN_S = 5.0  # a change not visible by then counts as not visible (the delay is then infinite)
PATH_KEYS = ("retrieval_model", "index", "ranker", "features", "sqlite_path")
PROBE = {"retrieval_max_results": 20, "in_network_max_results": 20, "top_k": 200, "author_cap": 200}
PROBE_K = 200
SERVED_K = 20


# The world and its stores ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """A built project: its root (artifacts/, data/, features/repo) and how it was made, for the rows."""

    root: Path
    label: str

    @property
    def served_config(self) -> Path:
        """What `make run` serves there (flows/deploy.py), else the hand-written variants."""
        deployed = self.root / "artifacts" / "deploy" / "variants.yaml"
        return deployed if deployed.is_file() else self.root / "serving" / "variants.yaml"


def is_built(root: Path) -> bool:
    """Whether `dvc repro` has built what the served champion needs under `root`."""
    need = ("artifacts/ranker/best", "artifacts/retrieval/best", "artifacts/index", "data/features")
    return all((root / p).exists() for p in need) and (root / "data" / "feast" / "registry.db").is_file()


def _tools_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DO_NOT_TRACK": "1"}


def _run(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, env=_tools_env(), capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{' '.join(argv)} (in {cwd}) exited {done.returncode}: {tail[0]}")


def build_nano(root: Path) -> World:
    """A nano copy of the project with trained models and an index, built as tests/serving/test_events.py does."""
    from tests.project import nano_project

    start = time.perf_counter()
    nano_project(root)
    _run(["dvc", "repro", "build_index", "train_ranker"], root)
    took = time.perf_counter() - start
    return World(root, f"a nano world built for the run (tests/project.py presets; {took:.0f} s)")


def pick_world(arg: Path | None, tmp: Path) -> World:
    """--world, else the repository when built, else a nano world under `tmp`."""
    if arg is not None:
        if not is_built(arg):
            raise UserError(f"--world {arg}: not built (needs artifacts/ranker/best, artifacts/index, the registry)")
        return World(arg.resolve(), f"the world at {arg}")
    if is_built(REPO):
        return World(REPO, "the repository's world (dvc repro)")
    return build_nano(tmp / "world")


def feast_copy(world: World, dest: Path) -> Path:
    """A copy of the world's Feast repo under `dest`, applied there (`ember features apply`: a registry of its own,
    beside a link to the world's offline features, which it reads): events and materialization write under `dest`.
    Not a copy of the world's registry: that one records the world's materialization, so an incremental load into a
    new store would load nothing. Returns the copied repo."""
    repo = dest / "features" / "repo"
    shutil.copytree(world.root / "features" / "repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "data" / "feast").mkdir(parents=True)
    (dest / "data" / "features").symlink_to(world.root / "data" / "features")
    _run(["ember", "features", "apply", "--repo", str(repo)], world.root)
    return repo


def redis_address(db: int = REDIS_DB) -> str:
    return f"127.0.0.1:6379,db={db}"


def flush_redis(db: int = REDIS_DB) -> None:
    import redis

    try:
        redis.Redis(db=db, socket_connect_timeout=1.0).flushdb()
    except redis.ConnectionError:
        raise UserError("Redis is not running on 127.0.0.1:6379 (or pass --stores sqlite)") from None


def materialize(world: World, repo: Path, store: str) -> float:
    """`ember features materialize` into the copied repo's store (SQLite file or the Redis database); seconds."""
    argv = ["ember", "features", "materialize", "--repo", str(repo), "--online-store", store]
    if store == "redis":
        argv += ["--redis", redis_address()]
    start = time.perf_counter()
    _run(argv, world.root)
    return time.perf_counter() - start


# The served config -------------------------------------------------------------------------------------------------


def champion_params(config: Path, root: Path) -> tuple[str, dict[str, Any]]:
    """(salt, the champion variant's pipeline params) of a variants config, its paths made absolute under `root`."""
    from serving.ab import load_config

    cfg = load_config(config)
    body = yaml.safe_load(config.read_text())
    variant = next(v for v in body["variants"] if v["name"] == cfg.champion)
    if variant["recommender"].get("kind") != "pipeline":
        raise UserError(f"{config}: the champion {cfg.champion!r} is not a pipeline variant")
    params = dict(variant["recommender"]["params"])
    for key in PATH_KEYS:
        if params.get(key) is not None and not Path(params[key]).is_absolute():
            params[key] = str(root / params[key])
    return str(body.get("salt", "ember-ab-1")), params


def bench_config(
    salt: str, params: dict[str, Any], store: str, feast_repo: Path, work: Path, fresh_feed: dict[str, Any] | None
) -> dict[str, Any]:
    """The config served: the champion ("served") and its candidate-exposing twin ("probe"), half the users each,
    reading and writing the store under `work` (or Redis database REDIS_DB), events on, no shadow."""
    online: dict[str, Any] = (
        {"online_store": "redis", "redis": redis_address()}
        if store == "redis"
        else {"online_store": "sqlite", "sqlite_path": str(work / "data" / "feast" / "online.db")}
    )
    served = {k: v for k, v in params.items() if k not in ("online_store", "sqlite_path", "redis")} | online
    variants = [
        {"name": "served", "share": 0.5, "recommender": {"kind": "pipeline", "params": served}},
        {"name": "probe", "share": 0.5, "recommender": {"kind": "pipeline", "params": served | PROBE}},
    ]
    body: dict[str, Any] = {
        "salt": salt,
        "variants": variants,
        "shadow": None,
        "exposure": {"path": str(work / "exposure.jsonl"), "max_bytes": 1 << 26, "max_files": 2},
        "events": {
            "store": store,
            "feast_repo": str(feast_repo),
            "redis": redis_address(),
            "seen_path": str(work / "events.db"),
        },
    }
    if fresh_feed:
        body["fresh_feed"] = dict(fresh_feed) | {"sqlite_path": str(work / "served.db")}
    return body


# Reading what the server did ---------------------------------------------------------------------------------------


@dataclass
class ExposureIndex:
    """The exposure records of one server by request id, read incrementally from its exposure.jsonl (written off the
    response path, so a record may lag its answer by a few milliseconds)."""

    path: Path
    _offset: int = 0
    _tail: bytes = b""
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._tail + data).split(b"\n")
        self._tail = lines.pop()  # an unfinished last line waits for the rest
        for line in lines:
            if line.strip():
                record = json.loads(line)
                if record.get("kind") == "exposure":
                    self.records[record["request_id"]] = record

    def features(self, request_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The user features the request read; raises when its record does not appear within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if request_id in self.records:
                return dict(self.records[request_id].get("features") or {})
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.path}: no exposure record for request {request_id}")
            time.sleep(0.002)


class Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        payload = resp.read()
        try:
            return resp.status, json.loads(payload)
        except ValueError:
            return resp.status, payload.decode(errors="replace")

    def recommend(self, user_id: int, k: int) -> dict[str, Any]:
        status, body = self.post("/recommend", {"user_id": user_id, "k": k})
        if status != 200:
            raise RuntimeError(f"POST /recommend user {user_id}: {status} {body}")
        return dict(body)

    def events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        status, body = self.post("/events", {"events": events})
        if status != 200:
            raise RuntimeError(f"POST /events: {status} {body}")
        return dict(body)

    def close(self) -> None:
        self.conn.close()


def first_visible(
    t0: float, ask: Callable[[], tuple[float, bool]], within_s: float = VISIBLE_WITHIN_S
) -> tuple[float, int]:
    """Asks (each call one request, returning when its answer came and whether it showed the change) until an answer
    shows it: (seconds from t0 to that answer, requests asked). (inf, n) when none did within `within_s`."""
    asked = 0
    while True:
        done, seen = ask()
        asked += 1
        if seen:
            return done - t0, asked
        if done - t0 > within_s:
            return math.inf, asked


def stats_s(values: list[float]) -> tuple[float, float]:
    """(median, p99) in seconds; inf when any value is inf (a change never seen)."""
    if any(math.isinf(v) for v in values):
        return (math.inf if np.median(values) == math.inf else float(np.median(values))), math.inf
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def ms(v: float) -> str:
    return "never" if math.isinf(v) else f"{v * 1000:.1f} ms"


# The measurements --------------------------------------------------------------------------------------------------


@dataclass
class Users:
    """Users of each variant: (user, hist_length) with room in their history; (follower, author, other) triples."""

    engagers: list[tuple[int, int]]
    posts: list[tuple[int, int, int]]


@dataclass(frozen=True)
class Viewer:
    """A probe user's graph: the authors followed, and those muted or blocked (whose posts are filtered)."""

    user_id: int
    followees: frozenset[int]
    hidden: frozenset[int]


def post_viewers(viewers: list[Viewer]) -> list[tuple[int, int, int]]:
    """(follower, author, other) per viewer that follows an author it has not muted or blocked (the social-graph
    filter drops such a post, rightly), with another viewer that neither follows nor hides that author."""
    triples: list[tuple[int, int, int]] = []
    for v in viewers:
        for author in sorted(v.followees - v.hidden - {v.user_id}):
            other = next(
                (
                    o.user_id
                    for o in viewers
                    if o.user_id not in (v.user_id, author) and author not in o.followees | o.hidden
                ),
                None,
            )
            if other is not None:
                triples.append((v.user_id, author, other))
                break
    return triples


def pick_users(client: Client, exposures: ExposureIndex, reader: Any, repeats: int, limit: int = 2000) -> Users:
    """Reads the world's users from the materialized store (an OnlineFeatures reader) and asks the server which
    variant each is in: engagers of "served" whose history has room for their share of the repeats,
    and for "probe" the (follower, author, other) triples of post_viewers."""
    engagers: list[tuple[int, int]] = []
    probes: list[Viewer] = []
    want = 25
    for user_id in range(1, limit):
        u = reader.user(user_id)
        length = int(u.history["hist_length"])
        answer = client.recommend(user_id, 1)
        if answer["variant"] == "served" and length > 0 and len(engagers) < want:
            engagers.append((user_id, int(exposures.features(answer["request_id"])["hist_length"])))
        elif answer["variant"] == "probe" and len(probes) < 2 * want:
            hidden = frozenset(int(a) for k in ("muted_author_ids", "blocked_author_ids") for a in u.graph[k])
            probes.append(Viewer(user_id, frozenset(int(a) for a in u.graph["followee_ids"]), hidden))
        if len(engagers) >= want and len(probes) >= 2 * want:
            break
    room = math.ceil(repeats / max(len(engagers), 1))
    engagers = [(u, h) for u, h in engagers if h + room < HISTORY_CAP]
    posts = post_viewers(probes)
    if not engagers or not posts:
        raise UserError("too few users with history room and followees in this world")
    return Users(engagers, posts)


def engagement_delays(client: Client, exposures: ExposureIndex, users: Users, repeats: int) -> tuple[list[float], int]:
    """Per repeat: one engagement (wall-clock time) for a "served" user, then /recommend (k 20) for that user until
    an answer's request read hist_length + 1. Returns the delays and how many were seen by the very next request."""
    lengths = dict(users.engagers)
    order = [u for u, _ in users.engagers]
    delays: list[float] = []
    next_request = 0
    for i in range(repeats):
        user_id = order[i % len(order)]
        event = {"type": "engagement", "event_id": uuid.uuid4().hex, "user_id": user_id, "post_id": 9_000_000 + i,
                 "author_id": 5, "actions": ["click", "like"]}  # fmt: skip
        expected = lengths[user_id] + 1

        def ask(uid: int = user_id, want: int = expected) -> tuple[float, bool]:
            answer = client.recommend(uid, SERVED_K)
            done = time.perf_counter()
            return done, int(exposures.features(answer["request_id"])["hist_length"]) >= want

        t0 = time.perf_counter()
        result = client.events([event])
        if result["applied"] != 1:
            raise RuntimeError(f"engagement not applied: {result}")
        delay, asked = first_visible(t0, ask)
        delays.append(delay)
        next_request += asked == 1 and not math.isinf(delay)
        lengths[user_id] = expected
    return delays, next_request


def post_delays(client: Client, users: Users, repeats: int, as_of_ms: int, in_network: bool) -> tuple[list[float], int]:
    """Per repeat: one new post by `author`, then /recommend (k 200, probe) for its follower until the slate serves it
    from InNetworkSource (in_network), or for a user who does not follow the author until it is served from
    FreshSource. Returns the delays and how many were seen by the very next request."""
    delays: list[float] = []
    next_request = 0
    base = 8_000_000 + (0 if in_network else 500_000)
    want = "InNetworkSource" if in_network else "FreshSource"
    for i in range(repeats):
        follower, author, other = users.posts[i % len(users.posts)]
        viewer = follower if in_network else other
        post_id = base + i
        event = {"type": "post", "event_id": uuid.uuid4().hex, "post_id": post_id, "author_id": author,
                 "ts_ms": as_of_ms - 60_000 + i}  # fmt: skip

        def ask(uid: int = viewer, pid: int = post_id) -> tuple[float, bool]:
            answer = client.recommend(uid, PROBE_K)
            done = time.perf_counter()
            return done, any(it["post_id"] == pid and it["source"] == want for it in answer["items"])

        t0 = time.perf_counter()
        result = client.events([event])
        if result["applied"] != 1:
            raise RuntimeError(f"post not applied: {result}")
        delay, asked = first_visible(t0, ask)
        delays.append(delay)
        next_request += asked == 1 and not math.isinf(delay)
    return delays, next_request


def throughput(client: Client, batch: int, events: int, seed: int) -> tuple[list[float], float]:
    """Sequential batches of `batch` engagements (random users 1..200, new post ids) on one connection: each
    batch's latency (s) and the events/s over the whole run."""
    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    n_batches = max(events // batch, 1)
    start = time.perf_counter()
    for b in range(n_batches):
        body = [
            {
                "type": "engagement",
                "event_id": uuid.uuid4().hex,
                "user_id": int(u),
                "post_id": 7_000_000 + b,
                "author_id": 5,
                "actions": ["click"],
            }  # fmt: skip
            for u in rng.integers(1, 201, batch)
        ]
        t = time.perf_counter()
        result = client.events(body)
        latencies.append(time.perf_counter() - t)
        if result["applied"] != batch:
            raise RuntimeError(f"batch of {batch}: {result}")
    return latencies, n_batches * batch / (time.perf_counter() - start)


# Rows --------------------------------------------------------------------------------------------------------------


def engagement_row(store: str, delays: list[float], next_request: int, settings: str) -> Row:
    """The engagement row: met when the p99 delay is within TARGET_ENGAGEMENT_S (every change seen)."""
    p50, p99 = stats_s(delays)
    n = len(delays)
    met = p99 <= TARGET_ENGAGEMENT_S
    ratio = "never seen" if math.isinf(p99) else f"{p99 / TARGET_ENGAGEMENT_S:.2f}x of target"
    return Row(
        GROUP,
        f"engagement -> the next /recommend's history ({store})",
        CMD,
        settings,
        n,
        round(p50, 4),
        round(p99, 4),
        0.0,
        throughput=f"median {ms(p50)}, p99 {ms(p99)}; {next_request}/{n} seen by the very next request",
        target=f"p99 <= {TARGET_ENGAGEMENT_S:g} s",
        verdict=f"{'met' if met else 'missed'}: {ratio}; {next_request}/{n} at the next request",
        extra={"store": store, "delays_s": [round(d, 5) for d in delays], "next_request": next_request},
    )


def post_row(store: str, in_network: bool, delays: list[float], next_request: int, settings: str) -> Row:
    """A new-post row. The bound the code promises (serving/events.py, serving/sources/fresh.py): the post joins the
    in-network store and the fresh-post source before POST /events answers, so the next request can serve it."""
    p50, p99 = stats_s(delays)
    n = len(delays)
    where = "in-network store (InNetworkSource)" if in_network else "retrieval corpus (FreshSource)"
    bound = (
        "bounded: at once, i.e. the next request (the post joins the in-network store before POST /events answers)"
        if in_network
        else "bounded: at once, i.e. the next request (FreshSource before POST /events answers; offered while within "
        "max_age 48 h and among the newest fresh_max_results 100; the ANN index only at the next daily build)"
    )
    met = next_request == n
    return Row(
        GROUP,
        f"new post -> {where} ({store})",
        CMD,
        settings,
        n,
        round(p50, 4),
        round(p99, 4),
        0.0,
        throughput=f"median {ms(p50)}, p99 {ms(p99)}; {next_request}/{n} served by the very next request",
        target=bound,
        verdict=f"{'met' if met else 'missed'}: {next_request}/{n} served by the next request, p99 {ms(p99)}",
        extra={"store": store, "delays_s": [round(d, 5) for d in delays], "next_request": next_request},
    )


def throughput_row(store: str, batch: int, latencies: list[float], rate: float, settings: str) -> Row:
    p50, p99 = stats_s(latencies)
    return Row(
        GROUP,
        f"POST /events throughput, batch {batch} ({store})",
        CMD,
        settings,
        len(latencies),
        round(p50, 4),
        round(p99, 4),
        0.0,
        throughput=f"{rate:.0f} events/s; batch latency median {ms(p50)}, p99 {ms(p99)}",
        extra={"store": store, "batch": batch, "events_per_s": rate},
    )


# The run -----------------------------------------------------------------------------------------------------------


@contextmanager
def served(world: World, store: str, tmp: Path) -> Iterator[tuple[int, Any, str]]:
    """`ember serve` over `store`, everything it writes under tmp/<store> (or Redis database REDIS_DB): (port, a
    reader of that store, a note for the rows)."""
    from features.online import OnlineFeatures
    from features.store import StoreConfig, online_backend

    work = tmp / store
    work.mkdir()
    repo = feast_copy(world, work)
    if store == "redis":
        flush_redis()
    took = materialize(world, repo, store)
    note = f"{'Redis db ' + str(REDIS_DB) if store == 'redis' else 'a SQLite file'} materialized in {took:.1f} s"
    reader = OnlineFeatures(online_backend(StoreConfig(repo=repo, online_store=store, redis=redis_address())))
    salt, params = champion_params(world.served_config, world.root)
    fresh = (yaml.safe_load(world.served_config.read_text()) or {}).get("fresh_feed")
    config = work / "bench-variants.yaml"
    config.write_text(yaml.safe_dump(bench_config(salt, params, store, repo, work, fresh)))
    try:
        proc, url, ready_s = start_server(config, work)
    except BaseException:
        tail = (work / "serve.log").read_text(errors="replace").splitlines()[-15:]
        print("\n".join(["ember serve did not get ready; the end of its log:", *tail]), file=sys.stderr)
        raise
    try:
        yield int(url.rsplit(":", 1)[1]), reader, f"{note}, ready in {ready_s:.1f} s"
    finally:
        stop_group(proc)
        if store == "redis":
            flush_redis()


def as_of_ms(world: World, params: dict[str, Any]) -> int:
    """The served world's clock (the champion's as_of) in epoch milliseconds; the wall clock when it has none."""
    from serving.recommender_config import RecommenderConfig

    now = RecommenderConfig.from_dict(params).now_at()
    return int((now or datetime.now().astimezone()).timestamp() * 1000)


def measure_store(world: World, store: str, tmp: Path, repeats: int, models: str) -> list[Row]:
    rows: list[Row] = []
    with served(world, store, tmp) as (port, reader, note):
        client = Client(port)
        exposures = ExposureIndex(tmp / store / "exposure.jsonl")
        try:
            users = pick_users(client, exposures, reader, repeats)
            _, params = champion_params(world.served_config, world.root)
            clock = as_of_ms(world, params)
            settings = (
                f"ember serve over HTTP, {store} online store ({note}), events on; {world.label}; "
                f"config {world.served_config.relative_to(world.root)} of that world: {models}"
            )
            delays, nxt = engagement_delays(client, exposures, users, repeats)
            each = f"variant served, k {SERVED_K}, {len(users.engagers)} users round-robin, one engagement a batch"
            rows.append(engagement_row(store, delays, nxt, f"{settings}; {each}"))
            for in_network in (True, False):
                delays, nxt = post_delays(client, users, repeats, clock, in_network)
                probe = f"{settings}; variant probe ({PROBE}, k {PROBE_K}), post time as_of - 60 s"
                rows.append(post_row(store, in_network, delays, nxt, probe))
            for batch, events in ((1, max(repeats * 4, 100)), (100, max(repeats * 40, 1000))):
                throughput(client, batch, min(events, 10 * batch), seed=batch)  # warm-up
                latencies, rate = throughput(client, batch, events, seed=batch + 1)
                run = (
                    f"{settings}; {events // batch} sequential batches of {batch} engagements, 1 keep-alive connection"
                )
                rows.append(throughput_row(store, batch, latencies, rate, run))
        finally:
            client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=60, help="repeats per delay measurement (>= 50 for a row)")
    parser.add_argument("--stores", default="sqlite,redis", help="online stores, comma-separated: sqlite, redis")
    parser.add_argument("--world", type=Path, default=None, help="a built project to serve (default: see above)")
    args = parser.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    bad = [s for s in stores if s not in ("sqlite", "redis")]
    if bad or not stores:
        raise SystemExit(f"--stores: sqlite and/or redis, got {args.stores!r}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats: must be >= 1, got {args.repeats}")
    from bench.serving import served_models

    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-events-") as name:
            tmp = Path(name)
            world = pick_world(args.world, tmp)
            models = served_models_at(world, served_models)
            for store in stores:
                rows += measure_store(world, store, tmp, args.repeats, models)
    except UserError as err:
        raise SystemExit(f"bench.events: {err}") from None
    print(save(GROUP, rows))


def served_models_at(world: World, describe: Callable[[Any], str]) -> str:
    """bench.serving's description of the champion's models, for the world served."""
    from serving.recommender_config import RecommenderConfig

    _, params = champion_params(world.served_config, world.root)
    cfg = RecommenderConfig.from_dict(params)
    return describe(cfg).replace(str(world.root) + "/", "")


if __name__ == "__main__":
    main()
