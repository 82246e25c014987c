"""A simulated day served through the real BentoML service over HTTP (`ember simulate --http`).

The day's variants config is the deployment's (artifacts/deploy/variants.yaml) with the champion's params set to the
day's (paths, store and `as_of` from flows/simulate.deployed_params), written under the day's work folder with the
service's exposure log beside it. `ember serve` starts on a free local port; the posts of the 48 h before the day
that the champion's index lacks arrive as POST /events "post" events (how a live service learns of a new post:
the online store gets a zero-count post_stats row, every variant's fresh-post source offers it); then every request
is a POST /recommend on one keep-alive connection, in the day's order. The service is stopped (its shutdown hook
writes the exposure log out) and each request's items and user features are read back from its own exposure log by
request id: what the rest of the simulation turns into the next day's data is exactly what the service logged.

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
    config: dict[str, Any], requests: Any, k: int, posts: list[dict[str, Any]], workdir: Path, cwd: Path
) -> HttpDay:
    """Starts `ember serve` with `config` (`day_config`), sends `posts` as events, serves every request (rows with
    user_id, surface), stops the service and reads back what it logged.

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
            events = post_events(posts)
            for i in range(0, len(events), MAX_EVENTS):
                client.post("/events", {"events": events[i : i + MAX_EVENTS]})
            for r in requests.itertuples(index=False):
                body = {"user_id": int(r.user_id), "k": k, "surface": int(r.surface)}
                request_ids.append(client.post("/recommend", body)["request_id"])
        finally:
            client.close()
    finally:
        stop_group(proc)  # SIGTERM: the service's shutdown hook writes the rest of the exposure log
    return _read_back(workdir / "exposure.jsonl", request_ids, len(posts))


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
