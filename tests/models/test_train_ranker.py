"""Ranker training sets as request groups, training (learns, resumes exactly), `ember train ranker` and
`ember evaluate ranker` end to end, and how they treat bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from core.actions import ACTION_NAMES, DWELL_TIME
from core.errors import UserError
from models.layers import string_id
from models.ranker.data import (
    RankerDataset,
    RankerTrainTask,
    lookup_attributes,
    post_attributes,
    predict,
    read_ranker_set,
    request_slots,
)
from models.ranker.job import split_by_request
from models.ranker.metrics import auc
from models.ranker.model import RankerConfig, load_ranker
from models.ranker.task_table import TASKS
from models.ranker.tasks import availability, blend_loss, loss_mask
from models.ranker.train import RankerTrainConfig, train_ranker
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
T0 = pd.Timestamp("2026-01-02", tz="UTC")
CFG = RankerConfig.preset("nano", max_history=8, max_candidates=8)
FAST = RankerTrainConfig(epochs=2, batch_size=16, lr=5e-3)
OBSERVED = ("click", "like", "not_interested", "dwell")
TRAIN = ("--preset", "nano", "--set", "train.epochs=2", "--set", "train.batch_size=16")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rows(n_users: int = 60, requests: int = 6, slate: int = 6, seed: int = 0) -> pd.DataFrame:
    """A learnable ranker training set: a click is likely when the user follows the author (in_network) or the
    post is popular, a like needs a click and an even author, not_interested comes from out-of-network posts. The
    true probabilities are stored as p_<action>, as on synthetic data."""
    rng = np.random.default_rng(seed)
    out = []
    request_id = 0
    for u in range(1, n_users + 1):
        follows = set(rng.choice(np.arange(100, 120), 5, replace=False).tolist())
        history: list[tuple[int, int, int]] = []  # (post, author, ms)
        for r in range(requests):
            request_id += 1
            t = T0 + pd.Timedelta(hours=4 * r, minutes=u)
            ms = int(t.value // 1_000_000)
            for pos in range(slate):
                author = int(rng.integers(100, 120))
                post = int(rng.integers(1, 400))
                popular = float(rng.integers(0, 1000))
                in_net = author in follows
                p_click = 1 / (1 + np.exp(-(-2.0 + 2.5 * in_net + 1.5 * (popular > 500))))
                click = rng.random() < p_click
                p_like = p_click * (0.7 if author % 2 == 0 else 0.05)
                like = click and rng.random() < p_like / p_click
                p_ni = 0.02 + 0.25 * (not in_net)
                hist = history[-CFG.max_history :]
                row = {
                    "impression_id": len(out),
                    "request_id": request_id,
                    "user_id": u,
                    "post_id": post,
                    "author_id": author,
                    "event_timestamp": t + pd.Timedelta(seconds=pos),
                    "surface": 0,
                    "position": pos,
                    "in_network": in_net,
                    **{a: 0 for a in ACTION_NAMES},
                    "click": int(click),
                    "like": int(like),
                    "dwell": int(like),
                    "not_interested": int(rng.random() < p_ni),
                    DWELL_TIME: 20.0 * like + 2.0 * click,
                    "p_click": p_click,
                    "p_like": p_like,
                    "p_dwell": p_like,
                    "p_not_interested": p_ni,
                    "user_country": "FR",
                    "user_language": "fr",
                    "user_age_bucket": "25-34",
                    "user_activity": "high",
                    "hist_post_ids": np.array([h[0] for h in hist]) if hist else None,
                    "hist_author_ids": np.array([h[1] for h in hist]) if hist else None,
                    "hist_actions": np.ones(len(hist), dtype=np.int64) if hist else None,
                    "hist_surfaces": np.zeros(len(hist), dtype=np.int64) if hist else None,
                    "hist_timestamps": np.array([h[2] for h in hist]) if hist else None,
                    "post_created_at_ms": ms - 3_600_000,
                    "post_topic": f"t{post % 5}",
                    "post_media_type": "text",
                    "post_impressions": popular,
                    **{f: float(rng.random()) for f in CFG.candidate_features if f != "post_impressions"},
                }
                out.append(row)
                if click:
                    history.append((post, author, ms))
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return rows()


def test_request_slots_hold_every_row_once_in_position_order_and_cut_long_requests() -> None:
    df = pd.DataFrame({"request_id": [7, 3, 7, 3, 7, 7, 7], "position": [4, 1, 0, 0, 2, 1, 3]})
    slots = request_slots(df, max_candidates=3)
    assert slots.shape == (3, 3)
    assert slots.tolist() == [[3, 1, -1], [2, 5, 4], [6, 0, -1]]  # request 3, then request 7 cut in two
    placed = slots[slots >= 0]
    assert sorted(placed.tolist()) == list(range(len(df)))


def test_dataset_batches_map_predictions_back_to_rows(frame: pd.DataFrame) -> None:
    available = availability(OBSERVED)
    ds = RankerDataset(frame, CFG, TASKS, available)
    assert len(ds) == frame["request_id"].nunique()  # slates of 6 fit in 8 slots
    batch = ds[torch.arange(3)]
    assert batch.candidates.num_candidates == 6  # padding columns no group uses are trimmed
    valid = batch.candidates.valid
    rows_ = batch.rows[valid]

    def column(name: str) -> torch.Tensor:
        return torch.as_tensor(frame[name].to_numpy()[rows_])

    click = [t.name for t in TASKS].index("click")
    assert torch.equal(batch.candidates.post_ids[valid], column("post_id"))
    assert torch.equal(batch.labels[..., click][valid], column("click").float())
    assert torch.equal(batch.candidates.positions[valid], column("position"))


def test_predict_scores_as_serving_does_with_the_slot_unknown(frame: pd.DataFrame) -> None:
    """Evaluation never reads the logged slot: the same rows with and without positions predict the same, even with a
    trained (non-zero) position tower, and equal the serving path's scores (positions -1)."""
    available = availability(OBSERVED)
    model = train_ranker(CFG, *split_by_request(frame, fraction=0.25), OBSERVED, replace(FAST, epochs=1)).model
    assert model.position_bias is not None
    with torch.no_grad():
        model.position_bias.weight[1:].normal_()  # make the slot matter a lot
    logged = predict(model, RankerDataset(frame, CFG, model.tasks, available))
    unknown = predict(model, RankerDataset(frame.assign(position=-1), CFG, model.tasks, available))
    np.testing.assert_array_equal(logged, unknown)


