"""The promotion gate (decisions, its config), the deployment registry (promote, rollback, atomic writes), lineage and
`ember promote` / `ember rollback` / `ember lineage` on a tiny fake project layout (no DVC, no Prefect, no training)."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from core.errors import UserError
from release.gate import GATE_FILE, Bound, DriftRule, GateConfig, MetricRule, ShadowRule, decide, load_gate, parse_gate
from release.lineage import lineage
from release.promotion import run_gate
from release.registry import REGISTRY_FILE, promote, read_registry, rollback
from tests.conftest import CliResult

Cli = Callable[..., CliResult]
REPO = Path(__file__).resolve().parents[2]

GATE = GateConfig(
    metrics={
        "ranker": {
            "auc_mean": MetricRule(better="higher", tolerance=0.005),
            "logloss_mean": MetricRule(better="lower", tolerance=0.01),
        },
        "retrieval": {"recall@200": MetricRule(better="higher", tolerance=0.01)},
    },
    shadow=ShadowRule(bounds={"overlap@k": Bound(min=0.2)}),
)
CHAMPION = {"ranker": {"auc_mean": 0.75, "logloss_mean": 0.11}, "retrieval": {"recall@200": 0.10}}


def challenger(**changes: float) -> dict[str, dict[str, float]]:
    """The champion's metrics with some changed: ranker_auc_mean=0.7 sets ranker.auc_mean."""
    out = {model: dict(values) for model, values in CHAMPION.items()}
    for key, value in changes.items():
        model, metric = key.split("_", 1)
        out[model][metric.replace("_at_", "@")] = value
    return out


# The gate ---------------------------------------------------------------------------------------------------------


def test_a_better_challenger_is_promoted_with_a_check_per_metric() -> None:
    d = decide(challenger(ranker_auc_mean=0.76, retrieval_recall_at_200=0.12), CHAMPION, True, {"overlap@k": 0.5}, GATE)
    assert d.promote, d.reasons
    assert [c["metric"] for c in d.checks] == [
        "ranker.auc_mean",
        "ranker.logloss_mean",
        "retrieval.recall@200",
        "shadow.overlap@k",
    ]
    assert all(c["ok"] for c in d.checks)
    first = d.checks[0]
    assert (first["challenger"], first["champion"], first["tolerance"]) == (0.76, 0.75, 0.005)


def test_a_worse_challenger_stays_shadow_and_the_reason_names_the_metric() -> None:
    d = decide(challenger(ranker_auc_mean=0.74), CHAMPION, True, {"overlap@k": 0.5}, GATE)
    assert not d.promote
    assert len(d.reasons) == 1 and d.reasons[0].startswith("ranker.auc_mean 0.74 < champion 0.75 - 0.005")
    assert [c["ok"] for c in d.checks] == [False, True, True, True]


def test_a_regression_within_tolerance_passes_even_exactly_at_the_limit() -> None:
    assert decide(challenger(ranker_auc_mean=0.7451), CHAMPION, True, None, GATE).promote
    assert decide(challenger(ranker_auc_mean=0.745), CHAMPION, True, None, GATE).promote  # 0.75 - 0.005 in floats
    assert not decide(challenger(ranker_auc_mean=0.7449), CHAMPION, True, None, GATE).promote


def test_lower_is_better_metrics_may_not_rise_beyond_tolerance() -> None:
    assert decide(challenger(ranker_logloss_mean=0.05), CHAMPION, True, None, GATE).promote
    assert decide(challenger(ranker_logloss_mean=0.119), CHAMPION, True, None, GATE).promote
    worse = decide(challenger(ranker_logloss_mean=0.13), CHAMPION, True, None, GATE)
    assert not worse.promote
    assert worse.reasons == ["ranker.logloss_mean 0.13 > champion 0.11 + 0.01"]


def test_a_metric_missing_from_the_challenger_blocks_and_is_named() -> None:
    metrics = challenger()
    del metrics["ranker"]["logloss_mean"]
    d = decide(metrics, CHAMPION, True, None, GATE)
    assert not d.promote
    assert d.reasons == ["ranker.logloss_mean: missing from the challenger's metrics"]
    nan = decide(challenger(ranker_auc_mean=float("nan")), CHAMPION, True, None, GATE)
    assert not nan.promote and "ranker.auc_mean: not a number" in nan.reasons[0]


