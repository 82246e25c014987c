"""Lineage: what a deployment is made of (model hashes, DVC's data hashes, the registered feature services, the
variants file), read from the project at `root`; and the check that both saved models load as serving loads them.
Hashes are the first 16 hex digits of a sha256."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import UserError
from release.gate import is_number

LOCK_FILE = Path("dvc.lock")
DEFINITIONS_FILE = Path("data/feast/definitions.json")
VARIANTS_FILE = Path("serving/variants.yaml")
MODELS = ("retrieval", "ranker")  # gate sections, and artifacts/<model>/best
DATA_OUTS = ("data/synth", "data/features")


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def data_versions(root: Path) -> dict[str, str]:
    """DVC's hash of each data output, from dvc.lock (what `dvc repro` last produced)."""
    import yaml

    lock = Path(root) / LOCK_FILE
    try:
        body = yaml.safe_load(lock.read_text())
    except OSError:
        raise UserError(f"{lock}: not found (run `dvc repro`)") from None
    except yaml.YAMLError as err:
        raise UserError(f"{lock}: not valid YAML: {err}".replace("\n", " ")) from None
    stages = body.get("stages") if isinstance(body, dict) else None
    if not isinstance(stages, dict):
        raise UserError(f"{lock}: no stages")
    found: dict[str, str] = {}
    for stage in stages.values():
        for out in (stage or {}).get("outs", []) if isinstance(stage, dict) else []:
            if isinstance(out, dict) and out.get("path") in DATA_OUTS and isinstance(out.get("md5"), str):
                found[out["path"]] = out["md5"]
    missing = [p for p in DATA_OUTS if p not in found]
    if missing:
        raise UserError(f"{lock}: no output {', '.join(missing)} (run `dvc repro`)")
    return {p: found[p] for p in DATA_OUTS}


def feature_version(root: Path) -> dict[str, Any]:
    """The feature services `ember features apply` registered, and a hash of the definitions it wrote."""
    path = Path(root) / DEFINITIONS_FILE
    digest = _sha256(path)
    try:
        services = json.loads(path.read_text()).get("feature_services")
    except (json.JSONDecodeError, AttributeError):
        services = None
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise UserError(f"{path}: no feature_services list (run `ember features apply`)")
    return {"services": sorted(services), "definitions": digest}


def model_versions(root: Path) -> dict[str, str]:
    from models.retrieval.job import model_version

    versions = {}
    for model in MODELS:
        best = Path(root) / "artifacts" / model / "best"
        if not ((best / "model.pt").is_file() and (best / "config.json").is_file()):
            raise UserError(f"{best}: no saved model (run `dvc repro train_{model}`)")
        versions[model] = model_version(best)
    return versions


def check_models_load(root: Path) -> None:
    """Loads both models as serving will (config, then weights_only weights): a file that is cut short, corrupt or
    does not fit its config is refused here, naming it, instead of being promoted and failing at swap time."""
    from models.ranker.model import load_ranker
    from models.retrieval.model import load_two_tower

    for model, load in (("retrieval", load_two_tower), ("ranker", load_ranker)):
        best = Path(root) / "artifacts" / model / "best"
        try:
            load(best)
        except UserError:
            raise
        except Exception as err:  # torch's reader raises several kinds on a damaged archive
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"{best / 'model.pt'}: cannot be loaded ({first}): not promoted") from None


def lineage(root: Path, bento: str | None = None) -> dict[str, Any]:
    """What a deployment of the project at `root` is made of, as an unpromoted registry entry (version null)."""
    root = Path(root)
    return {
        "version": None,
        "promoted_at": None,
        "models": model_versions(root),
        "metrics": {},
        "data": data_versions(root),
        "features": feature_version(root),
        "bento": bento,
        "ab_config": _sha256(root / VARIANTS_FILE),
        "gate": None,
        "rolled_back_at": None,
    }


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric top-level values of a metrics file (no configs or lists): what the registry keeps."""
    return {k: v for k, v in metrics.items() if is_number(v)}
