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
        ("h:7,password=s3,ssl=true,ssl_ca_certs=/ca.pem", RedisAddress("h", 7, 0, "s3", None, True, "/ca.pem")),
        ("h,username=app,password=s3,db=2", RedisAddress("h", 6379, 2, "s3", "app")),
        ("redis://h", RedisAddress("h", 6379, 0)),
        ("redis://app:s%40cret@h:7000/5", RedisAddress("h", 7000, 5, "s@cret", "app")),
        ("rediss://:pw@h:6380/1?ssl_ca_certs=/ca.pem", RedisAddress("h", 6380, 1, "pw", None, True, "/ca.pem")),
    ],
)
def test_parse_redis(address: str, parts: RedisAddress) -> None:
    assert parse_redis(address) == parts
    # Feast's spelling says the same, and messages never show the password
    assert parse_redis(parts.connection_string()) == parts
    assert (parts.password or "never-empty") not in parts.display()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("h:x", "--redis: the port and db= must be integers"),
        ("h:1,pass=1", "--redis: unknown option 'pass' in the Redis address"),
        ("h:1,ssl=maybe", "--redis: ssl= must be true or false"),
        ("rediss://h:1/2?verify=no", "--redis: unknown URL option 'verify'"),
        ("redis://h:1/x", "--redis: the URL's port and database must be integers"),
        (":1", "--redis: no host"),
    ],
)
def test_a_bad_redis_address_is_one_line_naming_the_option(address: str, message: str) -> None:
    with pytest.raises(UserError, match=f"^{message}"):
        parse_redis(address)


def test_a_password_feast_cannot_carry_is_refused_before_feast_sees_it() -> None:
    with pytest.raises(UserError, match="cannot carry a ','"):
        parse_redis("redis://:a%2Cb@h").connection_string()


def test_default_redis_address_is_the_local_default_port() -> None:
    assert parse_redis(REDIS_ADDRESS) == RedisAddress("127.0.0.1", 6379, 0)


def test_redis_client_fails_fast() -> None:
    client = redis_client("redis.example:6390,db=5", timeout_s=0.25)  # builds without connecting
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example", 6390, 5)
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 0.25
    assert kwargs["retry"].get_retries() == 0
    secured = redis_client("rediss://app:s3@h:6380/1?ssl_ca_certs=/ca.pem", timeout_s=0.25)
    kwargs = secured.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["ssl_ca_certs"]) == ("app", "s3", "/ca.pem")
    assert secured.connection_pool.connection_class.__name__ == "SSLConnection"


def test_unknown_store_names_the_parameter() -> None:
    assert check_store("redis", "--online-store") == "redis"
    with pytest.raises(UserError, match=r"^--online-store: unknown store 'memcached' \(choose from sqlite, redis\)$"):
        check_store("memcached", "--online-store")
    with pytest.raises(UserError, match=r"^online_store: unknown store 'off'"):
        OnlineStoreConfig(store="off")


def test_config_defaults() -> None:
    assert OnlineStoreConfig() == OnlineStoreConfig("sqlite", sqlite_path(), REDIS_ADDRESS)
