"""Typed drift thresholds, read from monitoring/thresholds.yaml (or any YAML of the same shape).

An unknown or mistyped key is a UserError naming it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import UserError
from core.io import read_yaml

DEFAULT_PATH = Path(__file__).with_name("thresholds.yaml")


class DataDriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str | None = None  # None: Evidently's default per column type and size
    threshold: float | None = None  # None: the method's default threshold
    per_feature_method: dict[str, str] = Field(default_factory=dict)
    drift_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3


class PredictionDriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = "wasserstein"
    threshold: Annotated[float, Field(gt=0.0)] = 0.1
    per_action_threshold: dict[str, Annotated[float, Field(gt=0.0)]] = Field(default_factory=dict)

    def threshold_for(self, action: str) -> float:
        return self.per_action_threshold.get(action, self.threshold)


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_drift: DataDriftConfig = Field(default_factory=DataDriftConfig)
    prediction_drift: PredictionDriftConfig = Field(default_factory=PredictionDriftConfig)
    min_rows: Annotated[int, Field(ge=1)] = 200
    # Larger windows are down-sampled (seeded) to this many rows: Evidently on 500k rows x 130 features takes ~5 min.
    max_rows: Annotated[int, Field(ge=1)] = 50_000
    seed: int = 0


def parse_config(raw: Any, source: str = "thresholds") -> MonitorConfig:
    """Validates a mapping; the first bad key becomes a one-line UserError naming its dotted path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return MonitorConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "<root>"
        if first["type"] == "extra_forbidden":
            raise UserError(f"{source}: unknown key {key!r}") from None
        raise UserError(f"{source}: {key}: {first['msg']}") from None


def load_config(path: Path | None = None) -> MonitorConfig:
    """Reads the thresholds YAML (monitoring/thresholds.yaml when no path is given)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    return parse_config(read_yaml(path, "the thresholds"), str(path))
