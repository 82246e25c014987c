"""A simulated day served through the real BentoML service over HTTP (`ember simulate --http`).

The day's variants config is the deployment's (artifacts/deploy/variants.yaml) with the champion's params set to the
day's (paths, store and `as_of` from flows/simulate.deployed_params), written under the day's work folder with the
service's exposure log beside it. `ember serve` starts on a free local port; the posts of the 48 h before the day
that the champion's index lacks arrive as POST /events "post" events (how a live service learns of a new post:
the online store gets a zero-count post_stats row, every variant's fresh-post source offers it); then every request
is a POST /recommend on one keep-alive connection, in the day's order. The service is stopped (its shutdown hook
writes the exposure log out) and each request's items and user features are read back from its own exposure log by
request id: what the rest of the simulation turns into the next day's data is exactly what the service logged.

Served live (`--live-hours`, as in-process: monitoring/simulate_live.py), the requests go block by block and each
block's drawn engagements reach the service as POST /events "engagement" events before the next block, so the
service's own push path puts them in the users' histories.

Differences from the in-process path, by design of the service's API: a request carries no time, so the day is
served at the variant's fixed `as_of` (the day's start) rather than at each request's own time; the fresh feed and
the shadow variant are off (the in-process path passes no seen set and runs no shadow).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError
from serving.smoke import free_port, stop_group, wait_ready

MAX_EVENTS = 1000  # serving.events.MAX_EVENTS: the service refuses a larger batch
ITEM_KEYS = ("post_id", "score", "source", "actions", "propensity", "inclusion", "rank")


@dataclass(frozen=True)
class HttpDay:
    """What the service served one day: per request, the exposure-log items and the user features it read."""

    version: str
    items: list[list[dict[str, Any]]]
    features: list[dict[str, Any]]
    posts_sent: int
    outcomes: Any = None  # the users' drawn actions on the slates when served live (a DataFrame), else None
    engagements_sent: int = 0


PATH_KEYS = ("stats", "retrieval_model", "index", "ranker", "features", "sqlite_path")  # a variant's file inputs


def day_config(
    project: Path, deployed: Path, params: dict[str, Any], workdir: Path, events_repo: Path | None
) -> dict[str, Any]:
    """The deployment's variants config with the champion serving `params`, every other variant's relative paths
    taken under `project` (the service resolves them against the code's repository), its exposure log under
    `workdir`, no shadow and no fresh feed; POST /events on (SQLite, `events_repo`'s Feast store) when given."""
    body = yaml.safe_load(deployed.read_text())
    champion = body.get("champion") or body["variants"][0]["name"]
    for variant in body["variants"]:
        recommender = variant["recommender"]
        if variant["name"] == champion:
            recommender["params"] = dict(params)
        for section in (recommender, recommender.get("params") or {}):
            for key in PATH_KEYS:
                value = section.get(key)
                if isinstance(value, str) and not Path(value).is_absolute():
                    section[key] = str(project / value)
    body.pop("shadow", None)
    body["exposure"] = {"path": str(workdir / "exposure.jsonl"), "max_bytes": 1 << 34, "max_files": 1}
    body["fresh_feed"] = {"store": "off"}
    if events_repo is not None:
        body["events"] = {"store": "sqlite", "feast_repo": str(events_repo), "seen_path": str(workdir / "events.db")}
    return body


def engagement_events(engagements: Iterable[Any]) -> list[dict[str, Any]]:
    """POST /events "engagement" events, one per features.store.Engagement (a user engages with a post once per
    request: user, post and time name it)."""
    from core.actions import ACTION_NAMES

    out = []
    for e in engagements:
        ts_ms = int(e.ts.timestamp() * 1000)
        out.append(
            {
                "type": "engagement",
                "event_id": f"sim-eng-{e.user_id}-{e.post_id}-{ts_ms}",
                "user_id": e.user_id,
                "post_id": e.post_id,
                "author_id": e.author_id,
                "surface": e.surface,
                "ts_ms": ts_ms,
                "actions": [a for bit, a in enumerate(ACTION_NAMES) if e.actions >> bit & 1],
            }
        )
    return out  # fmt: skip


def post_events(posts: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST /events "post" events: one per {post_id, author_id, topic, media_type, created_ms}."""
    return [
        {"type": "post", "event_id": f"sim-post-{p['post_id']}", "post_id": int(p["post_id"]),
         "author_id": int(p["author_id"]), "topic": int(p["topic"]), "media_type": str(p["media_type"]),
         "ts_ms": int(p["created_ms"])}
        for p in posts
    ]  # fmt: skip


class _Client:
    """JSON over one keep-alive HTTP connection; a non-200 answer is an error naming the path and the body."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        text = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status}: {text[:300]}")
        out: dict[str, Any] = json.loads(text)
        return out

    def close(self) -> None:
        self.conn.close()


def serve_day_http(
    config: dict[str, Any], requests: Any, k: int, posts: list[dict[str, Any]], workdir: Path, cwd: Path,
    live: Any = None,
) -> HttpDay:  # fmt: skip
    """Starts `ember serve` with `config` (`day_config`), sends `posts` as events, serves every request (rows with
    user_id, surface), stops the service and reads back what it logged. With `live` (a
    monitoring.simulate_live.LiveHours), the requests go block by block: after each, the users' actions on the
    block's slates are drawn and sent as POST /events engagements, and the hourly materialize runs.

    Raises:
        UserError: the service did not start (its log's path in the message).
        RuntimeError: a request was not answered 200 (its path, status and body), or an answered request is
            missing from the exposure log.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "variants.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, BENTOML_HOME=str(workdir / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    port = free_port()
    ember = str(Path(sys.executable).parent / "ember")
    with (workdir / "serve.log").open("wb") as log:
        proc = subprocess.Popen([ember, "serve", "--port", str(port), "--config", str(path)], cwd=cwd, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    request_ids: list[str] = []
    try:
        try:
            wait_ready(url, proc, 300)
        except SystemExit as err:  # wait_ready's way of saying it never became ready
            tail = (workdir / "serve.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise UserError(f"ember serve did not start for the day: {err}; {workdir / 'serve.log'} ends: "
                            + " | ".join(tail)) from None  # fmt: skip
        client = _Client(url)
        try:
            _send(client, post_events(posts))
            if live is None:
                for r in requests.itertuples(index=False):
                    request_ids.append(_recommend(client, r, k)[0])
            else:
                outcomes, sent = _serve_live(client, requests, k, live, request_ids)
        finally:
            client.close()
    finally:
        stop_group(proc)  # SIGTERM: the service's shutdown hook writes the rest of the exposure log
    day = _read_back(workdir / "exposure.jsonl", request_ids, len(posts))
    if live is None:
        return day
    return HttpDay(day.version, day.items, day.features, day.posts_sent, outcomes, sent)


def _send(client: _Client, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), MAX_EVENTS):
        client.post("/events", {"events": events[i : i + MAX_EVENTS]})


def _recommend(client: _Client, r: Any, k: int) -> tuple[str, list[int]]:
    """One POST /recommend: (its request id, the post ids it served in order)."""
    answer = client.post("/recommend", {"user_id": int(r.user_id), "k": k, "surface": int(r.surface)})
    return answer["request_id"], [int(i["post_id"]) for i in answer.get("items", [])]


def _serve_live(client: _Client, requests: Any, k: int, live: Any, request_ids: list[str]) -> tuple[Any, int]:
    """The requests block by block (`live.blocks`), each block's drawn engagements sent as events after it and the
    materialize run; returns (the drawn outcomes of every block, keyed by the simulation's request ids as the rest
    of the day reads them, and the engagements sent)."""
    import pandas as pd

    n_blocks, block_of = live.blocks(requests)
    outcomes, sent = [], 0
    for block in range(n_blocks):
        part = requests[block_of == block]
        if len(part):
            answered = [_recommend(client, r, k) for r in part.itertuples(index=False)]
            request_ids += [rid for rid, _ in answered]
            drawn, engagements = live.draw_block(block, part, [slate for _, slate in answered])
            events = engagement_events(engagements)
            _send(client, events)
            sent += len(events)
            outcomes.append(drawn)
        if live.materialize is not None:
            live.materialize()
            live.materializations += 1
    return (pd.concat(outcomes, ignore_index=True) if outcomes else pd.DataFrame()), sent


def _read_back(log: Path, request_ids: list[str], posts_sent: int) -> HttpDay:
    """Each answered request's exposure record, in request order."""
    records: dict[str, dict[str, Any]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record.get("kind") == "exposure":
                records[record["request_id"]] = record
    missing = [r for r in request_ids if r not in records]
    if missing:
        raise RuntimeError(f"{log}: {len(missing)} of {len(request_ids)} answered requests are not in the exposure "
                           f"log (first {missing[0]})")  # fmt: skip
    ordered = [records[r] for r in request_ids]
    items = [[{key: item[key] for key in ITEM_KEYS if key in item} for item in rec["items"]] for rec in ordered]
    version = ordered[0]["version"] if ordered else ""
    return HttpDay(version, items, [dict(rec.get("features") or {}) for rec in ordered], posts_sent)
