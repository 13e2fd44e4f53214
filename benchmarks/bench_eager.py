"""A hot key whose creator takes 100 ms, read without pause by 16 threads
(and by 16 tasks of one event loop) across several TTL periods, on a
loopback Redis started and stopped here: the latency each caller sees.

Run after the README's set-up: ``.venv/bin/python -m benchmarks.bench_eager``
(``pip install -e '.[bench]'`` adds cashews; without it that row is
skipped). Prints p50, p99 and the worst call of each row and writes
``benchmarks/results/eager.json``.

Rows, sync (16 threads) and async (16 tasks):

- **plain hit**: the same memoised function, its value never expiring:
  what a hit costs under this concurrency, the yardstick;
- **librecache, eager refresh**: TTL 1 s, ``eager_refresh=0.8``: a hit
  past 0.8 s starts one refresh in the background;
- **librecache, no eager refresh**: TTL 1 s: at each expiry one caller
  runs the creator while the others are served the stale value (the
  grace);
- **plain dogpile.cache** (sync): its redis backend, ``expiration_time=1``,
  ``cache_on_arguments``: at each expiry one caller runs the creator, the
  others get the stale value (dogpile's mutex);
- **cashews, early** (async): ``@cache.early(ttl=1 s, early_ttl=0.2 s)``,
  whose value is recomputed in the background once younger than
  ``early_ttl`` before its expiry, the same point as 0.8 of the TTL.

The target: the eager refresh's p99 within 2x of the plain hit's (without
it every TTL period has one call of 100 ms or more).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dogpile.cache import make_region

import librecache
from benchmarks.bench_async import cashews_on
from tests.servers import ServerFarm

RESULTS = Path(__file__).parent / "results"
VALUE = {"role": "admin", "permissions": ["read", "write", "share"], "n": 42}
CREATOR_SECONDS = 0.1
TTL = 1.0
CALLERS = 16


def summary(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and the worst of ``latencies`` (seconds), in milliseconds."""
    ordered = sorted(latencies)
    return {"calls": len(ordered), "p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000, "max_ms": ordered[-1] * 1000}


def threads(call: Callable[[], Any], seconds: float) -> list[float]:
    """Latencies of ``call`` made without pause by CALLERS threads for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(CALLERS)]
    deadline = time.monotonic() + seconds

    def caller(into: list[float]) -> None:
        clock = time.perf_counter
        while time.monotonic() < deadline:
            started = clock()
            call()
            into.append(clock() - started)

    workers = [threading.Thread(target=caller, args=(into,)) for into in latencies]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [latency for each in latencies for latency in each]


async def tasks(call: Callable[[], Awaitable[Any]], seconds: float) -> list[float]:
    """Latencies of ``call`` awaited without pause by CALLERS tasks for ``seconds``."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        clock = time.perf_counter
        while time.monotonic() < deadline:
            started = clock()
            await call()
            latencies.append(clock() - started)

    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return latencies


def sync_rows(url: str, seconds: float) -> dict[str, dict[str, float]]:
    env = {"USE_REDIS": "true", "REDIS_URI": url, "REDIS_KEY_PREFIX": f"b{uuid.uuid4().hex[:6]}",
           "LIBRECACHE_NAMESPACE_TTLS": "FLOWS=1"}
    caches = librecache.Caches(env)
    region = caches.region("FLOWS")

    def create() -> dict[str, Any]:
        time.sleep(CREATOR_SECONDS)
        return VALUE

    @region.cache_on_arguments(expiration_time=-1)
    def never_expires(key: str) -> dict[str, Any]:
        return create()

    @region.cache_on_arguments(eager_refresh=0.8)
    def eager(key: str) -> dict[str, Any]:
        return create()

    @region.cache_on_arguments()
    def plain(key: str) -> dict[str, Any]:
        return create()

    dogpile_region = make_region().configure("dogpile.cache.redis", expiration_time=TTL,
                                             arguments={"url": url, "distributed_lock": True,
                                                                "thread_local_lock": False})

    @dogpile_region.cache_on_arguments()
    def dogpile_plain(key: str) -> dict[str, Any]:
        return create()

    rows: dict[str, dict[str, float]] = {}
    for name, function in (("plain hit", never_expires), ("librecache, eager refresh", eager),
                           ("librecache, no eager refresh", plain), ("plain dogpile.cache", dogpile_plain)):
        function("hot")  # the value is there before the callers come
        rows[name] = summary(threads(lambda function=function: function("hot"), seconds))  # type: ignore[misc]
    caches.close()
    return rows


async def async_rows(url: str, seconds: float) -> dict[str, dict[str, float]]:
    env = {"USE_REDIS": "true", "REDIS_URI": url, "REDIS_KEY_PREFIX": f"b{uuid.uuid4().hex[:6]}",
           "LIBRECACHE_NAMESPACE_TTLS": "FLOWS=1"}
    caches = librecache.Caches(env)
    region = caches.region("FLOWS")

    async def create() -> dict[str, Any]:
        await asyncio.sleep(CREATOR_SECONDS)
        return VALUE

    @region.cache_on_arguments(expiration_time=-1)
    async def never_expires(key: str) -> dict[str, Any]:
        return await create()

    @region.cache_on_arguments(eager_refresh=0.8)
    async def eager(key: str) -> dict[str, Any]:
        return await create()

    @region.cache_on_arguments()
    async def plain(key: str) -> dict[str, Any]:
        return await create()

    functions: dict[str, Callable[[str], Awaitable[Any]]] = {
        "plain hit": never_expires, "librecache, eager refresh": eager, "librecache, no eager refresh": plain}
    cashews_cache = cashews_on(url)
    if cashews_cache is not None:
        @cashews_cache.early(ttl=TTL, early_ttl=TTL * 0.2)
        async def cashews_early(key: str) -> dict[str, Any]:
            return await create()

        functions["cashews, early"] = cashews_early
    rows: dict[str, dict[str, float]] = {}
    for name, function in functions.items():
        await function("hot")
        rows[name] = summary(await tasks(lambda function=function: function("hot"), seconds))  # type: ignore[misc]
    if cashews_cache is not None:
        await cashews_cache.close()
    await caches.aclose()
    return rows


def show(title: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}: {CALLERS} callers, creator {CREATOR_SECONDS * 1000:g} ms, TTL {TTL:g} s")
    print(f"{'':32} {'calls':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, row in rows.items():
        print(f"{name:32} {row['calls']:8.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {row['max_ms']:8.1f}")
    base, eager = rows["plain hit"]["p99_ms"], rows["librecache, eager refresh"]["p99_ms"]
    print(f"eager refresh p99 / plain hit p99: {eager / base:.2f}x (target: at most 2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per row (TTL periods: this / 1 s)")
    options = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    farm = ServerFarm()
    try:
        server = farm.server()
        results = {"sync": sync_rows(server.url, options.seconds),
                   "async": asyncio.run(async_rows(server.url, options.seconds))}
    finally:
        farm.stop()
    show("sync", results["sync"])
    show("async", results["async"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eager.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
