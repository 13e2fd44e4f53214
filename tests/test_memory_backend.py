"""The in-memory backend: bounded in size and time, thread-safe."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from dogpile.cache.api import NO_VALUE, CachedValue

import librecache
from librecache.backends.memory import MemoryBackend
from tests.conformance import in_threads


def value(payload: object) -> CachedValue:
    return CachedValue(payload, {"ct": time.time(), "v": 2})


def test_least_recently_used_entries_go_first() -> None:
    backend = MemoryBackend({"name": "ROLES", "max_entries": 3})
    for key in "abc":
        backend.set(key, value(key))
    assert backend.get("a").payload == "a"  # a is now the most recent
    backend.set("d", value("d"))
    assert backend.get("b") is NO_VALUE
    assert [backend.get(k).payload for k in "acd"] == ["a", "c", "d"]
    assert len(backend) == 3


def test_entries_expire_and_are_dropped() -> None:
    backend = MemoryBackend({"name": "MESSAGES", "max_entries": 10, "expires_after": 0.2})
    backend.set("k", value(1))
    assert backend.get("k").payload == 1
    time.sleep(0.25)
    assert backend.get("k") is NO_VALUE
    assert len(backend) == 0


def test_unknown_and_missing_arguments_are_errors() -> None:
    with pytest.raises(TypeError, match=r"unknown argument.*max_entires"):
        MemoryBackend({"name": "X", "max_entries": 3, "max_entires": 4})
    with pytest.raises(TypeError, match=r"missing argument.*max_entries"):
        MemoryBackend({"name": "X"})


def test_a_namespace_never_holds_more_than_its_bound(make_caches: Callable[..., librecache.Caches]) -> None:
    caches = make_caches(LIBRECACHE_MEMORY_MAX_ENTRIES="100")
    region = caches.region("MESSAGES")
    for i in range(1000):
        region.set(f"k{i}", i)
    assert len(caches.stored_keys("MESSAGES")) == 100
    assert region.get("k999") == 999 and region.get("k0") is NO_VALUE


def test_concurrent_use_is_safe() -> None:
    backend = MemoryBackend({"name": "TOOLS", "max_entries": 50})

    def work(n: int) -> None:
        for i in range(5000):
            key = f"k{(n + i) % 120}"
            backend.set(key, value(i))
            backend.get(key)
            if i % 7 == 0:
                backend.delete_multi([key, f"k{i % 120}"])

    assert in_threads(work) == [] and len(backend) <= 50


def test_clear_empties_the_namespace(make_caches: Callable[..., librecache.Caches]) -> None:
    caches = make_caches()
    caches.region("ROLES").set_multi({"a": 1, "b": 2})
    assert caches.clear("ROLES") == 2
    assert caches.region("ROLES").get("a") is NO_VALUE
