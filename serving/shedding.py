"""Load shedding: past `limits.max_concurrency` API requests in flight, the next one is answered at once with a 503,
a `Retry-After` header and a JSON body, instead of queueing behind the others until every client times out.

BentoML's own `traffic.max_concurrency` answers 429 without `Retry-After`; a load balancer and a well-behaved client
treat a 503 with `Retry-After` as "this replica is busy, come back" (retry elsewhere or later), a 429 as "you, the
client, sent too much". Probes and /metrics are never shed: an overloaded replica still reports itself.

The ASGI middleware is built when BentoML builds the app, before the service reads its config; `configure` (called
by the service with its config's `limits`) sets the limit. Until then nothing is shed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class _Limits:
    max_concurrency: int | None = None  # None: not configured yet, nothing shed
    retry_after_s: int = 1
    on_shed: Callable[[str], None] | None = None  # e.g. a Prometheus counter's inc, by path


_LIMITS = _Limits()


def configure(max_concurrency: int, retry_after_s: int, on_shed: Callable[[str], None] | None = None) -> None:
    """Sets the limit every LoadShedder of this process applies (the service, from its config's `limits`)."""
    _LIMITS.max_concurrency, _LIMITS.retry_after_s, _LIMITS.on_shed = max_concurrency, retry_after_s, on_shed


class LoadShedder:
    """ASGI middleware: at most `max_concurrency` requests to `paths` in flight in this worker; the others get a 503
    with `Retry-After` and {"error", "field": "max_concurrency"}."""

    def __init__(self, app: Any, paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.paths = paths
        self.in_flight = 0  # one event loop per worker: no lock needed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        limit = _LIMITS.max_concurrency
        if scope["type"] != "http" or scope["path"] not in self.paths or limit is None:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= limit:
            if _LIMITS.on_shed is not None:
                _LIMITS.on_shed(scope["path"])
            await self._busy(send, limit)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _busy(self, send: Any, limit: int) -> None:
        body = {"error": f"busy: {limit} requests in flight (limits.max_concurrency); retry after "
                         f"{_LIMITS.retry_after_s} s", "field": "max_concurrency"}  # fmt: skip
        data = json.dumps(body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
            (b"retry-after", str(_LIMITS.retry_after_s).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})
