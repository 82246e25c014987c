"""Shadow comparison: how far a challenger's slate is from the one served, without showing it to anyone.

overlap@k is the share of the served top k the shadow also put in its top k. Spearman's rho and Kendall's tau are
computed on the posts both slates hold, by their positions in each (None below two common posts): they say whether
the two variants agree on the order of what they agree on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowContext:
    """What the service keeps of a request while its shadow run is out."""

    variant: str  # the shadow variant
    request_id: str
    user_id: int
    served_variant: str
    served_ids: list[int]  # the served slate, best first
    k: int


@dataclass(frozen=True)
class ShadowSlate:
    """The shadow variant's slate for one request."""

    items: list[tuple[int, float]]  # (post id, score), best first
    degraded: bool
    as_of: float | None  # epoch seconds of the time the pipeline served at, when fixed
    version: str


@dataclass(frozen=True)
class ShadowComparison:
    k: int
    common: int
    overlap: float
    spearman: float | None
    kendall: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def compare(served: Sequence[int], shadow: Sequence[int], k: int) -> ShadowComparison:
    """Compares two slates (post ids, best first) at depth k."""
    top_served, top_shadow = list(served[:k]), list(shadow[:k])
    at_shadow = {p: i for i, p in enumerate(top_shadow)}
    common = [p for p in top_served if p in at_shadow]  # in served order
    overlap = len(common) / k if k else 0.0
    if len(common) < 2:
        return ShadowComparison(k, len(common), overlap, None, None)
    # Ranks within the common posts: 0..n-1 in served order, and each post's rank in the shadow's order.
    shadow_order = sorted(common, key=at_shadow.__getitem__)
    shadow_rank = {p: i for i, p in enumerate(shadow_order)}
    ranks = [shadow_rank[p] for p in common]
    n = len(ranks)
    d2 = sum((i - r) ** 2 for i, r in enumerate(ranks))
    spearman = 1.0 - 6.0 * d2 / (n * (n * n - 1))
    concordant = sum(1 for i in range(n) for j in range(i + 1, n) if ranks[i] < ranks[j])
    pairs = n * (n - 1) // 2
    kendall = (2 * concordant - pairs) / pairs  # no ties: a post has one position per slate
    return ShadowComparison(k, n, overlap, spearman, kendall)


class ShadowRunner:
    """Runs shadow work on one background thread; when `max_pending` jobs wait, new ones are skipped and counted.

    Args:
        max_pending: jobs queued or running at most; the shadow must never grow a backlog the service pays for.
        on_skip: called once per skipped job.
    """

    def __init__(self, max_pending: int = 64, on_skip: Callable[[], None] | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._on_skip = on_skip

    def submit(self, job: Callable[[], None]) -> bool:
        if not self._slots.acquire(blocking=False):
            if self._on_skip is not None:
                self._on_skip()
            return False

        def run() -> None:
            try:
                job()
            except Exception:  # a broken shadow must not take the service thread pool with it
                log.exception("shadow job failed")
            finally:
                self._slots.release()

        self._pool.submit(run)
        return True

    def drain(self, timeout: float = 5.0) -> bool:
        """Waits until every job submitted so far has finished (one worker: they run in order); False on timeout."""
        try:
            self._pool.submit(lambda: None).result(timeout)
        except TimeoutError:
            return False
        return True

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
