"""The generic pipeline runner: owns stage order, timing, counts and failure policy; components hold only logic.

Order (x-algorithm's candidate pipeline): query hydrators -> sources (concatenated) -> candidate hydrators ->
filters (sequential; a failing filter fails open) -> scorers (sequential) -> selector -> post-selection filters ->
explorer (optional: a sampled slate with propensities, serving/selectors/explore.py; failing, the ranked order
stands) -> truncate to `query.k`.

What happens after an answer (the exposure log, the fresh-feed record of what each user was served, shadow runs) is
the service's (serving/service.py), for every variant alike, the fallback slate included: a pipeline only answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from serving.filters import FilterResult
from serving.types import Candidate, Query

log = logging.getLogger(__name__)


class QueryHydrator(Protocol):
    @property
    def name(self) -> str: ...
    def enabled(self, query: Query) -> bool: ...
    def hydrate(self, query: Query) -> Query: ...


class Source(Protocol):
    @property
    def name(self) -> str: ...
    def enabled(self, query: Query) -> bool: ...
    def fetch(self, query: Query) -> list[Candidate]: ...


class Hydrator(Protocol):
    @property
    def name(self) -> str: ...
    def enabled(self, query: Query) -> bool: ...
    def hydrate(self, query: Query, candidates: list[Candidate]) -> list[Candidate]: ...


class Filter(Protocol):
    @property
    def name(self) -> str: ...
    def enabled(self, query: Query) -> bool: ...
    def filter(self, query: Query, candidates: list[Candidate]) -> FilterResult: ...


class Scorer(Protocol):
    @property
    def name(self) -> str: ...
    def enabled(self, query: Query) -> bool: ...
    def score(self, query: Query, candidates: list[Candidate]) -> list[Candidate]: ...


class Selector(Protocol):
    @property
    def name(self) -> str: ...
    def enabled(self, query: Query) -> bool: ...
    def select(self, query: Query, candidates: list[Candidate]) -> list[Candidate]: ...


@dataclass
class StageStat:
    stage: str
    component: str
    ms: float
    count_in: int
    count_out: int
    error: str | None = None


@dataclass
class PipelineResult:
    query: Query
    selected: list[Candidate]
    stats: list[StageStat]
    degraded: bool  # a component failed and was skipped (fail-open) or a source failed


@dataclass
class Pipeline:
    query_hydrators: list[QueryHydrator] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    hydrators: list[Hydrator] = field(default_factory=list)
    filters: list[Filter] = field(default_factory=list)
    scorers: list[Scorer] = field(default_factory=list)
    selector: Selector | None = None
    post_filters: list[Filter] = field(default_factory=list)
    explorer: Selector | None = None

    def run(self, query: Query) -> PipelineResult:
        stats: list[StageStat] = []
        failed: list[bool] = []

        def call(stage: str, name: str, n_in: int, fn: Callable[[], Any], ok: Callable[[Any], bool]) -> Any:
            """Runs one component, records its timing and counts; returns None when it failed or broke the rules."""
            start = time.perf_counter()
            try:
                out, err = fn(), None
                if not ok(out):
                    out, err = None, "returned a result of the wrong shape"
            except Exception as exc:
                out, err = None, f"{type(exc).__name__}: {exc}"
            n_out = len(out.kept) if isinstance(out, FilterResult) else len(out) if isinstance(out, list) else n_in
            stats.append(StageStat(stage, name, (time.perf_counter() - start) * 1000, n_in, n_out, err))
            if err is not None:
                log.warning("%s %s failed open: %s", stage, name, err)
                failed.append(True)
            return out

        for h in self.query_hydrators:
            if h.enabled(query):
                query = call("query_hydrator", h.name, 0, partial(h.hydrate, query), _is_query) or query
        candidates: list[Candidate] = []
        for s in self.sources:
            if s.enabled(query):
                candidates += call("source", s.name, 0, partial(s.fetch, query), _is_list) or []
        n = len(candidates)
        # A hydrator or scorer must return one candidate per input; otherwise its output is dropped (x-algorithm).
        for hy in self.hydrators:
            if hy.enabled(query):
                out = call("hydrator", hy.name, n, partial(hy.hydrate, query, candidates), _same_len(n))
                candidates = out if out is not None else candidates
        candidates = self._filter("filter", self.filters, query, candidates, call)
        for sc in self.scorers:
            if sc.enabled(query):
                n = len(candidates)
                out = call("scorer", sc.name, n, partial(sc.score, query, candidates), _same_len(n))
                candidates = out if out is not None else candidates
        if self.selector is not None and self.selector.enabled(query):
            sel = self.selector
            out = call("selector", sel.name, len(candidates), partial(sel.select, query, candidates), _is_list)
            candidates = out if out is not None else candidates
        candidates = self._filter("post_filter", self.post_filters, query, candidates, call)
        if self.explorer is not None and self.explorer.enabled(query):
            ex = self.explorer
            out = call("explorer", ex.name, len(candidates), partial(ex.select, query, candidates), _is_list)
            candidates = out if out is not None else candidates
        return PipelineResult(query, candidates[: query.k], stats, bool(failed))

    @staticmethod
    def _filter(
        stage: str, filters: list[Filter], query: Query, candidates: list[Candidate], call: Any
    ) -> list[Candidate]:
        """Filters run in order; a failing filter fails open (the candidates from before it go on)."""
        for f in filters:
            if f.enabled(query):
                out = call(stage, f.name, len(candidates), partial(f.filter, query, candidates), _is_filter_result)
                candidates = out.kept if out is not None else candidates
        return candidates


def _is_query(x: Any) -> bool:
    return isinstance(x, Query)


def _is_list(x: Any) -> bool:
    return isinstance(x, list)


def _is_filter_result(x: Any) -> bool:
    return isinstance(x, FilterResult)


def _same_len(n: int) -> Callable[[Any], bool]:
    return lambda x: isinstance(x, list) and len(x) == n
