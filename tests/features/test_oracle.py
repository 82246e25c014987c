"""The oracle rebuilt from a manifest scores exactly what the generator drew outcomes from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.schema import read_table
from features.oracle import load_world, oracle_click_logits
from features.synth import SynthConfig, generate


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
