"""The promotion gate: the rules of flows/promotion.yaml (`GateConfig`, strict pydantic: an unknown key or a value of
the wrong type is one line naming it) and the decision of one challenger against the champion (`decide`).

A challenger replaces the champion only if no gated metric regresses by more than its tolerance, the drift tests
passed and its shadow agreement lies within bounds. The first model has no champion to compare with: its metrics
must still be present, drift and shadow still apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from core.config import StrictConfig
from core.errors import UserError, config_error
from core.io import read_yaml

GATE_FILE = Path("flows/promotion.yaml")
EPSILON = 1e-12  # 0.75 - 0.005 is 0.74499999... in floats: a challenger exactly at the limit passes

Number = Annotated[float, Field(allow_inf_nan=False)]


class MetricRule(StrictConfig):
    """`better` higher: the challenger needs >= champion - tolerance; lower: <= champion + tolerance."""

    better: Literal["higher", "lower"]
    tolerance: Annotated[Number, Field(ge=0)]


class Bound(StrictConfig):
    """Limits of one shadow-agreement value: min, max or both."""

    min: Number | None = None
    max: Number | None = None

    @model_validator(mode="after")
    def _limits(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self


class DriftRule(StrictConfig):
    must_pass: bool = True
    block_when_unmeasured: bool = False


class ShadowRule(StrictConfig):
    bounds: dict[str, Bound] = Field(default_factory=dict)
    block_when_unmeasured: bool = False


class GateConfig(StrictConfig):
    metrics: dict[Literal["retrieval", "ranker"], dict[str, MetricRule]] = Field(default_factory=dict)
    drift: DriftRule = Field(default_factory=DriftRule)
    shadow: ShadowRule = Field(default_factory=ShadowRule)


def parse_gate(body: Any, where: str = "gate config") -> GateConfig:
    """Validates a parsed gate config. Raises UserError "<where>: <dotted key>: <why>" for the first problem."""
    if not isinstance(body, dict):
        raise UserError(f"{where}: expected a mapping, got {kind_name(body)}")
    try:
        return GateConfig.model_validate(body)
    except ValidationError as err:
        raise config_error(where, err) from None


def load_gate(path: Path) -> GateConfig:
    """Reads the gate YAML; any problem is a UserError naming the file and the key."""
    path = Path(path)
    return parse_gate(read_yaml(path, "the gate config"), str(path))


def kind_name(value: Any) -> str:
    """A value's type as an error message names it ("null" for None)."""
    return "null" if value is None else type(value).__name__


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a metric value must be to be compared."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _as_float(value: Any) -> float | None:
    return float(value) if is_number(value) else None


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
            if not is_number(mine.get(name)):
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
            blocking.append(f"{metric}: not measured ({kind_name(shadow.get(name))})")
            checks.append(check | {"ok": False})
            continue
        ok = (bound.min is None or value >= bound.min - EPSILON) and (bound.max is None or value <= bound.max + EPSILON)
        checks.append(check | {"ok": ok})
        if not ok:
            blocking.append(f"{metric} {value:.4g} outside {check['rule']}")
