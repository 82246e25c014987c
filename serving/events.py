"""Events in: the event schema `POST /events` and `ember events import` share, and the one function that
applies a validated batch.

    {"events": [
      {"type": "engagement", "event_id": "e1", "user_id": 7, "post_id": 101, "author_id": 12,
       "actions": ["click", "like"], "surface": 0, "ts_ms": 1767225600000},
      {"type": "impression", "event_id": "e2", "user_id": 7, "post_id": 102, "surface": 0},
      {"type": "post", "event_id": "e3", "post_id": 900001, "author_id": 12, "topic": 3, "media_type": "video",
       "ts_ms": 1767225600000},
      {"type": "follow", "event_id": "e4", "user_id": 7, "author_id": 12}
    ]}

Every field is typed strictly (no "7" for 7) and no other key is allowed; `ts_ms` (epoch milliseconds) defaults to
when the batch is applied, and is a post's creation time. A batch is validated whole before anything is applied.

Effects, in this order: new posts get a post_stats row in the online store, then join every loaded pipeline
variant's in-network store and fresh-post source (serving/sources/fresh.py); engagements are appended to their
users' histories through the Feast push source; follows add the author to the user's followees (user_graph);
impressions join the user's served set (features/served.py, when the fresh feed is on), so the post is not served
to that user again within its TTL. An event id applied before (within `events.seen_ttl_s`) is acknowledged and
counted as replayed, not applied again; a second event with the same id in one batch is a replay too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError

from core.actions import ACTION_NAMES, BY_NAME
from core.config import Config
from core.errors import UserError, dotted_key
from core.schema import N_SURFACES
from features.live import EventsSettings, Follow, LiveStore, NewPost, SeenEvents, open_seen
from features.served import ServedSet
from features.store import Engagement
from serving.recent_posts import RecentPost

log = logging.getLogger(__name__)

MAX_EVENTS = 1000  # per batch: a larger upload is split by the client (the importer sends 1,000 at a time)
Id = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]
Surface = Annotated[StrictInt, Field(ge=0, le=N_SURFACES - 1)]
Millis = Annotated[StrictInt, Field(ge=0, le=2**53)]
EventId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[!-~]+$")]  # printable ASCII


def _action(name: str) -> str:
    if name not in BY_NAME:
        raise ValueError(f"unknown action {name!r} (known: {', '.join(ACTION_NAMES)})")
    return name


ActionName = Annotated[StrictStr, AfterValidator(_action)]


class _Event(Config):
    event_id: EventId
    ts_ms: Millis | None = None


class EngagementEvent(_Event):
    type: Literal["engagement"]
    user_id: Id
    post_id: Id
    author_id: Id
    actions: Annotated[list[ActionName], Field(min_length=1, max_length=len(ACTION_NAMES))]
    surface: Surface = 0


class ImpressionEvent(_Event):
    type: Literal["impression"]
    user_id: Id
    post_id: Id
    surface: Surface = 0


class PostEvent(_Event):
    type: Literal["post"]
    post_id: Id
    author_id: Id
    topic: Annotated[StrictInt, Field(ge=0, le=2**31 - 1)] = 0
    media_type: Annotated[StrictStr, Field(min_length=1, max_length=32)] = "text"


class FollowEvent(_Event):
    type: Literal["follow"]
    user_id: Id
    author_id: Id


Event = Annotated[EngagementEvent | ImpressionEvent | PostEvent | FollowEvent, Field(discriminator="type")]
EVENT_TYPES = ("engagement", "impression", "post", "follow")


class EventBatch(BaseModel):
    """What the importer validates each line against (one event per line) and the endpoint's body."""

    model_config = ConfigDict(extra="forbid")

    events: Annotated[list[Event], Field(min_length=1, max_length=MAX_EVENTS)]


class EventsUnavailable(Exception):
    """Events are off, or the online store could not be written: the batch was not (wholly) applied; retry."""


@runtime_checkable
class TakesPosts(Protocol):
    """A recommender that keeps recent posts in process (serving/recommender_pipeline.py PipelineRecommender)."""

    def add_posts(self, posts: Sequence[RecentPost]) -> None: ...


@dataclass
class EventSinks:
    """Where events go: the online store (Feast), the applied ids, the served sets and the loaded recommenders."""

    live: LiveStore
    seen: SeenEvents | None
    served: ServedSet | None = None
    recommenders: Callable[[], Iterable[object]] = lambda: ()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(
        cls,
        settings: EventsSettings,
        served: ServedSet | None = None,
        recommenders: Callable[[], Iterable[object]] = lambda: (),
    ) -> EventSinks | None:
        """The sinks of the configured store; None when events are off."""
        if settings.store == "off":
            return None
        return cls(LiveStore.from_settings(settings), open_seen(settings), served, recommenders)


