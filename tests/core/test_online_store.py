"""The online store's one config (core/online_store.py): its defaults, the address parser, the store switch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.errors import UserError
from core.online_store import (
    REDIS_ADDRESS,
    OnlineStoreConfig,
    RedisAddress,
    check_store,
    parse_redis,
    redis_client,
    sqlite_path,
)

REPO = Path(__file__).resolve().parents[2]


def test_default_sqlite_path_is_the_one_feast_writes() -> None:
    feast_repo = REPO / "features" / "repo"
    config = yaml.safe_load((feast_repo / "feature_store.yaml").read_text())
    assert (feast_repo / config["online_store"]["path"]).resolve() == sqlite_path()
    assert sqlite_path() == REPO / "data" / "feast" / "online.db"
    assert sqlite_path(Path("/w/data")) == Path("/w/data/feast/online.db")


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("127.0.0.1:6379", RedisAddress("127.0.0.1", 6379, 0)),
        ("redis:6380,db=12", RedisAddress("redis", 6380, 12)),
        ("redis", RedisAddress("redis", 6379, 0)),
        ("redis:,db=3", RedisAddress("redis", 6379, 3)),
    ],
)
def test_parse_redis(address: str, parts: RedisAddress) -> None:
    assert parse_redis(address) == parts


def test_default_redis_address_is_the_local_default_port() -> None:
    assert parse_redis(REDIS_ADDRESS) == RedisAddress("127.0.0.1", 6379, 0)


def test_redis_client_fails_fast() -> None:
    client = redis_client("redis.example:6390,db=5", timeout_s=0.25)  # builds without connecting
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example", 6390, 5)
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25
    assert kwargs["retry"].get_retries() == 0


def test_unknown_store_names_the_parameter() -> None:
    assert check_store("redis", "--online-store") == "redis"
    with pytest.raises(UserError, match=r"^--online-store: unknown store 'memcached' \(choose from sqlite, redis\)$"):
        check_store("memcached", "--online-store")
    with pytest.raises(UserError, match=r"^online_store: unknown store 'off'"):
        OnlineStoreConfig(store="off")


def test_config_defaults() -> None:
    assert OnlineStoreConfig() == OnlineStoreConfig("sqlite", sqlite_path(), REDIS_ADDRESS)