def test_a_model_whose_metrics_were_not_given_is_not_gated_but_noted() -> None:
    d = decide({"ranker": CHAMPION["ranker"]}, CHAMPION, True, None, GATE)
    assert d.promote
    assert "retrieval: no challenger metrics given, not gated" in d.notes


def test_failed_drift_tests_block_and_unmeasured_ones_block_only_when_configured() -> None:
    failed = decide(challenger(), CHAMPION, False, None, GATE)
    assert not failed.promote and failed.reasons == ["drift tests failed"]
    unmeasured = decide(challenger(), CHAMPION, None, None, GATE)
    assert unmeasured.promote and "drift tests not measured" in unmeasured.notes
    strict = GateConfig(metrics=GATE.metrics, drift=DriftRule(block_when_unmeasured=True))
    assert not decide(challenger(), CHAMPION, None, None, strict).promote
    lenient = GateConfig(metrics=GATE.metrics, drift=DriftRule(must_pass=False))
    assert decide(challenger(), CHAMPION, False, None, lenient).promote


def test_shadow_agreement_out_of_bounds_blocks() -> None:
    d = decide(challenger(), CHAMPION, True, {"overlap@k": 0.1}, GATE)
    assert not d.promote and d.reasons == ["shadow.overlap@k 0.1 outside >= 0.2"]
    assert not decide(challenger(), CHAMPION, True, {"spearman": 0.9}, GATE).promote  # overlap@k not measured
    capped = GateConfig(shadow=ShadowRule(bounds={"overlap@k": Bound(min=0.2, max=0.9)}))
    assert not decide({}, None, True, {"overlap@k": 0.95}, capped).promote
    strict = GateConfig(shadow=ShadowRule(bounds=GATE.shadow.bounds, block_when_unmeasured=True))
    assert not decide({}, None, True, None, strict).promote


def test_the_first_model_is_promoted_and_the_reason_says_so() -> None:
    d = decide(challenger(ranker_auc_mean=0.5), None, None, None, GATE)
    assert d.promote and d.reasons == ["no champion yet: first model"]
    assert all(c["champion"] is None for c in d.checks)
    missing = decide({"ranker": {"auc_mean": 0.7}}, None, None, None, GATE)
    assert not missing.promote  # even the first model must report every gated metric


# Gate config ------------------------------------------------------------------------------------------------------


def test_the_shipped_gate_config_loads() -> None:
    gate = load_gate(REPO / GATE_FILE)
    assert gate.metrics["ranker"]["auc_mean"] == MetricRule(better="higher", tolerance=0.005)
    assert gate.metrics["ranker"]["logloss_mean"] == MetricRule(better="lower", tolerance=0.01)
    assert gate.metrics["retrieval"]["recall@200"].better == "higher"
    assert gate.drift.must_pass and gate.shadow.bounds["overlap@k"].min == 0.2


def _rule(**spec: object) -> dict[str, object]:
    return {"metrics": {"ranker": {"auc_mean": spec}}}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"metric": {}}, "gate config: metric: unknown key"),
        ({"metrics": {"scorer": {}}}, "gate config: metrics.scorer: input should be 'retrieval' or 'ranker'"),
        (
            {"metrics": {"ranker": {"auc_mean": {"better": "higher", "tol": 0.1}}}},
            "metrics.ranker.auc_mean.tol: unknown",
        ),
        (_rule(better="up", tolerance=0.1), "metrics.ranker.auc_mean.better:"),
        (_rule(better="higher", tolerance="x"), "auc_mean.tolerance: input"),
        (
            {"metrics": {"ranker": {"auc_mean": {"better": "higher"}}}},
            "metrics.ranker.auc_mean.tolerance: field required",
        ),
        (
            {"metrics": {"ranker": {"auc_mean": {"better": "higher", "tolerance": -1}}}},
            "tolerance: input should be greater",
        ),
        (
            {"metrics": {"ranker": {"auc_mean": {"better": "higher", "tolerance": float("nan")}}}},
            "tolerance: input should",
        ),
        ({"drift": {"must_pass": "yes"}}, "drift.must_pass: input should be a valid boolean, got 'yes'"),
        ({"drift": {"must_pas": True}}, "drift.must_pas: unknown key"),
        (
            {"shadow": {"bounds": {"overlap@k": {"min": 0.5, "max": 0.1}}}},
            "shadow.bounds.overlap@k: min 0.5 is above max",
        ),
        ({"shadow": {"bounds": {"overlap@k": {}}}}, "shadow.bounds.overlap@k: give min, max or both"),
        ({"shadow": {"bounds": {"overlap@k": {"low": 0.5}}}}, "shadow.bounds.overlap@k.low: unknown key"),
        ([1, 2], "gate config: expected a mapping, got list"),
    ],
)
def test_bad_gate_configs_name_the_key(body: object, named: str) -> None:
    with pytest.raises(UserError, match=None) as err:
        parse_gate(body)
    assert named in str(err.value)


