"""When the database is sick too: the fail-safe, the soft and hard
creation time-outs, eager refresh and TTL jitter, on memory, a single
Redis and the cluster, through both doors.

Time passes for real here (a value must expire): each test gives its call
a short expiration time, and waits for the condition it needs (the value
expired, the background creation stored) with a deadline, never a fixed
sleep. The creators count their runs, so "not called again" is a count,
and a slow creator is one held until the test releases it, so "served
at the soft time-out" holds however slow the machine is."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from dogpile.cache.api import NO_VALUE

import librecache
from librecache import CreationTimeout
from librecache.engine.policy import Policy, jitter
from tests.load import wait_until

Make = Callable[..., librecache.Caches]

#: The namespace under test: a TTL of 3 minutes; each call gives its own
#: shorter expiration time (EXPIRES), the grace is GRACE.
NS = "FLOWS"
EXPIRES = 0.3
GRACE = 0.1
DOORS = ("sync", "async")


@pytest.fixture(params=["memory", "single", "cluster"])
def where(request: pytest.FixtureRequest, prefix: str) -> dict[str, str]:
    """The variables of a deployment of each kind (its Redis, if any)."""
    if request.param == "memory":
        return {}
    if request.param == "single":
        return dict(request.getfixturevalue("redis_env"))
    return dict(request.getfixturevalue("cluster_env"))


def region_of(make: Make, env: dict[str, str], **variables: str) -> Any:
    caches = make({**env, "LIBRECACHE_NAMESPACE_GRACE": f"{NS}={GRACE}", **variables})
    return caches.region(NS)


class Creator:
    """A creator that counts its runs, and answers what it is told to."""

    def __init__(self) -> None:
        self.runs = 0
        self.value: Any = "v1"
        self.error: Exception | None = None
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def hold(self) -> None:
        """From now on, a run waits until :meth:`release` (30 s at most)."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def __call__(self) -> Any:
        with self.lock:
            self.runs += 1
        if not self.gate.wait(30):
            raise AssertionError("the creator was never released")
        return self.answer()

    async def acall(self) -> Any:
        with self.lock:
            self.runs += 1
        deadline = time.monotonic() + 30
        while not self.gate.is_set():
            if time.monotonic() > deadline:
                raise AssertionError("the creator was never released")
            await asyncio.sleep(0.002)
        return self.answer()

    def answer(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def call(door: str, region: Any, key: str, creator: Creator, expires: float = EXPIRES, **settings: Any) -> Any:
    """``get_or_create`` through ``door`` with ``expires`` and ``settings``;
    a held creator is released once the caller has its answer (the async
    door's loop lives on until the call's background work ended, as a
    service's loop does)."""
    if door == "sync":
        try:
            return region.get_or_create(key, creator, expires, **settings)
        finally:
            creator.release()
    return asyncio.run(lasting(region, region.aget_or_create(key, creator.acall, expires, **settings),
                               creator.release))


async def lasting(region: Any, work: Any, then: Callable[[], None] = lambda: None) -> Any:
    """``await work``, ``then()``, and wait (in this loop, 10 s at most) for
    the background work it left; past that, the tasks' stacks are shown."""
    try:
        return await work
    finally:
        then()
        deadline = time.monotonic() + 10
        while region.background.pending:
            if time.monotonic() > deadline:
                for task in asyncio.all_tasks():
                    task.print_stack()
                raise AssertionError(f"background work still pending: {asyncio.all_tasks()}")
            await asyncio.sleep(0.005)


def expired(region: Any, key: str, beyond: float = 0.0) -> Callable[[], bool]:
    """Whether the value under ``key`` is older than EXPIRES + ``beyond``."""
    def check() -> bool:
        value = region.get(key, expiration_time=EXPIRES + beyond)
        return value is NO_VALUE
    return check


def stats(region: Any) -> dict[str, Any]:
    return region.counters.as_dict()  # type: ignore[no-any-return]


# -- the fail-safe ------------------------------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
def test_a_creator_that_fails_after_expiry_gets_the_stale_value_served(
        make_caches: Make, where: dict[str, str], door: str) -> None:
    region = region_of(make_caches, where)
    creator = Creator()
    assert call(door, region, "k", creator, fail_safe=60) == "v1"
    wait_until(expired(region, "k", GRACE), 5)  # past the grace too: callers wait for the creator
    creator.error = RuntimeError("the database is down")
    assert call(door, region, "k", creator, fail_safe=60) == "v1"
    assert creator.runs == 2 and stats(region)["stale_served"] == 1
    # throttled: fresh for 30 s, in every process, so the creator is not called again
    for _ in range(3):
        assert call(door, region, "k", creator, fail_safe=60) == "v1"
    assert creator.runs == 2


def test_the_throttle_holds_in_every_process(make_caches: Make, where: dict[str, str]) -> None:
    if not where:
        pytest.skip("memory regions are one process's")
    one, other = region_of(make_caches, where), region_of(make_caches, where)
    creator = Creator()
    one.get_or_create("k", creator, EXPIRES, fail_safe=60)
    wait_until(expired(one, "k", GRACE), 5)
    creator.error = RuntimeError("down")
    assert one.get_or_create("k", creator, EXPIRES, fail_safe=60) == "v1"
    assert other.get_or_create("k", creator, EXPIRES, fail_safe=60) == "v1"
    assert creator.runs == 2


@pytest.mark.parametrize("door", DOORS)
def test_without_a_fail_safe_the_error_reaches_the_caller(make_caches: Make, where: dict[str, str],
                                                          door: str) -> None:
    region = region_of(make_caches, where)
    creator = Creator()
    call(door, region, "k", creator)
    wait_until(expired(region, "k", GRACE), 5)
    creator.error = RuntimeError("the database is down")
    with pytest.raises(RuntimeError, match="the database is down"):
        call(door, region, "k", creator)


@pytest.mark.parametrize("door", DOORS)
def test_past_the_fail_safe_the_error_reaches_the_caller(make_caches: Make, where: dict[str, str],
                                                         door: str) -> None:
    region = region_of(make_caches, where)
    creator = Creator()
    call(door, region, "k", creator, fail_safe=0.3)
    wait_until(expired(region, "k", 0.3), 5)
    creator.error = RuntimeError("the database is down")
    with pytest.raises(RuntimeError):
        call(door, region, "k", creator, fail_safe=0.3)


@pytest.mark.parametrize("invalidate", ["hard", "delete"])
@pytest.mark.parametrize("door", DOORS)
def test_a_deleted_or_hard_invalidated_value_is_never_served_by_the_fail_safe(
        make_caches: Make, where: dict[str, str], door: str, invalidate: str) -> None:
    region = region_of(make_caches, where)
    creator = Creator()
    call(door, region, "k", creator, fail_safe=60)
    wait_until(expired(region, "k"), 5)
    if invalidate == "hard":
        region.invalidate(hard=True)
    else:
        region.delete("k")
    creator.error = RuntimeError("the database is down")
    with pytest.raises(RuntimeError):
        call(door, region, "k", creator, fail_safe=60)


@pytest.mark.parametrize("door", DOORS)
def test_a_soft_invalidated_value_may_be_served_by_the_fail_safe(make_caches: Make, where: dict[str, str],
                                                                door: str) -> None:
    region = region_of(make_caches, where)
    creator = Creator()
    call(door, region, "k", creator, fail_safe=60)
    region.invalidate(hard=False)
    creator.error = RuntimeError("the database is down")
    assert call(door, region, "k", creator, fail_safe=60) == "v1"


def test_the_variables_give_a_namespace_its_fail_safe(make_caches: Make, where: dict[str, str]) -> None:
    region = region_of(make_caches, where, LIBRECACHE_FAIL_SAFE=f"{NS}=60",
                       LIBRECACHE_FAIL_SAFE_THROTTLE=f"{NS}=5")
    assert region.policy == Policy(grace=GRACE, fail_safe=60.0, fail_safe_throttle=5.0)
    creator = Creator()
    region.get_or_create("k", creator, EXPIRES)
    wait_until(expired(region, "k", GRACE), 5)
    creator.error = RuntimeError("down")
    assert region.get_or_create("k", creator, EXPIRES) == "v1"


# -- soft and hard time-outs ------------------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
def test_a_slow_creator_past_the_soft_timeout_serves_the_stale_value_and_stores_later(
        make_caches: Make, where: dict[str, str], door: str) -> None:
    region = region_of(make_caches, where)
    creator = Creator()
    call(door, region, "k", creator, fail_safe=60)
    wait_until(expired(region, "k", GRACE), 5)
    creator.value = "v2"
    creator.hold()
    assert call(door, region, "k", creator, fail_safe=60, soft_timeout=0.05) == "v1"
    assert stats(region)["soft_timeouts"] == 1
    wait_until(lambda: region.get("k", expiration_time=60) == "v2", 5)


def test_an_async_creator_past_the_soft_timeout_stores_on_its_loop(make_caches: Make,
                                                                   where: dict[str, str]) -> None:
    region = region_of(make_caches, where)
    creator = Creator()

    async def scenario() -> None:
        await region.aget_or_create("k", creator.acall, EXPIRES, fail_safe=60)
        while await region.aget("k", expiration_time=EXPIRES + GRACE) is not NO_VALUE:
            await asyncio.sleep(0.01)
        creator.value = "v2"
        creator.hold()
        assert await region.aget_or_create("k", creator.acall, EXPIRES, fail_safe=60, soft_timeout=0.05) == "v1"
        creator.release()
        deadline = time.monotonic() + 5
        while await region.aget("k", expiration_time=60) != "v2":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    asyncio.run(scenario())


@pytest.mark.parametrize("door", DOORS)
def test_the_hard_timeout_raises_and_the_value_is_stored_later(make_caches: Make, where: dict[str, str],
                                                               door: str) -> None:
    region = region_of(make_caches, where)
    creator = Creator()
    creator.hold()
    with pytest.raises(CreationTimeout) as raised:
        call(door, region, "k", creator, hard_timeout=0.05)
    assert isinstance(raised.value, TimeoutError) and isinstance(raised.value, librecache.LibrecacheError)
    assert stats(region)["hard_timeouts"] == 1
    wait_until(lambda: region.get("k", expiration_time=60) == "v1", 5)


def test_a_caller_waiting_for_another_process_gives_up_at_the_hard_timeout(make_caches: Make,
                                                                          where: dict[str, str]) -> None:
    if not where:
        pytest.skip("one process: the queue is this process's own")
    one, other = region_of(make_caches, where), region_of(make_caches, where)
    creator = Creator()
    creator.hold()
    started = threading.Thread(target=lambda: one.get_or_create("k", creator, EXPIRES))
    started.start()
    wait_until(lambda: creator.runs == 1, 5)
    with pytest.raises(CreationTimeout):
        other.get_or_create("k", Creator(), EXPIRES, hard_timeout=0.05)
    creator.release()
    started.join()
    assert other.get_or_create("k", Creator(), 60) == "v1"  # the first creator's value


@pytest.mark.parametrize("invalidate", ["delete", "hard"])
def test_a_background_creation_that_started_before_an_invalidation_is_never_served(
        make_caches: Make, where: dict[str, str], invalidate: str) -> None:
    """A key's delete revokes the creation's lease (nothing is stored); a
    namespace's invalidation covers the value, created before it."""
    region = region_of(make_caches, where)
    creator = Creator()
    creator.value = "before"
    creator.hold()
    with pytest.raises(CreationTimeout):
        region.get_or_create("k", creator, EXPIRES, hard_timeout=0.05)
    if invalidate == "delete":
        region.delete("k")  # while the creator still runs
    else:
        region.invalidate(hard=True)
    creator.release()
    background = region.background
    wait_until(lambda: background.pending == 0, 5)
    if invalidate == "delete":
        assert region.get("k", ignore_expiration=True) is NO_VALUE
    assert region.get_or_create("k", lambda: "after", 60) == "after"


# -- eager refresh ----------------------------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
def test_eager_refresh_serves_at_once_and_refreshes_once_in_the_background(
        make_caches: Make, where: dict[str, str], door: str) -> None:
    """An expiration time of 5 s, a refresh point at 1.25 s: a margin for a
    loaded machine between the point and the expiry. The refreshing
    creator is held: each caller's answer came without waiting for it."""
    region = region_of(make_caches, where)
    creator = Creator()
    call(door, region, "k", creator, 5.0, eager_refresh=0.25)
    wait_until(lambda: region.get("k", expiration_time=1.25) is NO_VALUE, 5)  # past the point
    creator.value = "v2"
    creator.hold()
    if door == "sync":
        for _ in range(5):  # the hits meanwhile start no other refresh
            assert region.get_or_create("k", creator, 5.0, eager_refresh=0.25) == "v1"
        creator.release()
    else:
        assert call(door, region, "k", creator, 5.0, eager_refresh=0.25) == "v1"
    wait_until(lambda: region.get("k", expiration_time=60) == "v2", 5)
    assert creator.runs == 2 and stats(region)["eager_refreshes"] == 1


# -- TTL jitter -------------------------------------------------------------------------------


def test_jitter_spreads_the_ttls_of_values_written_together() -> None:
    now = time.time()
    drawn = [jitter(f"k{n}", now, 30.0) for n in range(1000)]
    assert all(0 <= seconds <= 30 for seconds in drawn)
    assert max(drawn) - min(drawn) > 25 and len(set(drawn)) == 1000
    assert jitter("k1", now, 30.0) == drawn[1]  # every process computes the same


def test_a_jittered_value_lives_longer_than_the_ttl(make_caches: Make, where: dict[str, str]) -> None:
    region = region_of(make_caches, where)
    creator = Creator()
    for n in range(20):
        region.get_or_create(f"k{n}", creator, EXPIRES, ttl_jitter=10)
    wait_until(expired(region, "k0"), 5)  # past the TTL without jitter
    assert [region.get_or_create(f"k{n}", creator, EXPIRES, ttl_jitter=10) for n in range(20)] == ["v1"] * 20
    # each value's TTL is 0.3 s plus 0 to 10 s: about one in a hundred is already due
    assert creator.runs <= 20 + 3


# -- bad settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "message"), [
    ({"fail_safe": -1}, "fail_safe=-1"),
    ({"soft_timeout": 0}, "soft_timeout=0"),
    ({"eager_refresh": 1.5}, "eager_refresh=1.5"),
    ({"soft_timeout": 2, "hard_timeout": 1}, "shorter than"),
])
def test_bad_settings_are_refused_when_a_function_is_decorated(make_caches: Make, settings: dict[str, Any],
                                                              message: str) -> None:
    region = make_caches().region(NS)
    with pytest.raises(ValueError, match=message):
        region.cache_on_arguments(**settings)


