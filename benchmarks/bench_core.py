"""Memoised hit and miss: librecache against plain dogpile.cache and raw
redis-py, measured in the same run on the same loopback server.

Run after the README's set-up: ``.venv/bin/python -m benchmarks.bench_core``.
Prints a table and writes ``benchmarks/results/core.json``. Figures are
operations per second (best of several rounds) and ratios of time per
operation against the baselines (lower is better, 1.00 = the same cost).
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from dogpile.cache import make_region

import librecache
from tests.servers import ServerFarm

VALUE = {"role": "admin", "permissions": ["read", "write", "share"], "n": 42, "pad": "x" * 40}
RESULTS = Path(__file__).parent / "results"


def rate(operation: Callable[[], Any], seconds: float, rounds: int) -> float:
    """Operations per second of ``operation``: the best of ``rounds``."""
    best = 0.0
    for _ in range(rounds):
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            for _ in range(100):
                operation()
            count += 100
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - started))
    return best


def memoised(region: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(hit, miss) operations on a function memoised in ``region``."""
    run = uuid.uuid4().hex[:8]
    counter = (f"{run}-{n}" for n in itertools.count())

    @region.cache_on_arguments()
    def load(key: Any) -> dict[str, Any]:
        return VALUE

    load("warm")
    return (lambda: load("warm")), (lambda: load(next(counter)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # dogpile's redis backend warns on redis-py 8's setex
    measure = lambda op: rate(op, args.seconds, args.rounds)  # noqa: E731

    farm = ServerFarm()
    try:
        server = farm.server()
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        results: dict[str, float] = {}

        # -- memory ------------------------------------------------------
        ours = librecache.Caches({})
        hit, miss = memoised(ours.region("ROLES"))
        results["librecache memory hit"] = measure(hit)
        results["librecache memory miss+store"] = measure(miss)
        plain = make_region().configure("dogpile.cache.memory")
        hit, miss = memoised(plain)
        results["dogpile memory hit"] = measure(hit)
        results["dogpile memory miss+store"] = measure(miss)
        ours.close()

        # -- redis -------------------------------------------------------
        ours = librecache.Caches({"USE_REDIS": "true", "REDIS_URI": server.url, "REDIS_KEY_PREFIX": prefix})
        hit, miss = memoised(ours.region("ROLES"))
        results["librecache redis hit"] = measure(hit)
        results["librecache redis miss+store"] = measure(miss)
        for lock in (False, True):
            plain = make_region().configure(
                "dogpile.cache.redis",
                arguments={"host": server.host, "port": server.port, "distributed_lock": lock},
            )
            hit, miss = memoised(plain)
            label = "dogpile redis" + (" (distributed lock)" if lock else "")
            results[f"{label} hit"] = measure(hit)
            results[f"{label} miss+store"] = measure(miss)
        raw = redis.Redis(host=server.host, port=server.port)
        raw.set("raw", pickle.dumps(VALUE))
        results["redis-py GET + unpickle"] = measure(lambda: pickle.loads(raw.get("raw")))
        ours.close()
    finally:
        farm.stop()

    ratios = {
        "memory hit vs dogpile memory": results["dogpile memory hit"] / results["librecache memory hit"],
        "memory miss vs dogpile memory": results["dogpile memory miss+store"] / results["librecache memory miss+store"],
        "redis hit vs dogpile redis": results["dogpile redis hit"] / results["librecache redis hit"],
        "redis hit vs redis-py GET+unpickle": results["redis-py GET + unpickle"] / results["librecache redis hit"],
        "redis miss vs dogpile redis (distributed lock)":
            results["dogpile redis (distributed lock) miss+store"] / results["librecache redis miss+store"],
        "redis miss vs dogpile redis (thread lock)":
            results["dogpile redis miss+store"] / results["librecache redis miss+store"],
    }
    width = max(map(len, [*results, *ratios]))
    print(f"{'operation'.ljust(width)}  ops/s")
    for name, value in results.items():
        print(f"{name.ljust(width)}  {value:>10,.0f}")
    print(f"\n{'time per operation, ratio'.ljust(width)}  librecache / baseline")
    for name, value in ratios.items():
        print(f"{name.ljust(width)}  {value:>10.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "core.json").write_text(json.dumps({"ops_per_second": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