def test_history_posts_get_their_attributes_from_the_frame_and_the_post_table(frame: pd.DataFrame) -> None:
    posts = pd.DataFrame({"post_id": [9_001], "post_topic": ["t-old"], "post_media_type": ["video"]})
    table = post_attributes(CFG, posts, frame)
    ids = np.array([[0, 9_001, int(frame.post_id.iloc[0]), 123_456]])  # padding, table-only, frame, unknown
    got = lookup_attributes(ids, table)
    assert got.shape == (1, 4, len(CFG.candidate_attributes))
    assert (got[0, 0] == 0).all() and (got[0, 3] == 0).all()
    assert got[0, 1].tolist() == [string_id("t-old"), string_id("video")]
    assert got[0, 2, 0] == string_id(frame.post_topic.iloc[0])
    ds = RankerDataset(frame, CFG, TASKS, availability(OBSERVED), posts)
    batch = ds[torch.arange(len(ds))]
    known = batch.user.hist_post_ids != 0
    assert batch.history_attributes.shape[:2] == known.shape
    assert (batch.history_attributes[known] != 0).all()  # every history post was a candidate somewhere
    assert (batch.history_attributes[~known] == 0).all()


def test_training_learns_the_rules_and_predictions_cover_every_row(frame: pd.DataFrame) -> None:
    tr, va = split_by_request(frame, fraction=0.25)
    assert set(tr.request_id).isdisjoint(va.request_id)
    assert tr.event_timestamp.max() < va.groupby("request_id").event_timestamp.min().min()
    result = train_ranker(CFG, tr, va, OBSERVED, replace(FAST, epochs=6))
    m = result.best_metrics
    oracle = {a: auc(va[a], va[f"p_{a}"]) for a in ("click", "like")}  # click ~0.80, like ~0.83
    assert m["auc/click"] > 0.9 * oracle["click"], (m, oracle)
    assert m["auc/like"] > 0.85 * oracle["like"], (m, oracle)
    assert "auc/reply" not in m  # not observed: masked out of the loss and the report
    preds = predict(result.model, RankerDataset(va, CFG, result.model.tasks, availability(OBSERVED)))
    assert preds.shape == (len(va), len(TASKS)) and np.isfinite(preds).all()
    assert (preds[:, :13] > 0).all()  # every row was predicted (none left at the zero fill)


