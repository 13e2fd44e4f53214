"""The behaviour every backend and topology must share.

A test module subclasses :class:`RegionConformance` and provides an
``environment`` fixture (the variables of the deployment under test); every
test below then runs against that backend. Like dogpile's own
``testing/fixtures.py``, a new backend or topology is a few lines of test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from dogpile.cache.api import NO_VALUE
from dogpile.cache.region import CacheRegion

import librecache
from librecache import CacheKeys, SerializationError


class Counter:
    """Counts calls of a function, from any thread."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
        return self.fn(*args, **kwargs)


def in_threads(work: Callable[[int], Any], count: int = 8) -> list[BaseException]:
    """Run ``work(n)`` in ``count`` threads at once; the exceptions raised."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            work(n)
        except BaseException as exc:  # reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


class RegionConformance:
    """Every backend passes these. Subclasses define ``environment``."""

    expected_backend: str

    @pytest.fixture
    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    @pytest.fixture
    def caches(self, environment: dict[str, str], make_caches: Callable[..., librecache.Caches]) -> librecache.Caches:
        return make_caches(environment)

    @pytest.fixture
    def region(self, caches: librecache.Caches) -> CacheRegion:
        return caches.region(CacheKeys.ROLES)

    # -- shape ------------------------------------------------------------

    def test_every_namespace_is_a_dogpile_region_of_the_expected_backend(self, caches: librecache.Caches) -> None:
        names = [name for name, _ in caches]
        assert names == [member.value for member in CacheKeys]
        for name, region in caches:
            assert isinstance(region, CacheRegion)
            assert region.is_configured
            assert caches.backend_name(name) == self.expected_backend

    # -- single keys ------------------------------------------------------

    def test_get_set_delete(self, region: CacheRegion) -> None:
        assert region.get("alpha") is NO_VALUE
        region.set("alpha", {"roles": ["admin"], "n": 1})
        assert region.get("alpha") == {"roles": ["admin"], "n": 1}
        region.delete("alpha")
        assert region.get("alpha") is NO_VALUE
        region.delete("alpha")  # idempotent

    def test_values_of_many_kinds_round_trip(self, region: CacheRegion) -> None:
        values = [None, 0, "", "żółć ✓", b"\x00\xff|{}", 3.5, [1, (2, 3)], {"a": {1, 2}}, "x" * 200_000]
        for index, value in enumerate(values):
            region.set(f"v{index}", value)
        assert [region.get(f"v{index}") for index in range(len(values))] == values

    def test_long_keys_stay_distinct(self, region: CacheRegion) -> None:
        base = "k" * 400
        region.set(base + "1", "one")
        region.set(base + "2", "two")
        assert region.get(base + "1") == "one"
        assert region.get(base + "2") == "two"

    # -- memoising --------------------------------------------------------

    def test_cache_on_arguments_memoises(self, region: CacheRegion) -> None:
        double = Counter(lambda x: x * 2)

        @region.cache_on_arguments()
        def cached(x: int) -> int:
            return double(x)  # type: ignore[no-any-return]

        assert [cached(1), cached(1), cached(2), cached(2)] == [2, 2, 4, 4]
        assert double.calls == 2
        cached.invalidate(1)
        assert cached(1) == 2
        assert double.calls == 3
        cached.set(99, 1)
        assert cached(1) == 99
        assert cached.get(2) == 4
        assert cached.refresh(2) == 4
        assert double.calls == 4

    def test_creator_runs_once_for_many_threads(self, region: CacheRegion) -> None:
        slow = Counter(lambda: time.sleep(0.3) or "made")
        results: list[str] = []
        assert in_threads(lambda n: results.append(region.get_or_create("cold", slow)), 16) == []
        assert results == ["made"] * 16
        assert slow.calls == 1

    # -- several keys -----------------------------------------------------

    def test_get_set_delete_multi(self, region: CacheRegion) -> None:
        mapping = {f"key-{i}": {"i": i} for i in range(300)}
        region.set_multi(mapping)
        keys = list(mapping) + ["absent"]
        assert region.get_multi(keys) == list(mapping.values()) + [NO_VALUE]
        region.delete_multi(list(mapping)[:150])
        got = region.get_multi(keys)
        assert got[:150] == [NO_VALUE] * 150
        assert got[150:300] == list(mapping.values())[150:]
        assert region.get_multi([]) == []
        region.set_multi({})
        region.delete_multi([])

    def test_get_or_create_multi(self, region: CacheRegion) -> None:
        region.set("b", "cached-b")
        created: list[tuple[str, ...]] = []

        def creator(*keys: str) -> list[str]:
            created.append(keys)
            return [f"made-{key}" for key in keys]

        assert region.get_or_create_multi(["a", "b", "c"], creator) == ["made-a", "cached-b", "made-c"]
        assert created == [("a", "c")]
        assert region.get_or_create_multi(["a", "b", "c"], creator) == ["made-a", "cached-b", "made-c"]
        assert len(created) == 1

    def test_cache_multi_on_arguments(self, region: CacheRegion) -> None:
        seen: list[int] = []

        @region.cache_multi_on_arguments()
        def squares(*numbers: int) -> list[int]:
            seen.extend(numbers)
            return [n * n for n in numbers]

        assert squares(1, 2, 3) == [1, 4, 9]
        assert squares(2, 3, 4) == [4, 9, 16]
        assert seen == [1, 2, 3, 4]

    # -- time and invalidation --------------------------------------------

    def test_ttl_expires_values(self, make_caches: Callable[..., librecache.Caches], environment: dict[str, str]) -> None:
        config = librecache.CacheConfig.from_env(environment).with_ttls({"ROLES": 1})
        region = make_caches(config).region("ROLES")
        assert region.expiration_time == 1
        stored = time.monotonic()
        region.set("short", "lived")
        value = region.get_or_create("short", lambda: "new")
        if time.monotonic() - stored < 0.9:  # a loaded machine may have taken the whole second
            assert value == "lived"
        time.sleep(max(0.0, stored + 1.2 - time.monotonic()))
        assert region.get_or_create("short", lambda: "new") == "new"

    def test_namespace_ttls_of_the_reference(self, caches: librecache.Caches) -> None:
        assert caches.region("MESSAGES").expiration_time == 60
        assert caches.region("BANS").expiration_time == 7200
        assert caches.region("ROLES").expiration_time is None

    def test_hard_invalidation(self, region: CacheRegion) -> None:
        region.set("k", "old")
        time.sleep(0.01)
        region.invalidate()
        assert region.get("k") is NO_VALUE
        assert region.get_or_create("k", lambda: "new") == "new"
        assert region.get("k") == "new"

    def test_soft_invalidation_regenerates(self, caches: librecache.Caches) -> None:
        region = caches.region("MESSAGES")  # soft invalidation needs a TTL
        region.set("k", "old")
        time.sleep(0.01)
        region.invalidate(hard=False)
        assert region.get_or_create("k", lambda: "new") == "new"

    # -- bad input --------------------------------------------------------

    def test_unpicklable_value_is_refused_and_nothing_is_cached(self, region: CacheRegion) -> None:
        with pytest.raises(SerializationError, match=r"ROLES.*lock.*cannot be pickled"):
            region.set("bad", threading.Lock())
        assert region.get("bad") is NO_VALUE
        with pytest.raises(SerializationError):
            region.set_multi({"good": 1, "bad": threading.Lock()})
        assert region.get_multi(["good", "bad"]) == [NO_VALUE, NO_VALUE]

    def test_memoised_unpicklable_result_raises(self, region: CacheRegion) -> None:
        @region.cache_on_arguments()
        def make_lock() -> Any:
            return threading.Lock()

        with pytest.raises(SerializationError):
            make_lock()
        assert make_lock.get() is NO_VALUE
