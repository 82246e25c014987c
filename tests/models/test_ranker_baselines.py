"""Ranker baselines: the feature leakage guard, and each baseline learning a simple rule with masked tasks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from core.actions import ACTION_NAMES, DWELL_TIME, prob_column
from models.ranker.baselines import (
    FORBIDDEN_COLUMNS,
    LightGBMBaseline,
    LogisticBaseline,
    MMoEBaseline,
    RankerBaseline,
    label_matrix,
    run_baselines,
    tabular_features,
)
from models.ranker.metrics import auc


def _training_frame(n: int, seed: int) -> pd.DataFrame:
    """A tiny frame shaped like `ember features training-set --model ranker` (a subset of its columns)."""
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp("2026-01-07", tz="UTC") + pd.to_timedelta(np.sort(rng.integers(0, 86_400, n)), unit="s")
    df = pd.DataFrame(
        {
            "impression_id": np.arange(n, dtype=np.int64),
            "request_id": np.arange(n, dtype=np.int64) // 5,
            "user_id": rng.integers(0, 30, n),
            "post_id": rng.integers(0, 100, n),
            "author_id": rng.integers(0, 20, n),
            "event_timestamp": ts,
            "surface": rng.integers(0, 3, n).astype(np.int8),
            "position": np.arange(n, dtype=np.int32) % 5,
            "in_network": rng.random(n) < 0.5,
            "user_follower_count": rng.integers(0, 1000, n).astype(np.int32),
            "user_click_rate_7d": rng.random(n).astype(np.float32),
            "user_country": rng.choice(["US", "IN", "BR"], n).astype(object),
            "user_activity": rng.choice(np.array(["low", "high", None], dtype=object), n),
            "hist_post_ids": [np.arange(3)] * n,
            "hist_length": np.where(rng.random(n) < 0.1, np.nan, rng.integers(1, 50, n)),
            "author_click_rate": rng.random(n).astype(np.float32),
            "post_created_at_ms": (ts.astype("int64") // 1000 - rng.integers(0, 3_600_000, n)).to_numpy(),
            "post_author_id": rng.integers(0, 20, n),
            "post_topic": rng.integers(0, 16, n).astype(np.int32),
            "post_media_type": rng.choice(["text", "video"], n).astype(object),
            "post_click_count": rng.integers(0, 10, n).astype(np.int32),
        }
    )
    for a in ACTION_NAMES:
        df[prob_column(a)] = rng.random(n).astype(np.float32)
        df[a] = (rng.random(n) < df[prob_column(a)]).astype(np.int8)
    df[DWELL_TIME] = rng.exponential(5.0, n).astype(np.float32) * df["dwell"]
    return df


def test_tabular_features_never_reads_labels_or_ids() -> None:
    df = _training_frame(200, seed=0)
    X, names = tabular_features(df)
    assert X.dtype == np.float32 and X.shape == (len(df), len(names))
    assert np.isfinite(X).all()
    leaked = [c for c in names if c in FORBIDDEN_COLUMNS or c.startswith("p_") or c in ("position", DWELL_TIME)]
    assert leaked == []
    for label in (*ACTION_NAMES, DWELL_TIME, "impression_id", "request_id", "user_id", "post_id", "author_id"):
        assert label not in names
    assert not any(c.startswith("hist_") and c != "hist_length" for c in names)
    # Scrambling every label, p_* and id column changes nothing.
    scrambled = df.copy()
    rng = np.random.default_rng(1)
    for c in FORBIDDEN_COLUMNS | {"position"}:
        if c in scrambled.columns:
            scrambled[c] = rng.permutation(scrambled[c].to_numpy())
    X2, names2 = tabular_features(scrambled)
    assert names2 == names and np.array_equal(X, X2)
    assert {"post_age_log1p_hours", "missing_hist", "in_network", "user_country#0"} <= set(names)
    assert X[:, names.index("missing_hist")].sum() == df["hist_length"].isna().sum()


def test_tabular_features_columns_do_not_depend_on_values() -> None:
    df = _training_frame(100, seed=2)
    head, tail = df.iloc[:10].copy(), df.iloc[10:].copy()
    head["user_country"] = "JP"  # a value the other frame never has
    assert tabular_features(head)[1] == tabular_features(tail)[1]


def _rule_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X (n, 6); task 0 = x0 > 0, task 1 = x1 + x2 > 0 (masked on half the rows, where it is garbage), task 2 masked."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0, rng.random(n) < 0.5], axis=1).astype(np.float32)
    mask = np.ones_like(Y, dtype=bool)
    mask[: n // 2, 1] = False
    Y[: n // 2, 1] = 1.0 - Y[: n // 2, 1]  # wrong labels where masked: a model reading them would learn noise
    mask[:, 2] = False
    return X, Y, mask


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogisticBaseline(),
        lambda: LightGBMBaseline(n_estimators=60, learning_rate=0.2, min_child_samples=10, num_threads=1),
        lambda: MMoEBaseline(n_experts=2, expert_dim=16, tower_dim=8, batch_size=64, max_epochs=15, num_threads=1),
    ],
    ids=["logistic", "lightgbm", "mmoe"],
)
def test_baseline_learns_rule_and_ignores_masked_labels(make: Callable[[], RankerBaseline]) -> None:
    X, Y, mask = _rule_data(800, seed=0)
    Xv, Yv, mv = _rule_data(300, seed=1)
    Xt, Yt, _ = _rule_data(400, seed=2)
    model = make().fit(X, Y, Xv, Yv, mask, mv)
    P = model.predict(Xt)
    assert P.shape == (len(Xt), 3) and P.dtype == np.float32
    assert ((P >= 0) & (P <= 1)).all()
    assert auc(Yt[:, 0], P[:, 0]) > 0.8
    clean = slice(len(Xt) // 2, None)  # test rows with clean labels for task 1
    assert auc(Yt[clean, 1], P[clean, 1]) > 0.8
    assert np.ptp(P[:, 2]) < 0.2  # a task with no available row carries no signal
    assert model.seconds > 0


def test_label_matrix_masks_nan() -> None:
    df = pd.DataFrame({"click": [1.0, np.nan, 0.0], "like": [0, 1, 1]})
    Y, m = label_matrix(df, ["click", "like"])
    assert Y.tolist() == [[1, 0], [0, 1], [0, 1]]
    assert m.tolist() == [[True, True], [False, True], [True, True]]


def test_run_baselines_end_to_end() -> None:
    df = _training_frame(600, seed=3)
    # A learnable click: it follows the user's click rate feature.
    df["click"] = (df["user_click_rate_7d"] > 0.5).astype(np.int8)
    out = run_baselines(df.iloc[:400], df.iloc[400:500], df.iloc[500:], ["click", "like"], names=("logistic",))
    assert set(out) == {"logistic"}
    probs = out["logistic"]["probs"]
    assert set(probs) == {"click", "like"} and len(probs["click"]) == 100
    assert auc(df["click"].iloc[500:], probs["click"]) > 0.8
    assert out["logistic"]["seconds"] > 0