@dataclass(frozen=True)
class EventsResult:
    received: int
    applied: int
    replayed: int
    applied_by_type: dict[str, int]


def field_of(error: Any, skip: tuple[str, ...] = ()) -> str:
    """A pydantic error's location dotted ("events[3].actions[0]"): the event type tag is no field, and an event
    whose type is missing or unknown names "type"."""
    field = dotted_key(error.get("loc", ()), skip=(*skip, *EVENT_TYPES))
    if error.get("type") in ("union_tag_not_found", "union_tag_invalid"):
        field += ".type" if field else "type"
    return field


def message_of(error: Any) -> str:
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def read_events(path: Path) -> list[Any]:
    """The events of a JSONL file (one event object per line; blank lines skipped), all validated before any is
    applied. Raises UserError naming the file, the line and the field."""
    adapter: TypeAdapter[Any] = TypeAdapter(Event)
    events: list[Any] = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    events.append(adapter.validate_json(line))
                except ValidationError as err:
                    first = err.errors()[0]
                    if first.get("type") == "json_invalid":
                        raise UserError(f"{path}:{n}: not JSON: {message_of(first)}") from None
                    field = field_of(first) or "event"
                    raise UserError(f"{path}:{n}: {field}: {message_of(first)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read events: {err}") from None
    if not events:
        raise UserError(f"{path}: no events")
    return events


def import_events(path: Path, sinks: EventSinks) -> EventsResult:
    """`ember events import`: the file validated whole, then applied in batches of MAX_EVENTS."""
    events = read_events(path)
    total = EventsResult(0, 0, 0, dict.fromkeys(EVENT_TYPES, 0))
    for lo in range(0, len(events), MAX_EVENTS):
        part = apply_events(events[lo : lo + MAX_EVENTS], sinks)
        by_type = {t: total.applied_by_type[t] + part.applied_by_type[t] for t in EVENT_TYPES}
        total = EventsResult(
            total.received + part.received, total.applied + part.applied, total.replayed + part.replayed, by_type
        )
    return total


def apply_events(events: Sequence[Any], sinks: EventSinks, now_ms: int | None = None) -> EventsResult:
    """Applies a validated batch (see the module doc); each event id at most once.

    Raises:
        EventsUnavailable: a store write failed; the ids of the batch are not recorded, so a retry applies it.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    with sinks._lock:  # one batch at a time: the history and graph writes read, extend and write a row
        ids = [e.event_id for e in events]
        unseen = sinks.seen.unseen(ids, now_ms) if sinks.seen is not None else set(ids)
        todo: list[Any] = []
        for e in events:
            if e.event_id in unseen:
                unseen.discard(e.event_id)
                todo.append(e)
        try:
            _apply(todo, sinks, now_ms)
        except Exception as err:
            log.exception("events: a store write failed; batch of %d not recorded", len(events))
            raise EventsUnavailable(f"the online store could not be written: {type(err).__name__}: {err}") from err
        if sinks.seen is not None:
            sinks.seen.mark([e.event_id for e in todo], now_ms)
    by_type = {t: sum(e.type == t for e in todo) for t in EVENT_TYPES}
    return EventsResult(len(events), len(todo), len(events) - len(todo), by_type)


def _apply(events: Sequence[Any], sinks: EventSinks, now_ms: int) -> None:
    def when(e: Any) -> int:
        return now_ms if e.ts_ms is None else int(e.ts_ms)

    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)

    posts = [NewPost(e.post_id, e.author_id, when(e), e.topic, e.media_type) for e in events if e.type == "post"]
    sinks.live.add_posts(posts)
    if posts:
        recent = [RecentPost(p.created_at_ms, p.post_id, p.author_id) for p in posts]
        for rec in sinks.recommenders():
            if isinstance(rec, TakesPosts):
                rec.add_posts(recent)
    engagements = [
        Engagement(e.user_id, e.post_id, e.author_id, _bitmask(e.actions), e.surface, at(when(e)))
        for e in events
        if e.type == "engagement"
    ]
    sinks.live.push_engagements(engagements)
    sinks.live.add_follows([Follow(e.user_id, e.author_id, at(when(e))) for e in events if e.type == "follow"])
    if sinks.served is not None:
        shown: dict[tuple[int, int], list[int]] = {}
        for e in events:
            if e.type == "impression":
                shown.setdefault((e.user_id, when(e)), []).append(e.post_id)
        for (user_id, ms), post_ids in shown.items():
            sinks.served.add(user_id, post_ids, ms)


def _bitmask(actions: Sequence[str]) -> int:
    mask = 0
    for name in actions:
        mask |= 1 << BY_NAME[name].bit
    return mask
