"""Typed drift thresholds, read from monitoring/thresholds.yaml (or any YAML of the same shape).

An unknown or mistyped key is a UserError naming it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from core.actions import ACTION_NAMES
from core.config import Items, StrictConfig
from core.errors import UserError, config_error
from core.io import read_yaml

DEFAULT_PATH = Path(__file__).with_name("thresholds.yaml")


class DataDriftConfig(StrictConfig):
    method: str | None = None  # None: Evidently's default per column type and size
    threshold: float | None = None  # None: the method's default threshold
    per_feature_method: dict[str, str] = Field(default_factory=dict)
    drift_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3


class PredictionDriftConfig(StrictConfig):
    method: str = "wasserstein"
    threshold: Annotated[float, Field(gt=0.0)] = 0.1
    per_action_threshold: dict[str, Annotated[float, Field(gt=0.0)]] = Field(default_factory=dict)

    def threshold_for(self, action: str) -> float:
        return self.per_action_threshold.get(action, self.threshold)


class TargetDriftConfig(StrictConfig):
    """Drift of each action's outcome rate (training labels vs outcomes of what was served)."""

    # PSI of the 0/1 labels, as calibrated in thresholds.yaml (bench/drift_detection.py): a p-value test's verdict
    # depends on the window size, and Jensen-Shannon >= 0.1 needs click rates to move by two thirds.
    method: str = "psi"
    threshold: Annotated[float, Field(gt=0.0)] = 0.005
    per_action_threshold: dict[str, Annotated[float, Field(gt=0.0)]] = Field(default_factory=dict)
    # The test fails when at least this share of the checked actions drifted.
    drift_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2

    def threshold_for(self, action: str) -> float:
        return self.per_action_threshold.get(action, self.threshold)


class QualityConfig(StrictConfig):
    """Recommendation quality of the served slates, with outcomes."""

    k: Annotated[int, Field(ge=1)] = 10
    # An item is relevant when any of these actions happened (binary relevance for NDCG, precision, recall).
    relevant_actions: Items[str] = ("click",)
    # Fewer slates with outcomes than this in either window: no verdict.
    min_slates: Annotated[int, Field(ge=1)] = 20
    # Fails when NDCG@k of the served slates is this much (absolute) below the reference slates' (the logging
    # policy of the training window); None = not tested.
    max_ndcg_drop: Annotated[float, Field(ge=0.0)] | None = 0.1
    min_ndcg: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    min_coverage: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    max_popularity_bias: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    @field_validator("relevant_actions")
    @classmethod
    def _known_actions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [a for a in value if a not in ACTION_NAMES]
        if unknown or not value:
            raise ValueError(f"unknown actions {unknown} (choose from {', '.join(ACTION_NAMES)})")
        return value


class EmbeddingDriftConfig(StrictConfig):
    """Drift of the two-tower outputs, per principal component of the reference embeddings."""

    n_components: Annotated[int, Field(ge=1)] = 8
    method: str = "wasserstein"  # normed Wasserstein: the shift in reference standard deviations
    threshold: Annotated[float, Field(gt=0.0)] = 0.1
    # The test fails when at least this share of the components (of both towers) drifted.
    drift_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3
    # Entities embedded per side (seeded sample): the towers run on CPU inside the monitor.
    max_entities: Annotated[int, Field(ge=1)] = 5_000


class SkewConfig(StrictConfig):
    """Train/serve skew: served feature values vs the offline point-in-time recompute."""

    # Numbers match when |served - offline| <= atol + rtol * |offline| (the log holds JSON floats of float32 values).
    rtol: Annotated[float, Field(ge=0.0)] = 1e-5
    atol: Annotated[float, Field(ge=0.0)] = 1e-6
    # Fails when more than this share of all compared values, or of any one feature's, mismatch.
    max_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    max_feature_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    # Fewer served rows with an offline row than this: no verdict.
    min_rows: Annotated[int, Field(ge=1)] = 50
    # Features not compared (e.g. one that is updated online by design).
    ignore: Items[str] = ()
    # The online history's length cap (params.yaml features_build.history_length, the events store's
    # history_length): a served history is the offline one frozen at the day's start plus the events pushed since
    # (logged as hist_live), cut to this many.
    history_length: Annotated[int, Field(ge=1)] = 128


CheckName = Literal["data_drift", "prediction_drift", "target_drift", "quality", "embedding_drift", "skew"]


class MonitorConfig(StrictConfig):
    data_drift: DataDriftConfig = Field(default_factory=DataDriftConfig)
    prediction_drift: PredictionDriftConfig = Field(default_factory=PredictionDriftConfig)
    target_drift: TargetDriftConfig = Field(default_factory=TargetDriftConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    embedding_drift: EmbeddingDriftConfig = Field(default_factory=EmbeddingDriftConfig)
    skew: SkewConfig = Field(default_factory=SkewConfig)
    # The checks whose failure fails the run (and so starts a retrain); the others are measured and reported only.
    alarm_checks: Items[CheckName] = ("data_drift", "target_drift", "quality", "skew")
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
        raise config_error(source, err) from None


def load_config(path: Path | None = None) -> MonitorConfig:
    """Reads the thresholds YAML (monitoring/thresholds.yaml when no path is given)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    return parse_config(read_yaml(path, "the thresholds"), str(path))
