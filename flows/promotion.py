"""The promotion gate, the deployment registry and lineage: which models serve, why, and what they were built from.

Pure functions (no Prefect import): `ember promote`, `ember rollback`, `ember lineage` and the pipeline's promotion
task all call them.

Gate (flows/promotion.yaml, `GateConfig`): a challenger replaces the champion only if no gated metric regresses by
more than its tolerance, the drift tests passed and its shadow agreement lies within bounds. The first model has no
champion to compare with: its metrics must still be present, drift and shadow still apply.

Registry (artifacts/registry.json, rewritten atomically; a failed write leaves the previous file):

    {"format": 1, "champion": "v2", "history": [entry, ...]}      # every deployment, oldest first

    entry:
      version         v<n>, in promotion order (never reused)
      promoted_at     UTC, ISO 8601
      models          {"retrieval": hash, "ranker": hash}: models.retrieval_job.model_version of artifacts/<m>/best
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

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from core.errors import UserError
from core.io import atomic_write_text, read_yaml

GATE_FILE = Path("flows/promotion.yaml")
REGISTRY_FILE = Path("artifacts/registry.json")
LOCK_FILE = Path("dvc.lock")
DEFINITIONS_FILE = Path("data/feast/definitions.json")
VARIANTS_FILE = Path("serving/variants.yaml")
MODELS = ("retrieval", "ranker")  # gate sections, and artifacts/<model>/best
DATA_OUTS = ("data/synth", "data/features")
REGISTRY_FORMAT = 1
# What makes two deployments the same: promoting the champion's own lineage again changes nothing.
IDENTITY_KEYS = ("models", "data", "features", "bento", "ab_config")
EPSILON = 1e-12  # 0.75 - 0.005 is 0.74499999... in floats: a challenger exactly at the limit passes


# Gate config --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricRule:
    better: Literal["higher", "lower"]
    tolerance: float


@dataclass(frozen=True)
class Bound:
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class DriftRule:
    must_pass: bool = True
    block_when_unmeasured: bool = False


@dataclass(frozen=True)
class ShadowRule:
    bounds: Mapping[str, Bound] = field(default_factory=dict)
    block_when_unmeasured: bool = False


@dataclass(frozen=True)
class GateConfig:
    metrics: Mapping[str, Mapping[str, MetricRule]] = field(default_factory=dict)  # model -> metric -> rule
    drift: DriftRule = field(default_factory=DriftRule)
    shadow: ShadowRule = field(default_factory=ShadowRule)


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _mapping(value: Any, where: str, known: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A mapping with string keys (only `known` ones when given); ValueError naming the key otherwise."""
    if not isinstance(value, dict):
        raise ValueError(f"{where or 'gate config'}: expected a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"{_at(where, str(key))}: keys must be strings")
        if known is not None and key not in known:
            raise ValueError(f"{_at(where, key)}: unknown key (known: {', '.join(known)})")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _as_float(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


def _number(value: Any, where: str, minimum: float | None = None) -> float:
    if not _is_number(value):
        raise ValueError(f"{where}: expected a number, got {_kind(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: must be >= {minimum:g}, got {value!r}")
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: expected true or false, got {_kind(value)} {value!r}")
    return value


def parse_gate(body: Any) -> GateConfig:
    """Validates a parsed gate config. Raises ValueError naming the key at fault."""
    top = _mapping(body, "", ("metrics", "drift", "shadow"))
    metrics: dict[str, dict[str, MetricRule]] = {}
    for model, rules in _mapping(top.get("metrics", {}), "metrics", MODELS).items():
        where = f"metrics.{model}"
        metrics[model] = {}
        for name, rule in _mapping(rules, where).items():
            at = _at(where, name)
            spec = _mapping(rule, at, ("better", "tolerance"))
            if spec.get("better") not in ("higher", "lower"):
                raise ValueError(f"{at}.better: expected higher or lower, got {spec.get('better')!r}")
            if "tolerance" not in spec:
                raise ValueError(f"{at}.tolerance: missing")
            metrics[model][name] = MetricRule(spec["better"], _number(spec["tolerance"], f"{at}.tolerance", 0.0))
    drift = _mapping(top.get("drift", {}), "drift", ("must_pass", "block_when_unmeasured"))
    shadow = _mapping(top.get("shadow", {}), "shadow", ("bounds", "block_when_unmeasured"))
    bounds: dict[str, Bound] = {}
    for name, spec in _mapping(shadow.get("bounds", {}), "shadow.bounds").items():
        at = f"shadow.bounds.{name}"
        limits = _mapping(spec, at, ("min", "max"))
        if not limits:
            raise ValueError(f"{at}: give min, max or both")
        low = None if limits.get("min") is None else _number(limits["min"], f"{at}.min")
        high = None if limits.get("max") is None else _number(limits["max"], f"{at}.max")
        if low is not None and high is not None and low > high:
            raise ValueError(f"{at}: min {low:g} is above max {high:g}")
        bounds[name] = Bound(low, high)
    return GateConfig(
        metrics=metrics,
        drift=DriftRule(
            must_pass=_flag(drift.get("must_pass", True), "drift.must_pass"),
            block_when_unmeasured=_flag(drift.get("block_when_unmeasured", False), "drift.block_when_unmeasured"),
        ),
        shadow=ShadowRule(
            bounds=bounds,
            block_when_unmeasured=_flag(shadow.get("block_when_unmeasured", False), "shadow.block_when_unmeasured"),
        ),
    )


def load_gate(path: Path) -> GateConfig:
    """Reads the gate YAML; any problem is a UserError naming the file and the key."""
    path = Path(path)
    body = read_yaml(path, "the gate config")
    try:
        return parse_gate(body)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None


# The decision -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """promote, and why: `reasons` are what blocked it (or why it passed), `notes` what did not count against it.

    checks: one {metric, challenger, champion, tolerance, rule, ok} per gated metric and shadow bound.
    """

    promote: bool
    reasons: list[str]
    checks: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    challenger: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    drift_passed: bool | None,
    shadow: Mapping[str, Any] | None,
    gate: GateConfig,
) -> Decision:
    """Runs the gate.

    Args:
        challenger: metrics by model, {"ranker": {...}, "retrieval": {...}}; a model left out is not gated.
        champion: the champion's metrics in the same form, or None when nothing was promoted yet.
        drift_passed: the drift tests' verdict, None when they were not run.
        shadow: shadow agreement of the challenger with the served slates ({"overlap@k": 0.4, ...}), or None.
    """
    blocking: list[str] = []
    notes: list[str] = []
    checks: list[dict[str, Any]] = []
    for model, rules in gate.metrics.items():
        mine = challenger.get(model)
        if mine is None:
            notes.append(f"{model}: no challenger metrics given, not gated")
            continue
        if not isinstance(mine, Mapping):
            blocking.append(f"{model}: challenger metrics are not a mapping")
            continue
        theirs = champion.get(model) if champion is not None else None
        for name, rule in rules.items():
            metric = f"{model}.{name}"
            sign = "-" if rule.better == "higher" else "+"
            check = {"metric": metric, "challenger": mine.get(name), "champion": None, "tolerance": rule.tolerance}
            if not _is_number(mine.get(name)):
                what = "missing from" if name not in mine else f"not a number ({mine[name]!r}) in"
                blocking.append(f"{metric}: {what} the challenger's metrics")
                checks.append(check | {"rule": "a number", "ok": False})
                continue
            value = float(mine[name])
            ref = _as_float(theirs.get(name)) if isinstance(theirs, Mapping) else None
            if ref is None:
                if champion is not None:
                    notes.append(f"{metric}: the champion has no value, not compared")
                checks.append(check | {"rule": "no champion value", "ok": True})
                continue
            if rule.better == "higher":
                ok = value >= ref - rule.tolerance - EPSILON
            else:
                ok = value <= ref + rule.tolerance + EPSILON
            at_least = ">=" if rule.better == "higher" else "<="
            checks.append(check | {"champion": ref, "rule": f"{at_least} champion {sign} {rule.tolerance:g}", "ok": ok})
            if not ok:
                worse = "<" if rule.better == "higher" else ">"
                blocking.append(f"{metric} {value:.5g} {worse} champion {ref:.5g} {sign} {rule.tolerance:g}")
    _drift(drift_passed, gate.drift, blocking, notes)
    _shadow(shadow, gate.shadow, blocking, notes, checks)
    if blocking:
        return Decision(False, blocking, checks, notes)
    why = "no champion yet: first model" if champion is None else "every gated metric within tolerance of the champion"
    return Decision(True, [why], checks, notes)


def _drift(passed: bool | None, rule: DriftRule, blocking: list[str], notes: list[str]) -> None:
    if passed is None:
        if rule.block_when_unmeasured:
            blocking.append("drift tests not measured (drift.block_when_unmeasured)")
        else:
            notes.append("drift tests not measured")
    elif not passed:
        if rule.must_pass:
            blocking.append("drift tests failed")
        else:
            notes.append("drift tests failed (drift.must_pass is false)")


def _shadow(
    shadow: Mapping[str, Any] | None,
    rule: ShadowRule,
    blocking: list[str],
    notes: list[str],
    checks: list[dict[str, Any]],
) -> None:
    if not rule.bounds:
        return
    if shadow is None:
        if rule.block_when_unmeasured:
            blocking.append("shadow agreement not measured (shadow.block_when_unmeasured)")
        else:
            notes.append("shadow agreement not measured")
        return
    for name, bound in rule.bounds.items():
        metric = f"shadow.{name}"
        parts = ([f">= {bound.min:g}"] if bound.min is not None else []) + (
            [f"<= {bound.max:g}"] if bound.max is not None else []
        )
        check = {"metric": metric, "challenger": shadow.get(name), "champion": None, "tolerance": None}
        check["rule"] = " and ".join(parts)
        value = _as_float(shadow.get(name))
        if value is None:
            blocking.append(f"{metric}: not measured ({_kind(shadow.get(name))})")
            checks.append(check | {"ok": False})
            continue
        ok = (bound.min is None or value >= bound.min - EPSILON) and (bound.max is None or value <= bound.max + EPSILON)
        checks.append(check | {"ok": ok})
        if not ok:
            blocking.append(f"{metric} {value:.4g} outside {check['rule']}")


# Lineage ----------------------------------------------------------------------------------------------------------


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
    from models.retrieval_job import model_version

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
    from models.ranker import load_ranker
    from models.two_tower import load_two_tower

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
    return {k: v for k, v in metrics.items() if _is_number(v)}


# Registry ---------------------------------------------------------------------------------------------------------


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


# The gate run the CLI and the flow share ------------------------------------------------------------------------


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
        raise UserError(f"{path}: expected a JSON object, got {_kind(body)}")
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
