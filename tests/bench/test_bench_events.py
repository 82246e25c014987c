"""The events benchmark's bookkeeping, without a server (the real run is `python -m bench.events`, by hand or in
`make bench`): the exposure log read incrementally, the delay until a change is first seen, the served config kept
out of the repository's logs/ and data/feast, and rows whose verdict word agrees with their numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import events
from bench.verdicts import check


def _record(request_id: str, hist_length: int, kind: str = "exposure") -> str:
    return json.dumps({"kind": kind, "request_id": request_id, "features": {"hist_length": hist_length}}) + "\n"


def test_the_exposure_index_reads_new_lines_only_and_waits_for_a_half_written_one(tmp_path: Path) -> None:
    log = tmp_path / "exposure.jsonl"
    index = events.ExposureIndex(log)
    index.poll()  # no file yet: nothing, no error
    assert index.records == {}
    log.write_text(_record("a", 3) + _record("s", 9, kind="shadow") + _record("b", 4)[:10])
    assert index.features("a") == {"hist_length": 3}
    assert "s" not in index.records and "b" not in index.records  # a shadow record; b half written
    with log.open("a") as f:
        f.write(_record("b", 4)[10:])
    assert index.features("b") == {"hist_length": 4}
    with pytest.raises(RuntimeError, match="no exposure record for request c"):
        index.features("c", timeout_s=0.01)


def test_the_delay_is_until_the_first_answer_that_shows_the_change() -> None:
    answers = iter([(10.2, False), (10.35, False), (10.5, True)])
    assert events.first_visible(10.0, lambda: next(answers)) == pytest.approx((0.5, 3))
    assert events.first_visible(10.0, lambda: (10.1, True)) == pytest.approx((0.1, 1))
    clock = iter([10.0 + 0.4 * i for i in range(1, 100)])
    delay, asked = events.first_visible(10.0, lambda: (next(clock), False), within_s=1.0)
    assert math.isinf(delay) and asked == 3  # 0.4, 0.8, 1.2 s: past the limit, never seen


def test_stats_of_a_change_never_seen_are_infinite() -> None:
    assert events.stats_s([0.1, 0.2, 0.3]) == pytest.approx((0.2, 0.298))
    assert events.stats_s([0.1, math.inf, 0.2])[1] == math.inf
    row = events.engagement_row("sqlite", [0.1, math.inf], 1, "s")
    assert row.verdict.startswith("missed: never seen") and row.extra["delays_s"][1] == math.inf


@pytest.mark.parametrize(("delays", "word"), [([0.15] * 60, "met"), ([0.15] * 58 + [1.4, 1.5], "missed")])
def test_the_engagement_verdict_agrees_with_its_numbers(delays: list[float], word: str) -> None:
    row = events.engagement_row("redis", delays, len(delays), "s")
    assert row.verdict.startswith(word + ":")
    assert check(row.target, row.verdict) == (True, "")
    assert row.repeats == 60 and "(redis)" in row.name


def test_a_post_row_states_the_bound_and_is_met_only_when_every_next_request_served_it() -> None:
    every = events.post_row("sqlite", False, [0.07] * 50, 50, "s")
    assert every.verdict.startswith("met: 50/50") and "48 h" in every.target and "FreshSource" in every.name
    one_late = events.post_row("sqlite", True, [0.07] * 49 + [0.3], 49, "s")
    assert one_late.verdict.startswith("missed: 49/50") and "InNetworkSource" in one_late.name
    for row in (every, one_late):
        assert check(row.target, row.verdict) == (True, "")


def test_the_config_served_writes_only_under_the_work_dir(tmp_path: Path) -> None:
    salt, params = events.champion_params(events.REPO / "serving" / "variants.yaml", tmp_path / "world")
    assert Path(params["ranker"]) == tmp_path / "world" / "artifacts" / "ranker" / "best"
    assert params["as_of"] == "data"  # not a path: kept
    work, repo = tmp_path / "work", tmp_path / "work" / "features" / "repo"
    fresh = {"store": "sqlite", "ttl_s": 60, "sqlite_path": "data/feast/served.db"}
    for store in ("sqlite", "redis"):
        body = events.bench_config(salt, params, store, repo, work, fresh)
        served, probe = (v["recommender"]["params"] for v in body["variants"])
        assert [v["share"] for v in body["variants"]] == [0.5, 0.5] and body["shadow"] is None
        assert probe == served | events.PROBE and served["online_store"] == store
        assert body["events"]["store"] == store and body["events"]["feast_repo"] == str(repo)
        written = [body["exposure"]["path"], body["events"]["seen_path"], body["fresh_feed"]["sqlite_path"]]
        if store == "sqlite":
            written.append(served["sqlite_path"])
        else:
            assert "sqlite_path" not in served and served["redis"].endswith(f"db={events.REDIS_DB}")
        assert all(Path(p).is_relative_to(work) for p in written), written


def test_a_new_posts_viewers_have_not_muted_or_blocked_its_author() -> None:
    v = events.Viewer
    viewers = [
        v(1, frozenset({7, 8}), frozenset({7})),  # follows 7 but muted 7: its posts are filtered, so 8
        v(2, frozenset({9}), frozenset()),
        v(3, frozenset(), frozenset({8})),  # blocked 8: not the other viewer of 8's post
        v(4, frozenset({8}), frozenset()),
        v(5, frozenset({9}), frozenset()),
    ]
    assert events.post_viewers(viewers) == [(1, 8, 2), (2, 9, 1), (4, 8, 2), (5, 9, 1)]
