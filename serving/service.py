"""The HTTP service (BentoML 1.4): recommend and rank through the A/B variants, shadow runs, exposure log, admin API.

    ember serve --port 3000 --config serving/variants.yaml
    EMBER_VARIANTS_CONFIG=serving/variants.yaml bentoml serve serving.service:Ember     # the same, by hand

| route | what |
|---|---|
| POST /recommend, /rank | the variant the user is assigned to answers; a failure falls back to the popular slate |
| POST /events | a batch of engagements, impressions, new posts, follows (serving/events.py), idempotent by event id |
| GET /healthz, /readyz, /metrics, /docs.json | BentoML's probes (readyz asks `__is_ready__`), Prometheus, OpenAPI |
| /admin/variants, /shares, /promote, /rollback | needs `Authorization: Bearer $EMBER_ADMIN_TOKEN` |

Bad input is a 4xx with {"error": ..., "field": ...}: BentoML validates the typed API arguments, and `RequestGuard`
(an ASGI middleware) caps the body size and gives BentoML's validation errors that shape. The state an admin call
changes (shares, the live recommenders) lives in this process: the service runs one worker and scales by replicas.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import NotFound, ServiceUnavailable
from fastapi import Body, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt
from starlette.exceptions import HTTPException

from core.errors import UserError
from core.schema import N_SURFACES
from features.served import open_served
from serving import shedding
from serving.ab import PopularSpec, Router, Routing, in_shadow, load_config
from serving.events import MAX_EVENTS, Event, EventSinks, EventsUnavailable, apply_events, field_of, message_of
from serving.exposure import ExposureLog
from serving.metrics import ServiceMetrics
from serving.recommender import Item, Recommendation, Recommender
from serving.shadow import ShadowRunner, compare
from serving.static_recommender import PopularRecommender

log = logging.getLogger(__name__)

CONFIG_ENV = "EMBER_VARIANTS_CONFIG"
ADMIN_TOKEN_ENV = "EMBER_ADMIN_TOKEN"
THREADS_ENV = "EMBER_TORCH_THREADS"
DEFAULT_CONFIG = Path(__file__).with_name("variants.yaml")
MAX_BODY_BYTES = 1 << 20  # 1 MiB: 1000 post ids take ~10 kB; anything near the cap is a mistake or an attack.
MAX_K = 200  # the slate a client may ask for; the pipeline's own candidate budget is larger
MAX_RANK_POSTS = 1000  # one ranker call (x-algorithm ranks ~1000 candidates per request)
MAX_SEEN_IDS = 10_000  # a client-side seen list beyond this is better served by the history feature
# Ids are int64 in every store, tensor and hash, and >= 1 (0 is the padding id, core/schema.py): anything else made
# components fail open (a degraded answer) instead of a 400 naming the field.
Id = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]
Surface = Annotated[StrictInt, Field(ge=0, le=N_SURFACES - 1)]  # the ranker would clamp another code silently


def inference_threads() -> int:
    """Intra-op threads of torch and faiss in the worker: EMBER_TORCH_THREADS, default 1.

    One request's models are small matrix products (the served nano ranker scores ~500 candidates in a few ms):
    a second OpenMP thread adds a barrier to every operator and, on a 2-core machine, competes with the event loop
    and the other requests' Python. On a 2-core machine under other load (load average ~7), the whole pipeline
    in-process had p50 76 ms at 1 thread and 517 ms at 2 (RankerScorer 36 vs 318 ms, TwoTowerSource 15 vs 126 ms).
    A larger preset may want more: set the variable.
    """
    raw = os.environ.get(THREADS_ENV, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{THREADS_ENV}: must be a whole number >= 1, got {raw!r}")
    return int(raw)


# Responses (the request side is the typed arguments of each API) -------------------------------------------------


class RecommendedItem(BaseModel):
    post_id: int
    author_id: int
    score: float
    source: str
    in_network: bool
    actions: dict[str, float]
    # The exploring variant's P(this post in this slot) (serving/selectors/explore.py); null for a ranked slate.
    propensity: float | None = None


class RecommendResponse(BaseModel):
    request_id: str
    variant: str
    degraded: bool
    items: list[RecommendedItem]


class EventsResponse(BaseModel):
    received: int
    applied: int
    replayed: int  # event ids applied before: acknowledged, not applied again
    applied_by_type: dict[str, int]


class RankedItem(BaseModel):
    post_id: int
    score: float
    actions: dict[str, float]


class RankResponse(BaseModel):
    request_id: str
    variant: str
    degraded: bool
    items: list[RankedItem]


# The admin API: a FastAPI app mounted under /admin, its handlers methods of the service ------------------------------


class AdminError(Exception):
    def __init__(self, status: int, error: str, field: str) -> None:
        super().__init__(error)
        self.status, self.error, self.field = status, error, field


class PromoteRequest(BaseModel):
    variant: str


admin = FastAPI(title="Ember admin", docs_url=None, redoc_url=None, openapi_url=None)


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped. FastAPI's json.loads accepts a lone surrogate ("\\ud800"), which an error naming
    it cannot encode as UTF-8: the plain JSONResponse turned `{"\\ud800": 1}` sent to /admin/shares into a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode()


@admin.exception_handler(AdminError)
async def _admin_error(_: Request, err: AdminError) -> JSONResponse:
    return AsciiJSONResponse({"error": err.error, "field": err.field}, status_code=err.status)


@admin.exception_handler(RequestValidationError)
async def _admin_invalid(_: Request, err: RequestValidationError) -> JSONResponse:
    return AsciiJSONResponse(error_body(err.errors(), skip=("body",)), status_code=400)


@admin.exception_handler(HTTPException)
async def _admin_http_error(_: Request, err: HTTPException) -> JSONResponse:
    """FastAPI's own 4xx (a body it cannot parse, an unknown route) in the {"error", "field"} shape too."""
    body = {"error": f"body: {err.detail}", "field": "body"}
    return AsciiJSONResponse(body, status_code=err.status_code, headers=err.headers)


