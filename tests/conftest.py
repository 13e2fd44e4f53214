"""Fixtures: real Redis servers on loopback, registries that close themselves."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

import librecache
from librecache import CacheKeys, registry
from tests.certs import TestCA
from tests.servers import RedisClusterFarm, RedisSentinelFarm, RedisServer, ServerFarm, server_description

#: Tests that cannot share the machine with other tests, marked ``serial``
#: here (not in their files): the nox sessions run them alone, after the
#: parallel pass (``-m serial -p no:xdist``). Keys are test files or node
#: ids without parameters; values say why.
SERIAL: dict[str, str] = {
    "tests/test_docs_browser.py": "a browser (Chromium) and a Sphinx build",
    "tests/test_example_chat_browser.py": "a browser (Chromium), nginx and three app processes",
    "tests/test_forks.py::test_thirty_forks_while_threads_are_busy_never_hang":
        "six threads keep the CPU busy while the process forks thirty times",
}

#: Tests kept on one pytest-xdist worker, in order (``--dist loadgroup``):
#: they share an expensive module fixture, or must not meet each other.
GROUPS: dict[str, str] = {
    # the module's last test prints what the others measured (FIGURES)
    "tests/test_forks.py": "forks",
}


def pytest_report_header(config: pytest.Config) -> str:
    return f"servers: {server_description()}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark :data:`SERIAL` tests ``serial`` and put :data:`GROUPS` tests in
    their xdist group (before ``-m`` selects and xdist distributes)."""
    for item in items:
        path, _, name = item.nodeid.partition("::")
        name = name.split("[")[0]
        for key in (f"{path}::{name}", path):
            if key in SERIAL:
                item.add_marker(pytest.mark.serial)
                break
        for key in (f"{path}::{name}", path):
            if key in GROUPS:
                item.add_marker(pytest.mark.xdist_group(GROUPS[key]))
                break


@pytest.fixture(scope="session")
def farm() -> Iterator[ServerFarm]:
    farm = ServerFarm()
    yield farm
    farm.stop()


#: The ACL user every test server knows: restricted to the keys and
#: channels of the prefix ``acltenant``.
ACL_USER, ACL_PASSWORD, ACL_PREFIX = "tenant", "tenant-Pa55!word", "acltenant"
ACL_LINES = (f"user {ACL_USER} on >{ACL_PASSWORD} ~{ACL_PREFIX}::* &{ACL_PREFIX}::* +@all",)


@pytest.fixture(scope="session")
def redis_server(farm: ServerFarm) -> RedisServer:
    """One plain Redis server for the whole session."""
    return farm.server(config_lines=ACL_LINES)


@pytest.fixture(scope="session")
def redis_cluster(farm: ServerFarm) -> RedisClusterFarm:
    """A 6-node cluster (3 masters, 3 replicas) for the whole session."""
    return farm.cluster(config_lines=ACL_LINES)


@pytest.fixture
def cluster_env(redis_cluster: RedisClusterFarm, prefix: str) -> dict[str, str]:
    """Variables of a deployment on the session's cluster, with its own prefix."""
    return {"USE_REDIS": "true", "REDIS_URI": redis_cluster.uri(3), "REDIS_KEY_PREFIX": prefix}


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


@pytest.fixture(scope="session")
def tls_server(farm: ServerFarm, test_ca: TestCA) -> RedisServer:
    """A TLS-only server whose certificate names 127.0.0.1 and localhost."""
    cert, key = test_ca.issue("redis-single", dns=("localhost",), ips=("127.0.0.1",))
    return farm.server(tls=(cert, key, test_ca.path), config_lines=ACL_LINES)


@pytest.fixture(scope="session")
def tls_cluster(farm: ServerFarm, test_ca: TestCA) -> RedisClusterFarm:
    """A TLS 6-node cluster (bus and replication over TLS too)."""
    cert, key = test_ca.issue("redis-cluster", dns=("localhost",), ips=("127.0.0.1",))
    return farm.cluster(tls=(cert, key, test_ca.path), config_lines=ACL_LINES)


