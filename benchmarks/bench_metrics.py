"""The cost of counting (librecache.metrics): a hit with the counters on,
against the same build with LIBRECACHE_METRICS=false, in the same run, on
process memory and on a loopback Redis this script starts.

Operations: ``region.get`` of a cached key, and a memoised call
(``cache_on_arguments``) whose value is cached. Rounds of each side are
interleaved (on, off, on, off, ...) so that a noisy machine slows both
alike, in short rounds (the first side alternates); the figure per side
is its best round, and the ratio is time per operation, counting on /
counting off (1.03 = 3 % dearer); ``paired`` is the median of the ratios
of rounds run back to back. ``derived`` (Redis rows): the cost counting
adds on memory (the same code, no I/O) against the Redis round trip.

Run after the README's set-up: ``.venv/bin/python -m benchmarks.bench_metrics``
(``--quick`` for shorter rounds). Prints a table and writes
``benchmarks/results/metrics.json``.
"""

from __future__ import annotations

import argparse
import statistics
import uuid
from collections.abc import Callable
from typing import Any

import librecache
from benchmarks.timing import rate, save
from tests.servers import ServerFarm

VALUE = {"role": "admin", "permissions": ["read", "write", "share"], "n": 42}


def operations(caches: librecache.Caches) -> dict[str, Callable[[], Any]]:
    region = caches.region("ROLES")
    key = f"bench-{uuid.uuid4().hex[:8]}"
    region.set(key, VALUE)

    @region.cache_on_arguments()
    def load(name: str) -> dict[str, Any]:
        return VALUE

    load("warm")
    return {"get hit": lambda: region.get(key), "memoised hit": lambda: load("warm")}


def compare(env: dict[str, str], seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    on = librecache.Caches(env)
    off = librecache.Caches({**env, "LIBRECACHE_METRICS": "false"})
    try:
        sides = {"on": operations(on), "off": operations(off)}
        figures: dict[str, dict[str, float]] = {}
        for name in sides["on"]:
            best = {"on": float("inf"), "off": float("inf")}
            paired: list[float] = []
            for turn in range(rounds):
                order = ("on", "off") if turn % 2 == 0 else ("off", "on")
                took = {side: 1 / rate(sides[side][name], seconds, batch=50) for side in order}
                paired.append(took["on"] / took["off"])
                for side in order:
                    best[side] = min(best[side], took[side])
            figures[name] = {"on_us": best["on"] * 1e6, "off_us": best["off"] * 1e6,
                             "ratio": best["on"] / best["off"], "median_paired_ratio": statistics.median(paired)}
        return figures
    finally:
        on.close()
        off.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter rounds")
    options = parser.parse_args()
    seconds, rounds = (0.05, 10) if options.quick else (0.05, 80)
    farm = ServerFarm()
    try:
        server = farm.server()
        results = {
            "memory": compare({}, seconds, rounds),
            "redis": compare({"USE_REDIS": "true", "REDIS_URI": server.url, "REDIS_KEY_PREFIX": "bench"},
                             seconds, rounds),
        }
    finally:
        farm.stop()
    # The counting code is the same on both backends (a few increments, no I/O): its cost
    # measured on memory, against a Redis round trip, is the Redis figure a noisy network hides.
    for name in results["memory"]:
        added = results["memory"][name]["on_us"] - results["memory"][name]["off_us"]
        results["redis"][name]["derived_ratio"] = 1 + max(0.0, added) / results["redis"][name]["off_us"]
    print(f"{'backend':8} {'operation':14} {'on (us)':>9} {'off (us)':>9} {'ratio':>7} {'paired':>7} {'derived':>8}")
    for backend, figures in results.items():
        for name, row in figures.items():
            derived = f"{row['derived_ratio']:8.4f}" if "derived_ratio" in row else ""
            print(f"{backend:8} {name:14} {row['on_us']:9.2f} {row['off_us']:9.2f} {row['ratio']:7.3f} "
                  f"{row['median_paired_ratio']:7.3f} {derived}")
    save("metrics", results)


if __name__ == "__main__":
    main()