def test_an_unknown_setting_is_refused(make_caches: Make) -> None:
    region = make_caches().region(NS)
    with pytest.raises(TypeError, match="fail_sa"):
        region.cache_on_arguments(fail_sa=1)


def test_close_waits_for_background_work_within_its_bound(make_caches: Make) -> None:
    caches = make_caches()
    region = caches.region(NS)
    creator = Creator()
    creator.hold()
    with pytest.raises(CreationTimeout):
        region.get_or_create("k", creator, EXPIRES, hard_timeout=0.05)
    creator.release()
    caches.close()
    assert region.background.pending == 0 and region.get("k", expiration_time=60) == "v1"



# -- many keys at once ------------------------------------------------------------------------


class ManyCreator(Creator):
    """A creator of many keys: ``value`` + the key, for each."""

    def many(self, *keys: str) -> list[Any]:
        value = self()  # one run for the batch
        return [f"{value}:{key}" for key in keys]

    async def amany(self, *keys: str) -> list[Any]:
        value = await self.acall()
        return [f"{value}:{key}" for key in keys]


def call_many(door: str, region: Any, keys: list[str], creator: ManyCreator, **settings: Any) -> Any:
    """:func:`call`'s twin for ``get_or_create_multi``."""
    if door == "sync":
        try:
            return region.get_or_create_multi(keys, creator.many, EXPIRES, **settings)
        finally:
            creator.release()
    return asyncio.run(lasting(region, region.aget_or_create_multi(keys, creator.amany, EXPIRES, **settings),
                               creator.release))


