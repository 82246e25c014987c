"""The two-tower model: shapes, unit norm, padding invariance, batch invariance, determinism, save/load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.retrieval.model import (
    CandidateFeatures,
    TwoTower,
    TwoTowerConfig,
    UserFeatures,
    load_two_tower,
    save,
    time_bucket,
)

CFG = TwoTowerConfig.preset("nano", max_history=8)


def users(cfg: TwoTowerConfig, lengths: list[int], seed: int = 0) -> UserFeatures:
    """Right-padded random histories of the given lengths (0 = a new user)."""
    g = torch.Generator().manual_seed(seed)
    B, S = len(lengths), cfg.max_history
    valid = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)

    def ints(high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(1, high, shape, generator=g)

    return UserFeatures(
        user_ids=ints(10**9, (B,)),
        attribute_ids=ints(10**9, (B, len(cfg.user_attributes))),
        hist_post_ids=ints(10**9, (B, S)) * valid,
        hist_author_ids=ints(10**6, (B, S)) * valid,
        hist_actions=ints(1 << 13, (B, S)) * valid,
        hist_surfaces=ints(4, (B, S)) * valid,
        hist_gap_ms=ints(10**9, (B, S)) * valid,
    )


def candidates(cfg: TwoTowerConfig, n: int, seed: int = 0) -> CandidateFeatures:
    g = torch.Generator().manual_seed(seed)
    return CandidateFeatures(
        post_ids=torch.randint(1, 10**9, (n,), generator=g),
        author_ids=torch.randint(1, 10**6, (n,), generator=g),
        dense=torch.randint(0, 1000, (n, len(cfg.post_features)), generator=g).float(),
        age_ms=torch.randint(-1, 10**8, (n,), generator=g),
        attributes=torch.randint(0, 10**6, (n, len(cfg.post_attributes)), generator=g),
    )


def model(cfg: TwoTowerConfig = CFG, seed: int = 0) -> TwoTower:
    torch.manual_seed(seed)
    return TwoTower(cfg).eval()


def test_embeddings_have_the_right_shapes_and_unit_norm() -> None:
    m = model()
    u, c = m(users(CFG, [3, 8, 0, 1]), candidates(CFG, 6))
    assert u.shape == (4, CFG.d_model) and c.shape == (6, CFG.d_model)
    assert u.dtype == c.dtype == torch.float32
    assert torch.allclose(u.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(c.norm(dim=-1), torch.ones(6), atol=1e-5)
    logits = m.score(u, c)  # (4, 6)
    assert logits.shape == (4, 6) and logits.abs().max() <= 1 / CFG.temperature + 1e-3


def test_appending_padding_does_not_change_the_user_embedding() -> None:
    m, x = model(), users(CFG, [3, 5, 0])
    wide_cfg = replace(CFG, max_history=13)
    wide = model(wide_cfg)
    wide.load_state_dict(m.state_dict())  # the same weights, room for 13 events

    def pad(t: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.cat([t, torch.full((t.shape[0], 5), fill)], 1)

    # Padding is where the post id is 0: whatever else sits there (authors, actions, gaps) must be ignored too.
    padded = UserFeatures(
        x.user_ids,
        x.attribute_ids,
        pad(x.hist_post_ids, 0),
        pad(x.hist_author_ids, 7),
        pad(x.hist_actions, 3),
        pad(x.hist_surfaces, 2),
        pad(x.hist_gap_ms, 999),
    )
    with torch.no_grad():
        assert torch.allclose(wide.user_embedding(padded), m.user_embedding(x), atol=1e-6)


def test_history_and_attributes_change_the_user_embedding() -> None:
    m, x = model(), users(CFG, [4])
    with torch.no_grad():
        base = m.user_embedding(x)
        acted = replace(x, hist_actions=x.hist_actions ^ 1)  # flip the click bit of every event
        assert not torch.allclose(m.user_embedding(acted), base)
        moved = replace(x, attribute_ids=x.attribute_ids + 1)
        assert not torch.allclose(m.user_embedding(moved), base)


@pytest.mark.parametrize("causal", [False, True])
def test_a_rows_embedding_does_not_depend_on_the_rest_of_the_batch(causal: bool) -> None:
    cfg = replace(CFG, causal=causal)
    m, x, c = model(cfg), users(cfg, [2, 8, 0, 5]), candidates(cfg, 5)
    with torch.no_grad():
        u_all, c_all = m(x, c)
        for i in range(4):
            assert torch.allclose(m.user_embedding(x.rows(torch.tensor([i]))), u_all[i : i + 1], atol=1e-6)
        assert torch.allclose(m.candidate_embedding(c.rows(slice(2, 3))), c_all[2:3], atol=1e-6)


def test_same_seed_same_model_and_a_new_seed_differs() -> None:
    x, c = users(CFG, [3, 6]), candidates(CFG, 4)
    with torch.no_grad():
        a, b, other = model(seed=1)(x, c), model(seed=1)(x, c), model(seed=2)(x, c)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], other[0])


def test_save_and_load_round_trip_gives_equal_outputs(tmp_path: Path) -> None:
    cfg = replace(CFG, learn_temperature=False, gate="swiglu", user_attributes=("country",))
    m = model(cfg, seed=3)
    save(m, tmp_path / "tt")
    assert sorted(p.name for p in (tmp_path / "tt").iterdir()) == ["config.json", "model.pt"]
    state = torch.load(tmp_path / "tt" / "model.pt", weights_only=True)  # plain tensors only
    assert "post_emb.scale" in state  # the hash functions travel with the weights
    loaded = load_two_tower(tmp_path / "tt")
    assert loaded.cfg == cfg and not loaded.training
    x, c = users(cfg, [4, 0]), candidates(cfg, 3)
    with torch.no_grad():
        for got, want in zip(loaded(x, c), m(x, c), strict=True):
            assert torch.equal(got, want)
    assert torch.equal(loaded.temperature, m.temperature)


def test_config_json_round_trip_presets_and_validation() -> None:
    cfg = TwoTowerConfig.preset("nano", post_features=("post_impressions",))
    assert TwoTowerConfig.from_json(cfg.to_json()) == cfg
    assert TwoTowerConfig.preset("small") == TwoTowerConfig()
    assert TwoTowerConfig.preset("base").d_model == 128
    with pytest.raises(ValueError, match="unknown preset"):
        TwoTowerConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown keys"):
        TwoTowerConfig.from_json('{"d_model": 32, "warmup_steps": 10}')
    with pytest.raises(ValueError, match="n_kv_heads"):
        TwoTowerConfig(n_heads=4, n_kv_heads=3)


def test_time_buckets_are_log_spaced_and_unknown_is_zero() -> None:
    minute, day = 60_000, 86_400_000
    ms = torch.tensor([-1, 0, 20_000, 30_000, minute, 2 * minute, 3 * minute, day, 365 * day, 10**15])
    assert time_bucket(ms, 40).tolist() == [0, 1, 1, 2, 3, 4, 5, 21, 39, 39]
    assert (time_bucket(torch.arange(0, 10 * day, 3_600_000), 40).diff() >= 0).all()
