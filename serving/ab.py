"""A/B serving: the variants config, sticky user assignment, and the live routing table the admin API swaps.

Assignment is a pure function of (salt, user_id): blake2b of f"{salt}:{user_id}" read as a number in [0, 1) and
placed against the cumulative shares, in config order (x-algorithm hashes f"{salt}:{user_id}:{head}" the same way).
Python's hash() is salted per process, so it would move users between variants on every restart.

    salt: ember-ab-1
    variants:
      - {name: control, share: 0.9, recommender: {kind: popular, stats: data/features/post_stats.parquet}}
      - {name: twotower, share: 0.1, recommender: {kind: pipeline, params: {...}}, blend_weights: {like: 1.0}}
    shadow: {variant: twotower, share: 0.05}
    exposure: {path: logs/exposure.jsonl, max_bytes: 67108864, max_files: 8}
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from core.config import FilePath, StrictConfig
from core.errors import UserError, dotted_key
from core.io import read_yaml
from features.live import EventsSettings
from features.served import FreshFeedSettings
from serving.exposure import ExposureSettings
from serving.recommender import Recommender
from serving.recommender_config import RecommenderConfig

# Shares are floats from YAML or an admin request: 0.1 + 0.2 + 0.7 is 1 only to within rounding.
SHARE_TOLERANCE = 1e-9


class PopularSpec(StrictConfig):
    """The most-popular baseline (serving/static_recommender.py): from a parquet, or a table given inline."""

    kind: Literal["popular"] = "popular"
    stats: FilePath | None = None  # parquet: (post_id, author_id, score) or the post_stats view
    table: dict[int, Annotated[tuple[int, float], Field(strict=False)]] | None = (
        None  # post_id -> [author_id, score] (tests, tiny demos)
    )
    limit: Annotated[int, Field(ge=1)] = 5_000

    @model_validator(mode="after")
    def _one_source(self) -> PopularSpec:
        if (self.stats is None) == (self.table is None):
            raise ValueError("give exactly one of stats (a parquet) or table")
        return self


class PipelineSpec(StrictConfig):
    """The full pipeline (serving/recommender_pipeline.py), configured by its typed `RecommenderConfig`
    (serving/recommender_config.py): a bad value fails the variants config, naming the key."""

    kind: Literal["pipeline"] = "pipeline"
    params: RecommenderConfig


RecommenderSpec = Annotated[PopularSpec | PipelineSpec, Field(discriminator="kind")]


class Variant(StrictConfig):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    share: float = Field(ge=0.0, le=1.0)
    recommender: RecommenderSpec
    blend_weights: dict[str, float] | None = None  # signed per-action weights (pipeline variants)


class Shadow(StrictConfig):
    """A variant run off the response path on `share` of requests, compared with the served slate.

    isolation: "process" runs it in a process of its own (serving/shadow_process.py), so it never holds the GIL
    or the request's core while a request is served; "thread" on a thread of the serving process (less memory)."""

    variant: str
    share: float = Field(ge=0.0, le=1.0)
    isolation: Literal["process", "thread"] = "process"


class LimitSettings(StrictConfig):
    """Load shedding (serving/shedding.py): API requests in flight past `max_concurrency` (per worker) get a 503 with
    `Retry-After: retry_after_s`. One worker ranks one request at a time on a core; 32 in flight is ~0.5 s of queue
    at the measured ~70 req/s, past which an answer comes too late to be shown anyway."""

    max_concurrency: int = Field(default=32, ge=1)
    retry_after_s: int = Field(default=1, ge=1)


class VariantsConfig(StrictConfig):
    salt: str = Field(min_length=1)
    variants: Annotated[tuple[Variant, ...], Field(min_length=1, strict=False)]
    shadow: Shadow | None = None
    exposure: ExposureSettings = Field(default_factory=ExposureSettings)
    fresh_feed: FreshFeedSettings = Field(default_factory=FreshFeedSettings)  # features/served.py
    events: EventsSettings = Field(default_factory=EventsSettings)  # POST /events (serving/events.py)
    limits: LimitSettings = Field(default_factory=LimitSettings)  # load shedding (serving/shedding.py)

    @model_validator(mode="after")
    def _consistent(self) -> VariantsConfig:
        names = [v.name for v in self.variants]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ValueError(f"variants[{i}].name: duplicate variant name {name!r}")
        total = sum(v.share for v in self.variants)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(f"variants: shares sum to {total:.12g}, not 1")
        if self.shadow is not None and self.shadow.variant not in names:
            raise ValueError(f"shadow.variant: {self.shadow.variant!r} is not a variant (known: {', '.join(names)})")
        return self

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def champion(self) -> str:
        """The variant with the largest share (the first one on ties)."""
        return max(self.variants, key=lambda v: v.share).name

    def with_shares(self, shares: Mapping[str, float]) -> VariantsConfig:
        """A copy with new shares; variants not named keep theirs. Raises ValueError naming the field."""
        names = {v.name for v in self.variants}
        for name in shares:
            if name not in names:
                raise ValueError(f"{name}: not a variant (known: {', '.join(sorted(names))})")
        variants = [v.model_dump() | {"share": shares.get(v.name, v.share)} for v in self.variants]
        return parse_config(self.model_dump() | {"variants": variants})

    def promoted(self, name: str) -> VariantsConfig:
        """A copy where `name` takes every request."""
        self.variant(name)
        return self.with_shares({v.name: 1.0 if v.name == name else 0.0 for v in self.variants})


