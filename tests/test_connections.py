"""Every REDIS_URI form against real servers: TLS, cluster, TLS cluster, ACL
users, credentials, alternative DNS lookup, time-outs and fast failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import pytest
import redis
from dogpile.cache.api import NO_VALUE
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

import librecache
from librecache.clients.retries import FailFastRetry
from tests.conformance import RegionConformance
from tests.conftest import ACL_PASSWORD, ACL_PREFIX, ACL_USER
from tests.servers import RedisClusterFarm, RedisServer, SilentPeer

Make = Callable[..., librecache.Caches]


def _clear_prefix(client: redis.Redis | RedisCluster, prefix: str) -> None:
    nodes = (
        [client.get_redis_connection(n) for n in client.get_primaries()] if isinstance(client, RedisCluster) else [client]
    )
    for node in nodes:
        for key in node.scan_iter(match=f"{prefix}::*"):
            node.unlink(key)


# -- the conformance suite over TLS and ACL deployments -------------------------------


class TestTLSRegions(RegionConformance):
    expected_backend = "redis"

    @pytest.fixture
    def environment(self, tls_server: RedisServer, ca_file, prefix: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
        return {"USE_REDIS": "true", "REDIS_URI": tls_server.url, "REDIS_CA": str(ca_file), "REDIS_KEY_PREFIX": prefix}


class TestTLSClusterRegions(RegionConformance):
    expected_backend = "redis"

    @pytest.fixture
    def environment(self, tls_cluster: RedisClusterFarm, ca_file, prefix: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
        return {"USE_REDIS": "true", "REDIS_URI": tls_cluster.uri(3), "REDIS_CA": str(ca_file), "REDIS_KEY_PREFIX": prefix}


class TestHostnameTLSClusterRegions(RegionConformance):
    """A managed-service style TLS cluster: the certificate names only a host
    name and the nodes announce it; REDIS_USE_ALTERNATIVE_DNS_LOOKUP=true."""

    expected_backend = "redis"

    @pytest.fixture
    def environment(self, hostname_tls_cluster: RedisClusterFarm, ca_file, prefix: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
        return {
            "USE_REDIS": "true", "REDIS_URI": hostname_tls_cluster.uri(1, host="localhost"), "USE_REDIS_CLUSTER": "true",
            "REDIS_CA": str(ca_file), "REDIS_KEY_PREFIX": prefix, "REDIS_USE_ALTERNATIVE_DNS_LOOKUP": "true",
        }


class _ACLRegions(RegionConformance):
    """An ACL user allowed only the keys and channels under its prefix."""

    expected_backend = "redis"
    topology: str

    @pytest.fixture
    def environment(self, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
        if self.topology == "single":
            server = request.getfixturevalue("redis_server")
            uri, admin = server.url, redis.Redis(host=server.host, port=server.port)
        else:
            cluster = request.getfixturevalue("redis_cluster")
            uri, admin = cluster.uri(3), RedisCluster(host=cluster.nodes[0].host, port=cluster.nodes[0].port)
        _clear_prefix(admin, ACL_PREFIX)
        yield {"USE_REDIS": "true", "REDIS_URI": uri, "REDIS_USERNAME": ACL_USER,
               "REDIS_PASSWORD": ACL_PASSWORD, "REDIS_KEY_PREFIX": ACL_PREFIX}
        _clear_prefix(admin, ACL_PREFIX)
        admin.close()


class TestACLUserRegions(_ACLRegions):
    topology = "single"


class TestACLUserClusterRegions(_ACLRegions):
    topology = "cluster"


# -- TLS ---------------------------------------------------------------------------


STRICT = {"LIBRECACHE_STRICT": "true"}


def test_tls_without_the_ca_fails_at_once_with_the_reason(make_caches: Make, tls_server: RedisServer) -> None:
    caches = make_caches(USE_REDIS="true", REDIS_URI=tls_server.url, REDIS_KEY_PREFIX="tls", **STRICT)
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        caches.region("ROLES").set("k", 1)
    assert time.monotonic() - started < 1.0  # not retried


def test_tls_failure_by_default_is_logged_at_once_and_falls_through(
    make_caches: Make, tls_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caches = make_caches(USE_REDIS="true", REDIS_URI=tls_server.url, REDIS_KEY_PREFIX="tls")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="librecache"):
        assert caches.region("ROLES").get_or_create("k", lambda: "computed") == "computed"
    # at once: not after a time-out (LIBRECACHE_SOCKET_TIMEOUT is 5 s) nor a retry's back-off; the
    # figure is milliseconds on a quiet machine, and seconds only on a machine loaded far beyond its cores
    assert time.monotonic() - started < 5.0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "certificate verify failed" in errors[0].getMessage()
    assert "fix the credentials or TLS settings" in errors[0].getMessage()
    health = caches.health()
    assert health is not None and health["up"] is False and health["errors"] == 1


def test_the_server_host_name_is_verified(make_caches: Make, farm, test_ca, ca_file) -> None:  # type: ignore[no-untyped-def]
    cert, key = test_ca.issue("elsewhere", dns=("other.example",))
    server = farm.server(tls=(cert, key, ca_file))
    caches = make_caches(USE_REDIS="true", REDIS_URI=server.url, REDIS_CA=str(ca_file), **STRICT)
    with pytest.raises(redis.ConnectionError, match="IP address mismatch"):
        caches.region("ROLES").get("k")


def test_tls_cluster_without_the_ca_fails_at_once(tls_cluster: RedisClusterFarm) -> None:
    started = time.monotonic()
    with pytest.raises(Exception, match="certificate verify failed"):
        librecache.Caches({"USE_REDIS": "true", "REDIS_URI": tls_cluster.uri(3), **STRICT}).region("ROLES").get("k")
    assert time.monotonic() - started < 3.0


def test_hostname_only_certificates_need_the_alternative_dns_lookup(
    make_caches: Make, hostname_tls_cluster: RedisClusterFarm, ca_file
) -> None:  # type: ignore[no-untyped-def]
    env = {"USE_REDIS": "true", "REDIS_URI": hostname_tls_cluster.uri(3, host="localhost"), "REDIS_CA": str(ca_file),
           "REDIS_KEY_PREFIX": "altdns", **STRICT}
    if int(redis.__version__.split(".")[0]) >= 6:  # redis-py 5.1 (the floor) keeps the host names
        with pytest.raises(Exception, match="certificate"):  # redis-py alone swaps localhost for 127.0.0.1
            make_caches(env).region("ROLES").get("k")
    caches = make_caches({**env, "REDIS_USE_ALTERNATIVE_DNS_LOOKUP": "true"})
    region = caches.region("ROLES")
    region.set_multi({f"k{i}": i for i in range(300)})
    assert region.get_multi([f"k{i}" for i in range(300)]) == list(range(300))
    client = caches.region("ROLES").backend.client
    hosts = {
        connection.host
        for node in client.get_nodes() if node.redis_connection is not None
        for connection in node.redis_connection.connection_pool._available_connections
    }
    assert hosts == {"localhost"}  # every connection by host name, none by IP
    # topology refreshes keep using the configured endpoint
    client.nodes_manager.initialize()
    configured = {f"127.0.0.1:{node.port}" for node in hostname_tls_cluster.nodes[:3]}
    assert set(client.nodes_manager.startup_nodes) == configured
    region.delete_multi([f"k{i}" for i in range(300)])


# -- credentials ----------------------------------------------------------------------


@pytest.mark.parametrize("topology", ["single", "cluster"])
def test_credentials_in_the_uri_are_percent_decoded(make_caches: Make, request: pytest.FixtureRequest, topology: str) -> None:
    if topology == "single":
        server = request.getfixturevalue("redis_server")
        hosts = [f"127.0.0.1:{server.port}"]
    else:
        cluster = request.getfixturevalue("redis_cluster")
        hosts = [f"127.0.0.1:{node.port}" for node in cluster.nodes[:3]]
    auth = f"{quote(ACL_USER, safe='')}:{quote(ACL_PASSWORD, safe='')}@"
    uri = ",".join(f"redis://{auth}{host}" for host in hosts)
    assert "%21" in uri  # the password's "!" travels encoded
    caches = make_caches(USE_REDIS="true", REDIS_URI=uri, REDIS_KEY_PREFIX=ACL_PREFIX)
    caches.region("ROLES").set("k", "v")
    assert caches.region("ROLES").get("k") == "v"
    caches.clear("ROLES")


@pytest.mark.parametrize("topology", ["single", "cluster"])
def test_separate_variables_override_the_uri_credentials(
    make_caches: Make, request: pytest.FixtureRequest, topology: str, caplog: pytest.LogCaptureFixture
) -> None:
    if topology == "single":
        server = request.getfixturevalue("redis_server")
        hosts = [f"127.0.0.1:{server.port}"]
    else:
        hosts = [f"127.0.0.1:{node.port}" for node in request.getfixturevalue("redis_cluster").nodes[:3]]
    wrong = "Wrong-Secret-123"
    uri = ",".join(f"redis://someone:{wrong}@{host}" for host in hosts)
    good = make_caches(USE_REDIS="true", REDIS_URI=uri, REDIS_USERNAME=ACL_USER, REDIS_PASSWORD=ACL_PASSWORD,
                       REDIS_KEY_PREFIX=ACL_PREFIX)
    good.region("ROLES").set("k", 1)
    assert good.region("ROLES").get("k") == 1
    good.clear("ROLES")
    # and the other way round: a wrong REDIS_PASSWORD wins over a right URI, and fails at once
    right_uri = ",".join(f"redis://{ACL_USER}:{quote(ACL_PASSWORD, safe='')}@{host}" for host in hosts)
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises((redis.RedisError, RedisClusterException)) as caught:
        bad = librecache.Caches({"USE_REDIS": "true", "REDIS_URI": right_uri, "REDIS_PASSWORD": wrong,
                                 "REDIS_KEY_PREFIX": ACL_PREFIX, **STRICT})
        try:
            bad.region("ROLES").get("k")
        finally:
            bad.close()
    assert time.monotonic() - started < 3.0
    assert "invalid username-password pair" in str(caught.value)
    for text in (str(caught.value), repr(caught.value), caplog.text):
        assert wrong not in text and ACL_PASSWORD not in text


def test_an_acl_user_outside_its_keys_gets_a_clear_refusal(make_caches: Make, redis_server: RedisServer) -> None:
    # strict mode: in default mode the refusal is logged once and calls fall through (tests/test_faults.py)
    caches = make_caches(USE_REDIS="true", REDIS_URI=redis_server.url, REDIS_USERNAME=ACL_USER,
                         REDIS_PASSWORD=ACL_PASSWORD, REDIS_KEY_PREFIX="not-mine", LIBRECACHE_STRICT="true")
    started = time.monotonic()
    with pytest.raises(redis.exceptions.NoPermissionError, match=r"(?i)no permissions"):
        caches.region("ROLES").set("k", 1)
    assert time.monotonic() - started < 1.0


# -- time-outs and retries ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_a_silent_server_fails_within_the_timeouts(make_caches: Make, scheme: str) -> None:
    with SilentPeer() as peer:
        caches = make_caches(USE_REDIS="true", REDIS_URI=f"{scheme}://127.0.0.1:{peer.port}",
                             REDIS_CONNECT_TIMEOUT="200", LIBRECACHE_SOCKET_TIMEOUT="0.2", REDIS_RETRY_MAX_DELAY="50",
                             **STRICT)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            caches.region("ROLES").get("k")
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed  # three attempts of 0.2 s and short back-offs


def test_a_silent_cluster_seed_fails_within_the_connect_timeout() -> None:
    with SilentPeer() as peer:
        started = time.monotonic()
        with pytest.raises(Exception, match=r"(?i)timeout|timed out|cannot be connected"):
            caches = librecache.Caches({"USE_REDIS": "true", "REDIS_URI": f"rediss://127.0.0.1:{peer.port}",
                                        "USE_REDIS_CLUSTER": "true", "REDIS_CONNECT_TIMEOUT": "200", **STRICT})
            caches.close()
        assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("topology", ["single", "cluster"])
def test_retry_settings_reach_single_and_cluster_clients(make_caches: Make, request: pytest.FixtureRequest, topology: str) -> None:
    env = request.getfixturevalue("redis_env" if topology == "single" else "cluster_env")
    caches = make_caches({**env, "REDIS_RETRY_MAX_ATTEMPTS": "1", "REDIS_RETRY_MAX_DELAY": "250",
                          "REDIS_CONNECT_TIMEOUT": "1500"})
    client = caches.region("ROLES").backend.client
    retry = client.retry if topology == "cluster" else client.get_retry()
    assert isinstance(retry, FailFastRetry)
    assert retry._retries == 1  # get_retries() exists from redis-py 6 on
    assert retry._backoff._cap == 0.25
    assert FailFastRetry.__module__ == "librecache.clients.retries"
    if topology == "single":
        assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 1.5
    else:
        node = client.get_default_node().redis_connection
        assert node.connection_pool.connection_kwargs["socket_connect_timeout"] == 1.5
    assert caches.region("ROLES").get("absent") is NO_VALUE
