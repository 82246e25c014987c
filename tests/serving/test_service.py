"""The HTTP service over real HTTP: `ember serve` in a subprocess on a free port, two popular variants, a shadow.

One server serves the whole module (a start takes a few seconds); the stickiness test starts two more.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from monitoring.ab_report import BLEND
from serving.ab import assign, parse_config
from serving.smoke import free_port, stop_group

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
USERS = range(1, 41)

# Control ranks posts 1, 2, ..., 30; treatment has the same top 10 in reverse (10, 9, ..., 1), then 11..30: at k=10
# the shadow comparison sees full overlap and opposite orders.
CONTROL = {p: (100 + p, float(100 - p)) for p in range(1, 31)}
TREATMENT = {p: (100 + p, float(p) if p <= 10 else float(-p)) for p in range(1, 31)}


def _config(exposure: Path) -> dict[str, Any]:
    return {
        "salt": "test-salt",
        "variants": [
            {"name": "control", "share": 0.5, "recommender": {"kind": "popular", "table": CONTROL}},
            {"name": "treatment", "share": 0.5, "recommender": {"kind": "popular", "table": TREATMENT}},
        ],
        "shadow": {"variant": "treatment", "share": 1.0},
        "exposure": {"path": str(exposure), "max_bytes": 4096, "max_files": 3},
    }


@dataclass(frozen=True)
class Server:
    url: str
    exposure: Path
    startup_s: float
    http: httpx.Client  # keep-alive: a fresh connection per request costs more than the request


@contextmanager
def running(root: Path, name: str, extra: dict[str, Any] | None = None) -> Iterator[Server]:
    """`ember serve` with a fresh config under `root` (plus `extra` top-level keys), until /readyz answers 200;
    stopped (its process group) after."""
    exposure = root / name / "exposure.jsonl"
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**_config(exposure), **(extra or {})}))
    port = free_port()
    # Its own BENTOML_HOME: every `bentoml serve` wipes $BENTOML_HOME/prometheus_multiproc_dir when it starts, so two
    # servers sharing one lose each other's metrics.
    env = dict(
        os.environ, EMBER_ADMIN_TOKEN=TOKEN, BENTOML_DO_NOT_TRACK="true", BENTOML_HOME=str(root / f"{name}-bentoml")
    )
    out = (root / f"{name}.log").open("wb")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it stops BentoML's workers too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ember serve exited {proc.returncode}: {(root / f'{name}.log').read_text()[-3000:]}")
            if time.perf_counter() - start > 120:
                pytest.fail(f"ember serve not ready after 120 s: {(root / f'{name}.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=10) as http:
            yield Server(url, exposure, time.perf_counter() - start, http)
    finally:
        stop_group(proc)
        out.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("service"), "main") as s:
        yield s


def _post(server: Server, path: str, body: Any, **kw: Any) -> httpx.Response:
    return server.http.post(path, json=body, **kw)


def _variants_of(server: Server) -> dict[int, str]:
    return {u: _post(server, "/recommend", {"user_id": u, "k": 1}).json()["variant"] for u in USERS}


def test_starts_in_reasonable_time(server: Server) -> None:
    assert server.startup_s < 60, server.startup_s
    assert server.http.get("/healthz").status_code == 200


def test_recommend_returns_k_items(server: Server) -> None:
    r = _post(server, "/recommend", {"user_id": 7, "k": 5, "seen_ids": [1, 30]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"request_id", "variant", "degraded", "items"}
    assert body["variant"] in ("control", "treatment") and body["degraded"] is False
    assert len(body["items"]) == 5
    assert not {1, 30} & {i["post_id"] for i in body["items"]}
    assert set(body["items"][0]) == {"post_id", "author_id", "score", "source", "in_network", "actions", "propensity"}
    assert body["items"][0]["propensity"] is None  # a ranked slate claims no propensity
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_a_repeated_request_gets_a_fresh_slate(tmp_path: Path) -> None:
    served_db = tmp_path / "served" / "served.db"
    fresh = {"fresh_feed": {"store": "sqlite", "ttl_s": 3600, "sqlite_path": str(served_db)}}
    with running(tmp_path, "fresh", fresh) as s:
        slates = [
            [i["post_id"] for i in _post(s, "/recommend", {"user_id": 7, "k": 5}).json()["items"]] for _ in range(3)
        ]
        other = [i["post_id"] for i in _post(s, "/recommend", {"user_id": 8, "k": 5}).json()["items"]]
        # the client's seen_ids still apply on top of what was served
        fourth = _post(s, "/recommend", {"user_id": 7, "k": 5, "seen_ids": [16, 17]}).json()["items"]
    assert all(len(x) == 5 for x in slates)
    assert len(set(slates[0]) | set(slates[1]) | set(slates[2])) == 15, slates  # no post twice to user 7
    assert set(slates[0]) & set(other) or set(slates[1]) & set(other) or set(slates[2]) & set(other)  # per user
    assert not {16, 17} & {i["post_id"] for i in fourth}
    assert not set().union(*slates) & {i["post_id"] for i in fourth}
    import sqlite3

    with sqlite3.connect(served_db) as db:
        assert db.execute("SELECT count(*) FROM ember_served WHERE user_id = 7").fetchone()[0] == 20


def test_past_max_concurrency_requests_are_shed_with_a_503_and_retry_after(tmp_path: Path) -> None:
    """Load test: 16 clients at once against a limit of 1 in flight. Each answer is a 200 or a 503 with Retry-After
    and the JSON body; nothing else. Probes and /metrics are never shed; the counter adds up."""
    from concurrent.futures import ThreadPoolExecutor

    with running(tmp_path, "shed", {"limits": {"max_concurrency": 1, "retry_after_s": 2}}) as s:

        def client(user: int) -> list[httpx.Response]:
            with httpx.Client(base_url=s.url, timeout=10) as http:
                return [http.post("/recommend", json={"user_id": user, "k": 10}) for _ in range(25)]

        with ThreadPoolExecutor(16) as pool:
            answers = [r for rs in pool.map(client, range(1, 17)) for r in rs]
            probes = [s.http.get(path).status_code for path in ("/readyz", "/livez", "/metrics") for _ in range(5)]
        shed = [r for r in answers if r.status_code == 503]
        assert {r.status_code for r in answers} <= {200, 503}
        assert shed and len(shed) < len(answers), f"{len(shed)} of {len(answers)} shed"
        assert all(r.headers["retry-after"] == "2" for r in shed)
        assert all(r.json()["field"] == "max_concurrency" and "busy" in r.json()["error"] for r in shed)
        assert all(len(r.json()["items"]) == 10 for r in answers if r.status_code == 200)
        assert set(probes) == {200}, probes
        metrics = s.http.get("/metrics").text
        counted = sum(float(v) for v in re.findall(r'^ember_requests_shed_total{path="/recommend"} ([0-9.]+)$',
                                                   metrics, flags=re.M))  # fmt: skip
        assert counted == len(shed)


def test_rank_answers_in_the_order_given(server: Server) -> None:
    r = _post(server, "/rank", {"user_id": 7, "post_ids": [5, 999, 2]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["post_id"] for i in body["items"]] == [5, 999, 2]
    assert set(body["items"][0]) == {"post_id", "score", "actions"}
    assert body["items"][1]["score"] == 0.0  # unknown to the popularity table


def test_variant_is_sticky_across_two_restarts(tmp_path: Path) -> None:
    expected = {u: assign(parse_config(_config(tmp_path / "x.jsonl")), u) for u in USERS}
    assert set(expected.values()) == {"control", "treatment"}
    for restart in ("first", "second"):
        with running(tmp_path, restart) as s:
            assert _variants_of(s) == expected, restart


_OVER_LIMIT = {"user_id": 1, "seen_ids": [1] * 600_000}  # 1.2 MB of JSON


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/recommend", {"k": 3}, 400, "user_id"),
        ("/recommend", {"user_id": 1, "k": 0}, 400, "k"),
        ("/recommend", {"user_id": 1, "k": 201}, 400, "k"),
        ("/recommend", {"user_id": "7"}, 400, "user_id"),
        ("/recommend", {"user_id": 1, "seen_ids": [1, "x"]}, 400, "seen_ids[1]"),
        ("/recommend", b"{not json", 400, "body"),
        ("/recommend", [1, 2], 400, "body"),
        ("/recommend", _OVER_LIMIT, 413, "body"),
        ("/rank", {"user_id": 1}, 400, "post_ids"),
        ("/rank", {"user_id": 1, "post_ids": []}, 400, "post_ids"),
        ("/rank", {"user_id": 1, "post_ids": list(range(1, 1002))}, 400, "post_ids"),
        ("/rank", {"post_ids": [1]}, 400, "user_id"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(server: Server, path: str, body: Any, status: int, field: str) -> None:
    if isinstance(body, bytes):
        r = server.http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = _post(server, path, body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.text
    assert r.json()["error"] and "Traceback" not in r.text


def test_chunked_body_over_the_limit_is_refused(server: Server) -> None:
    chunk = json.dumps({"user_id": 1, "seen_ids": [1] * 100_000}).encode()

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield chunk

    r = server.http.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_wrong_method_is_a_json_4xx(server: Server) -> None:
    r = server.http.get("/recommend")
    assert r.status_code == 405 and r.json()["field"] == "body"


def test_json_without_content_type_is_still_json(server: Server) -> None:
    # No Content-Type at all (and curl -d says form-urlencoded): the APIs read the body as JSON all the same.
    r = server.http.post("/recommend", content=b'{"user_id": 3, "k": 2}')
    assert r.status_code == 200 and len(r.json()["items"]) == 2


def test_admin_needs_the_bearer_token(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = server.http.get("/admin/variants", headers=headers)
        assert r.status_code == 401 and r.json()["field"] == "Authorization", (headers, r.text)
    r = server.http.post("/admin/promote", json={"variant": "treatment"})
    assert r.status_code == 401
    assert server.http.get("/admin/variants", headers=AUTH).json()["champion"] == "control"


def test_shares_promote_and_rollback_take_effect(server: Server) -> None:
    original = _variants_of(server)
    assert set(original.values()) == {"control", "treatment"}

    r = _post(server, "/admin/shares", {"control": 1.0, "treatment": 0.0}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert set(_variants_of(server).values()) == {"control"}

    r = _post(server, "/admin/promote", {"variant": "treatment"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["previous_champion"] == "control"
    assert set(_variants_of(server).values()) == {"treatment"}

    assert _post(server, "/admin/rollback", None, headers=AUTH).status_code == 200
    assert set(_variants_of(server).values()) == {"control"}
    assert _post(server, "/admin/rollback", None, headers=AUTH).status_code == 200
    assert _variants_of(server) == original
    r = _post(server, "/admin/rollback", None, headers=AUTH)
    assert r.status_code == 409 and r.json()["field"] == "history"

    bad = _post(server, "/admin/shares", {"control": 0.7}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["field"] == "variants", bad.text
    bad = _post(server, "/admin/shares", {"nobody": 1.0}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["field"] == "nobody", bad.text
    bad = _post(server, "/admin/promote", {"variant": "nobody"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["field"] == "variant", bad.text
    assert _variants_of(server) == original


def _log_records(server: Server) -> list[dict[str, Any]]:
    records = []
    for f in server.exposure.parent.glob("exposure.jsonl*"):
        records += [json.loads(line) for line in f.read_text().split("\n")[:-1]]  # finished lines: the server appends
    return records


def test_exposure_log_is_written_and_rotated(server: Server) -> None:
    served = [_post(server, "/recommend", {"user_id": u, "k": 10}).json() for u in range(100, 160)]
    rotated = ["exposure.jsonl", "exposure.jsonl.1", "exposure.jsonl.2"]  # rotated, capped at 3 files
    # The log is written off the request path (on a loaded box it lagged past 20 s), and shadow records may still be
    # rotating the files when the exposures are in: a rotation deletes the oldest file before it renames the others,
    # so a listing at that instant sees two. Wait for both the newest exposures and a settled directory.
    # The shadow runs in a process of its own, so its records trail the exposures (after a burst they can fill every
    # kept file): wait for the last control request's shadow record, then serve one more request and check its
    # exposure record.
    last_control = next(s["request_id"] for s in reversed(served) if s["variant"] == "control")

    def settle(done: Callable[[list[dict[str, Any]]], bool]) -> tuple[list[dict[str, Any]], list[str]]:
        deadline, names, records = time.monotonic() + 60, [], []
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):  # a file renamed between the glob and the read
                records = _log_records(server)
                names = sorted(p.name for p in server.exposure.parent.iterdir())
                if done(records) and names == rotated:
                    break
            time.sleep(0.2)
        return records, names

    records, names = settle(lambda rs: any(r["kind"] == "shadow" and r["request_id"] == last_control for r in rs))
    assert names == rotated
    shadows = [r for r in records if r["kind"] == "shadow"]
    newest = _post(server, "/recommend", {"user_id": 160, "k": 10}).json()
    records, names = settle(lambda rs: any(r["request_id"] == newest["request_id"] for r in rs))
    exposure = next(r for r in records if r["request_id"] == newest["request_id"] and r["kind"] == "exposure")
    for key in ("request_id", "user_id", "variant", "version", "items", "ts", "features", "degraded"):
        assert key in exposure
    assert exposure["variant"] == newest["variant"]
    assert [i["post_id"] for i in exposure["items"]] == [i["post_id"] for i in newest["items"]]
    assert set(exposure["items"][0]) >= {"post_id", "position", "score", "actions"}
    assert [i["actions"] for i in exposure["items"]] == [  # the served predictions, as logged for drift
        {a: round(p, 6) for a, p in i["actions"].items()} for i in newest["items"]
    ]
    assert shadows and all(r["served_variant"] == "control" for r in shadows)
    at_10 = [r["comparison"] for r in shadows if r["comparison"]["k"] == 10]
    assert at_10 and all(c["overlap"] == 1.0 and c["kendall"] == -1.0 and c["spearman"] == -1.0 for c in at_10)


def test_metrics_has_the_service_counters(server: Server) -> None:
    text = server.http.get("/metrics").text
    for needle in (
        'ember_requests_total{endpoint="recommend",variant="control"}',
        'ember_requests_total{endpoint="rank",',
        'ember_fallbacks_total{kind="error"}',
        "ember_exposure_records_dropped_total",
        'ember_shadow_runs_total{outcome="compared",variant="treatment"}',
        "ember_shadow_overlap_at_k_bucket",
        "ember_shadow_kendall_bucket",
    ):
        assert needle in text, needle


def test_openapi_lists_the_apis(server: Server) -> None:
    spec = server.http.get("/docs.json").json()
    assert {"/recommend", "/rank"} <= set(spec["paths"])
    assert "post" in spec["paths"]["/recommend"]


# In process (failures that cannot be provoked over HTTP) ------------------------------------------------------------


class _Broken:
    """A variant whose every call raises; `ready_flag` False plays one still loading."""

    version = "broken"

    def __init__(self, ready_flag: bool = True) -> None:
        self.ready_flag = ready_flag

    def ready(self) -> bool:
        return self.ready_flag

    def recommend(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("model exploded")

    def rank(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("model exploded")


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from serving.service import Ember

    config = tmp_path / "variants.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "logs" / "exposure.jsonl")))
    monkeypatch.setenv("EMBER_VARIANTS_CONFIG", str(config))
    instance = Ember()
    deadline = time.monotonic() + 60
    while not instance.__is_ready__() and time.monotonic() < deadline:  # the shadow process loads its variant
        time.sleep(0.1)
    yield instance
    instance._close()  # the shadow process and the exposure log


def test_a_failing_variant_falls_back_to_popular_degraded(service: Any) -> None:
    from serving.ab import Routing

    routing = service.router.routing
    service.router.routing = Routing(routing.config, {name: _Broken() for name in routing.recommenders})
    out = service.recommend(user_id=1, k=3)
    assert out.degraded and [i.post_id for i in out.items] == [1, 2, 3]  # the control table, the first popular variant
    ranked = service.rank(user_id=1, post_ids=[3, 1])
    assert ranked.degraded and [i.post_id for i in ranked.items] == [3, 1]
    assert 'ember_fallbacks_total{kind="error"} 2.0' in service.metrics.render()
    assert service.flush_logs()
    lines = [json.loads(x) for x in (service.exposure.path).read_text().splitlines()]
    assert [(r["degraded"], r["fallback"]) for r in lines if r["kind"] == "exposure"] == [(True, "error")] * 2


class _Exploring:
    """A variant that serves a randomised slate with its propensities."""

    version = "exploring"

    def ready(self) -> bool:
        return True

    def recommend(self, user_id: int, k: int, seen_ids: Any = frozenset(), surface: int = 0) -> Any:
        from serving.recommender import Item, Recommendation

        items = [Item(p, 100 + p, 1.0 / p, "s", propensity=0.1 * p, inclusion=0.2 * p) for p in (3, 1, 2)]
        return Recommendation(items=items[:k])


def test_propensities_reach_the_response_and_the_exposure_log(service: Any) -> None:
    from monitoring.exposure_frame import read_exposure
    from serving.ab import Routing

    routing = service.router.routing
    service.router.routing = Routing(routing.config, {name: _Exploring() for name in routing.recommenders})
    out = service.recommend(user_id=4, k=3)
    assert [(i.post_id, i.propensity) for i in out.items] == [(3, pytest.approx(0.3)), (1, 0.1), (2, 0.2)]
    assert service.flush_logs()
    frame = read_exposure(service.exposure.path).frame
    assert frame["propensity"].tolist() == pytest.approx([0.3, 0.1, 0.2])
    assert frame["inclusion"].tolist() == pytest.approx([0.6, 0.2, 0.4])


class _Coin:
    """An exploring variant with a known policy: one slot, the ranked first post 1 with probability 0.7, else post 2."""

    version = "coin"

    def __init__(self) -> None:
        self.rng = np.random.default_rng(5)

    def ready(self) -> bool:
        return True

    def recommend(self, user_id: int, k: int, seen_ids: Any = frozenset(), surface: int = 0) -> Any:
        from serving.recommender import Item, Recommendation

        first = self.rng.random() < 0.7
        item = Item(
            1 if first else 2, 101, 1.0, "s", propensity=0.7 if first else 0.3, inclusion=1.0, rank=0 if first else 1
        )
        return Recommendation(items=[item])


def test_ab_off_policy_estimates_the_ranked_order_from_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Any
) -> None:
    from serving.ab import Routing
    from serving.service import Ember

    config = tmp_path / "variants.yaml"
    body = _config(tmp_path / "logs" / "exposure.jsonl")
    body["exposure"] = {"path": str(tmp_path / "logs" / "exposure.jsonl")}  # no rotation: every record is kept
    config.write_text(yaml.safe_dump(body))
    monkeypatch.setenv("EMBER_VARIANTS_CONFIG", str(config))
    service = Ember()
    routing = service.router.routing
    service.router.routing = Routing(routing.config, {name: _Coin() for name in routing.recommenders})
    for u in range(1, 801):
        service.recommend(user_id=u, k=1)
    assert service.flush_logs()
    records = [json.loads(x) for x in service.exposure.path.read_text().splitlines()]
    # Post 1 is always liked and clicked, post 2 never: the ranked order (always post 1) earns the blend of both.
    outcomes = tmp_path / "outcomes.jsonl"
    with outcomes.open("w") as f:
        for r in records:
            post = r["items"][0]["post_id"]
            f.write(json.dumps({"request_id": r["request_id"], "post_id": post, "click": int(post == 1),
                                "like": int(post == 1)}) + "\n")  # fmt: skip
    report = tmp_path / "op.json"
    out = run_cli("ab", "off-policy", "--exposure", str(service.exposure.path), "--outcomes", str(outcomes),
                  "--variant", "control", "--json", str(report))  # fmt: skip
    assert out.code == 0, out.stderr
    result = json.loads(report.read_text())
    value = BLEND["click"] + BLEND["like"]
    n = result["requests"]
    assert n == sum(r["variant"] == "control" for r in records) and result["slate_length"] == 1
    share = result["logged_reward_per_request"] / value  # the logged policy served post 1 about 70% of the time
    assert abs(share - 0.7) < 4 * np.sqrt(0.21 / n)
    for name in ("ips", "snips", "dr"):
        assert result["ranked_target"][name] == pytest.approx(value, rel=4 * np.sqrt(0.3 / 0.7 / n)), name
    assert result["ranked_target"]["snips"] == pytest.approx(value)  # self-normalised: exact here
    bad = run_cli("ab", "off-policy", "--exposure", str(service.exposure.path), "--outcomes", str(outcomes),
                  "--variant", "nope")  # fmt: skip
    assert bad.code != 0 and "nope" in bad.error_line()
    service.exposure.close()


def test_an_admin_share_change_keeps_the_shadow_process_and_a_new_spec_replaces_it(service: Any) -> None:
    proc = service._shadow_proc
    assert proc is not None and proc.alive and service.__is_ready__()
    treatment = service.router.routing.config.variant("treatment")
    assert service._shadow_process(treatment.model_copy(update={"share": 0.25})) is proc  # no reload for a share
    other = treatment.model_copy(update={"blend_weights": {"click": 2.0}})
    replaced = service._shadow_process(other)
    assert replaced is not proc and replaced.variant == other
    assert service.__is_ready__()  # a restart behind an admin change never takes the pod out of rotation


def test_not_ready_until_every_variant_is(service: Any) -> None:
    from serving.ab import Routing

    assert service.__is_ready__()
    routing = service.router.routing
    service.router.routing = Routing(routing.config, {**routing.recommenders, "treatment": _Broken(ready_flag=False)})
    assert not service.__is_ready__()


def test_admin_is_disabled_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.admin import AdminError, require_admin

    monkeypatch.delenv("EMBER_ADMIN_TOKEN", raising=False)
    with pytest.raises(AdminError) as err:
        require_admin(f"Bearer {TOKEN}")
    assert err.value.status == 403 and err.value.field == "Authorization"
    monkeypatch.setenv("EMBER_ADMIN_TOKEN", TOKEN)
    require_admin(f"Bearer {TOKEN}")
    for wrong in (None, TOKEN, f"Bearer {TOKEN}x", f"Basic {TOKEN}"):
        with pytest.raises(AdminError) as err:
            require_admin(wrong)
        assert err.value.status == 401


def test_ember_serve_rejects_a_bad_config_in_one_line(tmp_path: Path, run_cli: Any) -> None:
    bad = tmp_path / "variants.yaml"
    body = _config(tmp_path / "e.jsonl")
    body["variants"][1]["share"] = 0.7
    bad.write_text(yaml.safe_dump(body))
    line = run_cli("serve", "--config", str(bad)).error_line()
    assert line == f"error: {bad}: variants: shares sum to 1.2, not 1"
    bad.write_text(yaml.safe_dump({**_config(tmp_path / "e.jsonl"), "fresh_feed": {"store": "memcached"}}))
    line = run_cli("serve", "--config", str(bad)).error_line()
    assert line == f"error: {bad}: fresh_feed.store: Input should be 'off', 'sqlite' or 'redis'"


@pytest.fixture
def torch_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_worker_runs_torch_on_one_thread_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_threads: None
) -> None:
    import threading

    import torch

    from core.errors import UserError
    from serving.service import THREADS_ENV, Ember

    config = tmp_path / "variants.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path / "logs" / "exposure.jsonl")))
    monkeypatch.setenv("EMBER_VARIANTS_CONFIG", str(config))
    seen: list[int] = []
    for value, threads in (("", 1), ("2", 2)):
        monkeypatch.setenv(THREADS_ENV, value)
        torch.set_num_threads(3)
        Ember().exposure.close()
        # BentoML answers a sync API from a worker thread of its own.
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert seen[-1] == threads
    monkeypatch.setenv(THREADS_ENV, "0")
    with pytest.raises(UserError, match=THREADS_ENV):
        Ember()
