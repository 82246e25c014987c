"""Shared layers: hashing (determinism, padding, unseen ids), RMSNorm, rotary, GQA attention, gated FFN, block."""

from __future__ import annotations

import pytest
import torch

from models.layers import (
    Attention,
    Block,
    GatedFFN,
    MultiHashEmbedding,
    RMSNorm,
    Rotary,
    apply_rotary,
    ffn_hidden,
    string_id,
)


def test_hash_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    ids = torch.tensor([1, 2, 3, 10**12, 2**62])
    a, b = MultiHashEmbedding(1000, 4, seed=7), MultiHashEmbedding(1000, 4, seed=7)
    assert torch.equal(a.hash(ids), b.hash(ids))
    assert not torch.equal(a.hash(ids), MultiHashEmbedding(1000, 4, seed=8).hash(ids))
    rows = a.hash(ids)
    assert rows.shape == (5, 2) and not torch.equal(rows[:, 0], rows[:, 1])  # the two hashes differ


def test_id_zero_is_the_padding_row_zero_and_never_trained() -> None:
    emb = MultiHashEmbedding(50, 4, n_hashes=3, seed=0)
    ids = torch.tensor([[0, 5], [0, 0]])
    assert (emb.hash(ids)[ids == 0] == 0).all()
    out = emb(ids)  # (2, 2, 3, 4)
    assert out.shape == (2, 2, 3, 4)
    assert (out[ids == 0] == 0).all() and (out[0, 1] != 0).any()
    out.sum().backward()
    assert emb.table.weight.grad is not None and (emb.table.weight.grad[0] == 0).all()


def test_unseen_and_huge_ids_land_in_real_rows() -> None:
    emb = MultiHashEmbedding(100, 4, seed=3)
    ids = torch.tensor([1, 99_999_999_999, 2**63 - 1, -5])  # no vocabulary: any int64 id embeds
    rows = emb.hash(ids)
    assert ((rows >= 1) & (rows < 100)).all()
    assert (emb(ids).abs().sum(-1) > 0).all()


def test_hashes_spread_ids_over_the_table() -> None:
    emb = MultiHashEmbedding(10_001, 4, seed=0)
    rows = emb.hash(torch.arange(1, 5001))  # (5000, 2)
    assert len(torch.unique(rows[:, 0])) > 3500  # ~3935 expected for uniform hashing
    pairs = rows[:, 0] * 10_001 + rows[:, 1]
    assert len(torch.unique(pairs)) == 5000  # two hashes: no two ids share both rows


def test_string_id_is_stable_across_processes_and_none_is_padding() -> None:
    # Pinned values: serving must hash attributes exactly as training did.
    assert string_id("FR") == 3433965959170403053
    assert string_id("unknown") == 4216025502670570148
    assert string_id(None) == string_id(float("nan")) == string_id("") == 0


def test_rmsnorm_gives_unit_rms_and_computes_in_fp32() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8)
    x = torch.randn(3, 8) * 5 + 2
    y = norm(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3), atol=1e-4)
    xb = x.bfloat16()
    yb = norm(xb)
    assert yb.dtype == torch.bfloat16
    assert torch.equal(yb, norm(xb.float()).bfloat16())  # same as fp32 then cast


def test_rotary_preserves_norm_and_depends_only_on_offsets() -> None:
    torch.manual_seed(0)
    rot = Rotary(8, 32)
    cos, sin = rot(32)
    x = torch.randn(1, 1, 32, 8)
    y = apply_rotary(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(y[..., 0, :], x[..., 0, :])  # position 0 is not rotated
    q, k = torch.randn(8), torch.randn(8)
    qs, ks = q.expand(1, 1, 32, 8), k.expand(1, 1, 32, 8)
    qr, kr = apply_rotary(qs, cos, sin)[0, 0], apply_rotary(ks, cos, sin)[0, 0]
    assert torch.allclose(qr[5] @ kr[2], qr[20] @ kr[17], atol=1e-5)  # offset 3 both times
    with pytest.raises(ValueError, match="tables hold 32"):
        rot(33)


def test_gqa_shapes_and_equals_mha_with_repeated_kv_heads() -> None:
    torch.manual_seed(0)
    gqa = Attention(d_model=16, n_heads=4, n_kv_heads=2)
    assert gqa.kv.weight.shape == (2 * 2 * 4, 16)  # k and v: 2 heads of size 4
    x = torch.randn(2, 5, 16)
    cos, sin = Rotary(4, 5)(5)
    y = gqa(x, cos, sin)
    assert y.shape == (2, 5, 16)
    # MHA whose heads 2i and 2i+1 share k/v head i computes the same thing.
    mha = Attention(d_model=16, n_heads=4, n_kv_heads=4)
    with torch.no_grad():
        k, v = gqa.kv.weight.view(2, 2, 4, 16).unbind(0)  # (Hkv, hd, D) each
        mha.kv.weight.copy_(torch.cat([k.repeat_interleave(2, 0), v.repeat_interleave(2, 0)]).reshape(32, 16))
        mha.q.weight.copy_(gqa.q.weight)
        mha.out.weight.copy_(gqa.out.weight)
    assert torch.allclose(mha(x, cos, sin), y, atol=1e-5)
    with pytest.raises(ValueError, match="n_kv_heads"):
        Attention(d_model=16, n_heads=4, n_kv_heads=3)


def test_attention_bool_and_additive_masks_agree_and_masked_keys_do_not_matter() -> None:
    torch.manual_seed(0)
    attn = Attention(d_model=8, n_heads=2, n_kv_heads=1)
    cos, sin = Rotary(4, 4)(4)
    x = torch.randn(1, 4, 8)
    keep = torch.tensor([True, True, True, False])[None, None, None, :]  # (1, 1, 1, T)
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    y_bool, y_add = attn(x, cos, sin, keep), attn(x, cos, sin, additive)
    assert torch.allclose(y_bool, y_add, atol=1e-6)
    x2 = x.clone()
    x2[0, 3] = 100.0  # the masked key changes; the other positions must not see it
    assert torch.allclose(attn(x2, cos, sin, keep)[0, :3], y_bool[0, :3], atol=1e-6)


@pytest.mark.parametrize("gate", ["geglu", "swiglu"])
def test_gated_ffn_and_block_keep_shapes(gate: str) -> None:
    torch.manual_seed(0)
    assert ffn_hidden(32, 4.0) == 88 and ffn_hidden(32, 4.0) % 8 == 0
    x = torch.randn(2, 3, 32)
    assert GatedFFN(32, 4.0, gate)(x).shape == (2, 3, 32)
    cos, sin = Rotary(8, 3)(3)
    assert Block(32, 4, 2, 4.0, gate)(x, cos, sin).shape == (2, 3, 32)
    with pytest.raises(ValueError, match="unknown gate"):
        GatedFFN(32, 4.0, "relu")
