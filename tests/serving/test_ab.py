"""A/B config validation, sticky assignment and the routing table's swaps (serving/ab.py)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from core.errors import UserError
from serving.ab import Router, Variant, assign, bucket, in_shadow, load_config, parse_config
from serving.static_recommender import PopularRecommender

REPO = Path(__file__).resolve().parents[2]
TABLE = {1: (10, 3.0), 2: (11, 2.0)}


def _config(**shares: float) -> dict[str, Any]:
    return {
        "salt": "s1",
        "variants": [
            {"name": n, "share": s, "recommender": {"kind": "popular", "table": TABLE}} for n, s in shares.items()
        ],
    }


def test_bucket_is_pinned_and_in_unit_interval() -> None:
    # blake2b of "salt:user_id", not hash(): these values hold in every process, on every restart and release.
    assert bucket("ember", 1) == 0.6381526076124954
    assert bucket("ember", 123456789) == 0.6667955446842486
    assert bucket("s1", 42) != bucket("s2", 42)
    assert all(0.0 <= bucket("s1", u) < 1.0 for u in range(1000))


def test_assignment_is_identical_in_another_process() -> None:
    config = parse_config(_config(a=0.5, b=0.3, c=0.2))
    here = [assign(config, u) for u in range(200)]
    code = (
        "from serving.ab import parse_config, assign; from tests.serving.test_ab import _config; "
        "c = parse_config(_config(a=0.5, b=0.3, c=0.2)); print(','.join(assign(c, u) for u in range(200)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip().split(",") == here


def test_ten_thousand_users_split_within_two_points_of_the_shares() -> None:
    config = parse_config(_config(control=0.7, twotower=0.2, ranker=0.1))
    counts = Counter(assign(config, u) for u in range(1, 10_001))
    for v in config.variants:
        assert abs(counts[v.name] / 10_000 - v.share) < 0.02, (v.name, counts)


def test_zero_share_variant_gets_nobody_and_full_share_everybody() -> None:
    config = parse_config(_config(a=1.0, b=0.0))
    assert {assign(config, u) for u in range(2000)} == {"a"}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: c["variants"][1].update(share=0.6), "variants: shares sum to 1.1"),
        (lambda c: c["variants"][1].update(name="a"), "variants[1].name: duplicate"),
        (lambda c: c["variants"][0].update(share=1.5), "variants[0].share"),
        (lambda c: c["variants"][0].update(share=-0.1), "variants[0].share"),
        (lambda c: c.update(shadow={"variant": "zz", "share": 0.1}), "shadow.variant"),
        (lambda c: c.update(shadow={"variant": "a", "share": 2}), "shadow.share"),
        (lambda c: c["variants"][0]["recommender"].update(kind="nope"), "variants[0].recommender"),
        (lambda c: c["variants"][0]["recommender"].update(colour=1), "variants[0].recommender.colour"),
        (lambda c: c.update(extra=1), "extra"),
        (lambda c: c.pop("salt"), "salt"),
        (lambda c: c.update(variants=[]), "variants"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, mutate: Any, field: str) -> None:
    import yaml

    body = _config(a=0.5, b=0.5)
    mutate(body)
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(UserError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {field}"), message
    assert "\n" not in message


def test_shares_within_tolerance_are_accepted() -> None:
    config = parse_config(_config(a=0.1, b=0.2, c=0.7))  # 0.1 + 0.2 + 0.7 != 1.0 in floats
    assert [v.share for v in config.variants] == [0.1, 0.2, 0.7]


def test_shadow_share_selects_about_that_share_of_requests() -> None:
    config = parse_config(_config(a=0.5, b=0.5) | {"shadow": {"variant": "b", "share": 0.25}})
    hits = sum(in_shadow(config, f"req-{i}") for i in range(4000))
    assert abs(hits / 4000 - 0.25) < 0.03


class _Counting:
    built: list[str] = []

    @classmethod
    def factory(cls, variant: Variant) -> PopularRecommender:
        cls.built.append(variant.name)
        return PopularRecommender(TABLE, version=f"v-{variant.name}-{len(cls.built)}")


def test_share_change_reuses_loaded_recommenders_and_swaps_one_reference() -> None:
    _Counting.built = []
    router = Router.build(parse_config(_config(a=0.5, b=0.5)), {"popular": _Counting.factory})
    before = router.routing
    after = router.apply(before.config.with_shares({"a": 0.9, "b": 0.1}))
    assert _Counting.built == ["a", "b"]  # nothing rebuilt for a share change
    assert after.recommenders["a"] is before.recommenders["a"]
    assert before.config.variant("a").share == 0.5  # the old snapshot, held by requests in flight, is untouched
    assert router.routing is after


def test_changed_spec_builds_a_new_recommender() -> None:
    _Counting.built = []
    router = Router.build(parse_config(_config(a=1.0)), {"popular": _Counting.factory})
    body = _config(a=1.0)
    body["variants"][0]["recommender"]["table"] = {7: (1, 1.0)}
    router.apply(parse_config(body))
    assert _Counting.built == ["a", "a"]


def test_promote_then_rollback_restores_shares_and_remembers_the_champion() -> None:
    router = Router.build(parse_config(_config(control=0.8, challenger=0.2)))
    router.promote("challenger")
    assert {v.name: v.share for v in router.routing.config.variants} == {"control": 0.0, "challenger": 1.0}
    assert router.previous_champion == "control"
    assert {assign(router.routing.config, u) for u in range(500)} == {"challenger"}
    router.rollback()
    assert {v.name: v.share for v in router.routing.config.variants} == {"control": 0.8, "challenger": 0.2}
    with pytest.raises(LookupError):
        router.rollback()


def test_with_shares_rejects_unknown_variant_and_bad_sum() -> None:
    config = parse_config(_config(a=0.5, b=0.5))
    with pytest.raises(ValueError, match="^zz: not a variant"):
        config.with_shares({"zz": 1.0})
    with pytest.raises(ValueError, match="^variants: shares sum to"):
        config.with_shares({"a": 0.9})
    with pytest.raises(KeyError):
        config.promoted("zz")
