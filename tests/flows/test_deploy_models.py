"""flows/deploy.py: model sets stored whole, the deployment file generated from the template and the registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from core.errors import UserError
from flows.deploy import CHALLENGER, DEPLOY_FILE, MODEL_STORE, champion_key, stage_models, write_deployment
from release.registry import promote
from serving.ab import load_config

ROOT = Path(__file__).resolve().parents[2]


def _models(root: Path, tag: str) -> None:
    for model in ("retrieval", "ranker"):
        best = root / "artifacts" / model / "best"
        best.mkdir(parents=True, exist_ok=True)
        (best / "config.json").write_text(f'{{"model": "{model}", "tag": "{tag}"}}')
        (best / "model.pt").write_bytes(f"{model}-{tag}".encode())
    (root / "artifacts" / "index").mkdir(parents=True, exist_ok=True)
    (root / "artifacts" / "index" / "index.json").write_text(f'{{"tag": "{tag}"}}')


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "serving").mkdir()
    shutil.copy(ROOT / "serving" / "variants.yaml", tmp_path / "serving" / "variants.yaml")
    _models(tmp_path, "a")
    return tmp_path


def test_a_stored_set_is_whole_and_staging_it_again_changes_nothing(project: Path) -> None:
    key = stage_models(project)
    stored = project / MODEL_STORE / key
    assert (stored / "retrieval" / "model.pt").read_bytes() == b"retrieval-a"
    assert (stored / "index" / "index.json").is_file() and (stored / "ranker" / "config.json").is_file()
    _models(project, "b")
    assert stage_models(project) != key  # new weights: a new set beside the old one
    assert (stored / "retrieval" / "model.pt").read_bytes() == b"retrieval-a"
    assert not [p for p in (project / MODEL_STORE).iterdir() if p.name.startswith(".")]  # no temporary left


def test_the_challenger_shadows_the_champion_until_promoted(project: Path) -> None:
    first = stage_models(project)
    deployed = write_deployment(project, None, first)  # no champion yet: nothing to shadow
    assert deployed["challenger"] is None
    promote(project, {"models": _versions(first), "metrics": {}})
    assert champion_key(project) == first
    _models(project, "b")
    second = stage_models(project)
    write_deployment(project, champion_key(project), second, shadow_share=0.25)
    cfg = load_config(project / DEPLOY_FILE)  # the service reads it as it is
    champion = cfg.variant(cfg.champion).recommender
    challenger = cfg.variant(CHALLENGER)
    assert str(MODEL_STORE / first) in str(champion.params.ranker)  # type: ignore[union-attr]
    assert str(MODEL_STORE / second) in str(challenger.recommender.params.ranker)  # type: ignore[union-attr]
    assert challenger.share == 0.0 and cfg.shadow is not None
    assert (cfg.shadow.variant, cfg.shadow.share) == (CHALLENGER, 0.25)


def test_an_unknown_set_or_bad_share_is_refused_and_the_deployment_kept(project: Path) -> None:
    key = stage_models(project)
    write_deployment(project, key)
    before = (project / DEPLOY_FILE).read_text()
    with pytest.raises(UserError, match="no such model set"):
        write_deployment(project, key, "0000-1111")
    with pytest.raises(UserError, match="shadow_share"):
        write_deployment(project, key, key, shadow_share=0.0)
    assert (project / DEPLOY_FILE).read_text() == before
    assert yaml.safe_load(before)["variants"][0]["recommender"]["params"]["index"] == str(MODEL_STORE / key / "index")


def _versions(key: str) -> dict[str, str]:
    retrieval, ranker = key.split("-")
    return {"retrieval": retrieval, "ranker": ranker}
