"""The ranker: candidate isolation properties, cached serving == forward, funnel heads, task masking, config, save/load,
and a tiny learnability check."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.errors import UserError
from models.ranker.model import CandidateBatch, Ranker, RankerConfig, load_ranker, save_ranker
from models.ranker.task_table import TASK_NAMES, TASKS
from models.ranker.tasks import availability, label_tensor, loss_mask, ranker_loss
from models.retrieval.model import UserFeatures

CFG = RankerConfig.preset("nano", max_history=6, max_candidates=8)
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def users(cfg: RankerConfig, lengths: list[int], seed: int = 0) -> UserFeatures:
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


def candidates(cfg: RankerConfig, B: int, C: int, seed: int = 1) -> CandidateBatch:
    g = torch.Generator().manual_seed(seed)
    return CandidateBatch(
        post_ids=torch.randint(1, 10**9, (B, C), generator=g),
        author_ids=torch.randint(1, 10**6, (B, C), generator=g),
        surfaces=torch.randint(0, 4, (B, C), generator=g),
        age_ms=torch.randint(-1, 10**9, (B, C), generator=g),
        dense=torch.rand(B, C, len(cfg.candidate_features), generator=g) * 100,
        attributes=torch.randint(0, 10**6, (B, C, len(cfg.candidate_attributes)), generator=g),
        in_network=torch.randint(0, 2, (B, C), generator=g).bool(),
        positions=torch.randint(-1, 12, (B, C), generator=g),
        valid=torch.ones(B, C, dtype=torch.bool),
    )


def cat(a: CandidateBatch, b: CandidateBatch) -> CandidateBatch:
    return CandidateBatch(
        **{f: torch.cat([getattr(a, f), getattr(b, f)], 1) for f in CandidateBatch.__dataclass_fields__}
    )


def build(cfg: RankerConfig = CFG, seed: int = 0) -> Ranker:
    torch.manual_seed(seed)
    model = Ranker(cfg).eval()
    if model.position_bias is not None:  # zero at init: make it matter, as after training
        with torch.no_grad():
            model.position_bias.weight[1:].normal_()
    return model


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


MODES = [CFG, replace(CFG, head_mode="funnel", causal=True, learn_blend=True)]


@pytest.mark.parametrize("cfg", MODES, ids=["independent", "funnel-causal"])
def test_permuting_candidates_permutes_outputs(cfg: RankerConfig) -> None:
    model, u, c = build(cfg), users(cfg, [6, 3, 0]), candidates(cfg, 3, 8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = model(u, c).logits
        permuted = model(u, CandidateBatch(**{f: getattr(c, f)[:, perm] for f in c.__dataclass_fields__}))
    assert max_diff(permuted.logits, base[:, perm]) <= TOL


@pytest.mark.parametrize("cfg", MODES, ids=["independent", "funnel-causal"])
def test_isolation_replacing_other_candidates_leaves_outputs_unchanged(cfg: RankerConfig) -> None:
    model, u = build(cfg), users(cfg, [5, 2])
    c, other = candidates(cfg, 2, 6, seed=1), candidates(cfg, 2, 6, seed=2)
    swapped = CandidateBatch(**{f: getattr(c, f).clone() for f in c.__dataclass_fields__})
    for f in c.__dataclass_fields__:
        getattr(swapped, f)[:, 1:] = getattr(other, f)[:, 1:]  # keep candidate 0, replace every other one
    with torch.no_grad():
        assert max_diff(model(u, c).logits[:, 0], model(u, swapped).logits[:, 0]) <= TOL


@pytest.mark.parametrize("cross", [False, True], ids=["plain", "cross"])
def test_isolation_scoring_together_equals_scoring_alone(cross: bool) -> None:
    cfg = replace(CFG, dense_bins=4, wide=True, cross_layers=2) if cross else CFG
    model, u, c = build(cfg), users(cfg, [6, 4]), candidates(cfg, 2, 5)
    if model.cross is not None:
        torch.nn.init.normal_(model.cross.out.weight, std=0.02)
    with torch.no_grad():
        together = model(u, c).logits
        alone = torch.cat([model(u, c.slice(i, i + 1)).logits for i in range(5)], 1)
    assert max_diff(together, alone) <= TOL


def test_isolation_padding_candidates_do_not_change_valid_ones() -> None:
    model, u, c = build(), users(CFG, [6, 1]), candidates(CFG, 2, 3)
    pad = candidates(CFG, 2, 4, seed=9)
    pad = replace(pad, post_ids=torch.zeros_like(pad.post_ids), valid=torch.zeros_like(pad.valid))
    with torch.no_grad():
        assert max_diff(model(u, cat(c, pad)).logits[:, :3], model(u, c).logits) <= TOL


def test_isolation_history_hidden_states_unchanged_by_candidates() -> None:
    model, u = build(replace(CFG, n_layers=2)), users(CFG, [6, 3])
    with torch.no_grad():
        a = model.hidden_states(u, candidates(CFG, 2, 2, seed=1))[:, : 1 + CFG.max_history]
        b = model.hidden_states(u, candidates(CFG, 2, 8, seed=2))[:, : 1 + CFG.max_history]
    assert max_diff(a, b) <= TOL


def test_history_padding_width_invariance() -> None:
    """Right-anchored positions: the same history padded to a narrower tensor scores the same."""
    model, u, c = build(), users(CFG, [3, 2]), candidates(CFG, 2, 4)
    hist = [f for f in u.__dataclass_fields__ if f.startswith("hist_") and getattr(u, f) is not None]
    narrow = replace(u, **{f: getattr(u, f)[:, :3] for f in hist})
    with torch.no_grad():
        assert max_diff(model(u, c).logits, model(narrow, c).logits) <= TOL


CROSS = replace(CFG, dense_bins=4, wide=True, cross_layers=2)


@pytest.mark.parametrize(
    "cfg",
    [*MODES, replace(CFG, n_layers=2, n_heads=4, n_kv_heads=2), CROSS],
    ids=["ind", "fun", "gqa", "cross"],
)
def test_cached_serving_matches_forward(cfg: RankerConfig) -> None:
    model, u, c = build(cfg), users(cfg, [6, 2, 0]), candidates(cfg, 3, 7)
    if cfg.cross_layers:  # the cross part's output starts at zero: give it weights, so the test can see it
        assert model.cross is not None
        torch.nn.init.normal_(model.cross.out.weight, std=0.02)
    with torch.no_grad():
        plain = model(u, c)
    cache = model.encode_user(u)
    served = model.score_candidates(cache, c, chunk=3)
    assert served.logits.shape == (3, 7, len(TASKS))
    assert max_diff(served.logits, plain.logits) <= TOL
    if cfg.learn_blend:
        assert plain.blend_multipliers is not None and served.blend_multipliers is not None
        assert max_diff(served.blend_multipliers, plain.blend_multipliers) <= TOL


def test_score_candidates_takes_more_than_max_candidates() -> None:
    model, u, c = build(), users(CFG, [4]), candidates(CFG, 1, 20)
    out = model.score_candidates(model.encode_user(u), c)
    with torch.no_grad():
        ref = torch.cat([model(u, c.slice(i, i + 5)).logits for i in range(0, 20, 5)], 1)
    assert max_diff(out.logits, ref) <= TOL
    with pytest.raises(ValueError, match="max_candidates"):
        model(u, c)


def test_funnel_child_never_likelier_than_parent() -> None:
    model = build(replace(CFG, head_mode="funnel"))
    with torch.no_grad():
        model.heads.proj.weight.mul_(200)  # push probabilities to both extremes
        model.heads.proj.bias.uniform_(-40, 40)
        probs = model.predictions(model(users(CFG, [6, 1, 0, 4]), candidates(CFG, 4, 8)))
    assert torch.isfinite(probs).all()
    idx = {name: k for k, name in enumerate(TASK_NAMES)}
    for t in TASKS:
        if t.parent is not None:
            assert (probs[..., idx[t.name]] <= probs[..., idx[t.parent]]).all(), t.name


def test_masked_tasks_contribute_zero_loss_and_gradient() -> None:
    outputs = torch.randn(2, 3, len(TASKS), requires_grad=True)
    labels = torch.randint(0, 2, (2, 3, len(TASKS))).float()
    available = availability(["click", "like", "not_interested"])  # MovieLens
    valid = torch.tensor([[True, True, False], [True, False, False]])
    mask = loss_mask(available, valid)
    noisy = torch.where(mask, labels, torch.full_like(labels, float("nan")))  # garbage under the mask
    loss, per_task = ranker_loss(outputs, noisy, mask)
    loss.backward()
    assert outputs.grad is not None and torch.isfinite(loss)
    assert (outputs.grad[~mask] == 0).all() and (outputs.grad[mask] != 0).all()
    assert per_task["report"] == 0 and per_task["dwell_time"] == 0
    assert torch.allclose(loss, ranker_loss(outputs, labels, mask)[0])


def test_availability_and_labels_from_the_manifest() -> None:
    kuairand = ("click", "like", "reply", "share", "profile_click", "follow_author", "dwell", "not_interested")
    got = dict(zip(TASK_NAMES, availability(kuairand).tolist(), strict=True))
    assert not got["report"] and not got["repost"] and got["dwell_time"] and got["click"]
    movielens = availability(["click", "like", "not_interested"])
    assert [n for n, a in zip(TASK_NAMES, movielens.tolist(), strict=True) if a] == ["click", "like", "not_interested"]
    cols = {"click": [1, 0], "like": [1, 0], "not_interested": [0, 1], "dwell_time": [0.0, 9.0]}
    labels = label_tensor(pd.DataFrame(cols), available=movielens)
    assert labels.shape == (2, len(TASKS)) and labels[1, TASK_NAMES.index("not_interested")] == 1
    with pytest.raises(KeyError, match="reply"):
        label_tensor(cols, available=availability(kuairand))
    assert label_tensor({**cols, **{n: [0, 0] for n in TASK_NAMES if n not in cols}})[1, -1] == pytest.approx(
        torch.log1p(torch.tensor(9.0)).item()
    )


def test_blend_uses_signed_weights_and_multipliers_start_at_one() -> None:
    model = build(replace(CFG, learn_blend=True))
    with torch.no_grad():
        out = model(users(CFG, [3]), candidates(CFG, 1, 4))
    assert out.blend_multipliers is not None and torch.equal(out.blend_multipliers, torch.ones(1, len(TASKS)))
    probs = torch.zeros(1, 2, len(TASKS))
    probs[0, 0, TASK_NAMES.index("click")] = 1.0
    probs[0, 1, TASK_NAMES.index("report")] = 1.0
    assert model.blend(probs)[0].tolist() == pytest.approx([0.4, -234.0])
    assert model.blend(probs, out.blend_multipliers)[0].tolist() == pytest.approx([0.4, -234.0])
    assert model.blend(probs, torch.zeros(1, len(TASKS)))[0].tolist() == [0.0, 0.0]  # multipliers never flip signs


def test_config_json_round_trip_presets_and_errors() -> None:
    for name in RankerConfig.PRESETS:
        cfg = RankerConfig.preset(name, head_mode="funnel")
        assert RankerConfig.from_json(cfg.to_json()) == cfg
    base = RankerConfig.preset("base")
    assert (base.d_model, base.n_layers, base.max_history, base.max_candidates) == (128, 4, 127, 512)
    body = json.loads(CFG.to_json())
    with pytest.raises(ValueError, match="unknown keys"):
        RankerConfig.from_json(json.dumps({**body, "d_modle": 8}))
    with pytest.raises(ValueError, match="unknown tasks"):
        RankerConfig(tasks=("click", "retweet"))
    with pytest.raises(ValueError, match="parent"):
        RankerConfig(tasks=("like",), head_mode="funnel")
    with pytest.raises(ValueError, match="candidate_features"):
        RankerConfig(candidate_features=("user_country",))


def test_save_load_round_trip_and_mismatch(tmp_path: Path) -> None:
    model, u, c = build(replace(CFG, learn_blend=True)), users(CFG, [4]), candidates(CFG, 1, 3)
    model.fit_dense_stats(c.dense.flatten(0, 1))
    save_ranker(model, tmp_path / "m")
    loaded = load_ranker(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded(u, c).logits, model(u, c).logits)
    (tmp_path / "m" / "config.json").write_text(replace(CFG, d_model=64).to_json())
    with pytest.raises(UserError, match="weights do not match"):
        load_ranker(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**json.loads(CFG.to_json()), "extra": 1}))
    with pytest.raises(UserError, match="RankerConfig"):
        load_ranker(tmp_path / "m")
    with pytest.raises(UserError, match="not a saved ranker"):
        load_ranker(tmp_path / "missing")


def test_learns_a_synthetic_rule() -> None:
    """click iff the first dense feature is high; like iff clicked and the author id is even; other tasks masked."""
    cfg = replace(CFG, head_mode="funnel", candidate_features=CFG.candidate_features[:4])  # the rule + 3 noise
    model = build(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    available = availability(["click", "like"])
    losses = []
    for step in range(150):
        u, c = users(cfg, [6] * 16, seed=step), candidates(cfg, 16, 8, seed=10_000 + step)
        c = replace(c, author_ids=torch.randint(1, 9, (16, 8), generator=torch.Generator().manual_seed(step)))
        c = replace(c, positions=torch.full_like(c.positions, -1))  # the rule ignores slot, attributes, network
        c = replace(c, attributes=torch.zeros_like(c.attributes), in_network=torch.zeros_like(c.in_network))
        click = (c.dense[..., 0] > 50).float()
        like = click * (c.author_ids % 2 == 0).float()
        labels = torch.zeros(16, 8, len(TASKS))
        labels[..., 0], labels[..., 1] = click, like
        loss, _ = ranker_loss(model(u, c).logits, labels, loss_mask(available, c.valid))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_position_bias_is_an_offset_of_logged_slots_and_zero_when_unknown() -> None:
    model, u, c = build(CFG), users(CFG, [4, 2]), candidates(CFG, 2, 5)
    unknown = replace(c, positions=torch.full_like(c.positions, -1))
    first = replace(c, positions=torch.zeros_like(c.positions))
    far = replace(c, positions=torch.full_like(c.positions, 10_000))  # beyond max_position: the last slot's offset
    with torch.no_grad():
        base = model(u, unknown).logits
        off = model.position_bias.weight.detach()  # (max_position + 1, K)
        assert max_diff(model(u, first).logits, base + off[1]) <= TOL
        assert max_diff(model(u, far).logits, base + off[CFG.max_position]) <= TOL
        without = Ranker(replace(CFG, max_position=0)).eval()
        without.load_state_dict({k: v for k, v in model.state_dict().items() if k != "position_bias.weight"})
        assert max_diff(without(u, c).logits, base) <= TOL  # unknown slots add exactly nothing
        cached = model.score_candidates(model.encode_user(u), first, chunk=2).logits
    assert max_diff(cached, base + off[1]) <= TOL


def test_dropout_acts_in_training_only() -> None:
    cfg = replace(CFG, dropout=0.3)
    model, u, c = build(cfg), users(cfg, [6, 3]), candidates(cfg, 2, 5)
    with torch.no_grad():
        model.train()
        first, second = model(u, c).logits, model(u, c).logits
        model.eval()
        plain = model(u, c).logits
    assert max_diff(first, second) > 1e-3  # a fresh mask per pass while training
    served = model.score_candidates(model.encode_user(u), c)
    assert max_diff(served.logits, plain) <= TOL  # evaluation and serving: no dropout, one scoring path
    with pytest.raises(ValueError, match="dropout"):
        RankerConfig(dropout=1.0)


def test_cross_part_needs_bins_and_a_positive_width() -> None:
    with pytest.raises(ValueError, match="cross_layers needs dense_bins"):
        RankerConfig(cross_layers=1)
    with pytest.raises(ValueError, match="cross_dim"):
        RankerConfig(dense_bins=4, cross_layers=1, cross_dim=0)


def test_cross_part_without_ids_ignores_the_ids() -> None:
    """cross_ids=False: two candidates that differ only in post and author ids get the same cross logits."""
    cfg = replace(CFG, dense_bins=4, cross_layers=1, cross_ids=False)
    model, u, c = build(cfg), users(cfg, [3]), candidates(cfg, 1, 2)
    assert model.cross is not None
    torch.nn.init.normal_(model.cross.out.weight, std=0.1)
    same = replace(c, post_ids=c.post_ids[:, :1].expand(1, 2), author_ids=c.author_ids[:, :1].expand(1, 2))
    with torch.no_grad():
        fields = model.cross.user_fields(u.user_ids, u.attribute_ids)
        bins = model.embedder.dense_bins(c.dense)
        assert max_diff(model.cross(fields, bins, c), model.cross(fields, bins, same)) == 0.0
        other_user = model.cross.user_fields(u.user_ids + 1, u.attribute_ids)
        assert max_diff(fields, other_user) == 0.0


def test_heads_start_at_the_training_base_rates() -> None:
    import math

    index = {name: k for k, name in enumerate(TASK_NAMES)}
    n = 20_000
    labels = torch.zeros(n, len(TASK_NAMES))
    labels[:4_000, index["click"]] = 1.0  # click 20%
    labels[:1_000, index["like"]] = 1.0  # like 5%: 25% of the clicks
    labels[:10, index["report"]] = 1.0  # report 0.05%
    labels[:, index["dwell_time"]] = 2.0
    available = torch.ones(len(TASK_NAMES), dtype=torch.bool)
    available[index["share"]] = False

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    for mode, like_rate in (("independent", 0.05), ("funnel", 0.25)):
        model = build(replace(CFG, head_mode=mode))
        share_before = float(model.heads.proj.bias[index["share"]])
        model.fit_head_bias(labels, available)
        bias = model.heads.proj.bias
        assert float(bias[index["click"]]) == pytest.approx(logit(0.2), abs=1e-6)
        assert float(bias[index["like"]]) == pytest.approx(logit(like_rate), abs=1e-6)
        assert float(bias[index["report"]]) == pytest.approx(logit(0.0005), abs=1e-6)
        assert float(bias[index["block_author"]]) == pytest.approx(logit(1e-5), abs=1e-6), "no positive: the floor"
        assert float(bias[index["dwell_time"]]) == pytest.approx(2.0)
        assert float(bias[index["share"]]) == share_before, "an unavailable task keeps its bias"
