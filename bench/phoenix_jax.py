"""The Phoenix ranker (xai-org/x-algorithm, JAX) timed call by call: the anchor bench.ranker runs beside Ember.

This file runs in the anchor's own venv (jax, dm-haiku), never in the project's, and imports nothing of Ember; it is
started by bench/phoenix_anchor.py with PHX set to the x-algorithm release's phoenix/ folder:

    PHX=<x-algorithm>/phoenix JAX_PLATFORMS=cpu <anchor venv>/bin/python bench/phoenix_jax.py --candidates 64,512

It builds the model the way the release's runners.RecsysInferenceRunner does (PhoenixModelConfig.make() under
hk.transform; sigmoid of the logits and an argsort of the first action, as its rank_candidates), with the shape of
../shared/anchors/phoenix/README.md (D 128, 4 layers, 4 query and 4 key/value heads of 32, history 127) and, as
../shared/anchors/phoenix/phoenix_bench_rank.py does, random weights (a zero-initialised model scores every candidate
0.5). Every call is jitted and waited for (block_until_ready). It prints one JSON object: per (candidates, dtype) the
seconds of each timed call, the first (compiling) call and XLA's FLOP count of the compiled call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

N_ACTIONS = 19  # len(runners.ACTIONS) in the release: 18 engagement probabilities and dwell_time


def _inputs(np: Any, hist: int, cand: int, emb: int, seed: int = 0) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """One request: hashed ids >= 1 (0 is padding), every history slot filled, embeddings already looked up."""
    rng = np.random.default_rng(seed)

    def ids(*shape: int) -> Any:
        return rng.integers(1, 100_000, size=(1, *shape)).astype(np.int32)

    batch = dict(
        user_hashes=ids(2),
        history_post_hashes=ids(hist, 2),
        history_author_hashes=ids(hist, 2),
        history_actions=(rng.random((1, hist, N_ACTIONS)) > 0.7).astype(np.float32),
        history_product_surface=rng.integers(0, 16, size=(1, hist)).astype(np.int32),
        candidate_post_hashes=ids(cand, 2),
        candidate_author_hashes=ids(cand, 2),
        candidate_product_surface=rng.integers(0, 16, size=(1, cand)).astype(np.int32),
    )
    # RecsysEmbeddings' field order: user, history post, candidate post, history author, candidate author.
    shapes = [(1, 2, emb), (1, hist, 2, emb), (1, cand, 2, emb), (1, hist, 2, emb), (1, cand, 2, emb)]
    embeddings = tuple(rng.normal(size=s).astype(np.float32) for s in shapes)
    return batch, embeddings


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emb", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv", type=int, default=4)
    p.add_argument("--key", type=int, default=32)
    p.add_argument("--wf", type=float, default=2.0, help="widening factor of the FFN")
    p.add_argument("--hist", type=int, default=127)
    p.add_argument("--candidates", default="64", help="comma-separated candidate counts")
    p.add_argument("--dtypes", default="bfloat16,float32", help="bfloat16 is what the release's runner sets")
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--cpus", default="", help="comma-separated CPU ids to pin to (before jax starts its threads)")
    return p.parse_args()


def _model(a: argparse.Namespace, cand: int, dtype: str) -> tuple[Any, Any, Any, Any]:
    """Phoenix's ranker at the benchmark's shape and dtype, with its inputs and seeded weights: (jitted call, params,
    batch, embedding arrays)."""
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import numpy as np
    from grok import TransformerConfig
    from recsys_model import HashConfig, PhoenixModelConfig, RecsysBatch, RecsysEmbeddings

    cfg = PhoenixModelConfig(
        emb_size=a.emb,
        num_actions=N_ACTIONS,
        history_seq_len=a.hist,
        candidate_seq_len=cand,
        hash_config=HashConfig(2, 2, 2),
        product_surface_vocab_size=16,
        model=TransformerConfig(emb_size=a.emb, widening_factor=a.wf, key_size=a.key, num_q_heads=a.heads,
                                num_kv_heads=a.kv, num_layers=a.layers, attn_output_multiplier=0.125),
    )  # fmt: skip
    cfg.initialize()
    cfg.fprop_dtype = getattr(jnp, dtype)

    def rank(batch: Any, embeddings: Any, cfg: Any = cfg) -> Any:
        probs = jax.nn.sigmoid(cfg.make()(batch, embeddings).logits)
        return probs, jnp.argsort(-probs[:, :, 0], axis=-1)

    model = hk.without_apply_rng(hk.transform(rank))
    raw_batch, emb_arrays = _inputs(np, a.hist, cand, a.emb)
    batch = RecsysBatch(**raw_batch)
    params = model.init(jax.random.PRNGKey(42), batch, RecsysEmbeddings(*emb_arrays))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef,
        [
            1.0 + 0.1 * jax.random.normal(k, x.shape) if x.ndim == 1 else 0.02 * jax.random.normal(k, x.shape)
            for k, x in zip(keys, leaves, strict=True)
        ],
    )
    # RecsysEmbeddings is a plain dataclass, not a pytree: it crosses jit as a tuple.
    call = jax.jit(lambda pr, b, e, model=model: model.apply(pr, b, RecsysEmbeddings(*e)))
    return call, params, batch, emb_arrays


def _measure(a: argparse.Namespace, cand: int, dtype: str) -> tuple[dict[str, Any], int]:
    """One (candidates, dtype) point: the first call, `a.warmup` calls, then `a.runs` timed calls; with the number of
    parameters."""
    import jax
    import numpy as np

    call, params, batch, emb_arrays = _model(a, cand, dtype)
    start = time.perf_counter()
    out = jax.block_until_ready(call(params, batch, emb_arrays))
    first = time.perf_counter() - start
    cost = call.lower(params, batch, emb_arrays).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    for _ in range(a.warmup):
        jax.block_until_ready(call(params, batch, emb_arrays))
    seconds = []
    for _ in range(a.runs):
        start = time.perf_counter()
        out = jax.block_until_ready(call(params, batch, emb_arrays))
        seconds.append(time.perf_counter() - start)
    probs = np.asarray(out[0], dtype=np.float32)
    assert probs.shape == (1, cand, N_ACTIONS) and np.isfinite(probs).all()
    result = {
        "candidates": cand,
        "dtype": dtype,
        "first_call_s": first,
        "seconds": seconds,
        "flops": float(cost.get("flops", 0.0)) if cost else 0.0,
        "p_range": [float(probs.min()), float(probs.max())],
    }
    return result, int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def main() -> None:
    a = _args()
    if a.cpus:
        os.sched_setaffinity(0, {int(c) for c in a.cpus.split(",")})
    sys.path.insert(0, os.environ["PHX"])
    import haiku as hk
    import jax

    results, n_params = [], 0
    for cand in (int(c) for c in a.candidates.split(",") if c):
        for dtype in (d for d in a.dtypes.split(",") if d):
            result, n_params = _measure(a, cand, dtype)
            results.append(result)
    print(
        json.dumps(
            {
                "jax": jax.__version__,
                "haiku": hk.__version__,
                "platform": jax.devices()[0].platform,
                "cpus": len(os.sched_getaffinity(0)),
                "params": n_params,
                "shape": f"D{a.emb}, {a.layers} layers, {a.heads}/{a.kv} heads of {a.key}, FFN x{a.wf:g}, "
                f"history {a.hist}",
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