@pytest.mark.parametrize("door", DOORS)
def test_a_batch_whose_creator_fails_gets_its_stale_values_served(make_caches: Make, where: dict[str, str],
                                                                  door: str) -> None:
    region = region_of(make_caches, where)
    creator = ManyCreator()
    assert call_many(door, region, ["a", "b"], creator, fail_safe=60) == ["v1:a", "v1:b"]
    wait_until(expired(region, "b", GRACE), 5)
    creator.error = RuntimeError("down")
    assert call_many(door, region, ["a", "b"], creator, fail_safe=60) == ["v1:a", "v1:b"]
    assert call_many(door, region, ["a", "b"], creator, fail_safe=60) == ["v1:a", "v1:b"]  # throttled
    assert creator.runs == 2
    with pytest.raises(RuntimeError):  # "c" has no value to spare: the batch's error reaches the caller
        call_many(door, region, ["a", "c"], creator, fail_safe=60, fail_safe_throttle=0.01)


@pytest.mark.parametrize("door", DOORS)
def test_a_batch_past_the_hard_timeout_raises_and_stores_later(make_caches: Make, where: dict[str, str],
                                                               door: str) -> None:
    region = region_of(make_caches, where)
    creator = ManyCreator()
    creator.hold()
    with pytest.raises(CreationTimeout):
        call_many(door, region, ["a", "b"], creator, hard_timeout=0.05)
    wait_until(lambda: region.get_multi(["a", "b"], expiration_time=60) == ["v1:a", "v1:b"], 5)


