"""ANN index over candidate-tower embeddings: exact inner product below `exact_below` items (50,000 by default), then
IVF-Flat (the default: 4 sqrt(N) cells, nprobe 32) or HNSW on request (`approximate="hnsw"`: M 32, efConstruction
200, efSearch 256), published only when its Recall@k against exact search on held-out users reaches `min_recall`.

Why IVF: on 1M x 64 vectors (BENCHMARKS.md, models, 2026-11-23; top-1000, one query per call on one thread) IVF-Flat
with 1,024 cells built in 6.2 s and reached Recall@100 0.998 at p99 0.49 ms (nprobe 8), 0.999 at 0.71 ms (16) and at
1.12 ms (32), where HNSW with M 16 and efConstruction 40 built in 38 s and stopped at Recall@100 0.919-0.924 (efSearch
1000-1400, p99 2.0-2.7 ms). Those runs used 1,024 cells; the default here, 4 sqrt(N), is 4,000 cells at 1M."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import config_dataclass
from core.errors import UserError
from core.io import atomic_dir


class IndexQualityError(UserError):
    """The approximate index loses too many true neighbours to be published."""


@config_dataclass
class IndexConfig:
    exact_below: int = 50_000  # exact search is fast enough (and perfect) for corpora this small
    approximate: str = "ivf"  # above exact_below: ivf (IndexIVFFlat) or hnsw (IndexHNSWFlat)
    ivf_lists: int = 0  # k-means cells; 0 = 4 sqrt(N), the usual rule
    nprobe: int = 32  # cells searched per query: recall/latency trade-off, checked by the recall gate
    ivf_train: int = 131_072  # vectors the k-means is trained on (a seeded sample beyond this)
    hnsw_m: int = 32  # graph degree: recall/memory trade-off
    ef_construction: int = 200
    ef_search: int = 256  # search breadth: recall/latency trade-off, checked by the recall gate
    k: int = 100
    min_recall: float = 0.95

    def __post_init__(self) -> None:
        if self.approximate not in ("ivf", "hnsw"):
            raise UserError(f"index: approximate={self.approximate!r} is not one of ivf, hnsw")


@dataclass
class AnnIndex:
    """A faiss index with the item ids it returns."""

    index: Any  # faiss.Index over row positions
    item_ids: np.ndarray  # (N,) int64: row position -> item id
    kind: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items by inner product.

        Args:
            queries: (B, D) float32, L2-normalised user embeddings.
            k: items per query.

        Returns:
            ids (B, k) int64 (-1 where fewer than k items exist) and scores (B, k) float32.
        """
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        ids = np.where(rows >= 0, self.item_ids[np.maximum(rows, 0)], -1)
        return ids, scores


def build_index(item_ids: np.ndarray, item_emb: np.ndarray, cfg: IndexConfig) -> AnnIndex:
    """Builds the index; the kind is chosen by corpus size.

    Args:
        item_ids: (N,) int64 ids of the corpus.
        item_emb: (N, D) float32 candidate-tower embeddings (L2-normalised, so inner product = cosine).
    """
    import faiss

    if len(item_ids) != len(item_emb) or len(item_ids) == 0:
        raise UserError(f"index: {len(item_ids)} ids for {len(item_emb)} embeddings (need the same, > 0)")
    emb = np.ascontiguousarray(item_emb, dtype=np.float32)
    d = emb.shape[1]
    index: Any
    if len(emb) < cfg.exact_below:
        index, kind = faiss.IndexFlatIP(d), "exact"
    elif cfg.approximate == "ivf":
        lists = cfg.ivf_lists or max(1, int(4 * np.sqrt(len(emb))))
        lists = min(lists, len(emb))
        index = faiss.index_factory(d, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)  # owns its quantizer
        sample = emb
        if len(emb) > cfg.ivf_train:
            sample = emb[np.random.default_rng(0).choice(len(emb), cfg.ivf_train, replace=False)]
        index.train(sample)
        faiss.extract_index_ivf(index).nprobe = cfg.nprobe
        kind = "ivf"
    else:
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        kind = "hnsw"
    index.add(emb)
    return AnnIndex(index=index, item_ids=np.asarray(item_ids, dtype=np.int64), kind=kind)


def recall_against_exact(ann: AnnIndex, item_emb: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k (by inner product) that the index also returns."""
    import faiss

    exact = faiss.IndexFlatIP(item_emb.shape[1])
    exact.add(np.ascontiguousarray(item_emb, dtype=np.float32))
    k = min(k, len(item_emb))
    _, truth = exact.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    got, _ = ann.search(queries, k)
    truth_ids = ann.item_ids[truth]
    hits = [len(np.intersect1d(t, g)) for t, g in zip(truth_ids, got, strict=True)]
    return float(np.mean(hits) / k)


def publish(
    out: Path, item_ids: np.ndarray, item_emb: np.ndarray, heldout_users: np.ndarray, cfg: IndexConfig, model: str
) -> dict[str, Any]:
    """Builds, checks and writes the index (atomically): refuses when Recall@k < cfg.min_recall.

    Args:
        heldout_users: (Q, D) user embeddings of users not used to tune the index.
        model: the model version the embeddings come from (written beside the index).
    """
    import faiss

    ann = build_index(item_ids, item_emb, cfg)
    recall = recall_against_exact(ann, item_emb, heldout_users, cfg.k)
    if recall < cfg.min_recall:
        raise IndexQualityError(
            f"index: Recall@{cfg.k} vs exact search is {recall:.3f} on {len(heldout_users)} held-out users, "
            f"below the {cfg.min_recall} gate ({ann.kind}, {_settings(ann.kind, cfg)}): not published"
        )
    meta = {"kind": ann.kind, "n_items": int(len(item_ids)), "dim": int(item_emb.shape[1]), "model": model}
    meta |= {f"recall_at_{cfg.k}": round(recall, 4), "config": asdict(cfg)}
    with atomic_dir(out) as tmp:
        faiss.write_index(ann.index, str(tmp / "index.faiss"))
        np.save(tmp / "item_ids.npy", ann.item_ids)
        (tmp / "index.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _settings(kind: str, cfg: IndexConfig) -> str:
    if kind == "ivf":
        return f"nprobe={cfg.nprobe}"
    return f"M={cfg.hnsw_m}, efSearch={cfg.ef_search}"


def load_index(directory: Path) -> AnnIndex:
    """Loads a published index (ids with allow_pickle=False: no pickle of untrusted data)."""
    import faiss

    meta = json.loads((directory / "index.json").read_text())
    index: Any = faiss.read_index(str(directory / "index.faiss"))
    if meta["kind"] == "hnsw":
        index.hnsw.efSearch = meta["config"]["ef_search"]
    if meta["kind"] == "ivf":
        faiss.extract_index_ivf(index).nprobe = meta["config"]["nprobe"]  # a search setting, not in the file
    return AnnIndex(index=index, item_ids=np.load(directory / "item_ids.npy", allow_pickle=False), kind=meta["kind"])
