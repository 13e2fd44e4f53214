"""Application namespaces (LIBRECACHE_NAMESPACES): regions like the 22
built-ins on memory, a single Redis and a cluster; the process default at
import time; the command; every startup error."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from dogpile.cache.api import NO_VALUE
from dogpile.cache.region import CacheRegion

import librecache
from librecache import CacheConfig, CacheKeys, ConfigurationError, UnknownNamespaceError, registry
from librecache.cli import main
from librecache.keys import Namespace
from tests import processes
from tests.conftest import Deployment
from tests.test_cli import clean_env, run
from tests.test_resilience import wait_until

Make = Callable[..., librecache.Caches]
DECLARED = "SEARCH_RESULTS=300,EMBEDDINGS,RATE_LIMITS=60"


# -- the configuration ----------------------------------------------------------------


def test_declared_namespaces_follow_the_built_ins_with_their_ttls() -> None:
    config = CacheConfig.from_env({"LIBRECACHE_NAMESPACES": f" {DECLARED.replace(',', ' , ')} "})
    assert config.namespaces[:22] == tuple(CacheKeys)
    assert config.namespaces[22:] == ("SEARCH_RESULTS", "EMBEDDINGS", "RATE_LIMITS")
    search = config.namespace("SEARCH_RESULTS")
    assert isinstance(search, Namespace) and search.value == search.name == "SEARCH_RESULTS" == str(search)
    assert config.namespace(search) is search and config.namespace(" SEARCH_RESULTS ") is search
    assert [config.ttl(name) for name in ("SEARCH_RESULTS", "EMBEDDINGS", "RATE_LIMITS")] == [300, None, 60]
    assert config.storage_expiry("SEARCH_RESULTS") == 330  # the TTL plus the usual grace
    assert CacheConfig.from_env({"LIBRECACHE_NAMESPACES": "A=60 * 5,B=none,C=0"}).ttl("A") == 300


def test_declared_names_are_accepted_wherever_a_namespace_is() -> None:
    config = CacheConfig.from_env({
        "USE_REDIS": "true", "REDIS_URI": "redis://127.0.0.1:1",
        "LIBRECACHE_NAMESPACES": DECLARED,
        "FORCED_IN_MEMORY_CACHE_NAMESPACES": "EMBEDDINGS",
        "LIBRECACHE_NAMESPACE_TTLS": "SEARCH_RESULTS=600,ROLES=5",
        "LIBRECACHE_NAMESPACE_GRACE": "SEARCH_RESULTS=none",
        "LIBRECACHE_NEAR_CACHE_NAMESPACES": "RATE_LIMITS",
        "LIBRECACHE_FORMATS": "SEARCH_RESULTS=json,RATE_LIMITS=keyv",
    })
    assert not config.uses_redis("EMBEDDINGS") and config.uses_redis("SEARCH_RESULTS")
    assert config.ttl("SEARCH_RESULTS") == config.storage_expiry("SEARCH_RESULTS") == 600
    assert config.uses_near_cache("RATE_LIMITS")
    assert (config.format("SEARCH_RESULTS"), config.format("RATE_LIMITS"), config.format("ROLES")) == (
        "json", "keyv", "pickle")
    assert config.storage_expiry("RATE_LIMITS") == 60  # keyv: no grace
    assert config.with_ttls({"EMBEDDINGS": 9}).ttl("EMBEDDINGS") == 9


STARTUP_ERRORS = [
    ({"LIBRECACHE_NAMESPACES": "ROLES=60"}, "LIBRECACHE_NAMESPACES",
     "ROLES clashes with the built-in namespace ROLES; change a built-in's TTL with LIBRECACHE_NAMESPACE_TTLS"),
    ({"LIBRECACHE_NAMESPACES": "roles"}, "LIBRECACHE_NAMESPACES", "clashes with the built-in namespace ROLES"),
    ({"LIBRECACHE_NAMESPACES": "SEARCH,EMB,SEARCH=5"}, "LIBRECACHE_NAMESPACES", "SEARCH is declared more than once"),
    ({"LIBRECACHE_NAMESPACES": "SEARCH-RESULTS"}, "LIBRECACHE_NAMESPACES",
     "'SEARCH-RESULTS' is not a valid namespace name (letters, digits and underscores, starting with a letter)"),
    ({"LIBRECACHE_NAMESPACES": "1ST"}, "LIBRECACHE_NAMESPACES", "'1ST' is not a valid namespace name"),
    ({"LIBRECACHE_NAMESPACES": "A:B"}, "LIBRECACHE_NAMESPACES", "'A:B' is not a valid namespace name"),
    ({"LIBRECACHE_NAMESPACES": "librecache"}, "LIBRECACHE_NAMESPACES", "reserved for librecache's own keys"),
    ({"LIBRECACHE_NAMESPACES": "SEARCH=soon"}, "LIBRECACHE_NAMESPACES",
     "the TTL of SEARCH: 'soon' is not a non-negative number"),
    ({"LIBRECACHE_NAMESPACES": "SEARCH=-5"}, "LIBRECACHE_NAMESPACES", "the TTL of SEARCH"),
    ({"LIBRECACHE_NAMESPACES": "SEARCH="}, "LIBRECACHE_NAMESPACES", "SEARCH= has no TTL"),
    ({"LIBRECACHE_FORMATS": "ROLES=yaml"}, "LIBRECACHE_FORMATS",
     "'yaml' is not a format; the formats are pickle, json, keyv"),
    ({"LIBRECACHE_FORMATS": "NOPE=json"}, "LIBRECACHE_FORMATS", "Unknown cache namespace 'NOPE'"),
    ({"LIBRECACHE_FORMATS": "ROLES"}, "LIBRECACHE_FORMATS", "is not NAMESPACE=format"),
    ({"LIBRECACHE_FORMATS": "ROLES=keyv,ROLES=json"}, "LIBRECACHE_FORMATS", "ROLES is given a format more than once"),
    ({"LIBRECACHE_FORMATS": "SEARCH=json"}, "LIBRECACHE_FORMATS", "Unknown cache namespace 'SEARCH'"),
    ({"FORCED_IN_MEMORY_CACHE_NAMESPACES": "SEARCH"}, "FORCED_IN_MEMORY_CACHE_NAMESPACES", "Invalid cache keys"),
    ({"LIBRECACHE_NAMESPACE_TTLS": "SEARCH=5"}, "LIBRECACHE_NAMESPACE_TTLS", "Unknown cache namespace 'SEARCH'"),
    ({"LIBRECACHE_NAMESPACES": "SEARCH=5", "LIBRECACHE_FORMATS": "SEARCH=keyv",
      "LIBRECACHE_NAMESPACE_GRACE": "SEARCH=10"}, "LIBRECACHE_NAMESPACE_GRACE",
     "SEARCH uses the keyv format (LIBRECACHE_FORMATS), whose entries expire in Redis at the TTL exactly"),
]


@pytest.mark.parametrize(("environ", "variable", "message"), STARTUP_ERRORS)
def test_startup_errors_name_the_variable(environ: dict[str, str], variable: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        CacheConfig.from_env(environ)
    assert caught.value.variable == variable
    assert variable in str(caught.value) and message in str(caught.value)


def test_an_unknown_name_lists_the_declared_ones_too(make_caches: Make) -> None:
    caches = make_caches({"LIBRECACHE_NAMESPACES": DECLARED})
    with pytest.raises(UnknownNamespaceError) as caught:
        caches.region("SEARCH")
    assert str(caught.value).endswith("SAML_SESSION, SEARCH_RESULTS, EMBEDDINGS, RATE_LIMITS")
    with pytest.raises(ConfigurationError, match=r"Unknown cache namespace 'SEARCH'.*SEARCH_RESULTS"):
        CacheConfig.from_env({"LIBRECACHE_NAMESPACES": DECLARED, "LIBRECACHE_NAMESPACE_TTLS": "SEARCH=1"})


# -- regions -----------------------------------------------------------------------


def test_declared_regions_in_memory(make_caches: Make) -> None:
    caches = make_caches({"LIBRECACHE_NAMESPACES": DECLARED})
    assert len(caches) == 25 and [name for name, _ in caches][22:] == ["SEARCH_RESULTS", "EMBEDDINGS", "RATE_LIMITS"]
    region = caches.region("SEARCH_RESULTS")
    assert isinstance(region, CacheRegion) and region.expiration_time == 300
    assert caches.backend_name("SEARCH_RESULTS") == "memory"
    region.set("q", {"hits": 3})
    assert region.get("q") == {"hits": 3} and caches.region("EMBEDDINGS").get("q") is NO_VALUE
    calls: list[str] = []

    @caches.region("EMBEDDINGS").cache_on_arguments()
    def embed(text: str) -> list[float]:
        calls.append(text)
        return [0.5, 0.25]

    assert embed("hi") == embed("hi") == [0.5, 0.25] and calls == ["hi"]
    assert caches.stats()["RATE_LIMITS"]["misses"] == 0 and caches.stats()["EMBEDDINGS"]["hits"] == 1


def test_declared_regions_on_redis(deployment: Deployment, make_caches: Make) -> None:
    env = {**deployment.env, "LIBRECACHE_NAMESPACES": DECLARED, "FORCED_IN_MEMORY_CACHE_NAMESPACES": "RATE_LIMITS",
           "LIBRECACHE_NAMESPACE_TTLS": "EMBEDDINGS=100"}
    caches = make_caches(env)
    prefix = env["REDIS_KEY_PREFIX"]
    search, embeddings = caches.region("SEARCH_RESULTS"), caches.region("EMBEDDINGS")
    search.set("q", [1, 2])
    embeddings.set_multi({"a": 1, "b": 2})
    caches.region("RATE_LIMITS").set("user", 5)
    assert deployment.keys(f"{prefix}::*") == sorted(
        [f"{prefix}::SEARCH_RESULTS:q".encode(), f"{prefix}::EMBEDDINGS:a".encode(), f"{prefix}::EMBEDDINGS:b".encode()])
    assert 300_000 < deployment.raw.pttl(f"{prefix}::SEARCH_RESULTS:q") <= 330_000  # TTL + grace
    assert 100_000 < deployment.raw.pttl(f"{prefix}::EMBEDDINGS:a") <= 110_000
    assert caches.backend_name("RATE_LIMITS") == "memory"
    other = make_caches(env)  # another instance of the deployment
    assert other.region("SEARCH_RESULTS").get("q") == [1, 2]
    assert other.region("EMBEDDINGS").get_multi(["a", "b", "c"]) == [1, 2, NO_VALUE]
    search.invalidate()  # shared with every instance (announced: milliseconds)
    wait_until(lambda: other.region("SEARCH_RESULTS").get("q") is NO_VALUE, timeout=5)
    assert caches.stored_keys("EMBEDDINGS") and caches.clear("EMBEDDINGS") == 2


def test_declared_namespace_with_a_near_cache(redis_env: dict[str, str], make_caches: Make) -> None:
    from tests.test_nearcache import subscribed

    env = {**redis_env, "LIBRECACHE_NAMESPACES": "PROFILES", "LIBRECACHE_NEAR_CACHE_NAMESPACES": "PROFILES"}
    first, second = make_caches(env), make_caches(env)
    subscribed(first)
    subscribed(second)
    first.region("PROFILES").set("u", "old")
    near = second.region("PROFILES").near_cache
    assert near is not None
    # the first read may race with the drop that first's write publishes; a later one is a near hit
    wait_until(lambda: second.region("PROFILES").get("u") == "old" and near.hits >= 1, timeout=5)
    first.region("PROFILES").set("u", "new")
    wait_until(lambda: second.region("PROFILES").get("u") == "new", timeout=5)


# -- the process default -----------------------------------------------------------


def test_get_region_of_a_declared_namespace_before_configure(fresh_default: None, monkeypatch: pytest.MonkeyPatch,
                                                             redis_env: dict[str, str]) -> None:
    monkeypatch.setenv("LIBRECACHE_NAMESPACES", "SEARCH_RESULTS=300")
    region = librecache.get_region("SEARCH_RESULTS")
    assert librecache.get_region("SEARCH_RESULTS") is region
    calls: list[str] = []

    @region.cache_on_arguments()
    def search(query: str) -> list[str]:
        calls.append(query)
        return [query.upper()]

    assert registry._default is None  # decorating configured nothing
    with pytest.raises(UnknownNamespaceError, match=r"Valid namespaces: .*SAML_SESSION, SEARCH_RESULTS$"):
        librecache.get_region("SEARCH")
    assert search("q") == search("q") == ["Q"] and calls == ["q"]
    assert librecache.get_caches().backend_name("SEARCH_RESULTS") == "memory" and region.expiration_time == 300
    # the region follows every later configure()
    caches = librecache.configure({**redis_env, "LIBRECACHE_NAMESPACES": "SEARCH_RESULTS=60"})
    assert region.expiration_time == 60 and caches.region("SEARCH_RESULTS") is region
    assert search("q") == ["Q"] and calls == ["q", "q"]  # a new, empty Redis namespace
    client = librecache.redis_client()
    assert client is not None and client.exists("SEARCH_RESULTS:tests.test_namespaces:search|q") == 1
    # a configuration that no longer declares it: the region refuses, naming what exists
    librecache.configure({"LIBRECACHE_NAMESPACES": "OTHER"})
    with pytest.raises(UnknownNamespaceError, match=r"'SEARCH_RESULTS'. Valid namespaces: .*SAML_SESSION, OTHER$"):
        search("q")
    with pytest.raises(UnknownNamespaceError):
        librecache.get_region("SEARCH_RESULTS")
    librecache.configure({"LIBRECACHE_NAMESPACES": "SEARCH_RESULTS"})  # declared again: the same region serves
    assert search("q") == ["Q"] and librecache.get_region("SEARCH_RESULTS") is region


def test_get_region_with_a_bad_declaration_names_the_variable(fresh_default: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIBRECACHE_NAMESPACES", "ROLES=5")
    with pytest.raises(ConfigurationError, match="LIBRECACHE_NAMESPACES: ROLES clashes"):
        librecache.get_region("SEARCH")
    assert librecache.get_region("ROLES") is registry._default_regions[CacheKeys.ROLES]


def test_decorating_a_declared_namespace_at_import_time_in_a_fresh_process(redis_env: dict[str, str]) -> None:
    env = {**redis_env, "LIBRECACHE_NAMESPACES": "SEARCH_RESULTS=300", "WORKER_NAMESPACE": "SEARCH_RESULTS"}
    (report,) = processes.run("decorate_at_import", env)
    prefix = redis_env["REDIS_KEY_PREFIX"]
    assert report == {"values": [9, 9], "calls": 1, "backend": "redis", "prefix": prefix,
                      "keys": [f"{prefix}::SEARCH_RESULTS:__main__:square|3"]}


# -- the command ------------------------------------------------------------------------


def test_config_lists_declared_namespaces_and_formats(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("LIBRECACHE_NAMESPACES", DECLARED)
    monkeypatch.setenv("LIBRECACHE_FORMATS", "SEARCH_RESULTS=json,ROLES=keyv")
    code, out, _ = run(capsys, "config")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isupper()}
    assert rows["SEARCH_RESULTS"] == ["SEARCH_RESULTS", "memory", "-", "5min", "json"]
    assert rows["EMBEDDINGS"] == ["EMBEDDINGS", "memory", "-", "none", "pickle"]
    assert rows["ROLES"][-1] == "keyv"
    code, out, _ = run(capsys, "config", "--json")
    declared = [row for row in json.loads(out)["namespaces"] if row["declared"]]
    assert [row["namespace"] for row in declared] == ["SEARCH_RESULTS", "EMBEDDINGS", "RATE_LIMITS"]


def test_keys_clear_and_stats_of_a_declared_namespace(capsys: pytest.CaptureFixture[str], deployment: Deployment,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      make_caches: Make) -> None:
    clean_env(monkeypatch)
    env = {**deployment.env, "LIBRECACHE_NAMESPACES": DECLARED}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    make_caches(env).region("SEARCH_RESULTS").set_multi({f"q{i}": i for i in range(5)})
    prefix = env["REDIS_KEY_PREFIX"]
    code, out, _ = run(capsys, "keys", "SEARCH_RESULTS", "--env-file", str(env_file))
    assert code == 0 and sorted(out.split()) == [f"{prefix}::SEARCH_RESULTS:q{i}" for i in range(5)]
    code, out, _ = run(capsys, "stats", "--env-file", str(env_file), "--json")
    assert {row["namespace"]: row["keys"] for row in json.loads(out)}["SEARCH_RESULTS"] == 5
    code, out, _ = run(capsys, "check", "--env-file", str(env_file))
    assert code == 0 and "ok    25 of 25 Redis namespaces round-trip a key" in out
    code, out, _ = run(capsys, "clear", "SEARCH_RESULTS", "--yes", "--env-file", str(env_file))
    assert code == 0 and out.strip() == "SEARCH_RESULTS: 5 keys removed"
    code, _, err = run(capsys, "keys", "SEARCH", "--env-file", str(env_file))
    assert code == 2 and "Unknown cache namespace 'SEARCH'" in err and "RATE_LIMITS" in err


def test_command_startup_error_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("LIBRECACHE_NAMESPACES", "ROLES")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("librecache: LIBRECACHE_NAMESPACES: ROLES clashes") and len(err.splitlines()) == 1


def test_evolved_configurations_are_checked_too() -> None:
    config = CacheConfig.from_env({"LIBRECACHE_NAMESPACES": "SEARCH"})
    with pytest.raises(ConfigurationError, match="LIBRECACHE_FORMATS: OTHER=json names an unknown namespace"):
        attrs.evolve(config, formats=((Namespace("OTHER"), "json"),))
    with pytest.raises(ConfigurationError, match="LIBRECACHE_FORMATS: SEARCH=yaml"):
        attrs.evolve(config, formats=((config.namespace("SEARCH"), "yaml"),))
    with pytest.raises(ConfigurationError, match="LIBRECACHE_NAMESPACES: a declared namespace is repeated"):
        attrs.evolve(config, declared=((Namespace("ROLES"), None),))
    assert attrs.evolve(config, formats=((config.namespace("SEARCH"), "json"),)).format("SEARCH") == "json"