def test_load_gate_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gate.yaml"
    path.write_text("drift: {must_pass: 1}\n")
    with pytest.raises(UserError, match=r"gate\.yaml: drift\.must_pass: input should be a valid boolean, got 1$"):
        load_gate(path)
    path.write_text("metrics: [\n")
    with pytest.raises(UserError, match="gate.yaml: cannot read the gate config"):
        load_gate(path)


# A fake project ---------------------------------------------------------------------------------------------------


def fake_project(root: Path, weights: bytes = b"w1") -> Path:
    """The files lineage reads: two saved models, dvc.lock, Feast definitions, the variants config, the gate."""
    for model in ("retrieval", "ranker"):
        save_model(root, model, weights)
    lock = {
        "schema": "2.0",
        "stages": {
            "synth": {"cmd": "ember data synth", "outs": [{"path": "data/synth", "md5": "aaa.dir", "size": 1}]},
            "features_build": {
                "cmd": "ember features build",
                "deps": [{"path": "data/synth", "md5": "aaa.dir"}],
                "outs": [{"path": "data/features", "md5": "bbb.dir", "size": 2}],
            },
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    (root / "data" / "feast").mkdir(parents=True, exist_ok=True)
    definitions = {"project": "ember", "feature_services": ["ranker_v1", "retrieval_v1"], "views": {}}
    (root / "data" / "feast" / "definitions.json").write_text(json.dumps(definitions))
    (root / "serving").mkdir(exist_ok=True)
    (root / "serving" / "variants.yaml").write_text("salt: s\nvariants: []\n")
    (root / "flows").mkdir(exist_ok=True)
    shutil.copy(REPO / GATE_FILE, root / GATE_FILE)
    return root


def save_model(root: Path, model: str, weights: bytes) -> None:
    """A real (untrained) nano model, seeded by `weights`: the gate loads what it promotes."""
    import torch

    from models.ranker.model import Ranker, RankerConfig, save_ranker
    from models.retrieval.model import TwoTower, TwoTowerConfig, save

    torch.manual_seed(zlib.crc32(weights))
    best = root / "artifacts" / model / "best"
    if model == "retrieval":
        save(TwoTower(TwoTowerConfig.preset("nano")), best)
    else:
        save_ranker(Ranker(RankerConfig.preset("nano")), best)


def retrain(root: Path, weights: bytes) -> None:
    save_model(root, "ranker", weights)


def test_a_model_that_does_not_load_is_refused_and_the_registry_kept(tmp_path: Path) -> None:
    root = fake_project(tmp_path)
    run_gate(root, write_metrics(tmp_path / "m1.json"), drift_passed=True)
    before = (root / REGISTRY_FILE).read_text()
    retrain(root, b"w2")
    weights = root / "artifacts" / "ranker" / "best" / "model.pt"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2] + b"garbage" * 100)  # cut short, then garbage
    with pytest.raises(UserError, match="model.pt"):
        run_gate(root, write_metrics(tmp_path / "m2.json", auc_mean=0.9), drift_passed=True)
    assert (root / REGISTRY_FILE).read_text() == before


def write_metrics(path: Path, **values: float) -> Path:
    body = {"auc_mean": 0.75, "gauc_mean": 0.74, "logloss_mean": 0.11, "ndcg@10": 0.6, "train_config": {"lr": 1}}
    path.write_text(json.dumps(body | {k.replace("_at_", "@"): v for k, v in values.items()}))
    return path


