"""One test per private name of another library that librecache uses
(librecache/_compat.py lists them): each fails, naming the internal, when
an upgrade removes it. Sections per library."""

from __future__ import annotations

import importlib.metadata
import pickle
from pathlib import Path
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE
from dogpile.cache.region import CacheRegion
from redis.backoff import AbstractBackoff
from redis.cluster import RedisCluster
from redis.connection import Connection, SSLConnection
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from librecache import _compat, config
from librecache.connection import FailFastRetry
from librecache.fastpath import parse_metadata
from librecache.prefixing import PrefixedRedis, _adopt

DOGPILE = f"dogpile.cache {importlib.metadata.version('dogpile.cache')}"
REDIS = f"redis-py {importlib.metadata.version('redis')}"

# --------------------------------------------------------------------------
# environs: none left (the configuration reads its text itself)
# --------------------------------------------------------------------------


def test_the_configuration_reads_no_private_name_of_environs() -> None:
    text = Path(config.__file__).read_text(encoding="utf-8")
    for private in ("._environ", "._get_value", " invalid: "):
        assert private not in text, f"librecache/config.py uses environs' {private!r} again"


# --------------------------------------------------------------------------
# dogpile.cache
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", _compat.DOGPILE_REGION_PRIVATES)
def test_dogpile_region_private(name: str) -> None:
    region = CacheRegion()
    region.configure("librecache.memory", arguments={"name": "ROLES", "max_entries": 10})
    assert hasattr(region, name), f"{DOGPILE} has no CacheRegion.{name}, which librecache.registry.LibreRegion uses"


def test_dogpile_wire_format_header_bar_payload() -> None:
    region = CacheRegion(serializer=pickle.dumps, deserializer=pickle.loads)
    region.configure("librecache.memory", arguments={"name": "ROLES", "max_entries": 10})
    region.set("k", {"a": 1})
    raw = region.backend.get_serialized("k")
    assert isinstance(raw, bytes)
    header, bar, payload = raw.partition(_compat.DOGPILE_METADATA_DELIMITER)
    assert bar, f"{DOGPILE} no longer writes serialized values as header|payload"
    metadata = parse_metadata(header)
    assert isinstance(metadata.get("ct"), float) and "v" in metadata, f"{DOGPILE}: metadata header {header!r}"
    assert pickle.loads(payload) == {"a": 1}
    assert region.get("k") == {"a": 1}
    assert region.get("missing") is NO_VALUE


# --------------------------------------------------------------------------
# redis-py
# --------------------------------------------------------------------------


def test_redis_cluster_partition_keys_by_slot() -> None:
    assert hasattr(RedisCluster, "_partition_keys_by_slot"), (
        f"{REDIS} has no RedisCluster._partition_keys_by_slot, which PrefixedRedisCluster overrides"
    )


def test_redis_class_swap_of_a_built_client() -> None:
    client = redis.Redis(host="127.0.0.1", port=1)
    adopted = _adopt(client, PrefixedRedis, "p", None)  # type: ignore[arg-type]
    assert isinstance(adopted, PrefixedRedis), f"{REDIS}: a built client's __class__ cannot be swapped"
    assert adopted.connection_pool is client.connection_pool
    client.close()


def test_redis_connection_sock() -> None:
    connection = Connection(host="127.0.0.1", port=1)
    assert hasattr(connection, "_sock"), f"{REDIS} has no Connection._sock, which _BoundedConnect sets time-outs on"


def test_redis_ssl_wrap_socket_with_ssl() -> None:
    assert hasattr(SSLConnection, "_wrap_socket_with_ssl"), (
        f"{REDIS} has no SSLConnection._wrap_socket_with_ssl, which BoundedSSLConnection bounds by the connect time-out"
    )


def test_jitter_backoff_is_a_public_backoff_capped() -> None:
    backoff = _compat.jitter_backoff(base=0.01, cap=0.25)
    assert isinstance(backoff, AbstractBackoff)
    assert all(0 <= backoff.compute(failures) <= 0.25 for failures in range(1, 30))


@pytest.mark.parametrize(("error", "expected_attempts"), [
    (RedisConnectionError("dropped"), 3),  # transient: retried twice
    (AuthenticationError("invalid password"), 1),  # permanent: raised at once
])
def test_fail_fast_retry_on_this_redis_version(error: Exception, expected_attempts: int) -> None:
    attempts: list[int] = []
    failed: list[Any] = []
    retry = FailFastRetry(_compat.jitter_backoff(base=0.0, cap=0.0), 2)

    def do() -> None:
        attempts.append(1)
        raise error

    with pytest.raises(type(error)) as raised:
        retry.call_with_retry(do, failed.append)
    assert raised.value is error
    assert len(attempts) == expected_attempts, f"{REDIS}: Retry.call_with_retry"
    assert len(failed) == (expected_attempts if expected_attempts > 1 else 0)  # fail() only for retried ones


def test_fail_fast_retry_keeps_a_permanent_errors_cause() -> None:
    import ssl

    retry = FailFastRetry(_compat.jitter_backoff(base=0.0, cap=0.0), 2)
    cause = ssl.SSLError("CERTIFICATE_VERIFY_FAILED")

    def do() -> None:
        try:
            raise cause
        except ssl.SSLError as exc:
            raise RedisConnectionError("TLS failed") from exc

    with pytest.raises(RedisConnectionError) as raised:
        retry.call_with_retry(do, lambda error: None)
    assert raised.value.__cause__ is cause
