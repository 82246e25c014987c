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
(an ASGI middleware, serving/http_errors.py) caps the body size and gives BentoML's validation errors that shape.
The admin app, its token check and its error handlers are in serving/admin.py; its handlers are methods here. The
state an admin call changes (shares, the live recommenders) lives in this process: the service runs one worker and
scales by replicas.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import NotFound, ServiceUnavailable
from fastapi import Body, Depends
from pydantic import BaseModel, Field, StrictInt

from core.errors import UserError
from core.schema import N_SURFACES
from features.served import open_served
from serving import shedding
from serving.ab import PopularSpec, Router, Routing, Variant, in_shadow, load_config
from serving.admin import AdminError, PromoteRequest, admin, require_admin
from serving.events import MAX_EVENTS, Event, EventSinks, EventsUnavailable, apply_events
from serving.exposure import ExposureLog
from serving.http_errors import MAX_BODY_BYTES, RequestGuard
from serving.metrics import ServiceMetrics
from serving.recommender import Item, Recommendation, Recommender
from serving.shadow import ShadowContext, ShadowRunner, ShadowSlate, compare
from serving.shadow_process import ShadowProcess
from serving.static_recommender import PopularRecommender

log = logging.getLogger(__name__)

CONFIG_ENV = "EMBER_VARIANTS_CONFIG"
THREADS_ENV = "EMBER_TORCH_THREADS"
DEFAULT_CONFIG = Path(__file__).with_name("variants.yaml")
MAX_K = 200  # the slate a client may ask for; the pipeline's own candidate budget is larger
MAX_RANK_POSTS = 1000  # one ranker call (x-algorithm ranks ~1000 candidates per request)
MAX_SEEN_IDS = 10_000  # a client-side seen list beyond this is better served by the history feature
# Ids are int64 in every store, tensor and hash, and >= 1 (0 is the padding id, core/schema.py): anything else made
# components fail open (a degraded answer) instead of a 400 naming the field.
Id = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]
Surface = Annotated[StrictInt, Field(ge=0, le=N_SURFACES - 1)]  # the ranker would clamp another code silently


def _serves_the_same(a: Variant, b: Variant) -> bool:
    """Whether two specs of a variant build the same recommender (serving.ab._build_all's rule, and the name)."""
    return a.name == b.name and a.recommender == b.recommender and a.blend_weights == b.blend_weights


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
        self.shadow = ShadowRunner()  # shadow.isolation: thread
        self._shadow_proc: ShadowProcess | None = None  # shadow.isolation: process (started now, reused)
        self._shadow_lock = threading.Lock()
        self.router = Router.build(config)
        # /readyz waits for the shadow process started with the service (not for one restarted by an admin change,
        # which must not take a serving pod out of rotation)
        self._startup_shadow: ShadowProcess | None = None
        if config.shadow is not None and config.shadow.isolation == "process":
            self._startup_shadow = self._shadow_process(config.variant(config.shadow.variant))
        # POST /events: into the online store, every loaded variant and the shadow process; None when events are off
        self.events = EventSinks.open(config.events, self.served, self._post_sinks)
        if self.events is not None:
            try:
                self.events.live.open()  # imports feast now (seconds), not on the first batch
            except Exception:
                log.exception("events: the Feast store could not be opened; POST /events answers 503 until it can")
        self.fallback = _fallback_recommender(self.router.routing)
        log.info("ember service: %s, variants %s", self.config_path, [v.name for v in config.variants])

    def __is_ready__(self) -> bool:
        shadow = self._startup_shadow  # still loading, it would skip or queue the first requests' runs
        return all(r.ready() for r in self.router.routing.recommenders.values()) and (shadow is None or shadow.settled)

    def flush_logs(self, timeout: float = 5.0) -> bool:
        """Waits until the shadow runs submitted so far and every exposure record they and the requests queued are
        written (tests, readers of a live log); False on timeout."""
        proc = self._shadow_proc
        drained = self.shadow.drain(timeout) and (proc is None or proc.drain(timeout))
        return drained and self.exposure.flush(timeout)

    def _post_sinks(self) -> list[object]:
        return [*self.router.routing.recommenders.values(), *([self._shadow_proc] if self._shadow_proc else [])]

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.shadow.close(wait=False)
        if self._shadow_proc is not None:
            self._shadow_proc.close()
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
        spec = routing.config.shadow
        assert spec is not None
        name = spec.variant
        if name == served_variant:
            return  # the user already gets the shadow's slate: nothing to compare
        context = ShadowContext(name, request_id, user_id, served_variant, [i.post_id for i in served.items], k)
        if spec.isolation == "process":
            self._shadow_process(routing.config.variant(name)).submit(context, user_id, k, seen, surface)
            return
        shadow = routing.recommenders[name]

        def job() -> None:
            try:
                rec = shadow.recommend(user_id, k, seen, surface)
            except Exception as err:
                self._record_shadow(context, None, f"{type(err).__name__}: {err}")
                return
            as_of = rec.as_of.timestamp() if rec.as_of is not None else None
            slate = ShadowSlate([(i.post_id, i.score) for i in rec.items], rec.degraded, as_of, shadow.version)
            self._record_shadow(context, slate, None)

        if not self.shadow.submit(job):
            self.metrics.shadow_runs.labels(name, "skipped").inc()

    def _shadow_process(self, variant: Variant) -> ShadowProcess:
        """The process serving `variant` as the shadow: the running one, or a new one when what it serves changed
        (its name, recommender or blend weights; not its share: the admin API moves shares without a reload)."""
        with self._shadow_lock:
            old = self._shadow_proc
            if old is not None and _serves_the_same(old.variant, variant):
                return old
            if old is self._startup_shadow:
                self._startup_shadow = None
            on_skip = self.metrics.shadow_runs.labels(variant.name, "skipped").inc
            self._shadow_proc = ShadowProcess(variant, self._record_shadow, on_skip, threads=inference_threads())
        if old is not None:
            threading.Thread(target=old.close, name="shadow-close", daemon=True).start()
        return self._shadow_proc

    def _record_shadow(self, context: ShadowContext, slate: ShadowSlate | None, error: str | None) -> None:
        """A shadow run's comparison with the served slate: metrics and a "shadow" record in the exposure log."""
        name = context.variant
        if slate is None:
            self.metrics.shadow_runs.labels(name, "failed").inc()
            log.error("shadow variant %s failed: %s", name, error)
            return
        result = compare(context.served_ids, [post_id for post_id, _ in slate.items], context.k)
        self.metrics.observe_shadow(name, result)
        self.exposure.log(
            {
                "kind": "shadow",
                "request_id": context.request_id,
                "ts": time.time(),
                "user_id": context.user_id,
                "variant": name,
                "served_variant": context.served_variant,
                "version": slate.version,
                "degraded": slate.degraded,
                "items": [{"post_id": p, "position": n, "score": sc} for n, (p, sc) in enumerate(slate.items)],
                "comparison": result.as_dict(),
                **({"as_of": slate.as_of} if slate.as_of is not None else {}),
            }
        )

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


# `Ember` is a bentoml Service object here; its stubs still type the decorated class as the class.
# The first added is the outermost: a shed request's body is never read.
Ember.add_asgi_middleware(shedding.LoadShedder, paths=("/recommend", "/rank", "/events"))  # type: ignore[attr-defined]
Ember.add_asgi_middleware(  # type: ignore[attr-defined]
    RequestGuard, max_body_bytes=MAX_BODY_BYTES, paths=("/recommend", "/rank", "/events")
)
