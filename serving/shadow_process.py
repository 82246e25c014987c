"""The shadow variant in a process of its own (`shadow.isolation: process`, the default).

Run on a thread of the serving process, the shadow's whole pipeline competes with the served request for the GIL
and for the same cores. Measured on `make run`'s deployment with the champion's own pipeline added as a 10% shadow
(what a deployment with a previous model in shadow runs; `python -m bench.serving --config <that file>`, 2-core AMD
EPYC with AVX-512, ~392 candidates ranked, runs alternated thread / process / thread / process): c=1 keep-alive p99
38.8 and 45.1 ms on a thread, 22.8 and 28.5 ms in a process; a new connection per request 38.9 and 36.8 against 27.4
and 29.2 ms. In a process of its own it holds no lock the service needs and takes the core the request is not on.

The child builds the variant with the service's own factory (`serving.ab.FACTORIES`) from its spec, so it serves
what the variant would serve, and keeps it current with the posts POST /events adds. The service sends it
(user, k, seen, surface) and gets back the slate; comparing, metrics and the exposure record stay in the service.
At most `max_pending` jobs wait or run; past that a job is skipped and counted, so a slow shadow never builds a
backlog. A child that dies (or cannot build the variant) fails the jobs it held and skips every later one.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.ab import Variant
    from serving.recent_posts import RecentPost

from serving.shadow import ShadowSlate

log = logging.getLogger(__name__)


# on_result(context, slate or None when the job failed, the error text when it failed)
OnResult = Callable[[Any, ShadowSlate | None, str | None], None]


def _child(variant: Variant, jobs: Any, results: Any, threads: int) -> None:
    """The shadow process: build the variant, then answer jobs until a None arrives."""
    import faiss
    import torch

    from serving.ab import FACTORIES
    from serving.events import TakesPosts

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        rec = FACTORIES[variant.recommender.kind](variant)
    except Exception as err:  # the parent fails what it holds and skips the rest
        results.put(("dead", -1, f"{type(err).__name__}: {err}"))
        return
    results.put(("ready", -1, rec.version))
    while (msg := jobs.get()) is not None:
        if msg[0] == "posts":
            if isinstance(rec, TakesPosts):
                rec.add_posts(msg[1])
            continue
        _, job_id, user_id, k, seen, surface = msg
        try:
            r = rec.recommend(user_id, k, frozenset(seen), surface)
            as_of = r.as_of.timestamp() if r.as_of is not None else None
            slate = ShadowSlate([(i.post_id, i.score) for i in r.items], r.degraded, as_of, rec.version)
            results.put(("done", job_id, slate))
        except Exception as err:
            results.put(("failed", job_id, f"{type(err).__name__}: {err}"))


class ShadowProcess:
    """One shadow variant served by a child process (spawned: no state copied from the service but the spec)."""

    def __init__(
        self,
        variant: Variant,
        on_result: OnResult,
        on_skip: Callable[[], None] | None = None,
        max_pending: int = 64,
        threads: int = 1,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.variant = variant
        self._on_result, self._on_skip, self._max_pending = on_result, on_skip, max_pending
        self._jobs, self._results = ctx.Queue(), ctx.Queue()
        self._pending: dict[int, Any] = {}
        self._next_id = 0
        self._dead: str | None = None
        self._ready = False
        self._cond = threading.Condition()
        self._process = ctx.Process(
            target=_child, args=(variant, self._jobs, self._results, threads), name=f"ember-shadow-{variant.name}"
        )
        self._process.daemon = True
        self._process.start()
        self._reader = threading.Thread(target=self._read, name="shadow-results", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._dead is None and self._process.is_alive()

    @property
    def settled(self) -> bool:
        """The child has built its variant, or failed to: the service's readiness waits for this."""
        return self._ready or self._dead is not None

    def submit(self, context: Any, user_id: int, k: int, seen: frozenset[int], surface: int) -> bool:
        """Queues one job; False (and on_skip) when max_pending jobs are out or the child is gone."""
        with self._cond:
            full = len(self._pending) >= self._max_pending
            if full or not self.alive:
                if self._on_skip is not None:
                    self._on_skip()
                return False
            job_id, self._next_id = self._next_id, self._next_id + 1
            self._pending[job_id] = context
        self._jobs.put(("recommend", job_id, user_id, k, sorted(seen), surface))
        return True

    def add_posts(self, posts: Sequence[RecentPost]) -> None:
        """Posts added live (POST /events) reach the child's pipeline too, in order with the jobs."""
        if self.alive:
            self._jobs.put(("posts", list(posts)))

    def _read(self) -> None:
        while True:
            try:
                msg = self._results.get(timeout=1.0)
            except queue.Empty:
                if not self._process.is_alive() and self._dead is None:
                    self._fail_all(f"the shadow process exited with {self._process.exitcode}")
                continue
            except (EOFError, OSError):
                return
            if msg is None:
                return
            kind, job_id, payload = msg
            if kind == "ready":
                self._ready = True
                continue
            if kind == "dead":
                self._fail_all(payload)
                continue
            self._finish(job_id, payload if kind == "done" else None, payload if kind == "failed" else None)

    def _finish(self, job_id: int, slate: ShadowSlate | None, error: str | None) -> None:
        with self._cond:
            context = self._pending.get(job_id)
        try:
            if context is not None:
                self._on_result(context, slate, error)
        except Exception:  # a broken record must not stop the reader
            log.exception("shadow result handling failed")
        finally:
            with self._cond:
                self._pending.pop(job_id, None)
                self._cond.notify_all()

    def _fail_all(self, reason: str) -> None:
        log.error("shadow variant %s: %s", self.variant.name, reason)
        self._dead = reason
        with self._cond:
            held = list(self._pending)
        for job_id in held:
            self._finish(job_id, None, reason)

    def drain(self, timeout: float = 5.0) -> bool:
        """Waits until every job submitted so far is answered and handled; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stops the child (after the jobs it holds) and the reader."""
        with contextlib.suppress(ValueError, OSError):  # a queue already closed
            self._jobs.put(None)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)
        self._results.put(None)
        self._reader.join(timeout)
