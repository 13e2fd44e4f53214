"""Async services: a memoised ``async def`` hit against raw ``redis.asyncio``
and cashews, and the event-loop stall of 50 concurrent hits over a slow link;
measured in the same run on the same loopback Redis (started and stopped
here).

Run after the README's set-up: ``.venv/bin/python -m benchmarks.bench_async``
(``pip install -e '.[bench]'`` adds cashews; without it that row is
skipped). Prints a table and writes ``benchmarks/results/async.json``.

- **hit**: sequential awaited hits of one cached value in one event loop:
  librecache's memoised ``async def`` (``@region.cache_on_arguments()``),
  raw ``redis.asyncio`` ``GET`` + :func:`pickle.loads` of the same kind of
  value (the client as ``Redis.from_url`` builds it: from redis-py 6 on
  with a 5 s socket time-out, which redis-py enforces on each write with
  ``asyncio.wait_for``, a Task per command; and, as a second baseline,
  with ``socket_timeout=None``, unbounded), and cashews' ``@cache``. Rounds
  are interleaved (each operation runs once per round, in turn, so the
  machine's drift hits all alike); the figures are the ratio of the best
  rounds, and the median, 10th and 90th percentile of the per-round time
  ratios against each baseline (a burst of load on a shared machine moves
  single rounds, not the median).
- **stall**: 50 concurrent hits through a TCP proxy that delays each
  direction by 1 ms (a 2 ms round trip, tests/faults.py), run in a process
  of its own as a network link would be (in the measured process its 100
  pump threads would hold the GIL for up to its 5 ms switch interval at a
  time, and show up as event-loop stalls of their own); a ticker task
  measures how late the loop wakes it (the worst event-loop stall), and
  the batch's total time; best and median of 15 batches. librecache async
  and raw ``redis.asyncio``, with 50 hits of one key (librecache's tasks
  share one ``GET``) and of 50 distinct keys, and for reference
  librecache's sync memoised call made inside the loop (what an ``async
  def`` endpoint did before).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pickle
import statistics
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aredis

import librecache
from tests.servers import ServerFarm

RESULTS = Path(__file__).parent / "results"
#: The baseline: redis-py's asyncio client as a user builds it (redis-py 6 on
#: sets a 5 s socket time-out by default; before, none), and without one.
RAW = "redis.asyncio GET + unpickle"
RAW_UNBOUNDED = "redis.asyncio, socket_timeout=None"
VALUE = {"role": "admin", "permissions": ["read", "write", "share"], "n": 42, "pad": "x" * 40}


def cashews_on(url: str) -> Any:
    """A cashews cache on the Redis at ``url``, or ``None`` (said) when
    cashews is not installed."""
    try:
        from cashews import Cache
    except ImportError:
        print("cashews is not installed (pip install -e '.[bench]'): its row is skipped")
        return None
    cache = Cache()
    cache.setup(url, client_side=False)
    return cache


async def rate(operation: Callable[[], Awaitable[Any]], seconds: float) -> float:
    """Awaited operations per second over one round of ``seconds``."""
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(20):
            await operation()
        count += 20
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


async def hits(url: str, seconds: float, rounds: int) -> dict[str, Any]:
    caches = librecache.Caches({"USE_REDIS": "true", "REDIS_URI": url, "REDIS_KEY_PREFIX": f"b{uuid.uuid4().hex[:6]}"})
    region = caches.region("ROLES")

    @region.cache_on_arguments()
    async def load(key: str) -> dict[str, Any]:
        return VALUE

    raw = aredis.Redis.from_url(url)
    await raw.set("raw-get", pickle.dumps(VALUE))
    unbounded = aredis.Redis.from_url(url, socket_timeout=None)

    async def raw_hit() -> Any:
        return pickle.loads(await raw.get("raw-get"))

    async def unbounded_hit() -> Any:
        return pickle.loads(await unbounded.get("raw-get"))

    operations: dict[str, Callable[[], Awaitable[Any]]] = {
        "librecache async memoised hit": lambda: load("warm"),
        RAW: raw_hit,
        RAW_UNBOUNDED: unbounded_hit,
    }
    cashews_cache = cashews_on(url)
    if cashews_cache is not None:
        @cashews_cache(ttl="1h")
        async def cashews_load(key: str) -> dict[str, Any]:
            return VALUE

        operations["cashews @cache hit"] = lambda: cashews_load("warm")
    for operation in operations.values():
        await operation()  # warm: the value is cached, the connections open
        await operation()
    per_round: dict[str, list[float]] = {name: [] for name in operations}
    names = list(operations)
    for number in range(rounds):
        for name in names[number % len(names):] + names[:number % len(names)]:  # each goes first in turn
            per_round[name].append(await rate(operations[name], seconds))
    await raw.aclose()
    await unbounded.aclose()
    if cashews_cache is not None:
        await cashews_cache.close()
    await caches.aclose()
    best = {name: max(rates) for name, rates in per_round.items()}
    ratios: dict[str, Any] = {}
    for base_name, label in ((RAW, "raw"), (RAW_UNBOUNDED, "raw, no socket time-out")):
        base = per_round[base_name]
        for name, rates in per_round.items():
            if name in (RAW, RAW_UNBOUNDED):
                continue
            each = sorted(raw_rate / ours for raw_rate, ours in zip(base, rates, strict=True))
            tenth = len(each) // 10
            ratios[f"{name} vs {label}"] = {
                "best": best[base_name] / best[name],
                "median": statistics.median(each), "p10": each[tenth], "p90": each[len(each) - 1 - tenth],
            }
    return {"ops_per_second": best, "per_round": per_round, "time_ratios": ratios}


async def stall(url: str, concurrent: int = 50, repeats: int = 15) -> dict[str, Any]:
    """Worst event-loop stall and total time of ``concurrent`` hits: the
    best and the median of ``repeats`` batches."""
    caches = librecache.Caches({"USE_REDIS": "true", "REDIS_URI": url, "REDIS_KEY_PREFIX": f"s{uuid.uuid4().hex[:6]}",
                                "LIBRECACHE_SOCKET_TIMEOUT": "5"})
    region = caches.region("ROLES")

    @region.cache_on_arguments()
    async def load_async(key: str) -> dict[str, Any]:
        return VALUE

    @region.cache_on_arguments(namespace="sync")
    def load_sync(key: str) -> dict[str, Any]:
        return VALUE

    raw = aredis.Redis.from_url(url, max_connections=concurrent * 2)
    await raw.set("raw-get", pickle.dumps(VALUE))
    await raw.mset({f"raw-get-{n}": pickle.dumps(VALUE) for n in range(concurrent)})

    async def raw_hit(n: int) -> Any:
        return pickle.loads(await raw.get("raw-get"))

    async def raw_distinct(n: int) -> Any:
        return pickle.loads(await raw.get(f"raw-get-{n}"))

    async def sync_hit(n: int) -> Any:
        return load_sync("warm")  # the sync client, inside the loop

    batches: dict[str, Callable[[int], Awaitable[Any]]] = {
        "librecache async": lambda n: load_async("warm"),
        "redis.asyncio": raw_hit,
        "librecache async, 50 distinct keys": lambda n: load_async(f"key-{n}"),
        "redis.asyncio, 50 distinct keys": raw_distinct,
        "librecache sync call inside the loop": sync_hit,
    }
    results: dict[str, dict[str, float]] = {}
    for name, operation in batches.items():
        await asyncio.gather(*(operation(n) for n in range(concurrent)))  # warm: store the values, open the connections
        batches_run = [await _stall_of(operation, concurrent) for _ in range(repeats)]
        stalls = [batch[0] * 1000 for batch in batches_run]
        totals = [batch[1] * 1000 for batch in batches_run]
        results[name] = {
            "worst_stall_ms": round(min(stalls), 2), "worst_stall_ms_median": round(statistics.median(stalls), 2),
            "total_ms": round(min(totals), 2), "total_ms_median": round(statistics.median(totals), 2),
        }
    await raw.aclose()
    await caches.aclose()
    return results


async def _stall_of(operation: Callable[[int], Awaitable[Any]], concurrent: int) -> tuple[float, float]:
    """(worst lateness of a 1 ms ticker, batch time) while ``concurrent`` operations are awaited."""
    worst = 0.0
    running = True

    async def ticker() -> None:
        nonlocal worst
        while running:
            asked = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - asked - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)
    started = time.perf_counter()
    await asyncio.gather(*(operation(n) for n in range(concurrent)))
    total = time.perf_counter() - started
    running = False
    await task
    return worst, total


@contextlib.contextmanager
def latency_proxy(port: int, latency: float) -> Iterator[str]:
    """The URL of a tests/faults.py proxy to ``port`` delaying each direction
    by ``latency`` seconds, in a process of its own (stopped on exit)."""
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.faults", "--target-port", str(port), "--latency", str(latency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proxy.stdout is not None
        line = proxy.stdout.readline()
        if not line.strip():
            raise RuntimeError("the latency proxy did not start")
        yield f"redis://127.0.0.1:{int(line)}"
    finally:
        assert proxy.stdin is not None
        proxy.stdin.close()  # the proxy's signal to stop
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.2, help="length of one round")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (ratios are taken per round)")
    parser.add_argument("--quick", action="store_true", help="0.1 s rounds, 10 of them")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.1, 10
    warnings.simplefilter("ignore")
    farm = ServerFarm()
    try:
        server = farm.server()
        hit = asyncio.run(hits(server.url, args.seconds, args.rounds))
        with latency_proxy(server.port, 0.001) as url:  # a 2 ms round trip
            stalls = asyncio.run(stall(url))
    finally:
        farm.stop()

    print(f"\n{'awaited hits, ops/s (best round)':<40}{'ops/s':>12}")
    for name, value in hit["ops_per_second"].items():
        print(f"{name:<40}{value:>12,.0f}")
    print(f"\n{'time ratio':<52}{'best':>8}{'median':>8}{'p10':>8}{'p90':>8}")
    for name, ratio in hit["time_ratios"].items():
        print(f"{name:<52}" + "".join(f"{ratio[k]:>7.2f}x" for k in ("best", "median", "p10", "p90")))
    print(f"\n{'50 hits over a 2 ms round trip (best/median)':<44}{'worst stall':>22}{'total':>22}")
    for name, row in stalls.items():
        print(f"{name:<44}{row['worst_stall_ms']:>9.1f} /{row['worst_stall_ms_median']:>6.1f} ms"
              f"{row['total_ms']:>9.1f} /{row['total_ms_median']:>6.1f} ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "async.json").write_text(json.dumps({"hits": hit, "stall_50_hits_2ms_rtt": stalls}, indent=2))


if __name__ == "__main__":
    main()
