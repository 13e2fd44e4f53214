"""The public API: Caches, configure, get_region, redis_client."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from dogpile.cache.region import CacheRegion

import librecache
from librecache import CacheKeys, ConfigurationError, UnknownNamespaceError, registry
from tests import processes


def test_region_lookup_by_member_and_name(make_caches: Callable[..., librecache.Caches]) -> None:
    caches = make_caches()
    assert caches.region("ROLES") is caches.region(CacheKeys.ROLES) is caches["ROLES"]
    assert caches.region(" ROLES ") is caches.region("ROLES")
    assert len(caches) == 22 and dict(caches)["BANS"] is caches.region("BANS")


def test_unknown_namespace_is_a_key_error_listing_valid_names(make_caches: Callable[..., librecache.Caches]) -> None:
    caches = make_caches()
    for lookup in (caches.region, librecache.get_region):
        with pytest.raises(KeyError) as caught:
            lookup("STATIC_CONFIG")
        assert isinstance(caught.value, UnknownNamespaceError)
        message = str(caught.value)
        assert message.startswith("Unknown cache namespace 'STATIC_CONFIG'. Valid namespaces: CONFIG_STORE, ROLES")
        assert "SAML_SESSION" in message


def test_redis_client_is_none_without_redis(make_caches: Callable[..., librecache.Caches]) -> None:
    assert make_caches().redis is None


def test_independent_registries_do_not_share_state(make_caches: Callable[..., librecache.Caches]) -> None:
    one, two = make_caches(), make_caches()
    one.region("ROLES").set("k", 1)
    assert two.region("ROLES").get("k") != 1
    assert one.region("ROLES") is not two.region("ROLES")


def test_caches_close_is_idempotent_and_a_context_manager(redis_env: dict[str, str]) -> None:
    with librecache.Caches(redis_env) as caches:
        caches.region("ROLES").set("k", 1)
        bus = caches.invalidations
        assert bus is not None and bus.wait_subscribed(5)
    assert caches.closed
    assert bus._thread is not None and not bus._thread.is_alive()
    caches.close()


def test_get_region_works_before_configure_and_configures_from_the_environment(
    fresh_default: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_KEY_PREFIX", "from-env")
    region = librecache.get_region("TOOLS")
    assert isinstance(region, CacheRegion)
    calls: list[int] = []

    @region.cache_on_arguments()
    def f(x: int) -> int:
        calls.append(x)
        return x + 1

    assert registry._default is None  # decorating configured nothing
    assert f(1) == 2 and f(1) == 2 and calls == [1]
    assert librecache.get_caches().config.key_prefix == "from-env"


def test_decorating_at_import_time_in_a_fresh_process(redis_env: dict[str, str]) -> None:
    (report,) = processes.run("decorate_at_import", redis_env)
    assert report.pop("keys") == [f"{redis_env['REDIS_KEY_PREFIX']}::ROLES:__main__:square|3"]
    assert report == {"values": [9, 9], "calls": 1, "backend": "redis", "prefix": redis_env["REDIS_KEY_PREFIX"]}


def test_configure_replaces_the_default_and_closes_the_old_one(
    fresh_default: None, redis_env: dict[str, str]
) -> None:
    region = librecache.get_region("ROLES")
    first = librecache.configure({})
    region.set("k", "memory")
    assert first.backend_name("ROLES") == "memory"
    second = librecache.configure(redis_env)
    assert first.closed and not second.closed
    assert librecache.get_caches() is second
    assert librecache.get_region("ROLES") is region  # same object, new backend
    assert region.get("k") != "memory"
    region.set("k", "redis")
    client = librecache.redis_client()
    assert client is not None and client.exists("ROLES:k") == 1
    with pytest.raises(ConfigurationError):
        librecache.configure({"USE_REDIS": "perhaps"})
    assert librecache.get_caches() is second  # a bad configuration changes nothing


def test_first_use_from_many_threads_configures_once(fresh_default: None, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[librecache.Caches] = []
    original = registry.Caches.__init__

    def counting_init(self: librecache.Caches, *args: object, **kwargs: object) -> None:
        built.append(self)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry.Caches, "__init__", counting_init)
    region = librecache.get_region("FLOWS")
    threads = [threading.Thread(target=region.get, args=("k",)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1


def test_passwords_stay_out_of_reprs(make_caches: Callable[..., librecache.Caches], redis_server) -> None:  # type: ignore[no-untyped-def]
    secret = "Pa55-word-XYZ"
    caches = make_caches(USE_REDIS="true", REDIS_URI=redis_server.url, REDIS_PASSWORD=secret)
    for text in (repr(caches), repr(caches.config), repr(caches.region("ROLES")), repr(caches.redis)):
        assert secret not in text
