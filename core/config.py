"""The one config style. Every settings file and section is a `StrictConfig`: a frozen pydantic model that refuses
unknown keys and converts nothing (no string for a number, no number for a bool), but for what a YAML or JSON file
can only give as text or a list (`FilePath`, `Items`). `Config`, its lax parent, takes numbers and times as JSON
gives them: it is for request bodies (serving/events.py). The model and training hyperparameters that travel beside
their weights are `config_dataclass`es (frozen pydantic dataclasses). A bad value becomes one line naming its key:
core.errors.config_error for a `Config`, the dataclass's own ValueError for a `config_dataclass`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, TypeVar, dataclass_transform

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass


class Config(BaseModel):
    """A typed settings section: frozen, no unknown key; numbers and paths read as YAML and JSON give them."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictConfig(Config):
    """A `Config` that converts nothing: no string for a number, no number for a bool (params.yaml, the gate)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


T = TypeVar("T")
# The two things a YAML or JSON file can only give as a string or a list, for a StrictConfig's fields: a path, and a
# fixed sequence (a tuple, so the config stays hashable and frozen). The items keep their own strictness.
FilePath = Annotated[Path, Field(strict=False)]
Items = Annotated[tuple[T, ...], Field(strict=False)]


@dataclass_transform(frozen_default=True)
def config_dataclass(cls: type[T]) -> type[T]:
    """A frozen dataclass whose fields pydantic checks at construction (numbers and lists are converted as JSON
    gives them: 64.0 to 64, a list to a tuple; a string for a number, or an unknown field, is refused). A bad value is
    a one-line ValueError "<Config>: <field>: <why>, got <value>" (or the config's own check's message)."""
    built = dataclass(frozen=True, config=ConfigDict(extra="forbid", strict=False))(cls)
    validate = built.__init__

    @functools.wraps(validate)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validate(self, *args, **kwargs)
        except ValidationError as err:
            raise ValueError(_one_line(cls.__name__, err)) from None

    built.__init__ = __init__  # type: ignore[method-assign]
    return built  # type: ignore[return-value]


def _one_line(name: str, err: ValidationError) -> str:
    first = err.errors()[0]
    if first["type"] == "value_error":  # the config's own __post_init__ check names the config already
        return str(first["ctx"]["error"]) if "ctx" in first else first["msg"].removeprefix("Value error, ")
    where = ".".join(str(part) for part in first["loc"])
    why = "unknown field" if first["type"] == "unexpected_keyword_argument" else first["msg"]
    got = "" if first["type"] == "missing" or ", got " in why else f", got {first.get('input')!r}"
    return f"{name}: {where}: {why}{got}"
