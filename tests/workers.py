"""Worker processes for the cross-process tests: ``python -m tests.workers
ROLE``, configured from the environment, reporting on stdout as JSON lines."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

from dogpile.cache.api import NO_VALUE

import librecache


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def stampede() -> None:
    """THREADS threads ask for one cold key at START_AT; the creator counts
    its calls in Redis."""
    caches = librecache.Caches()
    region = caches.region(os.environ.get("NAMESPACE", "ROLES"))
    client = caches.redis
    assert client is not None
    start_at = float(os.environ["START_AT"])

    def creator() -> str:
        client.incr("creator-calls")
        time.sleep(float(os.environ.get("CREATE_SECONDS", "0.5")))
        return "the value"

    results: list[str] = []

    def worker() -> None:
        time.sleep(max(0.0, start_at - time.time()))
        results.append(region.get_or_create(os.environ["KEY"], creator))

    threads = [threading.Thread(target=worker) for _ in range(int(os.environ.get("THREADS", "16")))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    say(results=results)
    caches.close()


def watch() -> None:
    """Wait for KEY to be invalidated by another process; report how long
    after READY it took."""
    caches = librecache.Caches()
    region = caches.region(os.environ.get("NAMESPACE", "ROLES"))
    assert caches.invalidations is not None
    caches.invalidations.wait_subscribed(5)
    first = region.get(os.environ["KEY"])
    say(ready=True, value=first)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if region.get(os.environ["KEY"]) is NO_VALUE:
            say(invalidated=True, at=time.time())
            break
        time.sleep(0.001)
    else:
        say(invalidated=False)
    caches.close()


def hold_lock() -> None:
    """Start creating KEY and never finish (the test kills this process)."""
    caches = librecache.Caches()
    region = caches.region(os.environ.get("NAMESPACE", "ROLES"))

    def creator() -> str:
        say(creating=True)
        time.sleep(3600)
        return "never"

    region.get_or_create(os.environ["KEY"], creator)


def produce() -> None:
    """Produce EVENTS events on STREAM with the sync store; with
    UNTIL_ABORTED, stop as soon as an abort is requested."""
    from librecache.streams import open_streams_sync

    stream, count = os.environ["STREAM"], int(os.environ["EVENTS"])
    until_aborted = bool(os.environ.get("UNTIL_ABORTED"))
    with open_streams_sync() as store:
        store.create(stream, meta={"owner": "worker"})
        say(created=True)
        appended = 0
        for n in range(count):
            if until_aborted and store.is_aborted(stream):
                store.finish(stream, "aborted", final={"after": appended})
                say(aborted=True, appended=appended)
                return
            store.append(stream, {"n": n})
            appended += 1
            time.sleep(0.002)
        store.finish(stream, "done")
        say(aborted=False, appended=appended)


def near_writer() -> None:
    """Write COUNT new values of KEY in ROLES, one every PAUSE seconds,
    reporting each write's time."""
    caches = librecache.Caches()
    region = caches.region("ROLES")
    assert caches.invalidations is not None
    caches.invalidations.wait_subscribed(5)
    say(ready=True)
    sys.stdin.readline()  # the reader is ready
    for n in range(int(os.environ["COUNT"])):
        region.set(os.environ["KEY"], n)
        say(wrote=n, at=time.time())
        time.sleep(float(os.environ.get("PAUSE", "0.05")))
    region.delete(os.environ["KEY"])
    say(deleted=True, at=time.time())
    caches.close()


def decorate_at_import() -> None:
    """Decorate with the default registry before anything is configured
    (the namespace named by WORKER_NAMESPACE, ROLES by default)."""
    name = os.environ.get("WORKER_NAMESPACE", "ROLES")
    region = librecache.get_region(name)

    @region.cache_on_arguments()
    def square(x: int) -> int:
        square.calls += 1  # type: ignore[attr-defined]
        return x * x

    square.calls = 0  # type: ignore[attr-defined]
    values = [square(3), square(3)]
    caches = librecache.get_caches()
    say(values=values, calls=square.calls, backend=caches.backend_name(name),  # type: ignore[attr-defined]
        prefix=caches.config.key_prefix, keys=caches.stored_keys(name) if caches.config.use_redis else [])
    caches.close()


def async_stampede() -> None:
    """TASKS tasks of one event loop await one cold KEY at START_AT (a
    memoised ``async def``); the creator counts its calls in Redis."""
    import asyncio

    caches = librecache.Caches()
    region = caches.region(os.environ.get("NAMESPACE", "ROLES"))
    client = caches.redis
    assert client is not None
    start_at = float(os.environ["START_AT"])

    @region.cache_on_arguments()
    async def value_of(key: str) -> str:
        await asyncio.to_thread(client.incr, "creator-calls")
        await asyncio.sleep(float(os.environ.get("CREATE_SECONDS", "0.5")))
        return f"the value of {key}"

    async def main() -> list[str]:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        return list(await asyncio.gather(*(value_of(os.environ["KEY"]) for _ in range(int(os.environ["TASKS"])))))

    results = asyncio.run(main())
    health = caches.health() or {}
    say(results=results, errors=health.get("errors", 0), fallthroughs=health.get("fallthroughs", 0))
    caches.close()


