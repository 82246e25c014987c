"""What every model config shares: named presets, a frozen JSON form written beside the weights, and the attention
shape check. A config is a `config_dataclass` (a frozen pydantic dataclass: every field's type is checked when it is
built, from a preset, `--set` overrides or a saved config.json; an unknown field is refused) that subclasses
`ModelConfig` and sets `PRESETS`. Training settings are `config_dataclass`es too."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, fields
from typing import Any, ClassVar, Self, TypeVar, dataclass_transform

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

T = TypeVar("T")


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


class ModelConfig:
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """A named preset with optional field overrides."""
        if name not in cls.PRESETS:
            raise ValueError(f"{cls.__name__}: unknown preset {name!r} (choose from {', '.join(cls.PRESETS)})")
        return cls(**{**cls.PRESETS[name], **overrides})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, text: str) -> Self:
        body = json.loads(text)
        unknown = set(body) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
        return cls(**body)

    def _freeze_tuples(self, *names: str) -> None:
        """JSON gives lists; keep the config hashable."""
        for name in names:
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def _check_attention(self) -> None:
        d, h, kv = self.d_model, self.n_heads, self.n_kv_heads  # type: ignore[attr-defined]
        if d % h or h % kv or (d // h) % 2:
            raise ValueError(
                f"{type(self).__name__}: need n_heads | d_model, n_kv_heads | n_heads and an even head size "
                f"(d_model={d}, n_heads={h}, n_kv_heads={kv})"
            )
