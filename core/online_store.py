"""The online store's one config: which store, its SQLite file and its Redis address, each default written once.

Feast's repo (`features/repo/feature_store*.yaml`), the materializer (`features.store`), the direct reader
(`features.online`), the event and served-set stores and the service all take these from here.

A frozen dataclass, not pydantic: the CLI reads the defaults at start, and pydantic's import (~45 ms) would add
nearly half to `ember --help`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from core.errors import UserError

if TYPE_CHECKING:
    import redis

ONLINE_STORES = ("sqlite", "redis")
REDIS_PORT = 6379
REDIS_ADDRESS = f"127.0.0.1:{REDIS_PORT}"  # the machine's own Redis (dev and CI); compose and k8s name theirs
DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def sqlite_path(data_dir: Path = DATA_DIR) -> Path:
    """Feast's SQLite online store under a data directory (feature_store.yaml `online_store.path`)."""
    return data_dir / "feast" / "online.db"


def check_store(store: str, name: str = "online_store") -> str:
    """`store` if it is an online store; else a UserError naming the parameter `name`."""
    if store not in ONLINE_STORES:
        raise UserError(f"{name}: unknown store {store!r} (choose from {', '.join(ONLINE_STORES)})")
    return store


class RedisAddress(NamedTuple):
    host: str
    port: int
    db: int


def parse_redis(address: str) -> RedisAddress:
    """`host[:port][,db=N]` as its parts: port 6379 and database 0 when left out."""
    host, _, rest = address.partition(":")
    port, _, db_part = rest.partition(",")
    db = int(db_part.split("=", 1)[1]) if db_part.startswith("db=") else 0
    return RedisAddress(host, int(port or REDIS_PORT), db)


def redis_client(address: str, timeout_s: float) -> redis.Redis:
    """A client for `address` that fails fast: no retries and short timeouts, so a dead store lets the caller fall
    back instead of stalling the request."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    host, port, db = parse_redis(address)
    return redis.Redis(
        host=host,
        port=port,
        db=db,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


@dataclass(frozen=True)
class OnlineStoreConfig:
    """The store Feast writes and the service reads: `store` picks it, `sqlite_path` or `redis` says where."""

    store: str = "sqlite"
    sqlite_path: Path = field(default_factory=sqlite_path)
    redis: str = REDIS_ADDRESS

    def __post_init__(self) -> None:
        check_store(self.store)
