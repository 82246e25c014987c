"""The oracle rebuilt from a manifest scores exactly what the generator drew outcomes from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.schema import read_table
from features.oracle import load_world, oracle_click_logits
from features.synth import SynthConfig, World, generate


@pytest.mark.parametrize("drift", ["none", "topic_shift"])
def test_oracle_reproduces_the_logged_click_probabilities(tmp_path: Path, drift: str) -> None:
    generate(SynthConfig.for_scale("nano", seed=5, drift=drift, days=3, drift_day=1), tmp_path / "d")
    imp = read_table(tmp_path / "d", "impressions", columns=["user_id", "post_id", "ts", "position", "p_click"])
    sample = imp.to_pandas().sample(400, random_state=1).reset_index(drop=True)
    ts = ((sample.ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy()
    world = load_world(tmp_path / "d")
    # One query per impression against the whole corpus: the logged pair is one column of each row.
    posts = np.arange(1, len(world.post_author) + 1)
    logits = oracle_click_logits(world, sample.user_id.to_numpy(), ts, posts)
    pair = logits[np.arange(len(sample)), sample.post_id.to_numpy() - 1]
    p_click = 1 / (1 + np.exp(-(pair - world.cfg.truth.w_pos * np.log1p(sample.position.to_numpy()))))
    np.testing.assert_allclose(p_click, sample.p_click.to_numpy(), atol=1e-6)
    # Posts created after the request cannot be recommended.
    created_ms = world.post_created_s * 1000 + int(pd.Timestamp("2026-01-01", tz="UTC").value // 1_000_000)
    assert np.isneginf(logits[created_ms[None, :] > ts[:, None]]).all()


def test_oracle_refuses_a_real_dataset(tmp_path: Path) -> None:
    from core.errors import UserError

    (tmp_path / "manifest.json").write_text(
        '{"dataset": "movielens", "schema_version": "1.0", "rows": {}, "files": {}, "observed_actions": [], '
        '"params": {}}'
    )
    with pytest.raises(UserError, match="synthetic"):
        load_world(tmp_path)


def _nano(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    generate(SynthConfig.for_scale("nano", seed=5, days=3), tmp_path / "d")
    return tmp_path / "d", read_table(tmp_path / "d", "impressions").to_pandas()


def test_action_probabilities_reproduce_every_logged_probability(tmp_path: Path) -> None:
    from features.synth import action_probabilities, relevance

    data, imp = _nano(tmp_path)
    world = load_world(data)
    u, p = imp.user_id.to_numpy() - 1, imp.post_id.to_numpy() - 1
    t = ((imp.ts - pd.Timestamp("2026-01-01", tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy()
    in_network = imp.in_network.to_numpy()
    rel = relevance(world, u, p, t, in_network.astype(np.float64))
    probs, given_click = action_probabilities(world, rel, p, t, imp.position.to_numpy(), in_network)
    for action, values in probs.items():
        np.testing.assert_allclose(values, imp[f"p_{action}"].to_numpy(), atol=1e-6, err_msg=action)
    # P(action) = P(action | click) (P(click) + leak (1 - P(click))) for every conditional action.
    for name, _, _, leak in world.cfg.truth.conditional:
        expected = given_click[name] * (probs["click"] + leak * (1 - probs["click"]))
        np.testing.assert_allclose(probs[name], expected, rtol=1e-12)


def test_informed_oracle_reads_only_earlier_clicks(tmp_path: Path) -> None:
    from features.oracle import informed_probabilities

    data, imp = _nano(tmp_path)
    world = load_world(data)
    frame = imp[imp.ts >= imp.ts.quantile(0.8)].reset_index(drop=True)
    informed = informed_probabilities(world, data, frame, strength=3.0)
    assert informed is not None and set(informed) == set(world_actions(world))
    # By brute force for a few impressions: the user's clicks strictly before it, their posts' topic mix, the
    # population's share of clicks before the frame as the prior; the rest of the relevance is the truth.
    clicks = imp[imp.click == 1]
    prior_rows = clicks[clicks.ts < frame.ts.min()]
    mix = lambda posts: sum(  # noqa: E731
        np.eye(world.cfg.n_topics)[world.post_topic[q]] * world.post_weight[q]
        + (np.eye(world.cfg.n_topics)[world.post_topic2[q]] * (1 - world.post_weight[q]) if world.post_topic2[q] >= 0
           else 0)
        for q in posts
    )  # fmt: skip
    prior = mix(prior_rows.post_id.to_numpy() - 1)
    prior = prior / prior.sum()
    tm, k = world.cfg.truth, world.cfg.n_topics
    # Clicked impressions among them: their own click (at their own time) must not count.
    rows = frame[frame.click == 1].sample(15, random_state=0).index.union(frame.sample(10, random_state=1).index)
    for i in rows:
        row = frame.loc[i]
        mine = clicks[(clicks.user_id == row.user_id) & (clicks.ts < row.ts)].post_id.to_numpy() - 1
        counts = mix(mine) if len(mine) else np.zeros(k)
        pref = (counts + 3.0 * prior) / (np.sum(counts) + 3.0)
        post = row.post_id - 1
        true_mix = mix([post])
        est = float(true_mix @ pref)
        truth = float(true_mix @ world.user_pref[row.user_id - 1].astype(np.float64))
        logit_true = np.log(row.p_click / (1 - row.p_click))
        logit = logit_true + tm.w_topic * (np.log(k * est + 0.05) - np.log(k * truth + 0.05))
        assert informed["click"][i] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-5)


def world_actions(world: World) -> list[str]:
    tm = world.cfg.truth
    return ["click", *(c[0] for c in tm.conditional), *(n[0] for n in tm.negative)]


def test_informed_oracle_declines_a_drifting_preference(tmp_path: Path) -> None:
    from features.oracle import informed_probabilities

    generate(SynthConfig.for_scale("nano", seed=5, drift="topic_shift", days=3, drift_day=1), tmp_path / "d")
    imp = read_table(tmp_path / "d", "impressions").to_pandas()
    assert informed_probabilities(load_world(tmp_path / "d"), tmp_path / "d", imp.head(50)) is None


def test_the_history_informed_oracle_reads_the_clicks_of_the_newest_history_events_only(tmp_path: Path) -> None:
    """The truth with each user's preference taken from the topic mix of the clicked posts among the newest `last`
    events of the row's own history (uniform prior, 3 pseudo-events): checked by hand for rows whose histories
    differ only in what falls outside the window or carries no click."""
    from core.actions import ACTION_NAMES
    from features.oracle import history_informed_probabilities

    data, imp = _nano(tmp_path)
    world = load_world(data)
    click, like = 1 << ACTION_NAMES.index("click"), 1 << ACTION_NAMES.index("like")
    row = imp.iloc[[5]].rename(columns={"ts": "event_timestamp"})
    frame = pd.concat([row] * 4, ignore_index=True)
    topic_a, topic_b = [int(np.flatnonzero((world.post_topic == t) & (world.post_topic2 < 0))[0]) + 1 for t in (0, 1)]
    frame["hist_post_ids"] = [
        [topic_b, topic_a, topic_a],  # newest two clicked on topic 0; the oldest (topic 1) outside last=2
        [topic_a, topic_a],
        [topic_b, topic_b],  # topic 1 events that carry a like but no click: not counted
        [],
    ]
    frame["hist_actions"] = [[click, click, click], [click, click], [like, like], []]
    probs = history_informed_probabilities(world, frame, last=2)
    assert probs is not None
    assert probs["click"][0] == pytest.approx(probs["click"][1], abs=1e-12)  # the window cut the oldest event
    assert probs["click"][2] == pytest.approx(probs["click"][3], abs=1e-12)  # no clicks: the uniform preference
    k, tm = world.cfg.n_topics, world.cfg.truth
    post = int(row["post_id"].iloc[0]) - 1
    mix = np.zeros(k)
    mix[world.post_topic[post]] += world.post_weight[post]
    if world.post_topic2[post] >= 0:
        mix[world.post_topic2[post]] += 1 - world.post_weight[post]
    truth = float(mix @ world.user_pref[int(row["user_id"].iloc[0]) - 1].astype(np.float64))
    logit_true = np.log(row["p_click"].iloc[0] / (1 - row["p_click"].iloc[0]))
    for i, pref in ((1, (np.eye(k)[0] * 2 + 3.0 / k) / 5.0), (3, np.full(k, 1.0 / k))):
        est = float(mix @ pref)
        logit = logit_true + tm.w_topic * (np.log(k * est + 0.05) - np.log(k * truth + 0.05))
        assert probs["click"][i] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-5)