def test_a_batch_past_the_soft_timeout_serves_its_stale_values(make_caches: Make, where: dict[str, str]) -> None:
    region = region_of(make_caches, where)
    creator = ManyCreator()
    region.get_or_create_multi(["a", "b"], creator.many, EXPIRES, fail_safe=60)
    wait_until(expired(region, "b", GRACE), 5)
    creator.value = "v2"
    creator.hold()
    assert region.get_or_create_multi(["a", "b"], creator.many, EXPIRES, fail_safe=60,
                                      soft_timeout=0.05) == ["v1:a", "v1:b"]
    creator.release()
    wait_until(lambda: region.get_multi(["a", "b"], expiration_time=60) == ["v2:a", "v2:b"], 5)


def test_a_batch_past_its_eager_refresh_point_is_refreshed_in_the_background(make_caches: Make,
                                                                             where: dict[str, str]) -> None:
    region = region_of(make_caches, where)
    creator = ManyCreator()
    region.get_or_create_multi(["a", "b"], creator.many, 2.0, eager_refresh=0.25)
    wait_until(lambda: region.get("a", expiration_time=0.5) is NO_VALUE, 5)
    creator.value = "v2"
    assert region.get_or_create_multi(["a", "b"], creator.many, 2.0, eager_refresh=0.25) == ["v1:a", "v1:b"]
    wait_until(lambda: region.get_multi(["a", "b"], expiration_time=60) == ["v2:a", "v2:b"], 5)
    assert creator.runs == 2