@pytest.fixture(scope="session")
def hostname_tls_cluster(farm: ServerFarm, test_ca: TestCA) -> RedisClusterFarm:
    """A TLS cluster as managed services run them: the certificate names a
    host name only (no IP), and the nodes announce that host name."""
    cert, key = test_ca.issue("redis-hostname-cluster", dns=("localhost",))
    return farm.cluster(tls=(cert, key, test_ca.path), announce_hostname="localhost")


@pytest.fixture
def own_server(farm: ServerFarm) -> Iterator[RedisServer]:
    """A server of this test's own, which it may stop, kill, pause or fill."""
    server = farm.server()
    yield server
    server.stop()


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with no process default; restore the state afterwards."""
    for name in list(os.environ):
        if name.startswith(("REDIS_", "USE_REDIS", "FORCED_IN_MEMORY", "LIBRECACHE_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(registry, "_default", None)
    monkeypatch.setattr(
        registry, "_default_regions",
        {ns: registry.LibreRegion(ns, on_first_use=registry._ensure_default) for ns in CacheKeys},
    )
    yield
    if registry._default is not None:
        registry._default.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_env(redis_server: RedisServer, prefix: str) -> dict[str, str]:
    """Variables of a deployment on the session's Redis, with its own prefix."""
    return {"USE_REDIS": "true", "REDIS_URI": redis_server.url, "REDIS_KEY_PREFIX": prefix}


class Deployment:
    """A deployment under test: its variables and a plain client of its
    Redis (single or cluster) to look at what librecache wrote."""

    def __init__(self, env: dict[str, str], raw: redis.Redis | RedisCluster) -> None:
        self.env = env
        self.raw = raw
        self.cluster = isinstance(raw, RedisCluster)

    def keys(self, pattern: str) -> list[bytes]:
        """Every key matching ``pattern`` on every master, sorted."""
        if isinstance(self.raw, RedisCluster):
            nodes = [self.raw.get_redis_connection(node) for node in self.raw.get_primaries()]
        else:
            nodes = [self.raw]
        return sorted(key for node in nodes for key in node.keys(pattern))


@pytest.fixture(params=["single", "cluster"])
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """The same test on a single server and on the 6-node cluster."""
    if request.param == "single":
        server = request.getfixturevalue("redis_server")
        env = request.getfixturevalue("redis_env")
        raw: redis.Redis | RedisCluster = redis.Redis(host=server.host, port=server.port)
    else:
        cluster = request.getfixturevalue("redis_cluster")
        env = request.getfixturevalue("cluster_env")
        raw = RedisCluster(host=cluster.nodes[0].host, port=cluster.nodes[0].port)
    yield Deployment(env, raw)
    raw.close()


@pytest.fixture(params=["memory", "single", "cluster", "sentinel"])
def topology(request: pytest.FixtureRequest, prefix: str) -> dict[str, str]:
    """The variables of a deployment on each backend: memory, a single
    server, the cluster and Sentinel."""
    if request.param == "memory":
        return {}
    if request.param == "single":
        return dict(request.getfixturevalue("redis_env"))
    if request.param == "cluster":
        return dict(request.getfixturevalue("cluster_env"))
    sentinel: RedisSentinelFarm = request.getfixturevalue("redis_sentinel")
    return sentinel.env(prefix)


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Tell where the browser tests saved their screenshots, if any ran."""
    from tests.browser import screenshot_dir

    folder = screenshot_dir()
    shots = sorted(folder.glob("*.png"))
    if shots:
        terminalreporter.write_line(f"screenshots of what the browser showed ({len(shots)}): {folder}")


@pytest.fixture(scope="session")
def redis_sentinel(farm: ServerFarm) -> RedisSentinelFarm:
    """A master, its replica and three sentinels for the whole session
    (tests may fail it over: ask the farm who is master)."""
    sentinel = RedisSentinelFarm(farm.root, config_lines=ACL_LINES)
    farm.servers.extend(sentinel.servers)
    return sentinel.start()
