"""`params.yaml`, typed: one pydantic model per DVC stage section, strict (no unknown key, no string for a number).

The stages read their own section through `dvc.yaml` (`${stage.key}` on their command line) and check the values
they own (a preset name against the model's presets, a scale against the generator's); this schema checks the file
as a whole before a run starts anything, so a typo or a wrong type is one line naming the key instead of a stage
failing minutes in. Names whose allowed values live in a higher layer (presets, scales, drift scenarios) are
checked as strings here and by their stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from core.config import StrictConfig
from core.errors import UserError, config_error
from core.io import read_yaml

Positive = Annotated[int, Field(ge=1)]


class Synth(StrictConfig):
    scale: str
    seed: int
    drift: str
    drift_day: int
    days: Positive


class ImportSource(StrictConfig):
    src: str


class FeaturesBuild(StrictConfig):
    history_length: Positive
    memory_limit: str


class TrainRetrieval(StrictConfig):
    preset: str
    budget_s: Annotated[float, Field(gt=0)]
    epochs: Positive
    seed: int


class TrainingSetRanker(StrictConfig):
    data: str
    days: Positive


class TrainRanker(StrictConfig):
    preset: str
    max_history: Positive
    epochs: Positive
    batch_size: Positive
    lr: Annotated[float, Field(gt=0)]
    seed: int
    valid_fraction: Annotated[float, Field(gt=0, lt=1)]


class BuildIndex(StrictConfig):
    min_recall: Annotated[float, Field(gt=0, le=1)]
    exact_below: Annotated[int, Field(ge=0)]


class Params(StrictConfig):
    synth: Synth
    import_kuairand: ImportSource
    import_movielens: ImportSource
    features_build: FeaturesBuild
    train_retrieval: TrainRetrieval
    training_set_ranker: TrainingSetRanker
    train_ranker: TrainRanker
    build_index: BuildIndex


def parse_params(values: Any, where: str = "params.yaml") -> Params:
    """The params as a `Params`; the first bad key a UserError "<where>: <section>.<key>: <why>"."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: must be a mapping of stage sections")
    try:
        return Params.model_validate(values)
    except ValidationError as err:
        raise config_error(where, err) from None


def load_params(path: Path) -> Params:
    """`parse_params` of the YAML file at `path` (a missing or unreadable file is a UserError naming it)."""
    return parse_params(read_yaml(Path(path), "the parameters"), str(path))
