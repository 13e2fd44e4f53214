"""One process of the stampede benchmark: 16 threads ask for one cold key
at BENCH_START_AT; prints how many times this process ran the creator."""

from __future__ import annotations

import os
import threading
import time
import warnings

from dogpile.cache import make_region

import librecache

warnings.simplefilter("ignore")


def region_for(kind: str) -> object:
    port = int(os.environ.get("BENCH_PORT", "0"))
    if kind == "librecache":
        return librecache.Caches().region("ROLES")
    if kind == "dogpile-memory":
        return make_region().configure("dogpile.cache.memory")
    if kind == "dogpile-single":
        return make_region().configure("dogpile.cache.redis", arguments={"host": "127.0.0.1", "port": port})
    from redis.cluster import ClusterNode

    return make_region().configure(
        "dogpile.cache.redis_cluster", arguments={"startup_nodes": [ClusterNode("127.0.0.1", port)]})


def main() -> None:
    region: object = region_for(os.environ["BENCH_KIND"])
    calls = 0
    lock = threading.Lock()

    def creator() -> str:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.3)
        return "value"

    start_at = float(os.environ["BENCH_START_AT"])

    def ask() -> None:
        time.sleep(max(0.0, start_at - time.time()))
        assert region.get_or_create(os.environ["BENCH_KEY"], creator) == "value"  # type: ignore[attr-defined]

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(calls, flush=True)


if __name__ == "__main__":
    main()
