"""The ANN index: kind by corpus size, ids mapped back, the recall gate refuses a poor index and writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.retrieval.index import (
    IndexConfig,
    IndexQualityError,
    build_index,
    load_index,
    publish,
    recall_against_exact,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 32))
    items = _unit(centers[rng.integers(0, 40, 4000)] + 0.35 * rng.normal(size=(4000, 32)))
    users = _unit(centers[rng.integers(0, 40, 300)] + 0.5 * rng.normal(size=(300, 32)))
    ids = np.arange(4000, dtype=np.int64) * 7 + 1000  # ids are not row positions
    return ids, items, users


def test_small_corpus_is_exact_and_returns_item_ids(corpus) -> None:
    ids, items, users = corpus
    ann = build_index(ids, items, IndexConfig())
    assert ann.kind == "exact"
    got, scores = ann.search(users[:5], 10)
    best = ids[np.argmax(users[:5] @ items.T, axis=1)]
    assert (got[:, 0] == best).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    assert recall_against_exact(ann, items, users, 100) == 1.0


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_large_corpus_uses_the_approximate_index_and_passes_the_gate(corpus, tmp_path: Path, kind: str) -> None:
    ids, items, users = corpus
    cfg = IndexConfig(exact_below=1000, approximate=kind)
    meta = publish(tmp_path / "index", ids, items, users, cfg, model="two_tower@test")
    assert meta["kind"] == kind and meta["recall_at_100"] >= 0.95
    loaded = load_index(tmp_path / "index")
    fresh = build_index(ids, items, cfg)
    assert (loaded.search(users[:20], 50)[0] == fresh.search(users[:20], 50)[0]).all()


def test_poor_index_is_refused_and_nothing_is_written(corpus, tmp_path: Path) -> None:
    ids, items, users = corpus
    bad = IndexConfig(exact_below=1000, approximate="hnsw", hnsw_m=2, ef_construction=4, ef_search=1)
    with pytest.raises(IndexQualityError, match="below the 0.95 gate"):
        publish(tmp_path / "index", ids, items, users, bad, model="two_tower@test")
    coarse = IndexConfig(exact_below=1000, ivf_lists=64, nprobe=1)  # one cell of 64: most neighbours are elsewhere
    with pytest.raises(IndexQualityError, match="nprobe=1"):
        publish(tmp_path / "index", ids, items, users, coarse, model="two_tower@test")
    assert list(tmp_path.iterdir()) == []


def test_mismatched_inputs_are_a_user_error(corpus) -> None:
    from core.errors import UserError

    ids, items, _ = corpus
    with pytest.raises(UserError, match="4000 ids for 10 embeddings"):
        build_index(ids, items[:10], IndexConfig())
