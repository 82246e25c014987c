"""bentofile.yaml: what goes into the Bento and which torch it installs (no `bentoml build` here: `make bento`)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pathspec
import pytest
import yaml

from tests.infra.test_requirements import DEV_TOOLS, lock_parts, name

ROOT = Path(__file__).resolve().parents[2]
TORCH_CPU = re.compile(r"^torch\s*@\s*https://download\.pytorch\.org/whl/cpu/torch-2\.13\.0%2Bcpu-cp311-\S+\.whl$")
# CUDA wheels; nvidia-ml-py (NVML bindings, pure Python, a bentoml dependency) is not one.
CUDA = re.compile(r"^(nvidia-(?!ml-py\b)[\w.-]+|triton|[\w.-]*cuda[\w.-]*|[\w.-]*-cu\d+)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def bentofile() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "bentofile.yaml").read_text())


def _requirements(bentofile: dict[str, Any]) -> list[str]:
    text = (ROOT / bentofile["python"]["requirements_txt"]).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _dvc_outs() -> list[str]:
    outs: list[str] = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for out in stage.get("outs", []):
            outs.append(next(iter(out)) if isinstance(out, dict) else out)
    return outs


def _included(bentofile: dict[str, Any], path: str) -> bool:
    """BentoML's rule (BentoPathSpec.includes): matched by include and not by exclude, gitwildmatch patterns."""
    include = pathspec.PathSpec.from_lines("gitwildmatch", bentofile["include"])
    exclude = pathspec.PathSpec.from_lines("gitwildmatch", bentofile["exclude"])
    return include.match_file(path) and not exclude.match_file(path)


def test_the_service_path_imports(bentofile: dict[str, Any]) -> None:
    module, _, name = bentofile["service"].partition(":")
    assert hasattr(importlib.import_module(module), name)


def test_every_included_path_exists_or_is_a_dvc_out(bentofile: dict[str, Any]) -> None:
    outs = _dvc_outs()
    for pattern in bentofile["include"]:
        path = pattern.rstrip("/")
        produced = any(path == out or path.startswith(out + "/") for out in outs)
        assert (ROOT / path).exists() or produced, f"include {pattern!r}: not in the tree and no dvc.yaml out"


def test_the_bento_holds_the_service_inputs_and_not_the_data(bentofile: dict[str, Any]) -> None:
    for path in (
        "serving/service.py",
        "serving/variants.yaml",
        "features/repo/feature_store.yaml",
        "artifacts/retrieval/best/model.pt",
        "artifacts/index/index.faiss",
        "artifacts/ranker/best/model.pt",
        "data/features/post_stats.parquet",
        "pyproject.toml",
    ):
        assert _included(bentofile, path), path
    for path in (
        "tests/serving/test_service.py",
        "data/synth/posts.parquet",
        "data/features/user_stats.parquet",
        "data/feast/online.db",
        "artifacts/retrieval/checkpoint.pt",
        ".venv/bin/python",
        "bench/results/tmp/x.json",
        "serving/__pycache__/service.cpython-311.pyc",
    ):
        assert not _included(bentofile, path), path
    assert {"tests/", "data/**"} <= set(bentofile["exclude"])


def test_torch_is_the_cpu_wheel_and_no_cuda_package_is_listed(bentofile: dict[str, Any]) -> None:
    reqs = _requirements(bentofile)
    torch = [r for r in reqs if re.match(r"^torch\b", r)]
    assert len(torch) == 1 and TORCH_CPU.match(torch[0]), torch
    assert bentofile["python"]["lock_packages"] is False  # a build-time lock re-resolves torch to the CUDA build
    assert [r for r in reqs if CUDA.match(r)] == []
    assert "cuda_version" not in bentofile.get("docker", {})


def test_the_bento_requirements_are_the_runtime_part_of_the_lock_plus_torch(bentofile: dict[str, Any]) -> None:
    runtime, _ = lock_parts()
    listed = [r for r in _requirements(bentofile) if not r.startswith("torch")]
    assert listed == list(runtime.values()), "run `make bento`"


def test_no_test_or_dev_tool_goes_into_the_bento(bentofile: dict[str, Any]) -> None:
    _, dev = lock_parts()
    listed = {name(r) for r in _requirements(bentofile)}
    assert sorted(listed & (DEV_TOOLS | dev.keys())) == []


def test_the_image_installs_the_list_as_it_is(bentofile: dict[str, Any]) -> None:
    """No resolver in the image: it would add mypy (feast asks for SQLAlchemy[mypy]), unpinned."""
    assert {"name": "UV_NO_DEPS", "value": "1"} in bentofile["envs"]


def test_the_image_is_python_3_11(bentofile: dict[str, Any]) -> None:
    assert str(bentofile["docker"]["python_version"]) == "3.11"
