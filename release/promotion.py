"""The gate run `ember promote` and the pipeline's promotion task share: read every input, gate the challenger against
the registry's champion (release.gate), and promote it (release.registry) with its lineage (release.lineage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import UserError
from release.gate import GATE_FILE, decide, kind_name, load_gate
from release.lineage import check_models_load, lineage, scalar_metrics
from release.registry import champion_entry, promote, read_registry


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics JSON object; UserError naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such metrics file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(body, dict):
        raise UserError(f"{path}: expected a JSON object, got {kind_name(body)}")
    return body


def run_gate(
    root: Path,
    ranker_metrics: Path,
    retrieval_metrics: Path | None = None,
    gate_file: Path | None = None,
    drift_passed: bool | None = None,
    shadow_metrics: Path | None = None,
    bento: str | None = None,
    dry_run: bool = False,
    now: str | None = None,
    comparison: Path | None = None,
) -> dict[str, Any]:
    """Gates the models at `root` against the registry's champion and promotes them when the gate passes.

    `comparison` (`ember evaluate compare`): both rankers scored on the same validation window (and, under
    "retrieval", both two-towers on the same test window); its challenger and champion numbers replace the metrics of
    the challenger's training run and of the registry entry.

    Every input is read and checked before anything is written, so bad input leaves the registry as it was.

    Returns:
        decision (Decision.as_dict()), champion_before (version or None), champion (the version after), changed
        (whether the registry was written) and entry (the challenger's lineage, or the new champion's entry).
    """
    root = Path(root)
    check_models_load(root)
    gate = load_gate(gate_file if gate_file is not None else root / GATE_FILE)
    challenger = {"ranker": scalar_metrics(read_metrics(ranker_metrics))}
    if retrieval_metrics is not None:
        challenger["retrieval"] = scalar_metrics(read_metrics(retrieval_metrics))
    shadow = read_metrics(shadow_metrics) if shadow_metrics is not None else None
    registry = read_registry(root)
    current = champion_entry(registry)
    entry = lineage(root, bento)
    champion_metrics = dict(current["metrics"]) if current else None
    if comparison is not None:
        compared = read_metrics(comparison)
        for side in ("challenger", "champion"):
            if not isinstance(compared.get(side), dict):
                raise UserError(f"{comparison}: no '{side}' metrics (write it with `ember evaluate compare`)")
        challenger["ranker"] = scalar_metrics(compared["challenger"])
        if champion_metrics is not None:
            champion_metrics["ranker"] = scalar_metrics(compared["champion"])
        towers = compared.get("retrieval")
        if towers is not None:
            sides = ("challenger", "champion")
            if not isinstance(towers, dict) or not all(isinstance(towers.get(side), dict) for side in sides):
                raise UserError(f"{comparison}: retrieval: needs 'challenger' and 'champion' metrics")
            challenger["retrieval"] = scalar_metrics(towers["challenger"])
            if champion_metrics is not None:
                champion_metrics["retrieval"] = scalar_metrics(towers["champion"])
    decision = decide(challenger, champion_metrics, drift_passed, shadow, gate)
    before = current["version"] if current else None
    result: dict[str, Any] = {"decision": decision.as_dict(), "champion_before": before, "champion": before}
    result |= {"changed": False, "entry": entry | {"metrics": challenger}}
    if decision.promote and not dry_run:
        gated = {"reasons": decision.reasons, "notes": decision.notes, "checks": decision.checks}
        promoted = promote(root, entry | {"metrics": challenger, "gate": gated}, now)
        result |= {"champion": promoted["version"], "changed": promoted["version"] != before, "entry": promoted}
    return result