def async_watch() -> None:
    """Like ``watch``, reading with ``await region.aget``."""
    import asyncio

    caches = librecache.Caches()
    region = caches.region(os.environ.get("NAMESPACE", "ROLES"))
    assert caches.invalidations is not None
    caches.invalidations.wait_subscribed(5)

    async def main() -> None:
        say(ready=True, value=await region.aget(os.environ["KEY"]))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if await region.aget(os.environ["KEY"]) is NO_VALUE:
                say(invalidated=True, at=time.time())
                return
            await asyncio.sleep(0.005)
        say(invalidated=False)

    asyncio.run(main())
    caches.close()


def engine_stampede() -> None:
    """CALLERS threads (DOOR=sync: ``get_or_create``) or tasks of one event
    loop (DOOR=async: ``aget_or_create``) ask for KEY at START_AT; the
    creator counts its runs in Redis and makes "new"."""
    import asyncio

    caches = librecache.Caches()
    region = caches.region(os.environ.get("NAMESPACE", "ROLES"))
    client = caches.redis
    assert client is not None
    key, callers = os.environ["KEY"], int(os.environ["CALLERS"])
    start_at, seconds = float(os.environ["START_AT"]), float(os.environ.get("CREATE_SECONDS", "0.5"))
    fails = os.environ.get("CREATOR_FAILS") == "1"
    expires = float(os.environ["EXPIRES"]) if "EXPIRES" in os.environ else None
    # the call's settings (fail_safe=..., eager_refresh=...), as SETTING_<name>=<value>
    settings = {name[len("SETTING_"):].lower(): float(value) for name, value in os.environ.items()
                if name.startswith("SETTING_")}

    def create() -> str:
        client.incr("creator-calls")
        time.sleep(seconds)
        if fails:
            raise RuntimeError("the database is down")
        return "new"

    async def acreate() -> str:
        await asyncio.to_thread(client.incr, "creator-calls")
        await asyncio.sleep(seconds)
        if fails:
            raise RuntimeError("the database is down")
        return "new"

    go_key = os.environ.get("GO_KEY")  # ready (connected), then waiting for the test's word, not a time

    def ready_then_go() -> None:
        client.incr("ready")
        while not client.exists(go_key):
            time.sleep(0.002)

    results: list[str] = []
    if os.environ["DOOR"] == "sync":
        if go_key:
            region.get("warm")
            ready_then_go()
            start_at = 0.0

        def worker() -> None:
            time.sleep(max(0.0, start_at - time.time()))
            results.append(region.get_or_create(key, create, expires, **settings))

        threads = [threading.Thread(target=worker) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        async def main() -> list[str]:
            if go_key:
                await region.aget("warm")  # this loop's client connected
                await asyncio.to_thread(ready_then_go)
            else:
                await asyncio.sleep(max(0.0, start_at - time.time()))
            got = await asyncio.gather(*(region.aget_or_create(key, acreate, expires, **settings)
                                         for _ in range(callers)))
            background = region.background
            while background.pending:  # a refresh in the background stores before the loop ends
                await asyncio.sleep(0.01)
            return list(got)

        results = asyncio.run(main())
    health = caches.health() or {}
    say(results=results, errors=health.get("errors", 0), fallthroughs=health.get("fallthroughs", 0))
    caches.close()


def tag_invalidator() -> None:
    """Invalidate the comma-separated TAGS (sync, or with DOOR=async the
    awaitable call), then report."""
    caches = librecache.Caches()
    tags = os.environ["TAGS"].split(",")
    if os.environ.get("DOOR") == "async":
        count = asyncio.run(caches.ainvalidate_tags(*tags))
    else:
        count = caches.invalidate_tags(*tags)
    say(invalidated=count, at=time.time())
    caches.close()


def tag_reader() -> None:
    """Once subscribed, read READS (comma-separated NAMESPACE/KEY pairs)
    and report which hold a value."""
    caches = librecache.Caches()
    assert caches.invalidations is not None
    assert caches.invalidations.wait_subscribed(10)
    found = {}
    for pair in os.environ["READS"].split(","):
        namespace, _, key = pair.partition("/")
        found[pair] = caches.region(namespace).get(key) is not NO_VALUE
    say(found=found)
    caches.close()


if __name__ == "__main__":
    roles = {"stampede": stampede, "watch": watch, "hold_lock": hold_lock, "produce": produce,
             "near_writer": near_writer, "decorate_at_import": decorate_at_import,
             "async_stampede": async_stampede, "async_watch": async_watch, "engine_stampede": engine_stampede,
             "tag_invalidator": tag_invalidator, "tag_reader": tag_reader}
    roles[sys.argv[1]]()
