"""The engine (issue: one caching engine for both doors), proved on real
servers: each flow sends the same commands from either door, one creator
runs per deployment after a cold miss, a hard and a soft invalidation, and
no creation that began before an invalidation or a write stores its value
after it (no stale set). Then the flows' protocol alone, with a port that
answers from a script (no I/O: the flows do none)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE

import librecache
from librecache.backends.redis import READ_OR_LOCK, RELEASE, SET_AND_REVOKE, STORE_AND_RELEASE
from librecache.engine import flows
from librecache.engine.doors import run
from librecache.engine.flows import ACQUIRED, HELD, Call, Found, LockReply
from tests import processes
from tests.conftest import Deployment
from tests.test_nearcache import subscribed
from tests.test_speed import master_ports, monitored

Make = Callable[..., librecache.Caches]

#: A namespace with a TTL (3 minutes): soft invalidation needs one.
NS = "FLOWS"
DOORS = ("sync", "async")


def through(door: str, sync: Callable[[], Any], coroutine: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """``sync()`` through the sync door, or ``coroutine()`` through the async door."""
    return sync() if door == "sync" else asyncio.run(coroutine())


def load_scripts(ports: list[int]) -> None:
    """Every master knows the scripts, so each goes by SHA (EVALSHA)."""
    for port in ports:
        with redis.Redis(port=port) as node:
            for script in (READ_OR_LOCK, STORE_AND_RELEASE, RELEASE, SET_AND_REVOKE):
                node.script_load(script.text)


# -- the commands each flow sends, from either door ----------------------------------------------


def made(key: str) -> str:
    return f"made {key}"


async def amade(key: str) -> str:
    return f"made {key}"


def _calls(region: librecache.LibreRegion, k: str) -> dict[str, tuple[Callable[[], Any], Callable[[], Any], Any]]:
    """Per case: (prepare, sync call, async call)."""
    def nothing() -> None:
        pass

    def stored() -> None:
        region.set(k, "old")

    def lost_lease_sync() -> str:
        def creator() -> str:
            region.delete(k)  # a write of the key while its creator runs revokes the lease
            return "lost"
        return region.get_or_create(k, creator)  # type: ignore[no-any-return]

    async def lost_lease_async() -> str:
        async def creator() -> str:
            await region.adelete(k)
            return "lost"
        return await region.aget_or_create(k, creator)  # type: ignore[no-any-return]

    two = [f"{k}-a", f"{k}-b"]
    return {
        "hit": (stored, lambda: region.get_or_create(k, lambda: made(k)),
                lambda: region.aget_or_create(k, lambda: amade(k))),
        "cold miss": (nothing, lambda: region.get_or_create(k, lambda: made(k)),
                      lambda: region.aget_or_create(k, lambda: amade(k))),
        "stale": (stored, lambda: region.get_or_create(k, lambda: made(k), expiration_time=1e-9),
                  lambda: region.aget_or_create(k, lambda: amade(k), expiration_time=1e-9)),
        "hard-invalidated": (lambda: (stored(), region.invalidate()), lambda: region.get_or_create(k, lambda: made(k)),
                             lambda: region.aget_or_create(k, lambda: amade(k))),
        "soft-invalidated": (lambda: (stored(), region.invalidate(hard=False)),
                             lambda: region.get_or_create(k, lambda: made(k)),
                             lambda: region.aget_or_create(k, lambda: amade(k))),
        "lock lost": (nothing, lost_lease_sync, lost_lease_async),
        "get_multi": (lambda: region.set_multi({key: key for key in two}), lambda: region.get_multi(two),
                      lambda: region.aget_multi(two)),
        "get_or_create_multi": (nothing, lambda: region.get_or_create_multi(two, lambda *ks: [made(x) for x in ks]),
                                lambda: region.aget_or_create_multi(two, lambda *ks: [made(x) for x in ks])),
        "set": (nothing, lambda: region.set(k, "v"), lambda: region.aset(k, "v")),
        "set_multi": (nothing, lambda: region.set_multi({key: key for key in two}),
                      lambda: region.aset_multi({key: key for key in two})),
        "delete": (stored, lambda: region.delete(k), lambda: region.adelete(k)),
    }


#: The commands of each case (a client's, not those its scripts run).
COMMANDS = {
    "hit": ["GET"],
    "cold miss": ["GET", "EVALSHA", "EVALSHA"],  # read; read-or-lock; store-and-release
    "stale": ["GET", "EVALSHA", "EVALSHA"],
    "hard-invalidated": ["GET", "EVALSHA", "EVALSHA"],  # the cross-process lock, as after a cold miss
    "soft-invalidated": ["GET", "EVALSHA", "EVALSHA"],
    "lock lost": ["GET", "EVALSHA", "DEL", "EVALSHA"],  # the store is refused
    "get_multi": ["MGET"],
    "get_or_create_multi": ["MGET", "EVALSHA", "EVALSHA", "EVALSHA", "EVALSHA"],  # 2 locks, 2 stores (1 round trip)
    "set": ["EVALSHA"],  # the write, which revokes a creation's lease
    "set_multi": ["DEL", "SET", "DEL", "SET"],  # one pipeline
    "delete": ["DEL"],  # the value and its lock
}


@pytest.mark.parametrize("case", list(COMMANDS))
def test_each_flow_sends_the_same_commands_from_either_door(make_caches: Make, deployment: Deployment,
                                                          case: str) -> None:
    """MONITOR on every master: the commands naming the key, per door. On a
    cluster a multi-key command goes once per slot, so the commands are
    compared as a multiset there."""
    ports = master_ports(deployment)
    load_scripts(ports)
    seen_by_door = {}
    for door in DOORS:
        region = make_caches(deployment.env).region(NS)
        key = f"{case.replace(' ', '-')}-{door}-{uuid.uuid4().hex[:8]}"
        prepare, sync, asynchronous = _calls(region, key)[case]
        prepare()
        region.get("warm-up")  # the invalidation marks are read (a HGETALL of their own, not of the key)
        with monitored(ports, key) as seen:
            through(door, sync, asynchronous)
        seen_by_door[door] = seen
        if case == "lock lost":
            assert region.get(key) is NO_VALUE  # the creator's value was returned, not stored
        assert deployment.keys(f"*librecache:lock*{key}*") == []  # no lock left behind
    if deployment.cluster and case in ("get_multi", "get_or_create_multi", "set_multi"):
        assert sorted(seen_by_door["sync"]) == sorted(seen_by_door["async"]), seen_by_door
        assert set(seen_by_door["sync"]) == set(COMMANDS[case]), seen_by_door
    else:
        assert seen_by_door == {"sync": COMMANDS[case], "async": COMMANDS[case]}


def test_with_redis_down_no_door_sends_anything_and_nothing_is_stored(make_caches: Make, own_server: Any) -> None:
    """The breaker open: a call falls through, its creator's value is
    returned (created in this process only, so not stored), and both doors
    count the same fall-throughs: the read and the lock."""
    caches = make_caches(USE_REDIS="true", REDIS_URI=own_server.url, REDIS_KEY_PREFIX="down",
                         REDIS_RETRY_MAX_ATTEMPTS="1", REDIS_CONNECT_TIMEOUT="200")
    region = caches.region(NS)
    region.set("warm", 1)
    own_server.stop()
    assert region.get("warm") is NO_VALUE  # meets the outage: the breaker opens
    before = caches.stats()[NS]["fallthroughs"]
    assert region.get_or_create("k", lambda: "sync") == "sync"
    after_sync = caches.stats()[NS]["fallthroughs"]
    assert asyncio.run(region.aget_or_create("k", lambda: amade("k"))) == "made k"
    after_async = caches.stats()[NS]["fallthroughs"]
    assert after_sync - before == after_async - after_sync == 2


# -- one creator run across processes, from either door ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("case", ["cold", "hard", "soft"])
def test_one_creator_runs_across_processes(make_caches: Make, deployment: Deployment, door: str, case: str) -> None:
    """4 processes x 4 callers (threads, or tasks of one loop) right after a
    cold miss, a hard or a soft invalidation: the creator runs once. After a
    soft invalidation the callers that did not create get the stale value."""
    caches = make_caches(deployment.env)
    region = caches.region(NS)
    if case != "cold":
        region.set("k", "old")
        region.invalidate(hard=case == "hard")
    env = {**deployment.env, "NAMESPACE": NS, "KEY": "k", "DOOR": door, "CALLERS": "4",
           "START_AT": repr(time.time() + 3.0)}
    reports = processes.reports_of([processes.start("engine_stampede", env) for _ in range(4)])
    results = [result for report in reports for result in report["results"]]
    assert len(results) == 16
    if case == "soft":
        assert set(results) <= {"old", "new"} and "new" in results
    else:
        assert results == ["new"] * 16
    assert caches.redis is not None
    calls = int(caches.redis.get("creator-calls"))
    # exactly once while Redis answers; a call that met an error (a loaded machine's
    # time-out) degrades to its process's own lock, as documented
    troubled = [report for report in reports if report["errors"] or report["fallthroughs"]]
    assert calls == 1 or (troubled and calls <= 1 + len(troubled)), (calls, reports)
    assert region.get("k") == "new"


# -- no stale set ----------------------------------------------------------------------------------


def invalidate(region: librecache.LibreRegion, kind: str, key: str) -> None:
    if kind == "key":
        region.delete(key)
    else:
        region.invalidate(hard=kind == "hard")


class Source:
    """A versioned source of truth, and a creator that reads it and then
    waits (the first time) until the test lets it finish."""

    def __init__(self) -> None:
        self.version = 1
        self.reads: list[int] = []

    def read(self) -> int:
        self.reads.append(self.version)
        return self.version


@pytest.mark.parametrize("kind", ["key", "hard", "soft"])
def test_a_creation_that_began_before_an_invalidation_never_stores_its_value_after_it_sync(
        make_caches: Make, topology: dict[str, str], kind: str) -> None:
    """The creator reads version 1; the source is written (version 2) and the
    key or namespace invalidated; then the creator ends. Its caller gets
    version 1 (its own call's value), and every later read, here and in
    another instance with a near cache, returns version 2 or nothing."""
    caches = make_caches(topology)
    region = caches.region(NS)
    source = Source()
    reading, finish = threading.Event(), threading.Event()

    def creator() -> int:
        version = source.read()
        if len(source.reads) == 1:
            reading.set()
            assert finish.wait(10)
        return version

    got: list[int] = []
    caller = threading.Thread(target=lambda: got.append(region.get_or_create("k", creator)))
    caller.start()
    assert reading.wait(10)
    source.version = 2
    invalidate(region, kind, "k")
    finish.set()
    caller.join(10)
    assert got == [1]
    _never_the_old_version(make_caches, caches, topology, region.get("k"))
    assert region.get_or_create("k", creator) == 2 and source.reads == [1, 2]


@pytest.mark.parametrize("kind", ["key", "hard", "soft"])
def test_a_creation_that_began_before_an_invalidation_never_stores_its_value_after_it_async(
        make_caches: Make, topology: dict[str, str], kind: str) -> None:
    """The same through the async door (an ``async`` creator, ``aget_or_create``, ``adelete``)."""
    caches = make_caches(topology)
    region = caches.region(NS)
    source = Source()

    async def main() -> None:
        reading, finish = asyncio.Event(), asyncio.Event()

        async def creator() -> int:
            version = source.read()
            if len(source.reads) == 1:
                reading.set()
                await asyncio.wait_for(finish.wait(), 10)
            return version

        caller = asyncio.create_task(region.aget_or_create("k", creator))
        await asyncio.wait_for(reading.wait(), 10)
        source.version = 2
        if kind == "key":
            await region.adelete("k")
        else:
            region.invalidate(hard=kind == "hard")
        finish.set()
        assert await asyncio.wait_for(caller, 10) == 1
        _never_the_old_version(make_caches, caches, topology, await region.aget("k"))
        assert await region.aget_or_create("k", creator) == 2 and source.reads == [1, 2]

    asyncio.run(main())


def test_a_write_during_a_creation_is_never_overwritten_by_it(make_caches: Make, topology: dict[str, str]) -> None:
    """A ``set`` of the key while its creator runs revokes the creator's
    lease too: what was set stays."""
    region = make_caches(topology).region(NS)
    reading, finish = threading.Event(), threading.Event()

    def creator() -> str:
        reading.set()
        assert finish.wait(10)
        return "created from an older read"

    got: list[str] = []
    caller = threading.Thread(target=lambda: got.append(region.get_or_create("k", creator)))
    caller.start()
    assert reading.wait(10)
    region.set("k", "written")
    finish.set()
    caller.join(10)
    assert got == ["created from an older read"] and region.get("k") == "written"


def _never_the_old_version(make_caches: Make, caches: librecache.Caches, topology: dict[str, str],
                           here: Any) -> None:
    """What this instance reads of ``k`` now, and what another instance of
    the deployment (with a near cache) reads: nothing, never version 1."""
    assert here is NO_VALUE
    if not topology:
        return
    other = make_caches({**topology, "LIBRECACHE_NEAR_CACHE_NAMESPACES": NS})
    subscribed(other)
    assert other.region(NS).get("k") is NO_VALUE
    assert other.region(NS).get("k") is NO_VALUE  # nor from its near cache


def test_a_value_created_before_an_invalidation_in_another_instance_is_not_served_by_its_near_cache(
        make_caches: Make, deployment: Deployment) -> None:
    """Another instance holds version 1 in its near cache; a creation that
    began before a hard invalidation stores late: once the invalidation is
    delivered, the near copy is not served, and neither is the late value."""
    env = {**deployment.env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": NS}
    writer, reader = make_caches(env), make_caches(env)
    subscribed(writer)
    subscribed(reader)
    writer.region(NS).set("k", 1)
    assert reader.region(NS).get("k") == 1 and reader.region(NS).get("k") == 1  # the second from its near cache
    reading, finish = threading.Event(), threading.Event()

    def creator() -> int:
        reading.set()
        assert finish.wait(10)
        return 1

    caller = threading.Thread(target=lambda: writer.region(NS).get_or_create("k", creator, expiration_time=1e-9))
    caller.start()
    assert reading.wait(10)
    writer.region(NS).invalidate()
    finish.set()
    caller.join(10)
    bus = reader.invalidations
    assert bus is not None
    deadline = time.monotonic() + 5
    while bus.near_caches[NS].valid_from < writer.invalidations.near_caches[NS].valid_from:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the invalidation did not reach the other instance"
        time.sleep(0.005)
    assert reader.region(NS).get("k") is NO_VALUE


# -- the flows alone -------------------------------------------------------------------------------


class ScriptedPort:
    """Answers each request with the next scripted answer and records the
    requests (the flows do no I/O: this is all they see)."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def perform(*args: Any) -> Any:
            self.asked.append(name)
            queue = self.answers.get(name)
            answer = queue.pop(0) if queue else None
            if isinstance(answer, BaseException):
                raise answer
            return answer(*args) if callable(answer) else answer
        return perform


class _Region:
    """What the rules read of a region: its invalidation marks."""

    expiration_time = None

    class region_invalidator:
        @staticmethod
        def is_hard_invalidated(created: float) -> bool:
            return False

        @staticmethod
        def is_soft_invalidated(created: float) -> bool:
            return False

        @staticmethod
        def was_soft_invalidated() -> bool:
            return False


def _call(creator: Callable[[], Any] = lambda: "made", expiration: float | None = None) -> Call:
    return Call(_Region(), "k", "k", creator, (), {}, expiration, None, None)


def test_a_cold_miss_reads_locks_creates_stores_and_leaves_the_queue() -> None:
    port = ScriptedPort({"read": [Found(NO_VALUE, None)], "queue": ["handle"],
                         "try_lock": [LockReply(ACQUIRED, "lease")], "create": [lambda c, a, k: c()],
                         "store": [True]})
    outcome = run(flows.get_or_create(_call()), port)
    assert outcome == (flows.CREATED, "made", outcome.seconds)
    assert port.asked == ["read", "queue", "try_lock", "create", "store", "dequeue"]


def test_a_creator_that_raises_releases_its_lease_and_queue_before_the_error_reaches_the_caller() -> None:
    port = ScriptedPort({"read": [Found(NO_VALUE, None)], "queue": ["handle"],
                         "try_lock": [LockReply(ACQUIRED, "lease")], "create": [RuntimeError("creator failed")]})
    with pytest.raises(RuntimeError, match="creator failed"):
        run(flows.get_or_create(_call()), port)
    assert port.asked == ["read", "queue", "try_lock", "create", "release", "dequeue"]


def test_a_stale_value_is_served_while_another_process_holds_the_lock() -> None:
    from dogpile.cache.api import CachedValue

    old = CachedValue("old", {"ct": time.time() - 100, "v": 2})  # type: ignore[call-arg]
    port = ScriptedPort({"queue": ["handle"], "try_lock": [LockReply(HELD)]})
    outcome = run(flows.get_or_create(_call(expiration=10), Found(old, b"old")), port)
    assert outcome == (flows.STALE, "old", 0.0)
    assert port.asked == ["queue", "try_lock", "dequeue"]  # no wait, no creation


def test_a_waiter_polls_until_the_lock_is_free_then_takes_the_value_created_meanwhile() -> None:
    from dogpile.cache.api import CachedValue

    fresh = CachedValue("theirs", {"ct": time.time(), "v": 2})  # type: ignore[call-arg]
    port = ScriptedPort({"queue": ["handle"],
                         "try_lock": [LockReply(HELD), LockReply(HELD), LockReply(flows.CHANGED, current=Found(fresh, b"x"))]})
    call = _call()
    call.deadline = time.monotonic() + 60
    outcome = run(flows.get_or_create(call, Found(NO_VALUE, None)), port)
    assert outcome == (flows.WAITED, "theirs", 0.0)
    assert port.asked == ["queue", "try_lock", "sleep", "try_lock", "sleep", "try_lock", "dequeue"]


def test_a_waiter_past_its_deadline_creates_without_storing() -> None:
    port = ScriptedPort({"queue": ["handle"], "try_lock": [LockReply(HELD)], "create": [lambda c, a, k: c()]})
    call = _call()
    call.deadline = time.monotonic() - 1
    outcome = run(flows.get_or_create(call, Found(NO_VALUE, None)), port)
    assert outcome.kind == flows.CREATED and outcome.value == "made"
    assert port.asked == ["queue", "try_lock", "create", "dequeue"]  # no store: no lease


def test_a_value_that_keeps_changing_under_a_waiter_ends_in_a_creation_that_is_not_stored() -> None:
    port = ScriptedPort({"queue": ["handle"],
                         "try_lock": [LockReply(flows.CHANGED, current=Found(NO_VALUE, None))] * flows.MAX_CHANGES,
                         "create": [lambda c, a, k: c()]})
    outcome = run(flows.get_or_create(_call(), Found(NO_VALUE, None)), port)
    assert outcome.kind == flows.CREATED
    assert port.asked.count("try_lock") == flows.MAX_CHANGES and "store" not in port.asked


# -- the rules alone -------------------------------------------------------------------------------


class _Marks:
    """An invalidation strategy with given hard and soft marks."""

    def __init__(self, hard: float = 0.0, soft: float = 0.0) -> None:
        self.hard, self.soft = hard, soft

    def is_hard_invalidated(self, created: float) -> bool:
        return created < self.hard

    def is_soft_invalidated(self, created: float) -> bool:
        return created < self.soft and self.soft > self.hard

    def was_soft_invalidated(self) -> bool:
        return self.soft > self.hard


@pytest.mark.parametrize(("age", "version", "hard", "soft", "expiration", "expected"), [
    (None, 2, 0, 0, None, "absent"),  # nothing stored
    (5, 1, 0, 0, None, "absent"),  # another version of dogpile's format
    (5, 2, 3, 0, None, "absent"),  # older than the hard mark (3 s ago)
    (5, 2, 0, 3, 60, "stale"),  # older than the soft mark
    (5, 2, 0, 0, 4, "stale"),  # expired
    (5, 2, 0, 0, 10, "fresh"),
    (5, 2, 0, 0, None, "fresh"),  # never expires
    (5, 2, 0, 6, 60, "fresh"),  # created after the soft mark (6 s ago)
])
def test_the_verdicts(age: float | None, version: int, hard: float, soft: float, expiration: float | None,
                      expected: str) -> None:
    from dogpile.cache.api import CachedValue

    from librecache.engine.judge import verdict

    now = time.time()
    region = _Region()
    region.region_invalidator = _Marks(now - hard if hard else 0.0, now - soft if soft else 0.0)  # type: ignore[assignment,misc]
    value = NO_VALUE if age is None else CachedValue("v", {"ct": now - age, "v": version})  # type: ignore[call-arg]
    assert verdict(region, value, expiration)[0] == expected


def test_a_soft_invalidation_without_expiration_time_is_dogpiles_error() -> None:
    from dogpile.cache.api import CachedValue
    from dogpile.cache.exception import DogpileCacheException

    from librecache.engine.judge import verdict

    region = _Region()
    region.region_invalidator = _Marks(soft=time.time())  # type: ignore[assignment,misc]
    with pytest.raises(DogpileCacheException, match="Non-None expiration time"):
        verdict(region, CachedValue("v", {"ct": time.time() - 5, "v": 2}), None)  # type: ignore[call-arg]


def test_a_headers_creation_time_is_read_once_and_only_in_its_usual_form() -> None:
    from librecache.engine.judge import CREATION_TIMES, usual_time

    header = b'{"ct": 1765123456.25, "v": 2}'
    assert usual_time(header) == 1765123456.25 and CREATION_TIMES[header] == 1765123456.25
    for other in (b'{"ct": inf, "v": 2}', b'{"ct": 1_765_123_456.5, "v": 2}', b'{"ct": 01765123456.5, "v": 2}',
                  b'{"ct": 1765123456.5, "v": 1}', b'{"v": 2, "ct": 1765123456.5}'):
        assert usual_time(other) is None and other not in CREATION_TIMES
