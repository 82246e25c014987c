"""The deployment registry (artifacts/registry.json, rewritten atomically; a failed write leaves the previous file):

    {"format": 1, "champion": "v2", "history": [entry, ...]}      # every deployment, oldest first

    entry:
      version         v<n>, in promotion order (never reused)
      promoted_at     UTC, ISO 8601
      models          {"retrieval": hash, "ranker": hash}: models.retrieval.job.model_version of artifacts/<m>/best
      metrics         {"ranker": {...}, "retrieval": {...}}: the scalar metrics it was promoted with
      data            {"data/synth": md5, "data/features": md5}: DVC's hashes from dvc.lock
      features        {"services": [...], "definitions": hash of data/feast/definitions.json}
      bento           the Bento tag served, or null
      ab_config       hash of serving/variants.yaml
      gate            {"reasons", "notes", "checks"}: why it was promoted
      rolled_back_at  null, or when a rollback retired it

Rollback makes the newest earlier entry that was not itself rolled back the champion again; promoting after a
rollback appends, so the history stays the full record. Hashes are the first 16 hex digits of a sha256.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.io import atomic_write_text

REGISTRY_FILE = Path("artifacts/registry.json")
REGISTRY_FORMAT = 1
IDENTITY_KEYS = ("models", "data", "features", "bento", "ab_config")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_registry(root: Path) -> dict[str, Any]:
    """The registry ({"format", "champion", "history"}); an empty one when nothing was promoted yet."""
    path = Path(root) / REGISTRY_FILE
    if not path.exists():
        return {"format": REGISTRY_FORMAT, "champion": None, "history": []}
    try:
        body = json.loads(path.read_text())
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(body, dict) or body.get("format") != REGISTRY_FORMAT:
        raise UserError(f"{path}: not a registry of format {REGISTRY_FORMAT}")
    history = body.get("history")
    if not isinstance(history, list) or not all(isinstance(e, dict) and "version" in e for e in history):
        raise UserError(f"{path}: history must be a list of entries with a version")
    versions = [e["version"] for e in history]
    if len(set(versions)) != len(versions):
        raise UserError(f"{path}: history: duplicate versions")
    if body.get("champion") is not None and body["champion"] not in versions:
        raise UserError(f"{path}: champion {body['champion']!r} is not in the history")
    return body


def champion_entry(registry: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((e for e in registry["history"] if e["version"] == registry["champion"]), None)


def _write_registry(root: Path, registry: Mapping[str, Any]) -> None:
    atomic_write_text(Path(root) / REGISTRY_FILE, json.dumps(registry, indent=2, sort_keys=True) + "\n")


def same_deployment(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in IDENTITY_KEYS)


def promote(root: Path, entry: Mapping[str, Any], now: str | None = None) -> dict[str, Any]:
    """Makes `entry` the champion (appended as v<n>) and returns it; when it is the champion's own lineage again,
    returns the champion and leaves the registry untouched."""
    registry = read_registry(root)
    current = champion_entry(registry)
    if current is not None and same_deployment(current, entry):
        return current
    new = {**entry, "version": f"v{len(registry['history']) + 1}", "promoted_at": now or _now(), "rolled_back_at": None}
    _write_registry(root, {**registry, "champion": new["version"], "history": [*registry["history"], new]})
    return new


def rollback(root: Path, now: str | None = None) -> dict[str, Any]:
    """Retires the champion and restores the one before it (the newest earlier entry not rolled back); returns it.
    UserError when there is no champion or nothing before it."""
    path = Path(root) / REGISTRY_FILE
    registry = read_registry(root)
    current = champion_entry(registry)
    if current is None:
        raise UserError(f"{path}: no champion to roll back (nothing promoted yet)")
    history = [dict(e) for e in registry["history"]]
    at = next(i for i, e in enumerate(history) if e["version"] == current["version"])
    previous = next((e for e in reversed(history[:at]) if e.get("rolled_back_at") is None), None)
    if previous is None:
        raise UserError(f"{path}: no previous champion to roll back to ({current['version']} is the first)")
    history[at]["rolled_back_at"] = now or _now()
    _write_registry(root, {**registry, "champion": previous["version"], "history": history})
    return previous
