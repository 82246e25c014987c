"""params.yaml, typed (core/params.py): the committed file parses; a bad key or value is one line naming it, and
`ember run` refuses it before the Prefect API starts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.errors import UserError
from core.params import load_params, parse_params

REPO = Path(__file__).resolve().parents[2]
COMMITTED: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_committed_params_parse_with_their_values() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.train_ranker.epochs == COMMITTED["train_ranker"]["epochs"]
    assert params.train_retrieval.budget_s == COMMITTED["train_retrieval"]["budget_s"]
    assert params.synth.scale == COMMITTED["synth"]["scale"]


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train_ranker", "epochs", "3", "train_ranker.epochs: input should be a valid integer, got '3'"),
        ("train_ranker", "epochs", 0, "train_ranker.epochs: input should be greater than or equal to 1, got 0"),
        ("train_ranker", "lr", -0.1, "train_ranker.lr: input should be greater than 0"),
        ("train_ranker", "valid_fraction", 1.0, "train_ranker.valid_fraction: input should be less than 1"),
        ("train_retrieval", "seed", True, "train_retrieval.seed: input should be a valid integer"),
        ("build_index", "min_recall", 1.5, "build_index.min_recall: input should be less than or equal to 1"),
        ("synth", "sacle", "small", "synth.sacle: unknown key"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_it(section: str, key: str, value: Any, message: str) -> None:
    bad = copy.deepcopy(COMMITTED)
    bad[section][key] = value
    with pytest.raises(UserError) as err:
        parse_params(bad)
    assert str(err.value).startswith(f"params.yaml: {message}") and "\n" not in str(err.value)


def test_a_missing_section_or_a_file_that_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    bad = copy.deepcopy(COMMITTED)
    del bad["build_index"]
    with pytest.raises(UserError, match=r"^params.yaml: build_index: field required$"):
        parse_params(bad)
    path = tmp_path / "params.yaml"
    path.write_text("- a list\n")
    with pytest.raises(UserError, match="must be a mapping of stage sections"):
        load_params(path)
    with pytest.raises(UserError, match="cannot read the parameters"):
        load_params(tmp_path / "missing.yaml")


def test_ember_run_refuses_bad_params_before_the_prefect_api_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    import flows.api
    import flows.pipeline

    bad = copy.deepcopy(COMMITTED)
    bad["train_ranker"]["batch_size"] = "64"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    monkeypatch.setattr(flows.pipeline, "PROJECT", tmp_path)

    def no_api() -> None:
        raise AssertionError("the Prefect API was started")

    monkeypatch.setattr(flows.api, "prefect_api", no_api)
    result = run_cli("run")
    assert result.code == 2
    assert "train_ranker.batch_size: input should be a valid integer" in result.error_line()
