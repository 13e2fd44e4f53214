"""Fixtures: real Redis servers on loopback, registries that close themselves."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis

import librecache
from tests.certs import TestCA
from tests.servers import RedisServer, ServerFarm


@pytest.fixture(scope="session")
def farm() -> Iterator[ServerFarm]:
    farm = ServerFarm()
    yield farm
    farm.stop()


@pytest.fixture(scope="session")
def redis_server(farm: ServerFarm) -> RedisServer:
    """One plain Redis server for the whole session."""
    return farm.server()


@pytest.fixture(scope="session")
def _bare_server(farm: ServerFarm) -> RedisServer:
    return farm.server()


@pytest.fixture
def bare_redis_server(_bare_server: RedisServer) -> RedisServer:
    """A server for deployments without a prefix, emptied before each test
    (without a prefix, keys of different tests would meet)."""
    client = redis.Redis(host=_bare_server.host, port=_bare_server.port)
    client.flushall()
    client.close()
    return _bare_server


@pytest.fixture(scope="session")
def test_ca(farm: ServerFarm) -> TestCA:
    """A CA the suite generates; its certificate is ``test_ca.path``."""
    return TestCA(farm.root / "ca")


@pytest.fixture
def ca_file(test_ca: TestCA) -> Path:
    return test_ca.path


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_env(redis_server: RedisServer, prefix: str) -> dict[str, str]:
    """Variables of a deployment on the session's Redis, with its own prefix."""
    return {"USE_REDIS": "true", "REDIS_URI": redis_server.url, "REDIS_KEY_PREFIX": prefix}


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client, to look at what librecache wrote."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def make_caches() -> Iterator[Callable[..., librecache.Caches]]:
    """Build registries; every one is closed when the test ends."""
    built: list[librecache.Caches] = []

    def make(env: Mapping[str, str] | librecache.CacheConfig | None = None, **variables: str) -> librecache.Caches:
        if env is None or isinstance(env, Mapping):
            env = {**(env or {}), **variables}
        caches = librecache.Caches(env)
        built.append(caches)
        return caches

    yield make
    for caches in built:
        caches.close()
