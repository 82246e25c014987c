"""HTTP error shaping: every 4xx of the APIs as {"error": ..., "field": ...}, and the request-body cap.

BentoML answers a validation error with {"error": "1 validation error for ...", "detail": [pydantic errors]};
`RequestGuard` (an ASGI middleware in front of /recommend, /rank and /events) caps the body size (413), reads the body
as JSON whatever its Content-Type, and re-sends any 4xx with the first error's field named.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

from serving.events import field_of, message_of

MAX_BODY_BYTES = 1 << 20  # 1 MiB: 1000 post ids take ~10 kB; anything near the cap is a mistake or an attack.


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped. FastAPI's json.loads accepts a lone surrogate ("\\ud800"), which an error naming
    it cannot encode as UTF-8: the plain JSONResponse turned `{"\\ud800": 1}` sent to /admin/shares into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode()


def error_body(errors: Any, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{"error", "field"} from pydantic's error list: the first error, its location dotted ("seen_ids[3]")."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return {"error": f"body: {first.get('msg', 'invalid JSON')}", "field": "body"}
    field = field_of(first, skip) or "body"
    return {"error": f"{field}: {message_of(first) if first else 'invalid request'}", "field": field}


class RequestGuard:
    """ASGI middleware: caps request bodies (413) and gives every 4xx of the APIs the {"error", "field"} shape.

    BentoML answers a validation error with {"error": "1 validation error for ...", "detail": [pydantic errors]};
    clients get the first error with its field named instead.
    """

    def __init__(self, app: Any, max_body_bytes: int = MAX_BODY_BYTES, paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.paths = paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, _ReshapeErrors(send) if scope["path"] in self.paths else send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            return
        # Read the body here (BentoML reads it whole anyway) so a chunked upload cannot pass the cap either.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        if scope["path"] not in self.paths:
            await self.app(scope, replay, send)
            return
        # The APIs speak JSON only. BentoML picks its parser by Content-Type, so curl's default form encoding would
        # turn the JSON body into a form key ("user_id: Field required") and a pickle type is refused with a 415.
        headers = [(k, v) for k, v in scope.get("headers") or () if k != b"content-type"]
        scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, replay, _ReshapeErrors(send))

    async def _too_large(self, send: Any) -> None:
        body = {"error": f"body: request body over {self.max_body_bytes} bytes", "field": "body"}
        await _send_json(send, 413, body)


class _ReshapeErrors:
    """Wraps `send`: a 4xx response is buffered and re-sent as {"error", "field"}; anything else passes through."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.status = 0
        self.buffer = b""

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if not 400 <= self.status < 500:
                await self.send(message)
            return
        if not 400 <= self.status < 500 or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.buffer += message.get("body", b"")
        if message.get("more_body", False):
            return
        await _send_json(self.send, self.status, _reshape(self.buffer))


def _reshape(raw: bytes) -> dict[str, str]:
    try:
        body = json.loads(raw)
    except ValueError:
        return {"error": raw.decode("utf-8", "replace").strip() or "bad request", "field": "body"}
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # BentoML 1.4.39 wraps a BentoMLException's 4xx body in a one-element list
    if not isinstance(body, dict):
        return {"error": "bad request", "field": "body"}
    if "field" in body and "error" in body:
        return body
    if isinstance(body.get("detail"), list):
        return error_body(body["detail"])
    return {"error": str(body.get("error") or body.get("detail") or "bad request"), "field": "body"}


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})
