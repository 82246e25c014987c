"""What every model config shares: named presets, a frozen JSON form written beside the weights, and the attention
shape check. A config is a `config_dataclass` (core/config.py) that subclasses `ModelConfig` and sets `PRESETS`:
every field's type is checked when it is built, from a preset, `--set` overrides or a saved config.json, and an
unknown field is refused. Training settings are `config_dataclass`es too."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any, ClassVar, Self

from core.config import config_dataclass

__all__ = ["ModelConfig", "config_dataclass"]


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