def test_memoised_functions_take_the_settings(make_caches: Make, where: dict[str, str]) -> None:
    region = region_of(make_caches, where)
    creator = ManyCreator()

    @region.cache_on_arguments(expiration_time=EXPIRES, fail_safe=60)
    def one(key: str) -> str:
        return f"{creator()}:{key}"

    @region.cache_multi_on_arguments(expiration_time=EXPIRES, fail_safe=60)
    def many(*keys: str) -> list[str]:
        return creator.many(*keys)

    @region.cache_on_arguments(expiration_time=EXPIRES, fail_safe=60)
    async def aone(key: str) -> str:
        return f"{await creator.acall()}:{key}"

    @region.cache_multi_on_arguments(expiration_time=EXPIRES, fail_safe=60)
    async def amany(*keys: str) -> list[str]:
        return await creator.amany(*keys)

    assert one("x") == "v1:x" and many("y", "z") == ["v1:y", "v1:z"]
    assert asyncio.run(aone("ax")) == "v1:ax" and asyncio.run(amany("ay")) == ["v1:ay"]
    wait_until(lambda: region.get_multi([region.function_key_generator(None, one)("x")],
                                        expiration_time=EXPIRES + GRACE) == [NO_VALUE], 5)
    creator.error = RuntimeError("down")
    assert one("x") == "v1:x" and many("y", "z") == ["v1:y", "v1:z"]
    assert asyncio.run(aone("ax")) == "v1:ax" and asyncio.run(amany("ay")) == ["v1:ay"]