def test_lineage_names_models_data_features_and_ab_config(tmp_path: Path) -> None:
    from models.retrieval.job import model_version

    root = fake_project(tmp_path)
    entry = lineage(root, bento="ember:abc")
    assert entry["models"] == {m: model_version(root / "artifacts" / m / "best") for m in ("retrieval", "ranker")}
    assert entry["data"] == {"data/synth": "aaa.dir", "data/features": "bbb.dir"}
    assert entry["features"]["services"] == ["ranker_v1", "retrieval_v1"]
    assert len(entry["features"]["definitions"]) == 16 and len(entry["ab_config"]) == 16
    assert entry["bento"] == "ember:abc" and entry["version"] is None
    (root / "serving" / "variants.yaml").write_text("salt: t\nvariants: []\n")
    assert lineage(root)["ab_config"] != entry["ab_config"]
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    with pytest.raises(UserError, match="dvc.lock: no output data/synth, data/features"):
        lineage(root)


# Registry ---------------------------------------------------------------------------------------------------------


def test_promote_then_rollback_then_rollback_again_is_an_error(tmp_path: Path) -> None:
    root = fake_project(tmp_path)
    assert read_registry(root) == {"format": 1, "champion": None, "history": []}
    v1 = promote(root, lineage(root), now="t1")
    assert v1["version"] == "v1" and read_registry(root)["champion"] == "v1"
    assert promote(root, lineage(root), now="t1b") == v1  # the champion's own lineage again: nothing changes
    retrain(root, b"w2")
    v2 = promote(root, lineage(root), now="t2")
    assert v2["version"] == "v2" and v2["models"]["ranker"] != v1["models"]["ranker"]
    restored = rollback(root, now="t3")
    registry = read_registry(root)
    assert restored["version"] == "v1" and registry["champion"] == "v1"
    assert [e["rolled_back_at"] for e in registry["history"]] == [None, "t3"]
    with pytest.raises(UserError, match="no previous champion to roll back to"):
        rollback(root)
    assert read_registry(root) == registry
    retrain(root, b"w3")
    assert promote(root, lineage(root), now="t4")["version"] == "v3"
    assert rollback(root)["version"] == "v1"  # v2 was rolled back: v1 is the one before v3


def test_rollback_with_nothing_promoted_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no champion to roll back"):
        rollback(fake_project(tmp_path))


