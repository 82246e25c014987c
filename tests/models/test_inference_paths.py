"""The inference paths serving runs (issue 15.3) against the straightforward computation they replace: numpy hashing
and gathers (bit-equal), numpy time buckets (bit-equal), `Block.infer`, `Ranker.encode_user` + `score_candidates`
against `Ranker.forward` one candidate at a time, `TwoTower.embed_users` against `user_embedding` (equal up to float
rounding), and the derived weights rebuilt when the weights change."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.layers import Block, MultiHashEmbedding, Rotary, lookup_np, projected_actions_np, signed_actions
from models.ranker.model import CandidateBatch, Ranker, RankerConfig, RankerOutput
from models.retrieval.model import (
    TwoTower,
    TwoTowerConfig,
    UserFeatures,
    time_bucket,
    time_bucket_edges,
    time_bucket_np,
)

# Float rounding only: the inference paths fuse projections, fold the candidates' rotary into their weights, run the
# user side through numpy's BLAS and add in a different order. Observed: ~1e-6 on unit-scale logits at width 32, 3e-6
# at width 128, where Ranker.forward itself moves by 2.8e-6 between scoring 4 candidates together and one at a time.
TOL = dict(rtol=1e-5, atol=5e-6)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_numpy_hashing_and_lookups_equal_the_torch_ones_exactly() -> None:
    special = torch.tensor([0, 1, 2**31 - 2, 2**31 - 1, 2**31, 2**62, -1, -(2**62), 0, 7])
    ids = torch.cat([special, torch.randint(-(10**18), 10**18, (1000,), generator=torch.Generator().manual_seed(0))])
    tables = [MultiHashEmbedding(rows, 8, 2, seed) for rows, seed in ((4096, 1), (1024, 2), (64, 3))]
    for shape in ((1,), (1, 2), (2, 4), (9,), (2, 500)):  # <= 8 ids in all: the Python-int path; more: numpy
        n = int(np.prod(shape))
        batch = [ids[k : k + n].reshape(shape) for k in range(3)]
        with torch.no_grad():
            want = [t(i).numpy() for t, i in zip(tables, batch, strict=True)]
            summed = [t(i).sum(-2).numpy() for t, i in zip(tables, batch, strict=True)]
        got = lookup_np(tables, [i.numpy() for i in batch])
        got_summed = lookup_np(tables, [i.numpy() for i in batch], summed=True)
        for k, t in enumerate(tables):
            assert np.array_equal(t.hash_np(batch[k].numpy()), t.hash(batch[k]).numpy()), (shape, k)
            assert np.array_equal(got[k], want[k]) and np.array_equal(got_summed[k], summed[k]), (shape, k)
    three = MultiHashEmbedding(50, 4, n_hashes=3, seed=5)
    with torch.no_grad():
        assert np.array_equal(three.summed_np(ids[:600].numpy()), three(ids[:600]).sum(-2).numpy())


def test_numpy_time_buckets_equal_time_bucket_exactly() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 40):
        edges = time_bucket_edges(n)
        ms = np.concatenate(
            [
                rng.integers(-(10**6), 10**13, 20_000),
                rng.integers(-5, 10**6, 20_000),
                np.array([-(2**63), -1, 0, 1, 2**62, 2**63 - 1]),
                (edges[:, None] + np.arange(-300, 300)).ravel(),  # every bucket edge and around it
            ]
        )
        assert np.array_equal(time_bucket_np(ms, n), time_bucket(torch.from_numpy(ms), n).numpy()), n


def test_projected_action_table_equals_the_projection_of_signed_actions() -> None:
    proj, owner = torch.nn.Linear(13, 6, bias=False), torch.nn.Module()
    masks = np.array([[0, 1, 5, 8191], [4096, 3, 0, 2]])
    want = torch.nn.functional.linear(signed_actions(torch.from_numpy(masks), 13), proj.weight).detach().numpy()
    np.testing.assert_allclose(projected_actions_np(owner, proj, masks, 13), want, rtol=1e-6, atol=1e-6)  # 1 ulp
    beyond = np.array([[8192, -1, 1 << 20, 3]])  # bits outside the vocabulary: computed, not read from the table
    want = torch.nn.functional.linear(signed_actions(torch.from_numpy(beyond), 13), proj.weight).detach().numpy()
    np.testing.assert_array_equal(projected_actions_np(owner, proj, beyond, 13), want)


@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 1), (4, 2), (4, 4)])
def test_block_infer_equals_forward(heads: int, kv_heads: int) -> None:
    torch.manual_seed(0)
    block = Block(32, heads, kv_heads, 4.0, "geglu").eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    rotary = Rotary(32 // heads, 40)
    x, positions = torch.randn(3, 17, 32), torch.randint(0, 40, (3, 17))
    mask = torch.rand(3, 1, 1, 17) > 0.3
    mask[..., 0] = True
    cos, sin = rotary.cos[positions], rotary.sin[positions]
    with torch.inference_mode():
        kv_ref: list[tuple[torch.Tensor, torch.Tensor]] = []
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        want = block(x, cos.unsqueeze(1), sin.unsqueeze(1), mask, kv_ref)
        got = block.infer(x, cos.unsqueeze(2), sin.unsqueeze(2), mask, kv)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(kv[0][0], kv_ref[0][0], rtol=0, atol=0)  # keys and values: the same projections
    torch.testing.assert_close(kv[0][1], kv_ref[0][1], rtol=0, atol=0)


# The ranker ---------------------------------------------------------------------------------------------------------

RANKER = RankerConfig.preset("nano", max_history=6, max_candidates=4)
RANKERS = {
    "served": RANKER,  # history attributes, in-network flag, position tower (the make run ranker's options)
    "funnel, wide, bins, user in candidates, gqa": replace(
        RANKER,
        head_mode="funnel",
        wide=True,
        dense_bins=4,
        user_in_candidate=True,
        learn_blend=True,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
    ),
    "causal": replace(RANKER, causal=True, history_attributes=False),
    # too wide for numpy's single-threaded products (Block.numpy_sized): the user side runs torch's Block.infer
    "wide (torch blocks)": replace(RANKER, d_model=128, n_heads=4, n_kv_heads=2),
}


def ranker(cfg: RankerConfig, seed: int = 0) -> Ranker:
    torch.manual_seed(seed)
    model = Ranker(cfg).eval()
    with torch.no_grad():  # trained-looking: every table and offset non-zero
        for name, p in model.named_parameters():
            if "weight" in name and p.dim() == 2:
                p.normal_(std=0.3 * (32 / p.shape[1]) ** 0.5)  # unit-scale activations at any width
        model.embedder.dense_mean.uniform_(0, 2)
        model.embedder.dense_std.uniform_(0.5, 2)
        if cfg.dense_bins:
            model.embedder.bin_edges.copy_(torch.sort(torch.rand_like(model.embedder.bin_edges) * 4, -1).values)
    return model


def ranker_user(cfg: RankerConfig, lengths: list[int], seed: int = 0) -> tuple[UserFeatures, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, S = len(lengths), cfg.max_history
    valid = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]

    def ints(low: int, high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(low, high, shape, generator=g)

    user = UserFeatures(
        user_ids=ints(1, 10**9, (B,)),
        attribute_ids=ints(0, 10**9, (B, len(cfg.user_attributes))),
        hist_post_ids=ints(1, 10**9, (B, S)) * valid,
        hist_author_ids=ints(1, 10**6, (B, S)) * valid,
        hist_actions=ints(0, 1 << 13, (B, S)) * valid,
        hist_surfaces=ints(0, 4, (B, S)) * valid,
        hist_gap_ms=ints(-1, 10**9, (B, S)) * valid,
    )
    return user, ints(0, 10**6, (B, S, len(cfg.candidate_attributes))) * valid[..., None]


def ranker_candidates(cfg: RankerConfig, B: int, C: int, seed: int = 1) -> CandidateBatch:
    g = torch.Generator().manual_seed(seed)
    attributes = torch.randint(0, 5, (B, C, len(cfg.candidate_attributes)), generator=g) * 1_000_003  # a few values
    return CandidateBatch(
        post_ids=torch.randint(1, 10**9, (B, C), generator=g),
        author_ids=torch.randint(1, 10**6, (B, C), generator=g),
        surfaces=torch.randint(0, 4, (B, C), generator=g),
        age_ms=torch.randint(-1, 10**9, (B, C), generator=g),
        dense=torch.rand(B, C, len(cfg.candidate_features), generator=g) * 100,
        attributes=attributes,
        in_network=torch.randint(0, 2, (B, C), generator=g).bool(),
        positions=torch.full((B, C), -1),  # serving: the slot is unknown
        valid=torch.ones(B, C, dtype=torch.bool),
    )


def test_the_wide_configs_take_the_torch_blocks() -> None:
    assert Ranker(RANKERS["served"]).layers[0].numpy_sized(RANKER.max_history + 1)
    assert not Ranker(RANKERS["wide (torch blocks)"]).layers[0].numpy_sized(RANKER.max_history + 1)
    assert not TwoTower(TOWERS["wide (torch blocks)"]).user_tower.blocks[0].numpy_sized(TOWER.max_history + 1)  # type: ignore[operator]


@pytest.mark.parametrize("name", list(RANKERS))
def test_served_scores_equal_forward_one_candidate_at_a_time(name: str) -> None:
    """The serving path (user encoded once, every candidate in one chunk, numpy tokens, fused weights) gives each
    candidate what the reference forward gives it scored alone: candidate isolation and the same outputs."""
    cfg = RANKERS[name]
    model = ranker(cfg)
    user, attrs = ranker_user(cfg, [6, 2, 0])
    cands = ranker_candidates(cfg, 3, 11)
    served = model.score_candidates(model.encode_user(user, attrs), cands, chunk=1024)
    with torch.no_grad():
        alone = torch.cat([model(user, cands.slice(i, i + 1), attrs).logits for i in range(11)], 1)
        assert served.logits.shape == alone.shape == (3, 11, len(model.tasks))
        torch.testing.assert_close(served.logits, alone, **TOL)
        torch.testing.assert_close(model.predictions(served), model.predictions(RankerOutput(alone, None)), **TOL)
    if cfg.learn_blend:
        with torch.no_grad():
            want = model(user, cands.slice(0, 1), attrs).blend_multipliers
        assert served.blend_multipliers is not None and want is not None
        torch.testing.assert_close(served.blend_multipliers, want, **TOL)
    again = model.score_candidates(model.encode_user(user, attrs), cands.slice(3, 7), chunk=2)
    torch.testing.assert_close(again.logits, served.logits[:, 3:7], **TOL)  # other candidates change nothing


@pytest.mark.parametrize("name", list(RANKERS))
def test_numpy_tokens_equal_the_torch_tokens(name: str) -> None:
    cfg = RANKERS[name]
    e = ranker(cfg).embedder
    user, attrs = ranker_user(cfg, [6, 3, 0])
    cands = ranker_candidates(cfg, 3, 9)
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(e.user_token_np(user)), e.user_token(user), **TOL)
        torch.testing.assert_close(
            torch.from_numpy(e.history_tokens_np(user, attrs)), e.history_tokens(user, attrs), **TOL
        )
        torch.testing.assert_close(torch.from_numpy(e.candidate_tokens_np(cands)), e.candidate_tokens(cands), **TOL)


def test_logged_positions_still_get_their_offset_on_the_serving_path() -> None:
    model = ranker(RANKER)
    with torch.no_grad():
        model.position_bias.weight[1:].normal_()  # type: ignore[union-attr]
    user, attrs = ranker_user(RANKER, [4])
    cands = replace(ranker_candidates(RANKER, 1, 5), positions=torch.tensor([[0, 3, -1, 1, 9]]))
    served = model.score_candidates(model.encode_user(user, attrs), cands)
    with torch.no_grad():
        alone = torch.cat([model(user, cands.slice(i, i + 1), attrs).logits for i in range(5)], 1)
    torch.testing.assert_close(served.logits, alone, **TOL)


def test_derived_weights_follow_the_weights() -> None:
    """Fused projections are cached beside the weights: a weight changed in place (an optimizer step, loading a
    state dict) rebuilds them, so the serving path never scores with stale weights."""
    model, other = ranker(RANKER, seed=0), ranker(RANKER, seed=1)
    user, attrs = ranker_user(RANKER, [5])
    cands = ranker_candidates(RANKER, 1, 6)
    before = model.score_candidates(model.encode_user(user, attrs), cands).logits
    model.load_state_dict(other.state_dict())
    after = model.score_candidates(model.encode_user(user, attrs), cands).logits
    want = other.score_candidates(other.encode_user(user, attrs), cands).logits
    torch.testing.assert_close(after, want, rtol=0, atol=0)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        alone = torch.cat([model(user, cands.slice(i, i + 1), attrs).logits for i in range(6)], 1)
    torch.testing.assert_close(after, alone, **TOL)


# The two-tower user tower -------------------------------------------------------------------------------------------

TOWER = TwoTowerConfig.preset("nano", max_history=8)
TOWERS = {
    "served (causal, click history, predecessor gaps, history attributes)": replace(
        TOWER, causal=True, history_attributes=True, history_gaps="predecessor", history_action="click"
    ),
    "bidirectional, no history attributes": TOWER,
    "last pooling, gqa, two layers": replace(
        TOWER, pooling="last", causal=True, n_layers=2, n_heads=4, n_kv_heads=2, history_attributes=True
    ),
    "wide (torch blocks)": replace(TOWER, d_model=128, n_heads=4, n_kv_heads=2, causal=True, history_attributes=True),
}


def tower_user(cfg: TwoTowerConfig, lengths: list[int], seed: int = 0, attributes: bool = True) -> UserFeatures:
    user, attrs = ranker_user(replace(RANKER, max_history=cfg.max_history), lengths, seed)
    hist = attrs[..., :1].expand(-1, -1, len(cfg.post_attributes)).clone() if attributes else None
    return replace(user, hist_attributes=hist)


@pytest.mark.parametrize("name", list(TOWERS))
def test_embed_users_equals_user_embedding(name: str) -> None:
    cfg = TOWERS[name]
    torch.manual_seed(0)
    model = TwoTower(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(std=0.3 * (32 / p.shape[1]) ** 0.5)  # unit-scale activations at any width
    for attributes in (True, False):
        user = tower_user(cfg, [8, 3, 0, 1], attributes=attributes)
        got = model.embed_users(user)
        with torch.no_grad():
            want = model.user_embedding(user)
        torch.testing.assert_close(got, want, **TOL)
        for i in range(4):  # one user at a time, as served
            one = model.embed_users(user.rows(torch.tensor([i])))
            torch.testing.assert_close(one, want[i : i + 1], **TOL)
    model.train()  # training mode: the reference path itself (dropout, autograd)
    assert model.embed_users(user).shape == (4, cfg.d_model)
