"""Shadow comparison metrics (overlap@k, Spearman, Kendall) and the bounded shadow runner."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from serving.ab import Variant
from serving.shadow import ShadowRunner, ShadowSlate, compare
from serving.shadow_process import ShadowProcess


def test_identical_slates_agree_fully() -> None:
    r = compare([1, 2, 3, 4], [1, 2, 3, 4], k=4)
    assert (r.overlap, r.common, r.spearman, r.kendall) == (1.0, 4, 1.0, 1.0)


def test_reversed_slate_has_full_overlap_and_negative_correlation() -> None:
    r = compare([1, 2, 3, 4], [4, 3, 2, 1], k=4)
    assert (r.overlap, r.spearman, r.kendall) == (1.0, -1.0, -1.0)


def test_correlation_is_on_the_common_posts_only() -> None:
    # Common: 1, 2, 3 (served order), shadow order 2, 1, 3: one discordant pair of three.
    r = compare([1, 2, 3, 9], [2, 7, 1, 3], k=4)
    assert r.common == 3 and r.overlap == 0.75
    assert r.kendall == pytest.approx(1 / 3)
    assert r.spearman == pytest.approx(0.5)  # d = (1, 1, 0): 1 - 6 * 2 / (3 * 8)


def test_below_two_common_posts_there_is_no_correlation() -> None:
    r = compare([1, 2], [2, 5], k=2)
    assert (r.overlap, r.spearman, r.kendall) == (0.5, None, None)
    assert compare([], [], k=3).overlap == 0.0


def test_only_the_top_k_counts() -> None:
    assert compare([1, 2, 3], [3, 2, 1], k=2).overlap == 0.5


def test_runner_skips_when_the_backlog_is_full_and_survives_a_failing_job() -> None:
    skipped: list[int] = []
    runner = ShadowRunner(max_pending=2, on_skip=lambda: skipped.append(1))
    release = threading.Event()
    done: list[int] = []

    def wait() -> None:
        release.wait(5)
        done.append(1)

    def boom() -> None:
        raise RuntimeError("shadow variant broke")

    assert runner.submit(wait) and runner.submit(boom)
    assert not runner.submit(wait)
    assert skipped == [1]
    release.set()
    runner.close()
    assert done == [1]
    runner2 = ShadowRunner(max_pending=1)
    assert runner2.submit(lambda: None)
    runner2.close()


def test_drain_waits_for_every_job_submitted_before_it() -> None:
    runner = ShadowRunner(max_pending=8)
    release = threading.Event()
    done: list[int] = []

    def job(n: int) -> None:
        release.wait(5)
        done.append(n)

    for n in range(3):
        assert runner.submit(lambda n=n: job(n))
    assert not runner.drain(timeout=0.05)  # the first job is still blocked: drain says so instead of returning early
    release.set()
    assert runner.drain(timeout=5)
    assert done == [0, 1, 2]
    runner.close()


def _popular(name: str, **spec: object) -> Variant:
    return Variant.model_validate({"name": name, "share": 0.0, "recommender": {"kind": "popular", **spec}})


TABLE = {101: [7, 0.9], 102: [8, 0.8], 103: [9, 0.7], 104: [7, 0.6]}


def test_a_shadow_process_serves_its_variant_from_the_spec_and_hands_each_slate_back() -> None:
    got: list[tuple[object, ShadowSlate | None, str | None]] = []
    proc = ShadowProcess(_popular("treatment", table=TABLE), lambda ctx, slate, err: got.append((ctx, slate, err)))
    try:
        assert proc.submit("a", user_id=1, k=2, seen=frozenset(), surface=0)
        assert proc.submit("b", user_id=1, k=3, seen=frozenset({101}), surface=0)
        assert proc.submit("c", user_id=9, k=4, seen=frozenset(), surface=0)  # user 9 wrote post 103
        assert proc.drain(timeout=60.0)
        assert proc.alive and proc.settled
    finally:
        proc.close()
    by = {ctx: (slate, err) for ctx, slate, err in got}
    assert set(by) == {"a", "b", "c"} and all(err is None for _, err in by.values())
    assert [p for p, _ in by["a"][0].items] == [101, 102]  # type: ignore[union-attr]
    assert [p for p, _ in by["b"][0].items] == [102, 103, 104]  # type: ignore[union-attr]
    assert [p for p, _ in by["c"][0].items] == [101, 102, 104]  # type: ignore[union-attr]
    assert by["a"][0].version == "popular:treatment" and by["a"][0].items[0][1] == 0.9  # type: ignore[union-attr]
    assert not proc.alive  # closed


def test_a_shadow_process_that_cannot_build_its_variant_fails_what_it_held_and_skips_the_rest(tmp_path: Path) -> None:
    got: list[tuple[object, ShadowSlate | None, str | None]] = []
    skipped: list[int] = []
    proc = ShadowProcess(
        _popular("broken", stats=str(tmp_path / "missing.parquet")),
        lambda ctx, slate, err: got.append((ctx, slate, err)),
        on_skip=lambda: skipped.append(1),
        max_pending=1,
    )
    try:
        assert proc.submit("first", user_id=1, k=2, seen=frozenset(), surface=0)
        assert not proc.submit("second", user_id=1, k=2, seen=frozenset(), surface=0)  # one out: the bound
        assert proc.drain(timeout=60.0)
        assert not proc.alive and proc.settled
        assert not proc.submit("third", user_id=1, k=2, seen=frozenset(), surface=0)  # the child is gone
    finally:
        proc.close()
    assert len(got) == 1 and got[0][0] == "first" and got[0][1] is None
    assert "missing.parquet" in str(got[0][2])
    assert len(skipped) == 2
