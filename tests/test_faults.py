"""Bad days, through a fault proxy of our own (tests/faults.py) in front of a
real redis-server: every call within its bound, no exception reaching a
caller in default mode, no wrong value, and caching back by itself.

Settings: REDIS_CONNECT_TIMEOUT 500 ms and LIBRECACHE_SOCKET_TIMEOUT 1 s,
so one call's bound is two attempts of 1.5 s: 3 s. Calls are timed one by
one; the bound is asserted with a margin for a loaded 2-core machine.
The figures are printed at the end (``-s``) and copied into
docs/resilience.rst.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from dogpile.cache.api import NO_VALUE
from redis.exceptions import OutOfMemoryError

import librecache
import librecache.guard
from librecache.backends.redis import READ_OR_LOCK
from librecache.health import FULL, OUTAGE, REFUSED, classify
from librecache.streams import open_streams
from tests.conftest import ACL_PASSWORD, ACL_USER
from tests.faults import Command, FaultProxy, command_is
from tests.load import Load, wait_until
from tests.processes import ROOT, child_environment
from tests.servers import RedisServer

Make = Callable[..., librecache.Caches]
SETTINGS = {"REDIS_CONNECT_TIMEOUT": "500", "LIBRECACHE_SOCKET_TIMEOUT": "1", "REDIS_RETRY_MAX_DELAY": "200",
            "REDIS_RETRY_MAX_ATTEMPTS": "0"}
#: Two attempts of connect (0.5 s) and reply (1 s) time-outs.
BOUND = 3.0
#: What a loaded 2-core machine may add to a call (threads waiting for the GIL and the CPU).
MARGIN = 1.0
FIGURES: dict[str, str] = {}


@pytest.fixture
def proxy(own_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(own_server.port, seed=10) as proxy:
        yield proxy


def takes_the_lock(command: Command) -> bool:
    """A command that takes a creation lock: ``SET name token NX PX``, or the
    script that reads the value and takes its lock in one round trip."""
    script = command[1:2]
    return command_is("SET", "NX")(command) or (
        bool(command) and command[0].upper() in (b"EVALSHA", b"EVAL")
        and script in ([READ_OR_LOCK.sha.encode()], [READ_OR_LOCK.text.encode()]))


def through(proxy: FaultProxy, prefix: str, **extra: str) -> dict[str, str]:
    return {"USE_REDIS": "true", "REDIS_URI": proxy.url, "REDIS_KEY_PREFIX": prefix, **SETTINGS, **extra}


def up(caches: librecache.Caches) -> bool:
    health = caches.health()
    return health is not None and bool(health["up"])


# -- each fault under 8 threads ------------------------------------------------------------------

FAULTS: dict[str, Callable[[FaultProxy, Any], None]] = {
    "latency 2 ms round trip": lambda proxy, region: proxy.latency(0.001, 0.001),
    "latency 1.2 s round trip (past the reply time-out)": lambda proxy, region: proxy.latency(0.6, 0.6),
    "black hole, healed delivering what queued": lambda proxy, region: proxy.blackhole(),
    "black hole, healed dropping what queued": lambda proxy, region: proxy.blackhole(),
    "reset in mid-reply, 30% of replies": lambda proxy, region: proxy.reset_replies(0.3),
    "accept and never answer": lambda proxy, region: proxy.never_answer(),
    "lost replies after SET NX (the creation lock)": lambda proxy, region: (
        proxy.lose_reply_after(takes_the_lock, times=6), region.invalidate()),
    "lost replies after GET": lambda proxy, region: proxy.lose_reply_after(command_is("GET"), times=6),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_call_bounded_no_errors_no_wrong_values(make_caches: Make, proxy: FaultProxy, fault: str) -> None:
    caches = make_caches(through(proxy, "faults"))
    region = caches.region("TOOLS")
    hammer = Load(region, threads=8, keys=16)
    try:
        hammer.wait_cached(10)
        FAULTS[fault](proxy, region)
        time.sleep(3.0)
        proxy.heal(deliver="dropping" not in fault)
        proxy.clear()
        healed = time.monotonic()
        wait_until(lambda: up(caches), 15)
        hammer.wait_cached(15)
        resumed = time.monotonic() - healed
    finally:
        hammer.stop()
    health = caches.health()
    assert health is not None
    FIGURES[fault] = (f"worst call {hammer.worst:.2f} s, caching resumed {resumed:.2f} s after the fault ended, "
                      f"{hammer.calls} calls, breaker opened {health['errors'] > 0}")
    assert hammer.errors == [], hammer.errors[:3]
    assert hammer.wrong == []
    assert hammer.worst <= BOUND + MARGIN, hammer.worst
    if fault.startswith("latency 2 ms"):
        assert health["errors"] == 0  # slow is not down
    if fault.startswith("lost replies"):
        assert proxy.lost > 0
    if fault.startswith("reset"):
        assert proxy.resets > 0


# -- the creation lock ---------------------------------------------------------------------------


def test_a_lost_lock_reply_never_waits_for_its_own_lock(make_caches: Make, proxy: FaultProxy,
                                                        own_server: RedisServer) -> None:
    caches = make_caches(through(proxy, "lostlock", LIBRECACHE_LOCK_TIMEOUT="8"))
    region = caches.region("TOOLS")
    proxy.lose_reply_after(takes_the_lock)
    started = time.monotonic()
    assert region.get_or_create("k", lambda: "v") == "v"
    took = time.monotonic() - started
    FIGURES["one call whose SET NX reply is lost (lock time-out 8 s)"] = f"{took:.2f} s"
    assert proxy.lost == 1
    assert took < 1.0 + MARGIN  # one reply time-out, then the retried SET finds our own token
    raw = redis.Redis(port=own_server.port)
    assert raw.get("lostlock::TOOLS:k") is not None  # cached: the lock was ours
    assert raw.keys("lostlock::librecache:lock:*") == []  # and released
    raw.close()
    assert up(caches)


def test_a_caller_that_cannot_get_the_lock_in_time_calls_the_function_uncached(
        make_caches: Make, redis_env: dict[str, str], raw: redis.Redis) -> None:
    env = {**redis_env, **SETTINGS, "LIBRECACHE_LOCK_TIMEOUT": "30"}
    region = make_caches(env).region("TOOLS")
    other = make_caches(env).region("TOOLS")  # another registry: meets the first at the Redis lock only
    running, finish = threading.Event(), threading.Event()

    def slow() -> str:
        running.set()
        finish.wait(20)
        return "slow"

    creator = threading.Thread(target=lambda: region.get_or_create("k", slow))
    creator.start()
    try:
        assert running.wait(5)
        started = time.monotonic()
        assert other.get_or_create("k", lambda: "impatient") == "impatient"
        waited = time.monotonic() - started
        assert BOUND - 0.1 <= waited <= BOUND + MARGIN
        assert raw.get(f"{redis_env['REDIS_KEY_PREFIX']}::TOOLS:k") is None  # not stored by the impatient one
    finally:
        finish.set()
        creator.join()
    assert other.get("k") == "slow"


def test_key_is_locked_while_a_creator_runs_in_another_thread_or_process(
        make_caches: Make, redis_env: dict[str, str]) -> None:
    caches = make_caches(redis_env)
    region = caches.region("TOOLS")
    running, finish = threading.Event(), threading.Event()

    def slow() -> int:
        running.set()
        finish.wait(20)
        return 1

    creator = threading.Thread(target=lambda: region.get_or_create("thread", slow))
    creator.start()
    try:
        assert running.wait(5)
        assert region.key_is_locked("thread")
        assert make_caches(redis_env).region("TOOLS").key_is_locked("thread")  # through the Redis lock
        assert not region.key_is_locked("other")
    finally:
        finish.set()
        creator.join()
    assert not region.key_is_locked("thread")

    script = (
        "import sys, librecache\n"
        "region = librecache.Caches().region('TOOLS')\n"
        "def create():\n"
        "    print('running', flush=True)\n"
        "    sys.stdin.readline()\n"
        "    return 2\n"
        "region.get_or_create('process', create)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=child_environment(redis_env),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "running"
        assert region.key_is_locked("process")
        child.stdin.write("done\n")
        child.stdin.flush()
        assert child.wait(20) == 0
    finally:
        child.kill()
    assert not region.key_is_locked("process")
    assert region.get("process") == 2

    # as dogpile's own generic suite checks it: the backend's mutex of the key as given
    mutex = region.backend.get_mutex("given")
    assert not region.key_is_locked("given")
    mutex.acquire()
    assert region.key_is_locked("given")
    mutex.release()
    assert not region.key_is_locked("given")


def test_key_is_locked_on_memory_regions(make_caches: Make) -> None:
    region = make_caches({}).region("TOOLS")
    running, finish = threading.Event(), threading.Event()
    creator = threading.Thread(target=lambda: region.get_or_create(
        "k", lambda: (running.set(), finish.wait(20), 1)[-1]))
    creator.start()
    assert running.wait(5)
    assert region.key_is_locked("k")
    finish.set()
    creator.join()
    assert not region.key_is_locked("k")


# -- writes lost in an outage ------------------------------------------------------------------------


def test_a_write_dropped_in_an_outage_never_brings_the_old_value_back(
        make_caches: Make, proxy: FaultProxy, own_server: RedisServer) -> None:
    caches = make_caches(through(proxy, "dropped"))
    region = caches.region("ROLES")
    region.set("k", "v1")
    region.set("j", "v1")
    proxy.blackhole()
    region.set("k", "v2")  # times out: the breaker opens, the write is dropped
    region.set("j", "v2")  # dropped at once
    assert not up(caches) and caches.health()["pending_deletes"] == 2  # type: ignore[index]
    assert region.get("k") is NO_VALUE
    proxy.heal(deliver=False)  # the SET never lands: Redis still holds v1
    wait_until(lambda: up(caches) and caches.health()["pending_deletes"] == 0, 10)  # type: ignore[index]
    assert region.get("k") is NO_VALUE and region.get("j") is NO_VALUE
    raw = redis.Redis(port=own_server.port)
    assert raw.exists("dropped::ROLES:k", "dropped::ROLES:j") == 0
    raw.close()


def test_too_many_lost_writes_invalidate_the_namespace(
        make_caches: Make, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(librecache.guard, "MAX_PENDING_DELETES", 5)
    caches = make_caches(through(proxy, "overflow"))
    region = caches.region("ROLES")
    region.set("early", "v1")
    proxy.blackhole()
    with caplog.at_level(logging.ERROR, logger="librecache"):
        for n in range(10):
            region.set(f"k{n}", n)
        region.set("early", "v2")
    assert "invalidating ROLES" in caplog.text
    proxy.heal(deliver=False)
    wait_until(lambda: up(caches), 10)
    assert region.get("early") is NO_VALUE  # the whole namespace was invalidated (hard)
    region.set("later", 1)
    assert region.get("later") == 1


# -- a full Redis ------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["noeviction", "allkeys-lru"])
def test_a_full_redis_degrades_writes_and_keeps_reads(make_caches: Make, own_server: RedisServer,
                                                       policy: str) -> None:
    admin = redis.Redis(port=own_server.port)
    caches = make_caches(USE_REDIS="true", REDIS_URI=own_server.url, REDIS_KEY_PREFIX="full", **SETTINGS)
    region = caches.region("TOOLS")
    region.set("kept", "read me")
    region.set("old", "v1")
    other = make_caches(USE_REDIS="true", REDIS_URI=own_server.url, REDIS_KEY_PREFIX="full", **SETTINGS)
    assert other.region("TOOLS").get("kept") == "read me"  # another instance, listening
    assert other.invalidations is not None and other.invalidations.wait_subscribed(5)
    admin.config_set("maxmemory-policy", policy)
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 256 * 1024)
    junk = "x" * 4096
    for n in range(2000):
        try:
            admin.set(f"junk:{n}", junk)
        except OutOfMemoryError:
            break
    if policy == "noeviction":
        with pytest.raises(OutOfMemoryError):
            admin.set("one more", junk)

    region.set("old", "v2")  # no exception
    assert region.get("old") in ("v2", NO_VALUE)  # never the value it replaced
    region.set_multi({"old": "v3", "other": 1})
    assert region.get("old") in ("v3", NO_VALUE)
    if policy == "noeviction":
        assert region.get("kept") == "read me"  # reads go on
    hammer = Load(region, threads=8, keys=16)
    try:
        time.sleep(2.0)
        region.invalidate()  # takes effect here at once
        time.sleep(0.5)
    finally:
        hammer.stop()
    assert hammer.errors == [] and hammer.wrong == []
    assert hammer.calls > 100 and hammer.worst <= BOUND + MARGIN
    assert region.get("kept") is NO_VALUE  # invalidated
    # announced to the other instance even where the full Redis refused the stored mark
    wait_until(lambda: other.region("TOOLS").get("kept") is NO_VALUE, 5)
    health = caches.health()
    assert health is not None and health["up"] is True
    if policy == "noeviction":
        assert health["full"] > 0 and health["errors"] == 0

    admin.config_set("maxmemory", 0)  # room again
    freed = time.monotonic()
    hammer = Load(region, threads=8, keys=16)
    try:
        hammer.wait_cached(10)
    finally:
        hammer.stop()
    FIGURES[f"full Redis ({policy})"] = (f"worst call {hammer.worst:.2f} s, caching resumed "
                                         f"{time.monotonic() - freed:.2f} s after memory was freed")
    assert hammer.errors == [] and hammer.wrong == []
    admin.flushall()
    admin.close()


# -- errors that are not outages -----------------------------------------------------------------------


def test_a_refused_configuration_is_logged_once_and_falls_through(
        make_caches: Make, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    # the ACL user may touch keys under "acltenant::" only: every command of this prefix is refused
    caches = make_caches(USE_REDIS="true", REDIS_URI=redis_server.url, REDIS_KEY_PREFIX="notmine",
                         REDIS_USERNAME=ACL_USER, REDIS_PASSWORD=ACL_PASSWORD, **SETTINGS)
    region = caches.region("TOOLS")
    with caplog.at_level(logging.ERROR, logger="librecache"):
        for n in range(20):
            assert region.get_or_create(f"k{n}", lambda n=n: n) == n
    health = caches.health()
    assert health is not None and health["refused"] >= 20 and health["up"] is True and health["errors"] == 0
    refusals = [r for r in caplog.records if "this is not an outage" in r.getMessage()]
    assert 1 <= len(refusals) <= 3  # once per operation and kind, not per call
    assert ACL_PASSWORD not in caplog.text


def test_every_error_class_a_fault_produces_is_classified() -> None:
    from redis import exceptions as e

    outages = [e.ConnectionError("x"), e.TimeoutError("x"), e.BusyLoadingError("LOADING x"),
               e.MaxConnectionsError("x"), e.MasterDownError("MASTERDOWN x"), e.TryAgainError("TRYAGAIN x"),
               e.ClusterDownError("CLUSTERDOWN x"), e.ResponseError("BUSY Redis is busy running a script"),
               ValueError("I/O operation on closed file."), OSError(9, "Bad file descriptor"),
               ConnectionResetError(), TimeoutError()]
    assert [classify(error) for error in outages] == [OUTAGE] * len(outages)
    assert classify(e.OutOfMemoryError("OOM command not allowed")) == FULL
    refused = [e.NoPermissionError("NOPERM"), e.ResponseError("ERR unknown command"), TypeError("x"),
               AttributeError("x"), ValueError("x")]
    assert [classify(error) for error in refused] == [REFUSED] * len(refused)


# -- strict mode raises ----------------------------------------------------------------------------------


def test_strict_mode_raises_what_default_mode_hides(make_caches: Make, proxy: FaultProxy,
                                                     own_server: RedisServer) -> None:
    caches = make_caches(through(proxy, "strict", LIBRECACHE_STRICT="true"))
    region = caches.region("TOOLS")
    region.set("k", 1)
    proxy.blackhole()
    with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
        region.get("k")
    proxy.heal()
    admin = redis.Redis(port=own_server.port)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    try:
        with pytest.raises(OutOfMemoryError):
            region.set("k", 2)
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()


# -- streams: exactly once when a reply is lost ------------------------------------------------------------


def test_a_stream_append_whose_reply_is_lost_is_stored_once(proxy: FaultProxy) -> None:
    config = librecache.CacheConfig.from_env(through(proxy, "streamfault"))

    def the_append_script(command: list[bytes]) -> bool:
        return command[0].upper() == b"EVALSHA" and b'{"n":1}' in command

    async def scenario() -> list[Any]:
        store = open_streams(config)
        try:
            await store.create("s0")
            await store.finish("s0")  # the scripts are loaded: a lost reply is the reply of a change
            await store.create("s1")
            first = await store.append("s1", {"n": 0})
            proxy.lose_reply_after(the_append_script)
            lost = await store.append("s1", {"n": 1})
            await store.append("s1", {"n": 2})
            proxy.lose_reply_after(lambda command: command[0].upper() == b"EVALSHA" and b"done" in command)
            end = await store.finish("s1", "done")
            order = [tuple(int(part) for part in event_id.split("-")) for event_id in (first, lost, end)]
            assert order == sorted(order)
            return [event.data async for event in store.subscribe("s1")]
        finally:
            await store.close()

    events = asyncio.run(scenario())
    assert proxy.lost == 2, (proxy.lost, events)
    assert [event.get("n") for event in events[:-1]] == [0, 1, 2]
    assert len(events) == 4


def test_eight_producers_lose_append_replies_and_every_stream_is_exact(proxy: FaultProxy) -> None:
    config = librecache.CacheConfig.from_env(through(proxy, "streamfault8"))

    def an_append(command: list[bytes]) -> bool:
        return command[0].upper() == b"EVALSHA" and any(arg.startswith(b'{"n":') for arg in command)

    async def produce(store: Any, stream_id: str) -> float:
        worst = 0.0
        await store.create(stream_id)
        for n in range(10):
            started = time.monotonic()
            await store.append(stream_id, {"n": n})
            worst = max(worst, time.monotonic() - started)
        await store.finish(stream_id)
        return worst

    async def scenario() -> tuple[float, list[list[Any]]]:
        store = open_streams(config)
        try:
            await store.create("warm")
            await store.append("warm", {"n": -1})  # the script is loaded
            proxy.lose_reply_after(an_append, times=8)
            worst = max(await asyncio.gather(*(produce(store, f"p{n}") for n in range(8))))
            streams = []
            for n in range(8):
                streams.append([event.data.get("n") async for event in store.subscribe(f"p{n}")])
            return worst, streams
        finally:
            await store.close()

    worst, streams = asyncio.run(scenario())
    FIGURES["8 stream producers, 8 append replies lost"] = f"worst append {worst:.2f} s"
    assert proxy.lost == 8
    assert streams == [[*range(10), None]] * 8  # every event once, then the end event
    assert worst <= BOUND + MARGIN


def test_fault_figures_are_reported() -> None:
    """Runs last in this module: prints what the fault tests measured."""
    for name, figure in FIGURES.items():
        print(f"FAULT {name}: {figure}")
