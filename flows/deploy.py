"""Deploying model sets: every trained set is kept, and the serving config is generated from the registry.

Model store: artifacts/models/<retrieval hash>-<ranker hash>/{retrieval,index,ranker}: a copy of the two-tower, its
ANN index and the ranker as trained (hashes: models.retrieval.job.model_version, the registry's `models`). A copy is
written under a temporary name and renamed, so a set is there whole or not at all; the working artifacts/<model>/
directories can then be retrained while the champion keeps serving its own copy, and a rollback has its files.

Deployment: artifacts/deploy/variants.yaml, serving/variants.yaml with the model paths of its champion variant
pointed at the registry champion's set and, while a challenger waits at the gate, a `challenger` variant (share 0)
running as the shadow variant on `shadow_share` of the requests (serving/shadow.py logs its agreement). A template
`as_of: data` is written as the time it stands for (the end of the newest day of the variant's features,
features/windows.py), so the deployment says which "now" it serves at and the monitor reads the same time. `ember
serve --config artifacts/deploy/variants.yaml` serves it; the admin API (serving/service.py) swaps models in a running
service. Pure functions: the pipeline's tasks and `ember rollback` call them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from core.errors import UserError
from core.io import atomic_write_text, read_yaml
from features.windows import AS_OF_DATA, resolve_as_of
from release.lineage import VARIANTS_FILE, model_versions
from release.registry import champion_entry, read_registry

MODEL_STORE = Path("artifacts/models")
DEPLOY_FILE = Path("artifacts/deploy/variants.yaml")
MODEL_PATHS = {"retrieval_model": "retrieval", "index": "index", "ranker": "ranker"}  # variant param -> store dir
CHALLENGER = "challenger"


def set_key(models: dict[str, str]) -> str:
    """The store key of a model set from its registry `models` entry."""
    return f"{models['retrieval']}-{models['ranker']}"


def stage_models(root: Path) -> str:
    """Copies the working models (artifacts/retrieval/best, artifacts/index, artifacts/ranker/best) into the store;
    returns their key. A set already stored is left as it is (same hashes: same files)."""
    root = Path(root)
    key = set_key(model_versions(root))
    target = root / MODEL_STORE / key
    if target.is_dir():
        return key
    sources = {
        "retrieval": root / "artifacts" / "retrieval" / "best",
        "index": root / "artifacts" / "index",
        "ranker": root / "artifacts" / "ranker" / "best",
    }
    if not (sources["index"] / "index.json").is_file():
        raise UserError(f"{sources['index']}: no ANN index (run `dvc repro build_index`)")
    tmp = target.with_name(f".{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, source in sources.items():
            shutil.copytree(source, tmp / name)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return key


def champion_key(root: Path) -> str | None:
    """The store key of the registry's champion, None before the first promotion."""
    entry = champion_entry(read_registry(root))
    return set_key(entry["models"]) if entry else None


def _pointed(params: dict[str, Any], key: str) -> dict[str, Any]:
    return {**params, **{p: str(MODEL_STORE / key / d) for p, d in MODEL_PATHS.items()}}


def write_deployment(
    root: Path, champion: str | None, challenger: str | None = None, shadow_share: float = 0.1
) -> dict[str, Any]:
    """Writes artifacts/deploy/variants.yaml (see the module doc) and returns what it deploys.

    Raises:
        UserError: a model set that is not in the store, a template without a pipeline champion, a bad share.
    """
    root = Path(root)
    if not 0.0 < shadow_share <= 1.0:
        raise UserError(f"shadow_share: must be in (0, 1], got {shadow_share}")
    for key in (champion, challenger):
        if key is not None and not (root / MODEL_STORE / key).is_dir():
            raise UserError(f"{MODEL_STORE / key}: no such model set (stage it first)")
    body: dict[str, Any] = read_yaml(root / VARIANTS_FILE, "variants config")
    variants: list[dict[str, Any]] = body["variants"]
    template = max(variants, key=lambda v: float(v.get("share", 0.0)))  # the champion, as serving.ab picks it
    if template.get("recommender", {}).get("kind") != "pipeline":
        raise UserError(f"{VARIANTS_FILE}: no pipeline champion variant to deploy models into")
    params = dict(template["recommender"]["params"])
    features = params.get("features")
    if params.get("as_of") == AS_OF_DATA and features is not None and (root / features).is_dir():
        params["as_of"] = resolve_as_of(AS_OF_DATA, features, root)  # else the service resolves it when it loads
        template["recommender"]["params"] = params
    if champion is not None:
        template["recommender"]["params"] = _pointed(params, champion)
    shadowed = champion is not None and challenger is not None and challenger != champion
    if shadowed:
        assert challenger is not None
        recommender = {"kind": "pipeline", "params": _pointed(params, challenger)}
        variant = {"name": CHALLENGER, "share": 0.0, "recommender": recommender}
        body["variants"] = [v for v in variants if v["name"] != CHALLENGER] + [variant]
        body["shadow"] = {"variant": CHALLENGER, "share": shadow_share}
    from serving.ab import parse_config

    parse_config(body, str(DEPLOY_FILE))  # the service would refuse it: refuse it here, before writing
    header = "# Generated by flows/deploy.py from serving/variants.yaml and the registry: do not edit.\n"
    atomic_write_text(root / DEPLOY_FILE, header + yaml.safe_dump(body, sort_keys=False))
    return {"champion": champion, "challenger": challenger if shadowed else None, "file": str(DEPLOY_FILE)}