def test_a_failing_write_leaves_the_old_registry_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_project(tmp_path)
    promote(root, lineage(root), now="t1")
    path = root / REGISTRY_FILE
    before = path.read_bytes()
    retrain(root, b"w2")
    entry = lineage(root)
    real_write = Path.write_text

    def disk_full(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real_write(self, text[: len(text) // 2])  # half the file reaches the disk, then the write fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        promote(root, entry, now="t2")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["ranker", "registry.json", "retrieval"]  # no temp file

    def replace_fails(src: object, dst: object) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError, match="I/O error"):
        promote(root, entry, now="t2")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["ranker", "registry.json", "retrieval"]
    promote(root, entry, now="t2")
    assert rollback(root)["version"] == "v1"  # the registry is still usable after both failures


def test_a_corrupt_registry_is_a_user_error(tmp_path: Path) -> None:
    root = fake_project(tmp_path)
    (root / REGISTRY_FILE).write_text('{"format": 1, "champion": "v9", "history": []}')
    with pytest.raises(UserError, match="registry.json: champion 'v9' is not in the history"):
        read_registry(root)
    (root / REGISTRY_FILE).write_text("{")
    with pytest.raises(UserError, match="registry.json: not valid JSON"):
        read_registry(root)


# CLI --------------------------------------------------------------------------------------------------------------


def test_promote_twice_with_a_worse_challenger_keeps_the_champion(tmp_path: Path, run_cli: Cli) -> None:
    root = fake_project(tmp_path / "project")
    ranker = write_metrics(tmp_path / "ranker.json")
    retrieval = tmp_path / "retrieval.json"
    retrieval.write_text(json.dumps({"recall@200": 0.1, "ndcg@10": 0.01}))
    args = ("--root", str(root), "--challenger-metrics", str(ranker), "--retrieval-metrics", str(retrieval))
    first = run_cli("promote", *args, "--drift-passed")
    assert first.code == 0, first.stderr
    assert "promoted v1 (was none): no champion yet: first model" in first.stdout
    assert "ranker.auc_mean" in first.stdout and "note: shadow agreement not measured" in first.stdout

    retrain(root, b"w2")
    write_metrics(ranker, auc_mean=0.70)
    second = run_cli("promote", *args, "--drift-passed")
    assert second.code == 0, second.stderr
    assert "stays shadow: ranker.auc_mean 0.7 < champion 0.75 - 0.005 (champion: v1)" in second.stdout
    assert read_registry(root)["champion"] == "v1" and len(read_registry(root)["history"]) == 1

    write_metrics(ranker, auc_mean=0.76)
    drift = run_cli("promote", *args, "--drift-failed")
    assert "stays shadow: drift tests failed" in drift.stdout
    dry = run_cli("promote", *args, "--dry-run")
    assert "would promote (dry run, registry unchanged)" in dry.stdout
    assert read_registry(root)["champion"] == "v1"
    third = run_cli("promote", *args)
    assert "promoted v2 (was v1): every gated metric within tolerance of the champion" in third.stdout
    again = run_cli("promote", *args)
    assert "v2 is already the champion" in again.stdout and len(read_registry(root)["history"]) == 2

    back = run_cli("rollback", "--root", str(root))
    assert back.code == 0 and back.stdout.startswith("rolled back v2 -> v1")
    assert run_cli("rollback", "--root", str(root)).error_line().endswith("(v1 is the first)")


def test_lineage_json_returns_the_entry_fields(tmp_path: Path, run_cli: Cli) -> None:
    root = fake_project(tmp_path / "project")
    empty = run_cli("lineage", "--root", str(root), "--json")
    assert json.loads(empty.stdout) == {"champion": None, "history": []}
    ranker = write_metrics(tmp_path / "ranker.json")
    run_cli("promote", "--root", str(root), "--challenger-metrics", str(ranker), "--bento-tag", "ember:t1")
    shown = run_cli("lineage", "--root", str(root), "--json")
    assert shown.code == 0, shown.stderr
    body = json.loads(shown.stdout)
    champion = body["champion"]
    assert set(champion) == {
        "version", "promoted_at", "models", "metrics", "data", "features", "bento", "ab_config", "gate",
        "rolled_back_at",
    }  # fmt: skip
    assert champion["version"] == "v1" and champion["bento"] == "ember:t1"
    assert champion["metrics"] == {
        "ranker": {"auc_mean": 0.75, "gauc_mean": 0.74, "logloss_mean": 0.11, "ndcg@10": 0.6}
    }
    assert champion["data"] == {"data/synth": "aaa.dir", "data/features": "bbb.dir"}
    assert "retrieval: no challenger metrics given, not gated" in champion["gate"]["notes"]
    assert body["history"] == [champion]
    text = run_cli("lineage", "--root", str(root))
    assert text.stdout.startswith("champion v1 (promoted ")
    assert [line for line in text.stdout.splitlines() if line.startswith("    v1")][0].endswith("[champion]")


def test_rollback_with_no_history_is_one_line_exit_2(tmp_path: Path, run_cli: Cli) -> None:
    root = fake_project(tmp_path)
    line = run_cli("rollback", "--root", str(root)).error_line()
    assert line.startswith("error: ") and "registry.json: no champion to roll back" in line
    assert not (root / REGISTRY_FILE).exists()


def test_bad_input_is_one_line_naming_the_file_and_leaves_the_registry(tmp_path: Path, run_cli: Cli) -> None:
    root = fake_project(tmp_path / "project")
    ranker = write_metrics(tmp_path / "ranker.json")
    assert run_cli("promote", "--root", str(root), "--challenger-metrics", str(ranker)).code == 0
    registry = (root / REGISTRY_FILE).read_bytes()
    retrain(root, b"w2")
    base = ("promote", "--root", str(root), "--challenger-metrics")

    assert "missing.json: no such metrics file" in run_cli(*base, str(tmp_path / "missing.json")).error_line()
    broken = tmp_path / "broken.json"
    broken.write_text('{"auc_mean": 0.8,')
    assert "broken.json: not valid JSON" in run_cli(*base, str(broken)).error_line()
    listed = tmp_path / "list.json"
    listed.write_text("[0.8]")
    assert "list.json: expected a JSON object" in run_cli(*base, str(listed)).error_line()
    gate = tmp_path / "gate.yaml"
    gate.write_text("metrics: {ranker: {auc_mean: {better: higher, tolerance: 0.1}}}\nshadows: {}\n")
    line = run_cli(*base, str(ranker), "--gate", str(gate)).error_line()
    assert "gate.yaml: shadows: unknown key" in line
    shutil.rmtree(root / "artifacts" / "retrieval" / "best")
    assert "retrieval/best: not a saved two-tower model" in run_cli(*base, str(ranker)).error_line()
    assert (root / REGISTRY_FILE).read_bytes() == registry


def test_the_gate_judges_both_rankers_on_the_same_window_when_a_comparison_is_given(tmp_path: Path) -> None:
    root = fake_project(tmp_path)
    first = run_gate(root, write_metrics(tmp_path / "m1.json", auc_mean=0.80), drift_passed=True)
    assert first["changed"]
    retrain(root, b"w2")
    # Trained on new data, the challenger scored 0.78 on its own window: below the champion's recorded 0.80.
    own = write_metrics(tmp_path / "m2.json", auc_mean=0.78)
    assert not run_gate(root, own, drift_passed=True, dry_run=True)["decision"]["promote"]
    # On one window, the champion does no better than the challenger: the drop came from the window, not the model.
    same = {"challenger": {"auc_mean": 0.78, "gauc_mean": 0.74, "logloss_mean": 0.11, "ndcg@10": 0.6}}
    same["champion"] = {"auc_mean": 0.779, "gauc_mean": 0.74, "logloss_mean": 0.11, "ndcg@10": 0.6}
    (tmp_path / "compare.json").write_text(json.dumps(same))
    result = run_gate(root, own, drift_passed=True, comparison=tmp_path / "compare.json")
    assert result["decision"]["promote"] and result["changed"]
    check = next(c for c in result["decision"]["checks"] if c["metric"] == "ranker.auc_mean")
    assert (check["challenger"], check["champion"]) == (0.78, 0.779)
    (tmp_path / "bad.json").write_text(json.dumps({"challenger": {}}))
    with pytest.raises(UserError, match="no 'champion' metrics"):
        run_gate(root, own, drift_passed=True, comparison=tmp_path / "bad.json")


def test_the_gate_judges_both_two_towers_on_the_same_window_when_the_comparison_has_them(tmp_path: Path) -> None:
    root = fake_project(tmp_path)
    towers = tmp_path / "r1.json"
    towers.write_text(json.dumps({"recall@200": 0.63, "ndcg@10": 0.064}))
    assert run_gate(root, write_metrics(tmp_path / "m1.json"), towers, drift_passed=True)["changed"]
    retrain(root, b"w2")
    # Scored on its own, newer window, the retrained two-tower looks far worse than the champion's recorded numbers.
    own = tmp_path / "r2.json"
    own.write_text(json.dumps({"recall@200": 0.2, "ndcg@10": 0.0}))
    ranker = write_metrics(tmp_path / "m2.json")
    decision = run_gate(root, ranker, own, drift_passed=True, dry_run=True)["decision"]
    assert not decision["promote"] and any("retrieval.recall@200" in r for r in decision["reasons"])
    same = {"challenger": {"auc_mean": 0.75, "gauc_mean": 0.74, "logloss_mean": 0.11, "ndcg@10": 0.6}}
    same["champion"] = dict(same["challenger"])
    same["retrieval"] = {"challenger": {"recall@200": 0.21, "ndcg@10": 0.011},
                         "champion": {"recall@200": 0.19, "ndcg@10": 0.010}}  # fmt: skip
    (tmp_path / "compare.json").write_text(json.dumps(same))
    result = run_gate(root, ranker, own, drift_passed=True, comparison=tmp_path / "compare.json")
    assert result["decision"]["promote"] and result["changed"]
    check = next(c for c in result["decision"]["checks"] if c["metric"] == "retrieval.recall@200")
    assert (check["challenger"], check["champion"]) == (0.21, 0.19)
    # A champion better on the same window still blocks.
    retrain(root, b"w3")
    same["retrieval"]["champion"]["recall@200"] = 0.3
    (tmp_path / "compare.json").write_text(json.dumps(same))
    decision = run_gate(root, ranker, own, drift_passed=True, comparison=tmp_path / "compare.json")["decision"]
    assert not decision["promote"] and any("retrieval.recall@200 0.21 < champion 0.3" in r for r in decision["reasons"])
    same["retrieval"] = {"challenger": {"recall@200": 0.2}}
    (tmp_path / "compare.json").write_text(json.dumps(same))
    with pytest.raises(UserError, match="retrieval: needs 'challenger' and 'champion' metrics"):
        run_gate(root, ranker, own, drift_passed=True, comparison=tmp_path / "compare.json")
