"""The service's Prometheus metrics, served on BentoML's own GET /metrics next to its request metrics.

prometheus_client is imported when `ServiceMetrics` is built (in the BentoML worker), never at module import:
BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker after importing the service module, and prometheus_client
picks single- or multi-process storage once, at its own import. Imported too early, these metrics would be
missing from /metrics.
"""

from __future__ import annotations

from typing import Any

from serving.recommender import Recommendation
from serving.shadow import ShadowComparison

# Pipeline stages run in 0.01-100 ms; a whole request in about 1-200 ms.
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_UNIT_BUCKETS = tuple(i / 10 for i in range(11))  # overlap@k in [0, 1]
_CORRELATION_BUCKETS = tuple(round(i / 5 - 1, 1) for i in range(11))  # rho, tau in [-1, 1]
_FILTER_STAGES = ("filter", "post_filter")


class ServiceMetrics:
    """Counters and histograms of the recommendation service (names prefixed `ember_`)."""

    def __init__(self) -> None:
        import prometheus_client as prom

        # Our own registry: a second instance in one process (tests) must not collide in the global one. In
        # multi-process mode the values live in BentoML's shared directory and its /metrics collects them there.
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "ember_requests", "Requests answered, by endpoint and variant.", ["endpoint", "variant"], registry=r
        )
        self.shed = prom.Counter(
            "ember_requests_shed",
            "Requests answered 503 + Retry-After because limits.max_concurrency were in flight, by path.",
            ["path"],
            registry=r,
        )
        self.degraded = prom.Counter(
            "ember_degraded_responses", "Responses served by a fallback, by endpoint.", ["endpoint"], registry=r
        )
        self.fallbacks = prom.Counter(
            "ember_fallbacks",
            "Fallbacks taken, by kind (cold_start, popular, previous_model from the pipeline; error: the service's).",
            ["kind"],
            registry=r,
        )
        self.stage_seconds = prom.Histogram(
            "ember_stage_duration_seconds",
            "Time per pipeline stage and component.",
            ["stage", "name"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.filter_candidates = prom.Counter(
            "ember_filter_candidates",
            "Candidates kept and removed per filter.",
            ["filter", "outcome"],
            registry=r,
        )
        self.exposure_dropped = prom.Counter(
            "ember_exposure_records_dropped", "Exposure records dropped (queue full or write failed).", registry=r
        )
        self._shadow_metrics(prom)
        for kind in ("cold_start", "popular", "previous_model", "error"):
            self.fallbacks.labels(kind)  # present (at 0) before the first one happens

    def _shadow_metrics(self, prom: Any) -> None:
        """How the shadow variant's slates compare with the served ones."""
        self.shadow_runs = prom.Counter(
            "ember_shadow_runs",
            "Shadow runs, by variant and outcome (compared, failed, skipped).",
            ["variant", "outcome"],
            registry=self.registry,
        )
        self.shadow_overlap = prom.Histogram(
            "ember_shadow_overlap_at_k",
            "overlap@k of the shadow slate with the served one.",
            ["variant"],
            buckets=_UNIT_BUCKETS,
            registry=self.registry,
        )
        self.shadow_spearman = prom.Histogram(
            "ember_shadow_spearman",
            "Spearman's rho on the posts both slates hold.",
            ["variant"],
            buckets=_CORRELATION_BUCKETS,
            registry=self.registry,
        )
        self.shadow_kendall = prom.Histogram(
            "ember_shadow_kendall",
            "Kendall's tau on the posts both slates hold.",
            ["variant"],
            buckets=_CORRELATION_BUCKETS,
            registry=self.registry,
        )

    def observe(self, endpoint: str, variant: str, rec: Recommendation) -> None:
        """Counts one answered request and records its pipeline stages."""
        self.requests.labels(endpoint, variant).inc()
        if rec.degraded:
            self.degraded.labels(endpoint).inc()
        if rec.fallback:
            self.fallbacks.labels(rec.fallback).inc()
        for stage in rec.stages:
            self._stage(stage)

    def _stage(self, stage: dict[str, Any]) -> None:
        kind, name = str(stage.get("stage", "")), str(stage.get("name", ""))
        ms = stage.get("ms")
        if isinstance(ms, int | float):
            self.stage_seconds.labels(kind, name).observe(ms / 1000.0)
        n_in, n_out = stage.get("in"), stage.get("out")
        if kind in _FILTER_STAGES and isinstance(n_in, int) and isinstance(n_out, int):
            self.filter_candidates.labels(name, "kept").inc(n_out)
            self.filter_candidates.labels(name, "removed").inc(max(n_in - n_out, 0))

    def observe_shadow(self, variant: str, result: ShadowComparison) -> None:
        self.shadow_runs.labels(variant, "compared").inc()
        self.shadow_overlap.labels(variant).observe(result.overlap)
        if result.spearman is not None:
            self.shadow_spearman.labels(variant).observe(result.spearman)
        if result.kendall is not None:
            self.shadow_kendall.labels(variant).observe(result.kendall)

    def render(self) -> str:
        """This registry as Prometheus text (single-process use: tests, a service without BentoML's workers)."""
        import prometheus_client as prom

        return prom.generate_latest(self.registry).decode()