def parse_config(body: Any, where: str = "variants config") -> VariantsConfig:
    """Validates a parsed mapping. Raises ValueError with one line naming the field at fault."""
    try:
        return VariantsConfig.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        loc = dotted_key(first["loc"], skip=("popular", "pipeline"))  # the discriminator's tags are no fields
        msg = first["msg"].removeprefix("Value error, ")
        # A model-level check names its own field at the start of the message.
        raise ValueError(f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg) from None


def load_config(path: Path) -> VariantsConfig:
    """Reads a variants YAML file; any problem is a UserError naming the file and the field."""
    path = Path(path)
    body = read_yaml(path, "the variants config")
    try:
        return parse_config(body)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None


def bucket(salt: str, user_id: int) -> float:
    """The user's stable position in [0, 1): the same in every process, on every restart."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign(config: VariantsConfig, user_id: int) -> str:
    """The variant serving this user: the first whose cumulative share exceeds the user's bucket."""
    point = bucket(config.salt, user_id)
    cumulative = 0.0
    for v in config.variants:
        cumulative += v.share
        if point < cumulative:
            return v.name
    # Rounding can leave the shares summing to 1 - 1e-12: the last variant with a share takes the remainder.
    return next(v.name for v in reversed(config.variants) if v.share > 0)


def in_shadow(config: VariantsConfig, request_id: str) -> bool:
    """Whether this request also runs the shadow variant (a hash of the request id, so reruns agree)."""
    if config.shadow is None or config.shadow.share <= 0:
        return False
    return bucket(f"{config.salt}:shadow", hash_id(request_id)) < config.shadow.share


def hash_id(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


# Recommender factories ----------------------------------------------------------------------------------------------

Factory = Callable[[Variant], Recommender]


def _build_popular(variant: Variant) -> Recommender:
    from serving.static_recommender import PopularRecommender

    spec = variant.recommender
    assert isinstance(spec, PopularSpec)
    if spec.table is not None:
        return PopularRecommender(spec.table, version=f"popular:{variant.name}")
    assert spec.stats is not None
    return PopularRecommender.from_parquet(spec.stats, limit=spec.limit)


def _build_pipeline(variant: Variant) -> Recommender:
    from serving.recommender_pipeline import PipelineRecommender

    spec = variant.recommender
    assert isinstance(spec, PipelineSpec)
    params = spec.params
    if variant.blend_weights is not None:  # checked by the same rule as params.weights
        params = RecommenderConfig(**(params.model_dump() | {"weights": dict(variant.blend_weights)}))
    return PipelineRecommender.load(params)


FACTORIES: dict[str, Factory] = {"popular": _build_popular, "pipeline": _build_pipeline}


# The live routing table -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """One immutable snapshot: a config and a loaded recommender per variant. A request reads it once."""

    config: VariantsConfig
    recommenders: Mapping[str, Recommender]

    def assign(self, user_id: int) -> str:
        return assign(self.config, user_id)


@dataclass
class Router:
    """Holds the current Routing and the configs it replaced, for rollback.

    Swaps are atomic: the new recommenders are built completely first, then one reference is replaced under a lock;
    a request in flight keeps the snapshot (and the recommender objects) it started with.
    """

    routing: Routing
    factories: Mapping[str, Factory] = field(default_factory=lambda: dict(FACTORIES))
    history: list[VariantsConfig] = field(default_factory=list)
    previous_champion: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def build(cls, config: VariantsConfig, factories: Mapping[str, Factory] | None = None) -> Router:
        chosen = dict(factories or FACTORIES)
        return cls(Routing(config, _build_all(config, None, chosen)), chosen)

    def apply(self, config: VariantsConfig) -> Routing:
        """Makes `config` live, reusing the loaded recommender of every variant whose spec did not change."""
        with self._lock:
            old = self.routing
            routing = Routing(config, _build_all(config, old, self.factories))
            self.history.append(old.config)
            self.routing = routing
            return routing

    def promote(self, name: str) -> Routing:
        """`name` takes every request; the champion it replaces is remembered (and restored by rollback)."""
        champion = self.routing.config.champion
        routing = self.apply(self.routing.config.promoted(name))
        self.previous_champion = champion
        return routing

    def rollback(self) -> Routing:
        """Restores the config before the last change. Raises LookupError when there is none."""
        with self._lock:
            if not self.history:
                raise LookupError("nothing to roll back to")
            old = self.routing
            routing = Routing(self.history[-1], _build_all(self.history[-1], old, self.factories))
            self.history.pop()
            self.routing = routing
            return routing


def _build_all(
    config: VariantsConfig, current: Routing | None, factories: Mapping[str, Factory]
) -> dict[str, Recommender]:
    """A recommender per variant: the loaded one where its spec is unchanged, else a freshly built one."""
    built: dict[str, Recommender] = {}
    for v in config.variants:
        if current is not None and v.name in current.recommenders:
            before = current.config.variant(v.name)
            if before.recommender == v.recommender and before.blend_weights == v.blend_weights:
                built[v.name] = current.recommenders[v.name]
                continue
        built[v.name] = factories[v.recommender.kind](v)
    return built
