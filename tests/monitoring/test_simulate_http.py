"""monitoring/simulate_http.py without a server: the day's variants config and the events it sends."""

from __future__ import annotations

from pathlib import Path

import yaml

from monitoring.simulate_http import day_config, post_events


def test_the_day_config_serves_the_days_params_with_every_path_under_the_project(tmp_path: Path) -> None:
    deployed = tmp_path / "variants.yaml"
    deployed.write_text(yaml.safe_dump({
        "salt": "s", "champion": "ranker",
        "variants": [
            {"name": "ranker", "share": 1.0,
             "recommender": {"kind": "pipeline", "params": {"index": "artifacts/index"}}},
            {"name": "popular", "share": 0.0, "recommender": {"kind": "popular", "stats": "data/features/p.parquet"}},
        ],
        "shadow": {"variant": "popular", "share": 0.1},
        "fresh_feed": {"store": "sqlite", "ttl_s": 60},
    }))  # fmt: skip
    params = {"index": "/abs/index", "features": "data/features", "as_of": "2026-01-09T00:00:00+00:00"}
    body = day_config(Path("/proj"), deployed, params, tmp_path / "day", None)
    ranker, popular = body["variants"]
    assert ranker["recommender"]["params"] == {**params, "features": "/proj/data/features"}
    assert popular["recommender"]["stats"] == "/proj/data/features/p.parquet"
    assert "shadow" not in body and body["fresh_feed"] == {"store": "off"} and "events" not in body
    assert body["exposure"]["path"] == str(tmp_path / "day" / "exposure.jsonl") and body["exposure"]["max_files"] == 1
    with_events = day_config(Path("/proj"), deployed, params, tmp_path / "day", Path("/proj/features/repo"))
    assert with_events["events"]["store"] == "sqlite" and with_events["events"]["feast_repo"] == "/proj/features/repo"
    assert params["features"] == "data/features"  # the caller's params are left as they were


def test_new_posts_become_schema_valid_post_events(tmp_path: Path) -> None:
    import json

    from serving.events import read_events

    events = post_events([{"post_id": 7, "author_id": 3, "topic": 2, "media_type": "video", "created_ms": 1_000}])
    assert events == [{"type": "post", "event_id": "sim-post-7", "post_id": 7, "author_id": 3, "topic": 2,
                       "media_type": "video", "ts_ms": 1_000}]  # fmt: skip
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (parsed,) = read_events(tmp_path / "events.jsonl")  # the service's schema, strict
    assert (parsed.type, parsed.post_id, parsed.author_id, parsed.ts_ms) == ("post", 7, 3, 1_000)
