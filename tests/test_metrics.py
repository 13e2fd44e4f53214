"""Counters per namespace (librecache.metrics): exact counts on memory, a
single Redis and a cluster; Prometheus and OpenTelemetry exports; proxies
given with ``wrap=`` that survive ``configure()``."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dogpile.cache.api import NO_VALUE
from dogpile.cache.proxy import ProxyBackend
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import librecache
from librecache import metrics
from librecache.engine.locks import KeyedLocks
from tests.conftest import Deployment
from tests.servers import RedisServer, ServerFarm
from tests.test_resilience import FAST_RETRY, wait_until

Make = Callable[..., librecache.Caches]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["memory", "single", "cluster"])
def backed(request: pytest.FixtureRequest, make_caches: Make) -> librecache.Caches:
    """A registry whose namespaces are in memory, on a single Redis or on the cluster."""
    if request.param == "memory":
        return make_caches({})
    fixture = "redis_env" if request.param == "single" else "cluster_env"
    return make_caches(request.getfixturevalue(fixture))


def counts(caches: librecache.Caches, namespace: str = "ROLES") -> dict[str, Any]:
    found = dict(caches.stats()[namespace])
    found.pop("creation_seconds")
    return found


def expect(**given: int) -> dict[str, int]:
    return {name: given.get(name, 0) for name in metrics.COUNTERS}


# -- exact counts -------------------------------------------------------------------


def test_miss_then_hits(backed: librecache.Caches) -> None:
    region = backed.region("ROLES")
    assert region.get("k") is NO_VALUE
    region.set("k", 1)
    for _ in range(3):
        assert region.get("k") == 1
    assert counts(backed) == expect(hits=3, misses=1)
    # dogpile reads twice on a miss: the call is still one miss, one creation
    assert region.get_or_create("g", lambda: "made") == "made"
    assert region.get_or_create("g", lambda: "again") == "made"
    assert region.get_or_create("g", lambda: "again") == "made"
    assert counts(backed) == expect(hits=5, misses=2, creations=1)
    assert counts(backed, "TOOLS") == expect()  # other namespaces untouched


def test_get_multi_counts_each_key(backed: librecache.Caches) -> None:
    region = backed.region("ROLES")
    region.set_multi({"a": 1, "b": 2})
    assert region.get_multi(["a", "b", "c"]) == [1, 2, NO_VALUE]
    assert counts(backed) == expect(hits=2, misses=1)
    created: list[tuple[str, ...]] = []

    def create(*keys: str) -> list[str]:
        created.append(keys)
        return [key.upper() for key in keys]

    assert region.get_or_create_multi(["a", "x", "y"], create) == [1, "X", "Y"]
    assert created == [("x", "y")]
    assert counts(backed) == expect(hits=3, misses=3, creations=1)


def test_memoised_calls_and_creation_seconds(backed: librecache.Caches) -> None:
    region = backed.region("ROLES")

    @region.cache_on_arguments()
    def square(n: int) -> int:
        return n * n

    assert [square(2), square(2), square(3), square(2)] == [4, 4, 9, 4]
    assert counts(backed) == expect(hits=2, misses=2, creations=2)
    seconds = backed.stats()["ROLES"]["creation_seconds"]
    assert seconds["count"] == 2 and seconds["buckets"][float("inf")] == 2
    assert 0 <= seconds["sum"] < 10


def _waiting_for_lock() -> int:
    """Threads inside KeyedLocks.acquire: calls that found no value and queue
    on the creation lock."""
    code = KeyedLocks.acquire.__code__
    waiting = 0
    for frame in sys._current_frames().values():
        seen: Any = frame
        while seen is not None:
            if seen.f_code is code:
                waiting += 1
                break
            seen = seen.f_back
    return waiting


def test_stampede_counts_one_creation_and_seven_lock_waits(backed: librecache.Caches) -> None:
    """8 threads on one cold key: 1 miss and creation; the 7 others found no
    value, queued on the creation lock and got the creator's value: 7 hits,
    each also a lock wait."""
    region = backed.region("ROLES")
    runs: list[int] = []

    def create() -> str:
        runs.append(1)
        wait_until(lambda: _waiting_for_lock() == 7, 10)  # the 7 others queue on the lock
        return "value"

    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(region.get_or_create("cold", create)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["value"] * 8 and runs == [1]
    assert counts(backed) == expect(hits=7, misses=1, creations=1, lock_waits=7)


def test_near_hits(make_caches: Make, deployment: Deployment) -> None:
    caches = make_caches(deployment.env, LIBRECACHE_NEAR_CACHE_NAMESPACES="ROLES")
    region = caches.region("ROLES")
    near = region.near_cache
    assert near is not None
    wait_until(lambda: near.enabled, 10)  # subscribed: the near cache serves
    region.set("k", {"a": 1})
    assert region.get("k") == {"a": 1}  # from Redis (region.set does not fill the near cache)
    assert region.get("k") == {"a": 1}  # from the near copy that read kept

    @region.cache_on_arguments()
    def role(name: str) -> dict[str, str]:
        return {"name": name}

    assert role("admin") == role("admin") == role("admin")  # created, then two near hits
    assert counts(caches) == expect(hits=4, misses=1, creations=1, near_hits=3)


# -- Redis killed: errors and fall-throughs -------------------------------------------


@pytest.fixture
def doomed(farm: ServerFarm) -> Iterator[RedisServer]:
    server = farm.server()
    yield server
    server.stop()


def test_errors_and_fallthroughs_with_redis_killed(make_caches: Make, doomed: RedisServer) -> None:
    caches = make_caches(USE_REDIS="true", REDIS_URI=doomed.url, REDIS_KEY_PREFIX="killed", **FAST_RETRY)
    region = caches.region("ROLES")
    region.set("k", "v")
    assert region.get("k") == "v"
    doomed.kill()
    assert region.get("k") is NO_VALUE  # meets the outage: one error, falls through
    assert counts(caches) == expect(hits=1, misses=1, errors=1, fallthroughs=1)
    assert region.get("k") is NO_VALUE  # the breaker is open: falls through at once
    assert counts(caches) == expect(hits=1, misses=2, errors=1, fallthroughs=2)
    # a memoised call during the outage: its read and its lock (taken in this process only:
    # what is created without a lease is returned, not stored, so no write is tried)
    assert region.get_or_create("m", lambda: "made") == "made"
    assert counts(caches) == expect(hits=1, misses=3, creations=1, errors=1, fallthroughs=4)
    health = caches.stats()["redis"]
    assert health["up"] is False and health["fallthroughs"] >= 4
    assert counts(caches, "TOOLS") == expect()


# -- exports ----------------------------------------------------------------------------


def _scrape(collector: metrics.PrometheusCollector) -> dict[str, Any]:
    target = CollectorRegistry()
    target.register(collector)
    text = generate_latest(target).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_prometheus_exposition_parsed(make_caches: Make, redis_env: dict[str, str]) -> None:
    caches = make_caches(redis_env)
    region = caches.region("ROLES")
    region.get("absent")
    region.get_or_create("k", lambda: 1)
    region.get_or_create("k", lambda: 1)
    families = _scrape(metrics.PrometheusCollector(caches))
    for counter in metrics.COUNTERS:
        family = families[f"librecache_{counter}"]
        assert family.type == "counter"
        values = {sample.labels["namespace"]: sample.value for sample in family.samples
                  if sample.name.endswith("_total")}
        assert set(values) == {namespace.value for namespace in librecache.CacheKeys}
        assert values["ROLES"] == counts(caches)[counter]
    assert {counter: counts(caches)[counter] for counter in ("hits", "misses", "creations")} == {
        "hits": 1, "misses": 2, "creations": 1}
    histogram = families["librecache_creation_seconds"]
    assert histogram.type == "histogram"
    roles = {sample.name: sample for sample in histogram.samples
             if sample.labels["namespace"] == "ROLES" and "le" not in sample.labels}
    assert roles["librecache_creation_seconds_count"].value == 1
    infinite = [sample for sample in histogram.samples
                if sample.labels == {"namespace": "ROLES", "le": "+Inf"}]
    assert infinite[0].value == 1
    up = families["librecache_redis_up"]
    assert up.type == "gauge" and up.samples[0].value == 1


def test_prometheus_without_redis_has_no_up_gauge(make_caches: Make) -> None:
    families = _scrape(metrics.PrometheusCollector(make_caches({})))
    assert "librecache_redis_up" not in families and "librecache_hits" in families


def test_opentelemetry_instruments_read_through_the_sdk(make_caches: Make, redis_env: dict[str, str]) -> None:
    caches = make_caches(redis_env)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.instrument(caches, meter_provider=provider)
    region = caches.region("ROLES")
    region.get("absent")
    region.get_or_create("k", lambda: 1)
    region.get_or_create("k", lambda: 1)
    data = reader.get_metrics_data()
    found: dict[str, dict[str, float]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = {
                    str(point.attributes.get("namespace", "")): point.value
                    for point in metric.data.data_points
                }
    for counter in metrics.COUNTERS:
        assert found[f"librecache_{counter}_total"]["ROLES"] == counts(caches)[counter]
    assert found["librecache_hits_total"]["ROLES"] == 1
    assert found["librecache_misses_total"]["ROLES"] == 2
    assert found["librecache_creation_seconds_count"]["ROLES"] == 1
    assert found["librecache_redis_up"] == {"": 1}
    provider.shutdown()


def test_grafana_dashboard_queries_only_collector_families(make_caches: Make, redis_env: dict[str, str]) -> None:
    families = _scrape(metrics.PrometheusCollector(make_caches(redis_env)))
    exposed = {sample.name for family in families.values() for sample in family.samples}
    dashboard = json.loads((ROOT / "docs" / "grafana" / "librecache.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert queries
    import re

    used = {name for query in queries for name in re.findall(r"\blibrecache_[a-z_]+", query)}
    assert used and used <= exposed, used - exposed
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    assert "hit ratio" in titles and "creation" in titles and "fall" in titles


# -- the switch, the default registry and configure() ---------------------------------------


def test_metrics_off(make_caches: Make) -> None:
    caches = make_caches({}, LIBRECACHE_METRICS="false")
    region = caches.region("ROLES")
    region.get("k")
    region.get_or_create("k", lambda: 1)
    assert region.counters is None
    assert counts(caches) == expect()


@pytest.mark.usefixtures("fresh_default")
def test_configure_starts_fresh_counters_and_keeps_no_old_hooks(redis_env: dict[str, str]) -> None:
    first = librecache.configure({})
    region = librecache.get_region("ROLES")
    region.get_or_create("k", lambda: 1)
    assert librecache.get_caches().stats()["ROLES"]["creations"] == 1
    collector = metrics.PrometheusCollector()  # follows the default registry
    second = librecache.configure(redis_env)
    assert librecache.get_caches() is second
    assert counts(second) == expect()
    region.get_or_create("k", lambda: 2)
    region.get("k")
    assert counts(second) == expect(hits=1, misses=1, creations=1)
    assert counts(first) == expect(misses=1, creations=1)  # the old registry's counters stopped
    assert region.counters is second._stats["ROLES"]
    assert region.unwrapped_backend.stats is second._stats["ROLES"]
    hits = {sample.labels["namespace"]: sample.value
            for sample in _scrape(collector)["librecache_hits"].samples if sample.name.endswith("_total")}
    assert hits["ROLES"] == 1


class CountingProxy(ProxyBackend):
    """A dogpile proxy that counts backend reads (dogpile reads twice on a miss)."""

    reads = 0

    def get(self, key: Any) -> Any:  # a memory backend's read
        CountingProxy.reads += 1
        return self.proxied.get(key)

    def get_serialized(self, key: Any) -> Any:  # a Redis backend's read
        CountingProxy.reads += 1
        return self.proxied.get_serialized(key)


@pytest.mark.usefixtures("fresh_default")
def test_wrap_proxies_survive_configure(redis_env: dict[str, str]) -> None:
    CountingProxy.reads = 0
    librecache.configure({}, wrap={"ROLES": [CountingProxy]})
    region = librecache.get_region("ROLES")
    region.set("k", 1)
    assert region.get("k") == 1
    assert CountingProxy.reads == 1
    librecache.configure(redis_env)  # re-points the regions; the proxies stay
    assert isinstance(region.backend, CountingProxy)
    assert type(region.unwrapped_backend).__name__ == "RedisBackend"
    region.set("k", 2)
    assert region.get("k") == 2
    assert CountingProxy.reads == 2
    assert not isinstance(librecache.get_region("TOOLS").backend, CountingProxy)
    librecache.configure({}, wrap=None)  # removed on request
    assert not isinstance(region.backend, ProxyBackend)


def test_wrap_for_every_namespace(make_caches: Make, redis_env: dict[str, str]) -> None:
    caches = librecache.Caches(redis_env, wrap=[CountingProxy])
    try:
        backends = {id(region.backend) for _, region in caches}
        assert len(backends) == len(caches)  # one proxy instance per region
        assert all(isinstance(region.backend, CountingProxy) for _, region in caches)
        assert caches.stored_keys("ROLES") == []
    finally:
        caches.close()


def test_wrap_names_an_unknown_namespace() -> None:
    with pytest.raises(librecache.UnknownNamespaceError, match="NOPE"):
        librecache.Caches({}, wrap={"NOPE": [CountingProxy]})



def test_a_forked_child_counts_its_own_calls(make_caches: Make) -> None:
    caches = make_caches({})
    region = caches.region("ROLES")
    region.get_or_create("k", lambda: 1)
    region.get("k")
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its counters start at zero
        try:
            region.get("k")
            os.write(writer, json.dumps(counts(caches)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        seen = json.loads(pipe.read())
    os.waitpid(child, 0)
    assert seen == expect(hits=1)
    assert counts(caches) == expect(hits=1, misses=1, creations=1)  # the parent's, untouched


def test_a_missing_exporter_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"librecache\[prometheus\]"):
        metrics._need("librecache_no_such_exporter", "prometheus")