# -- Redis down as well -----------------------------------------------------------------------


def own_env(server: Any, prefix: str, **variables: str) -> dict[str, str]:
    return {"USE_REDIS": "true", "REDIS_URI": server.url, "REDIS_KEY_PREFIX": prefix,
            "REDIS_RETRY_MAX_ATTEMPTS": "1", "REDIS_CONNECT_TIMEOUT": "200", "LIBRECACHE_SOCKET_TIMEOUT": "0.5",
            **variables}


@pytest.mark.parametrize("door", DOORS)
def test_redis_down_and_a_failing_creator_raise_its_error(make_caches: Make, own_server: Any, prefix: str,
                                                          door: str) -> None:
    region = region_of(make_caches, own_env(own_server, prefix))
    creator = Creator()
    call(door, region, "k", creator, fail_safe=60)
    own_server.stop()
    creator.error = RuntimeError("the database is down too")
    with pytest.raises(RuntimeError, match="too"):
        call(door, region, "k", creator, fail_safe=60)


@pytest.mark.parametrize("door", DOORS)
def test_redis_down_and_a_failing_creator_serve_this_process_s_near_copy(make_caches: Make, own_server: Any,
                                                                         prefix: str, door: str) -> None:
    from tests.test_nearcache import subscribed

    caches = make_caches({**own_env(own_server, prefix, LIBRECACHE_NEAR_CACHE_NAMESPACES=NS),
                          "LIBRECACHE_NAMESPACE_GRACE": f"{NS}={GRACE}"})
    region = caches.region(NS)
    subscribed(caches)
    creator = Creator()
    call(door, region, "k", creator, fail_safe=60)
    call(door, region, "k", creator, fail_safe=60)  # a near hit: the copy is held
    own_server.stop()
    wait_until(lambda: not region.near_cache.enabled, 10)  # the channel is lost: no near hit any more
    creator.error = RuntimeError("the database is down too")
    assert call(door, region, "k", creator, fail_safe=60) == "v1"
    with pytest.raises(RuntimeError):  # without a fail-safe, the error
        call(door, region, "k", creator)


# -- across processes -------------------------------------------------------------------------


def stampede(caches: librecache.Caches, deployment_env: dict[str, str], door: str, ready: Callable[[], None],
             **env: str) -> list[dict[str, Any]]:
    """4 processes x 4 callers of ``get_or_create("k")`` (worker
    ``engine_stampede``), started once every process is ready and
    ``ready()`` has returned."""
    from tests import processes

    client = caches.redis
    assert client is not None
    client.delete("creator-calls", "ready", "go")
    common = {**deployment_env, "LIBRECACHE_NAMESPACE_GRACE": f"{NS}={GRACE}", "NAMESPACE": NS, "KEY": "k",
              "DOOR": door, "CALLERS": "4", "START_AT": "0", "GO_KEY": "go", **env}
    workers = [processes.start("engine_stampede", common) for _ in range(4)]
    wait_until(lambda: int(client.get("ready") or 0) == 4, 60)
    ready()
    client.set("go", 1)
    return processes.reports_of(workers)


def creator_calls(caches: librecache.Caches, reports: list[dict[str, Any]]) -> bool:
    """Whether the creator ran once across the processes (or more only for
    a process that met a Redis error: a loaded machine's time-out)."""
    assert caches.redis is not None
    calls = int(caches.redis.get("creator-calls"))
    troubled = [report for report in reports if report["errors"] or report["fallthroughs"]]
    return calls == 1 or (bool(troubled) and calls <= 1 + len(troubled))


