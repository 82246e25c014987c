"""The online store's one config: which store, its SQLite file and its Redis address, each default written once.

Feast's repo (`features/repo/feature_store*.yaml`), the materializer (`features.store`), the direct reader
(`features.online`), the event and served-set stores and the service all take these from here.

A frozen dataclass, not pydantic: the CLI reads the defaults at start, and pydantic's import (~45 ms) would add
nearly half to `ember --help`.
"""

from __future__ import annotations

from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from core.config import config_dataclass
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
    password: str | None = None
    username: str | None = None
    ssl: bool = False  # TLS (a rediss:// URL, or ssl=true)
    ssl_ca_certs: str | None = None  # the CA file a TLS server's certificate is checked against (default: the system's)

    def connection_string(self) -> str:
        """Feast's Redis `connection_string` (`host:port,db=N[,username=..][,password=..][,ssl=true]...`)."""
        if any("," in (v or "") for v in (self.username, self.password, self.ssl_ca_certs)):
            raise UserError("--redis: Feast's connection string cannot carry a ',' in a username, password or path")
        parts = [f"{self.host}:{self.port}", f"db={self.db}"]
        parts += [f"username={self.username}"] if self.username else []
        parts += [f"password={self.password}"] if self.password else []
        parts += ["ssl=true"] if self.ssl else []
        parts += [f"ssl_ca_certs={self.ssl_ca_certs}"] if self.ssl_ca_certs else []
        return ",".join(parts)

    def display(self) -> str:
        """Where it points, for messages: the password never shown."""
        scheme = "rediss" if self.ssl else "redis"
        user = f"{self.username or ''}:***@" if self.password else ""
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"


_OPTIONS = ("db", "username", "password", "ssl", "ssl_ca_certs")


def parse_redis(address: str, name: str = "--redis") -> RedisAddress:
    """A Redis address as its parts. Two spellings: Feast's `host[:port][,db=N][,username=U][,password=P][,ssl=true]
    [,ssl_ca_certs=FILE]`, or a URL `redis://[[user]:password@]host[:port][/db]` (`rediss://` for TLS, with
    `?ssl_ca_certs=FILE`). Port 6379 and database 0 when left out. A malformed address is a UserError naming `name`
    (the password never in the message)."""
    from urllib.parse import parse_qs, unquote, urlsplit

    def bad(why: str) -> UserError:
        return UserError(f"{name}: {why}")

    if address.startswith(("redis://", "rediss://")):
        url = urlsplit(address)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        unknown = sorted(set(query) - {"ssl_ca_certs"})
        if unknown:
            raise bad(f"unknown URL option {unknown[0]!r} (known: ssl_ca_certs)")
        try:
            port, db = url.port or REDIS_PORT, int(url.path.strip("/") or 0)
        except ValueError:
            raise bad("the URL's port and database must be integers") from None
        if not url.hostname:
            raise bad("the URL names no host")
        return RedisAddress(
            url.hostname, port, db, unquote(url.password) if url.password else None,
            unquote(url.username) if url.username else None, url.scheme == "rediss", query.get("ssl_ca_certs"),
        )  # fmt: skip
    first, *options = address.split(",")
    host, _, port_text = first.partition(":")
    values: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in _OPTIONS:
            raise bad(f"unknown option {key!r} in the Redis address (known: {', '.join(_OPTIONS)})")
        values[key] = value
    try:
        port, db = int(port_text or REDIS_PORT), int(values.get("db", 0))
    except ValueError:
        raise bad("the port and db= must be integers") from None
    if values.get("ssl", "false").lower() not in ("true", "false"):
        raise bad("ssl= must be true or false")
    if not host:
        raise bad("no host")
    return RedisAddress(
        host, port, db, values.get("password") or None, values.get("username") or None,
        values.get("ssl", "false").lower() == "true", values.get("ssl_ca_certs") or None,
    )  # fmt: skip


def redis_client(address: str, timeout_s: float) -> redis.Redis:
    """A client for `address` (`parse_redis`: password and TLS included) that fails fast: no retries and short
    timeouts, so a dead store lets the caller fall back instead of stalling the request."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    a = parse_redis(address)
    return redis.Redis(
        host=a.host,
        port=a.port,
        db=a.db,
        username=a.username,
        password=a.password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        ssl=a.ssl,
        ssl_ca_certs=a.ssl_ca_certs,
    )


@config_dataclass
class OnlineStoreConfig:
    """The store Feast writes and the service reads: `store` picks it, `sqlite_path` or `redis` says where."""

    store: str = "sqlite"
    sqlite_path: Path = field(default_factory=sqlite_path)
    redis: str = REDIS_ADDRESS

    def __post_init__(self) -> None:
        check_store(self.store)