def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
    """401 without the right bearer token; 403 when no token is configured (the admin API is then off)."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise AdminError(403, f"the admin API is disabled: {ADMIN_TOKEN_ENV} is not set", "Authorization")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme != "Bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise AdminError(401, "missing or wrong bearer token", "Authorization")


def error_body(errors: Any, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{"error", "field"} from pydantic's error list: the first error, its location dotted ("seen_ids[3]")."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return {"error": f"body: {first.get('msg', 'invalid JSON')}", "field": "body"}
    field = field_of(first, skip) or "body"
    return {"error": f"{field}: {message_of(first) if first else 'invalid request'}", "field": field}


@bentoml.asgi_app(admin, path="/admin")
@bentoml.service(name="ember", workers=1, traffic={"timeout": 30})
class Ember:
    """One process: the router (config + a recommender per variant), the exposure log, metrics and shadow runner."""

    def __init__(self) -> None:
        import faiss
        import torch

        threads = inference_threads()
        torch.set_num_threads(threads)  # also for the request threads: ATen applies it in each thread it runs in
        faiss.omp_set_num_threads(threads)
        self.config_path = Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
        config = load_config(self.config_path)
        self.metrics = ServiceMetrics()
        shedding.configure(config.limits.max_concurrency, config.limits.retry_after_s,
                           lambda path: self.metrics.shed.labels(path).inc())  # fmt: skip
        self.exposure = ExposureLog(config.exposure, on_drop=self.metrics.exposure_dropped.inc)
        self.served = open_served(config.fresh_feed)  # what each user was served lately: not served again
        self.shadow = ShadowRunner()
        self.router = Router.build(config)
        # POST /events: into the online store and every loaded variant; None when `events.store` is off
        self.events = EventSinks.open(config.events, self.served, lambda: self.router.routing.recommenders.values())
        if self.events is not None:
            try:
                self.events.live.open()  # imports feast now (seconds), not on the first batch
            except Exception:
                log.exception("events: the Feast store could not be opened; POST /events answers 503 until it can")
        self.fallback = _fallback_recommender(self.router.routing)
        log.info("ember service: %s, variants %s", self.config_path, [v.name for v in config.variants])

    def __is_ready__(self) -> bool:
        return all(r.ready() for r in self.router.routing.recommenders.values())

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.shadow.close(wait=False)
        self.exposure.close()

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        user_id: Id,
        k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 20,
        seen_ids: Annotated[list[Id], Field(max_length=MAX_SEEN_IDS)] = [],  # noqa: B006 (pydantic copies)
        surface: Surface = 0,
    ) -> RecommendResponse:
        """The top-k slate for a user, from the variant the user is assigned to."""
        routing = self.router.routing  # one snapshot for the whole request, even if an admin swaps it meanwhile
        request_id = uuid.uuid4().hex
        variant = routing.assign(user_id)
        recommender = routing.recommenders[variant]
        now_ms = int(time.time() * 1000)
        served_before = self.served.recent(user_id, now_ms) if self.served is not None else frozenset()
        seen = frozenset(seen_ids) | served_before
        try:
            rec = recommender.recommend(user_id, k, seen, surface)
        except Exception:
            log.exception("variant %s failed on recommend; serving the popular fallback", variant)
            recommender = self.fallback
            rec = _last_resort(lambda: recommender.recommend(user_id, k, seen, surface))
        rec = replace(rec, items=rec.items[:k])  # what is logged is exactly what is served
        if self.served is not None:
            self.served.add(user_id, [i.post_id for i in rec.items], now_ms)
        self.metrics.observe("recommend", variant, rec)
        self._log_exposure("recommend", request_id, user_id, surface, variant, recommender, rec)
        if in_shadow(routing.config, request_id):
            self._run_shadow(routing, request_id, user_id, k, seen, surface, variant, rec)
        items = [
            RecommendedItem(
                post_id=i.post_id,
                author_id=i.author_id,
                score=i.score,
                source=i.source,
                in_network=i.in_network,
                actions=i.actions,
                propensity=i.propensity,
            )
            for i in rec.items
        ]
        return RecommendResponse(request_id=request_id, variant=variant, degraded=rec.degraded, items=items)

    @bentoml.api(route="/rank")
    def rank(
        self,
        user_id: Id,
        post_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_RANK_POSTS)],
        surface: Surface = 0,
    ) -> RankResponse:
        """Scores the given posts for a user; items come back in the order given."""
        routing = self.router.routing
        request_id = uuid.uuid4().hex
        variant = routing.assign(user_id)
        recommender = routing.recommenders[variant]
        try:
            rec = recommender.rank(user_id, list(post_ids), surface)
            if [i.post_id for i in rec.items] != list(post_ids):
                raise ValueError("rank returned other posts, or another order, than it was given")
        except Exception:
            log.exception("variant %s failed on rank; scoring with the popular fallback", variant)
            recommender = self.fallback
            rec = _last_resort(lambda: recommender.rank(user_id, list(post_ids), surface))
            if len(rec.items) != len(post_ids):
                rec = Recommendation([Item(p, 0, 0.0) for p in post_ids], degraded=True, fallback="error")
        self.metrics.observe("rank", variant, rec)
        self._log_exposure("rank", request_id, user_id, surface, variant, recommender, rec)
        items = [RankedItem(post_id=i.post_id, score=i.score, actions=i.actions) for i in rec.items]
        return RankResponse(request_id=request_id, variant=variant, degraded=rec.degraded, items=items)

    @bentoml.api(route="/events")
    def events_in(self, events: Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS)]) -> EventsResponse:
        """Applies a batch of events (validated whole first); a replayed event id is acknowledged, not applied.
        404 when events are off; 503 when the online store could not be written (retry the batch)."""
        if self.events is None:
            raise NotFound("events are off on this service: set events.store in the variants config")
        try:
            result = apply_events(events, self.events)
        except EventsUnavailable as err:
            raise ServiceUnavailable(str(err)) from None
        return EventsResponse(
            received=result.received,
            applied=result.applied,
            replayed=result.replayed,
            applied_by_type=result.applied_by_type,
        )

    # Off the response path ----------------------------------------------------------------------------------------

    def _log_exposure(
        self,
        endpoint: str,
        request_id: str,
        user_id: int,
        surface: int,
        variant: str,
        recommender: Recommender,
        rec: Recommendation,
    ) -> None:
        self.exposure.log(
            {
                "kind": "exposure",
                "endpoint": endpoint,
                "request_id": request_id,
                "ts": time.time(),
                "user_id": user_id,
                "surface": surface,
                "variant": variant,
                "version": recommender.version,
                "degraded": rec.degraded,
                "fallback": rec.fallback,
                "items": [
                    {
                        "post_id": i.post_id,
                        "position": n,
                        "score": i.score,
                        "source": i.source,
                        # the ranker's per-action predictions: what prediction drift is measured on (monitoring/)
                        "actions": {a: round(float(v), 6) for a, v in (i.actions or {}).items()},
                        # an exploring variant's P(this post in this slot), P(in the slate) and the post's place in
                        # the ranked order: off-policy weights and the ranked-slate target
                        **(
                            {"propensity": i.propensity, "inclusion": i.inclusion, "rank": i.rank}
                            if i.propensity is not None
                            else {}
                        ),
                        # a sampled request's candidate inputs, for the skew check (log_candidate_features)
                        **({"features": i.features} if i.features is not None else {}),
                    }
                    for n, i in enumerate(rec.items)
                ],
                "features": rec.features,
                **({"as_of": rec.as_of.timestamp()} if rec.as_of is not None else {}),  # epoch seconds, as ts
            }
        )

    def _run_shadow(
        self,
        routing: Routing,
        request_id: str,
        user_id: int,
        k: int,
        seen: frozenset[int],
        surface: int,
        served_variant: str,
        served: Recommendation,
    ) -> None:
        assert routing.config.shadow is not None
        name = routing.config.shadow.variant
        if name == served_variant:
            return  # the user already gets the shadow's slate: nothing to compare
        shadow = routing.recommenders[name]
        served_ids = [i.post_id for i in served.items]

        def job() -> None:
            try:
                rec = shadow.recommend(user_id, k, seen, surface)
            except Exception:
                self.metrics.shadow_runs.labels(name, "failed").inc()
                log.exception("shadow variant %s failed", name)
                return
            result = compare(served_ids, [i.post_id for i in rec.items], k)
            self.metrics.observe_shadow(name, result)
            self.exposure.log(
                {
                    "kind": "shadow",
                    "request_id": request_id,
                    "ts": time.time(),
                    "user_id": user_id,
                    "variant": name,
                    "served_variant": served_variant,
                    "version": shadow.version,
                    "degraded": rec.degraded,
                    "items": [{"post_id": i.post_id, "position": n, "score": i.score} for n, i in enumerate(rec.items)],
                    "comparison": result.as_dict(),
                    **({"as_of": rec.as_of.timestamp()} if rec.as_of is not None else {}),
                }
            )

        if not self.shadow.submit(job):
            self.metrics.shadow_runs.labels(name, "skipped").inc()

    # The admin API (routes of `admin`, bound to this instance by BentoML) -----------------------------------------

    def _describe(self) -> dict[str, Any]:
        routing = self.router.routing
        config = routing.config
        return {
            "salt": config.salt,
            "champion": config.champion,
            "previous_champion": self.router.previous_champion,
            "rollbacks_available": len(self.router.history),
            "shadow": None if config.shadow is None else config.shadow.model_dump(),
            "variants": [
                {
                    "name": v.name,
                    "share": v.share,
                    "kind": v.recommender.kind,
                    "version": routing.recommenders[v.name].version,
                    "ready": routing.recommenders[v.name].ready(),
                }
                for v in config.variants
            ],
        }

    @admin.get("/variants")
    def admin_variants(self, _auth: None = Depends(require_admin)) -> dict[str, Any]:
        return self._describe()

    @admin.post("/shares")
    def admin_shares(
        self, shares: dict[str, float] = Body(...), _auth: None = Depends(require_admin)
    ) -> dict[str, Any]:
        try:
            config = self.router.routing.config.with_shares(shares)
        except ValueError as err:
            raise AdminError(400, str(err), str(err).split(":", 1)[0]) from None
        self._swap(lambda: self.router.apply(config))
        return self._describe()

    @admin.post("/promote")
    def admin_promote(self, body: PromoteRequest, _auth: None = Depends(require_admin)) -> dict[str, Any]:
        names = [v.name for v in self.router.routing.config.variants]
        if body.variant not in names:
            raise AdminError(400, f"variant: {body.variant!r} is not a variant (known: {', '.join(names)})", "variant")
        self._swap(lambda: self.router.promote(body.variant))
        return self._describe()

    @admin.post("/rollback")
    def admin_rollback(self, _auth: None = Depends(require_admin)) -> dict[str, Any]:
        try:
            self._swap(self.router.rollback)
        except LookupError as err:
            raise AdminError(409, str(err), "history") from None
        return self._describe()

    def _swap(self, change: Any) -> None:
        routing = change()
        self.fallback = _fallback_recommender(routing)
        log.info("routing now: %s", {v.name: v.share for v in routing.config.variants})


def _last_resort(answer: Callable[[], Recommendation]) -> Recommendation:
    """The fallback's answer marked degraded; should even the fallback fail, an empty slate (never a 5xx)."""
    try:
        rec = answer()
    except Exception:
        log.exception("the popular fallback failed too; answering with an empty slate")
        return Recommendation(items=[], degraded=True, fallback="error")
    return Recommendation(items=rec.items, degraded=True, fallback="error", stages=rec.stages, features=rec.features)


def _fallback_recommender(routing: Routing) -> Recommender:
    """The first popular variant answers when a variant fails; with none configured, an empty slate does."""
    for v in routing.config.variants:
        if isinstance(v.recommender, PopularSpec):
            return routing.recommenders[v.name]
    return PopularRecommender({}, version="popular:empty")


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


# `Ember` is a bentoml Service object here; its stubs still type the decorated class as the class.
# The first added is the outermost: a shed request's body is never read.
Ember.add_asgi_middleware(shedding.LoadShedder, paths=("/recommend", "/rank", "/events"))  # type: ignore[attr-defined]
Ember.add_asgi_middleware(  # type: ignore[attr-defined]
    RequestGuard, max_body_bytes=MAX_BODY_BYTES, paths=("/recommend", "/rank", "/events")
)
