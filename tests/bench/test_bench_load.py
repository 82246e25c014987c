"""The load benchmark's generator and bookkeeping, against a fake server: pacing, error counting, the rate search
and the per-minute hold summary (the real run is `python -m bench.load`, by hand)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from bench import load


def test_open_loop_sends_at_the_rate_and_counts_every_answer() -> None:
    def server(request: httpx.Request) -> httpx.Response:
        user = json.loads(request.content)["user_id"]
        if user % 10 == 0:
            return httpx.Response(503)
        return httpx.Response(200, json={"degraded": user % 10 == 1, "items": []})

    start = time.perf_counter()
    samples = asyncio.run(
        load.open_loop("http://x", 50.0, 1.0, list(range(1, 51)), transport=httpx.MockTransport(server))
    )
    took = time.perf_counter() - start
    assert len(samples) == 50 and 0.9 < took < 3.0  # 50 requests spread over one second, not a burst
    scheduled = sorted(s.scheduled for s in samples)
    assert scheduled[-1] - scheduled[0] == pytest.approx(49 / 50, abs=1e-6)
    got = load.summary(samples)
    assert got["errors"] == 5 and got["error_statuses"] == {"503": 5} and got["degraded"] == 5


def _fake_server(capacity: float) -> Any:
    """open_loop of a server that answers in 40 ms up to `capacity` req/s and in 2 s above it."""

    async def fake(url: str, rate: float, seconds: float, users: list[int], **_: Any) -> list[load.Sample]:
        latency = 0.04 if rate <= capacity else 2.0
        n = round(rate * seconds)
        return [load.Sample(i / rate, i / rate, i / rate + latency, 200, False) for i in range(n)]

    return fake


def test_the_search_finds_the_capacity_and_confirms_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "open_loop", _fake_server(capacity=21.0))
    monkeypatch.setattr(load.time, "sleep", lambda _: None)
    rate, steps = load.find_max_rate("http://x", 4.0, 5.0, 30.0, 500.0, bisections=3, seed=0)
    assert 18.0 <= rate <= 21.0
    assert [s["rate"] for s in steps[:4]] == [4.0, 8.0, 16.0, 32.0]
    assert steps[-1]["seconds"] == 30.0 and steps[-1]["ok"] and steps[-1]["rate"] == round(rate, 2)


def test_the_hold_buckets_by_minute_and_measures_memory_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "open_loop", _fake_server(capacity=100.0))
    rss = iter([{"worker": 500.0, "tree": 600.0}, {"worker": 510.0, "tree": 610.0}])
    monkeypatch.setattr(load, "rss_mb", lambda pid: next(rss))
    held = load.hold("http://x", 0, 10.0, 1.5, seed=0)  # the fake answers at once: no real minute passes
    assert [m["requests"] for m in held["per_minute"]] == [600, 300]
    assert held["total"]["errors"] == 0 and held["errors_ok"]
    assert held["rss_growth"] == pytest.approx(0.02) and held["rss_ok"]
    assert held["p99_stable"] is True