def test_resume_replays_the_next_steps_of_an_uninterrupted_run(frame: pd.DataFrame, tmp_path: Path) -> None:
    tr, va = split_by_request(frame, fraction=0.25)
    whole = train_ranker(CFG, tr, va, OBSERVED, FAST)
    first = train_ranker(CFG, tr, va, OBSERVED, replace(FAST, epochs=1), out=tmp_path)
    resumed = train_ranker(CFG, tr, va, OBSERVED, FAST, out=tmp_path, resume=True)
    steps = len(first.step_losses)
    assert first.step_losses == whole.step_losses[:steps]
    assert resumed.step_losses == whole.step_losses[steps:]
    saved = load_ranker(tmp_path / "best")
    assert saved.cfg == CFG
    with pytest.raises(Exception, match="differs"):
        train_ranker(replace(CFG, d_model=64), tr, va, OBSERVED, FAST, out=tmp_path, resume=True)


@pytest.fixture(scope="module")
def training_set(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ranker") / "training"
    root.mkdir()
    frame.to_parquet(root / "training_set.parquet", index=False)
    (root / "meta.json").write_text(json.dumps({"dataset": "synthetic", "observed_actions": list(OBSERVED)}))
    return root


def test_train_ranker_cli_writes_the_model_and_metrics(run_cli: Cli, training_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    res = run_cli("train", "ranker", "--training-set", str(training_set), "--out", str(out), *TRAIN)
    assert res.code == 0, res.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["observed_actions"] == list(OBSERVED) and metrics["epochs_run"] == 2
    assert 0.5 < metrics["auc/click"] <= 1.0
    assert load_ranker(out / "best").cfg.max_history == RankerConfig.preset("nano").max_history
    _, observed = read_ranker_set(training_set)
    assert observed == OBSERVED


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--set", "model.no_such_field=3"), "model.no_such_field"),
        (("--set", "train.epochs=many"), "train.epochs"),
        (("--set", "model.head_mode=cascade"), "head_mode"),
        (("--valid-fraction", "1.5"), "valid_fraction"),
    ],
)
def test_train_ranker_bad_input_names_the_parameter_and_writes_nothing(
    run_cli: Cli, training_set: Path, tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    out = tmp_path / "model"
    res = run_cli("train", "ranker", "--training-set", str(training_set), "--out", str(out), "--preset", "nano", *args)
    assert res.code != 0
    assert named in res.error_line() and "Traceback" not in res.stderr
    assert not out.exists()


def test_train_ranker_refuses_an_empty_training_set(run_cli: Cli, frame: pd.DataFrame, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    frame.head(0).to_parquet(tmp_path / "empty" / "training_set.parquet", index=False)
    res = run_cli("train", "ranker", "--training-set", str(tmp_path / "empty"), "--out", str(tmp_path / "m"))
    assert res.code != 0 and "no rows" in res.error_line()
    assert not (tmp_path / "m").exists()


def test_evaluate_ranker_compares_modes_baselines_and_the_oracle_on_one_split(
    run_cli: Cli, training_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval.json"
    res = run_cli(
        "evaluate", "ranker", "--training-set", str(training_set), "--out", str(out), "--test-fraction", "0.3",
        "--baselines", "logistic,lightgbm", *TRAIN[:2], "--set", "train.epochs=3", "--set", "train.batch_size=16",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"ranker_independent", "ranker_funnel", "logistic", "lightgbm", "oracle"}
    assert set(report["table"]) == set(OBSERVED) - {"dwell"} | {"dwell"}
    click = report["table"]["click"]
    assert click["oracle"]["auc"] > 0.7
    assert all(0.0 <= row["auc"] <= 1.0 for row in click.values())
    assert report["oracle_ratio"]["lightgbm"]["click"] == pytest.approx(
        click["lightgbm"]["auc"] / click["oracle"]["auc"], abs=1e-4
    )
    assert set(report["wins"]["click"]) == {"auc", "gauc"}
    n_test = report["split"]["test"]
    assert report["models"]["lightgbm"]["report"]["actions"]["click"]["impressions"] == n_test
    assert "click" in res.stdout and "oracle" in res.stdout


def test_learned_blend_trains_the_combination_module_only_from_request_pairs(frame: pd.DataFrame) -> None:
    tr, va = split_by_request(frame, fraction=0.25)
    cfg = replace(CFG, learn_blend=True, head_mode="funnel")
    result = train_ranker(cfg, tr, va, OBSERVED, replace(FAST, epochs=2))
    assert result.model.combiner is not None
    last = result.model.combiner.mlp[-1]
    assert last.weight.abs().sum() > 0  # it starts at exactly zero (multipliers 1): only the blend loss moves it
    ds = RankerDataset(va, cfg, result.model.tasks, availability(OBSERVED))
    batch = ds[torch.arange(4)]
    with torch.no_grad():
        m = result.model(batch.user, batch.candidates, batch.history_attributes).blend_multipliers
    assert m is not None and bool(((m >= 0) & (m <= 2)).all())


def test_blend_loss_rewards_ordering_candidates_by_observed_value() -> None:
    K = len(TASKS)
    click, report = [t.name for t in TASKS].index("click"), [t.name for t in TASKS].index("report")
    labels = torch.zeros(1, 3, K)
    labels[0, 0, click] = 1.0  # candidate 0 clicked, 1 nothing, 2 reported: values 0 > 1 > 2
    labels[0, 2, report] = 1.0
    mask = loss_mask(availability(("click", "report")), torch.ones(1, 3, dtype=torch.bool))
    good = torch.zeros(1, 3, K)
    good[0, :, click] = torch.tensor([0.9, 0.5, 0.1])
    good[0, :, report] = torch.tensor([0.0, 0.0, 0.01])
    bad = good.flip(1)
    ones = torch.ones(1, K)
    assert blend_loss(good, ones, labels, mask) < math.log(2) < blend_loss(bad, ones, labels, mask)
    assert blend_loss(good, ones, torch.zeros_like(labels), mask) == 0.0  # no ordered pair, no loss


class Killed(Exception):
    """Stands in for a kill between two epochs."""


def test_a_run_killed_midway_resumes_from_its_work_dir_and_publishes_what_an_unbroken_run_does(
    training_set: Path, tmp_path: Path
) -> None:
    from models.ranker.job import train_ranker_job

    overrides = {"epochs": 3, "batch_size": 16, "lr": 5e-3}
    model = {"max_history": 8, "max_candidates": 8}
    unbroken = train_ranker_job(training_set, tmp_path / "unbroken", "nano", model, overrides)

    def kill_in_epoch_2(line: str) -> None:
        if line.startswith("epoch=2 "):
            raise Killed  # epoch 2 trained, its checkpoint not yet written

    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(Killed):
        train_ranker_job(training_set, out, "nano", model, overrides, log=kill_in_epoch_2, work=work)
    assert not out.exists()  # nothing published: a reader never sees a half-trained model
    assert (work / "checkpoint.pt").is_file()

    lines: list[str] = []
    resumed = train_ranker_job(training_set, out, "nano", model, overrides, log=lines.append, work=work)
    assert any(line.startswith("resumed from") and "after epoch 1" in line for line in lines)
    assert not work.exists() and (out / "metrics.json").is_file() and not (out / "run.json").exists()
    assert resumed["epochs_run"] == unbroken["epochs_run"] == 3
    assert resumed["auc_mean"] == unbroken["auc_mean"]
    a, b = load_ranker(out / "best").state_dict(), load_ranker(tmp_path / "unbroken" / "best").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    other = {**overrides, "lr": 1e-3}  # other settings: the stale work dir is not resumed
    lines.clear()
    train_ranker_job(training_set, tmp_path / "other", "nano", model, other, log=lines.append, work=work)
    assert not any(line.startswith("resumed") for line in lines)


def test_pairwise_loss_compares_a_groups_positives_with_its_negatives_only() -> None:
    from models.ranker.task_table import select_tasks
    from models.ranker.tasks import pairwise_loss

    tasks = select_tasks(("click", "like"))
    z = torch.tensor([[[2.0, 0.0], [0.5, 0.0], [9.0, 0.0]], [[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])  # (2, 3, 2)
    y = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]]).unsqueeze(-1)  # group 0's third slot is padding
    # pairs (group 0: 2.0 vs 0.5), (group 1: -1 vs 1, -1 vs 0); like has no positive: no pair; padding (9.0) unused
    expected = (F.softplus(torch.tensor(-1.5)) + F.softplus(torch.tensor(2.0)) + F.softplus(torch.tensor(1.0))) / 3
    torch.testing.assert_close(pairwise_loss(z, y, mask, tasks), expected)
    # no positive anywhere: no pair, no loss
    assert pairwise_loss(z, torch.zeros_like(y), mask, tasks).item() == 0.0


def test_user_scoped_pairwise_loss_pairs_across_one_users_groups_only() -> None:
    from models.ranker.task_table import select_tasks
    from models.ranker.tasks import pairwise_loss

    tasks = select_tasks(("click",))
    z = torch.tensor([[[2.0], [0.5]], [[-1.0], [9.0]], [[3.0], [0.0]]])  # (3 groups, 2 slots, 1 task)
    y = torch.tensor([[[1.0], [0.0]], [[0.0], [0.0]], [[0.0], [1.0]]])
    mask = torch.tensor([[True, True], [True, False], [True, True]]).unsqueeze(-1)  # group 1's slot 1 is padding
    users = torch.tensor([7, 7, 8])  # groups 0 and 1 are one user's; group 2 another's
    # user 7: positive 2.0 against 0.5 (own group) and -1.0 (group 1); padding 9.0 unused. User 8: 0.0 against 3.0.
    # Never user 7's positive against user 8's negatives.
    expected = (F.softplus(torch.tensor(-1.5)) + F.softplus(torch.tensor(-3.0)) + F.softplus(torch.tensor(3.0))) / 3
    torch.testing.assert_close(pairwise_loss(z, y, mask, tasks, users), expected)


def test_user_batches_keep_a_users_groups_together_and_cover_every_group() -> None:
    from models.ranker.train import user_batches
    from models.training import DistContext

    keys = np.array([5, 1, 5, 3, 1, 5, 3, 9])
    batches = user_batches(keys, 3, torch.Generator().manual_seed(0), DistContext())
    order = torch.cat(batches).numpy()
    assert sorted(order.tolist()) == list(range(len(keys)))  # every group once
    seen = keys[order]
    runs = [k for i, k in enumerate(seen) if i == 0 or k != seen[i - 1]]
    assert len(runs) == len(set(seen))  # each user's groups are consecutive
    again = torch.cat(user_batches(keys, 3, torch.Generator().manual_seed(0), DistContext())).numpy()
    assert np.array_equal(order, again)  # seeded
    with pytest.raises(UserError, match="pair_scope"):
        RankerTrainConfig(pair_scope="request")


def test_pairwise_loss_ranks_only_the_chosen_actions(frame: pd.DataFrame) -> None:
    from models.ranker.model import Ranker
    from models.ranker.tasks import pairwise_loss, ranker_loss

    available = availability(OBSERVED)
    batch = RankerDataset(frame, CFG, TASKS, available)[torch.arange(8)]
    torch.manual_seed(0)
    model = Ranker(CFG).eval()  # eval: no dropout, so the same batch gives the same logits every call
    with torch.no_grad():
        out = model(batch.user, batch.candidates, batch.history_attributes)
        mask = loss_mask(available, batch.candidates.valid)
        pointwise, _ = ranker_loss(out.logits, batch.labels, mask, model.tasks)
        click_only = mask & torch.tensor([t.name == "click" for t in model.tasks])
        assert pairwise_loss(out.logits, batch.labels, click_only, model.tasks) > 0  # the batch has click pairs

        def loss(**pair: Any) -> torch.Tensor:
            return RankerTrainTask(model, available, **pair)(batch)

        torch.testing.assert_close(loss(pair_weight=0.0), pointwise)
        expected = pointwise + 0.5 * pairwise_loss(out.logits, batch.labels, click_only, model.tasks)
        torch.testing.assert_close(loss(pair_weight=0.5, pair_actions=("click",)), expected)
        every = pointwise + 0.5 * pairwise_loss(out.logits, batch.labels, mask, model.tasks)
        torch.testing.assert_close(loss(pair_weight=0.5), every)
        assert not torch.allclose(every, expected)  # other actions' pairs counted only when not restricted
    with pytest.raises(UserError, match="train.pair_actions: unknown action 'clicks'"):
        RankerTrainConfig(pair_actions=("clicks",))