@pytest.mark.slow
@pytest.mark.parametrize("door", DOORS)
def test_eager_refresh_runs_once_across_four_processes_and_lands_before_expiry(
        make_caches: Make, deployment: Any, door: str) -> None:
    caches = make_caches(deployment.env)
    region = caches.region(NS)
    written: list[float] = []

    def ready() -> None:  # the processes wait: the value is written, then past its refresh point
        region.set("k", "old")
        written.append(region.get_value_metadata("k").metadata["ct"])
        wait_until(lambda: region.get("k", expiration_time=2) is NO_VALUE, 10)

    # the value's expiration time 10 s, its refresh point 2 s in (8 s for the callers
    # to come, even on a loaded machine); the creator takes 0.2 s
    reports = stampede(caches, deployment.env, door, ready, EXPIRES="10", SETTING_EAGER_REFRESH="0.2",
                       CREATE_SECONDS="0.2")
    results = [result for report in reports for result in report["results"]]
    # the current value, or the refreshed one for a caller that came after it landed
    assert len(results) == 16 and set(results) <= {"old", "new"} and "old" in results
    wait_until(lambda: region.get("k", expiration_time=60) == "new", 5)
    refreshed = region.get_value_metadata("k", ignore_expiration=True)
    # the refresh began (its creation time) past the refresh point, and its
    # creator took 0.2 s: the new value landed before the old one expired
    assert refreshed.payload == "new" and written[0] + 2 < refreshed.metadata["ct"] < written[0] + 10 - 0.2
    assert creator_calls(caches, reports), reports


@pytest.mark.slow
@pytest.mark.parametrize("door", DOORS)
def test_the_fail_safe_calls_a_failing_creator_once_across_four_processes(
        make_caches: Make, deployment: Any, door: str) -> None:
    caches = make_caches({**deployment.env, "LIBRECACHE_NAMESPACE_GRACE": f"{NS}={GRACE}"})
    region = caches.region(NS)

    def ready() -> None:  # the processes wait: the value is written, then expired past its grace
        region.set("k", "old")
        wait_until(expired(region, "k", GRACE), 5)

    reports = stampede(caches, deployment.env, door, ready,
                       EXPIRES=str(EXPIRES), SETTING_FAIL_SAFE="60", CREATOR_FAILS="1", CREATE_SECONDS="0.2")
    results = [result for report in reports for result in report["results"]]
    assert results == ["old"] * 16
    assert creator_calls(caches, reports), reports


def test_a_forked_child_times_its_creators_out_and_stores_in_the_background(make_caches: Make,
                                                                            where: dict[str, str]) -> None:
    import os

    region = region_of(make_caches, where)
    creator = Creator()
    creator.hold()
    with pytest.raises(CreationTimeout):  # the parent's pool has threads now
        region.get_or_create("parent", creator, EXPIRES, hard_timeout=0.02)
    creator.release()
    wait_until(lambda: region.background.pending == 0, 5)
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own pool, its own calls
        status = 1
        try:
            child = Creator()
            child.hold()
            try:
                region.get_or_create("child", child, EXPIRES, hard_timeout=0.02)
            except CreationTimeout:
                child.release()
                deadline = time.monotonic() + 5
                while region.get("child", expiration_time=60) != "v1" and time.monotonic() < deadline:
                    time.sleep(0.01)
                status = 0 if region.get("child", expiration_time=60) == "v1" else 2
        finally:
            os.write(writing, bytes([status]))
            os._exit(0)
    os.close(writing)
    assert os.read(reading, 1) == b"\x00"
    os.waitpid(pid, 0)
    os.close(reading)


@pytest.mark.parametrize("door", DOORS)
def test_the_fail_safe_and_the_soft_timeout_on_sentinel(make_caches: Make, redis_sentinel: Any, prefix: str,
                                                       door: str) -> None:
    region = region_of(make_caches, redis_sentinel.env(prefix))
    creator = Creator()
    call(door, region, "k", creator, fail_safe=60)
    wait_until(expired(region, "k", GRACE), 5)
    creator.error = RuntimeError("down")
    assert call(door, region, "k", creator, fail_safe=60, fail_safe_throttle=0.01) == "v1"
    creator.error, creator.value = None, "v2"
    creator.hold()
    throttled = region.get_value_metadata("k", ignore_expiration=True).metadata["fs"]
    wait_until(lambda: time.time() > throttled, 5)  # the throttle is over: the creator is called
    assert call(door, region, "k", creator, fail_safe=60, soft_timeout=0.05) == "v1"
    assert creator.runs == 3 and stats(region)["soft_timeouts"] == 1
    wait_until(lambda: region.get("k", expiration_time=60) == "v2", 5)
