"""Tags, on a loopback Redis and 6-node cluster started and stopped here:
what dropping every entry of a tag costs, against deleting the same keys
by pattern, and what a hit on a tagged entry costs against an untagged one.

Run after the README's set-up: ``.venv/bin/python -m benchmarks.bench_tags``
(``--entries N``, default 100,000). Prints the figures and writes
``benchmarks/results/tags.json``.

Rows, per topology:

- **invalidate_tags**: one ``invalidate_tags("user:42")`` over N entries
  carrying the tag (``set_multi(..., tags=[...])``): its time, and the
  commands it sent (``INFO commandstats``, summed over the masters);
- **SCAN + UNLINK**: the same N keys dropped the way a pattern delete
  does it (``SCAN MATCH ... COUNT 1000`` on every master, ``UNLINK`` in
  batches of 1000, per slot on a cluster): its time and commands;
- **hit, untagged / tagged**: the median time of a memoised hit, without
  and with two tags (the deterministic figure is
  ``python -m benchmarks.instructions --cases tagged``: instructions).

The targets: a tagged hit at most 1.03x an untagged one; an invalidation
a handful of commands whatever N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

import librecache
from tests.servers import ServerFarm

RESULTS = Path(__file__).parent / "results"
VALUE = {"role": "admin", "permissions": ["read", "write", "share"], "n": 42}
BATCH = 1000


def masters(client: Any) -> list[redis.Redis]:
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def commands(nodes: list[redis.Redis]) -> int:
    """Commands the servers answered so far (INFO's own excluded by the caller)."""
    return sum(int(stats["calls"]) for node in nodes for stats in node.info("commandstats").values())


def fill(caches: librecache.Caches, entries: int, tag: str) -> None:
    region = caches.region("ROLES")
    for start in range(0, entries, BATCH):
        region.set_multi({f"e{n}": VALUE for n in range(start, min(entries, start + BATCH))}, tags=[tag])


def timed_invalidation(caches: librecache.Caches, nodes: list[redis.Redis], tag: str) -> dict[str, float]:
    before = commands(nodes)
    started = time.perf_counter()
    caches.invalidate_tags(tag)
    seconds = time.perf_counter() - started
    sent = commands(nodes) - before - len(nodes)  # less the INFO of the second count
    return {"seconds": seconds, "commands": sent}


def unlink(node: redis.Redis, keys: list[bytes], cluster: bool) -> None:
    """``UNLINK`` of ``keys``: one command, or on a cluster one per slot."""
    if not cluster:
        node.unlink(*keys)
        return
    slots: dict[int, list[bytes]] = {}
    for key in keys:
        slots.setdefault(key_slot(key), []).append(key)
    for group in slots.values():
        node.unlink(*group)


def timed_scan_unlink(nodes: list[redis.Redis], pattern: str, cluster: bool) -> dict[str, float]:
    before = commands(nodes)
    started = time.perf_counter()
    for node in nodes:
        batch: list[bytes] = []
        for key in node.scan_iter(match=pattern, count=BATCH):
            batch.append(key)
            if len(batch) >= BATCH:
                unlink(node, batch, cluster)
                batch = []
        if batch:
            unlink(node, batch, cluster)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "commands": commands(nodes) - before - len(nodes)}


def hit_times(caches: librecache.Caches, tagged: bool, calls: int = 20000) -> float:
    """The median of ``calls`` memoised hits, in microseconds."""
    region = caches.region("ROLES")
    settings = {"tags": lambda key: [f"user:{key}", "org:7"]} if tagged else {}

    @region.cache_on_arguments(**settings)
    def load(key: str) -> dict[str, Any]:
        return VALUE

    load("warm")
    samples = []
    clock = time.perf_counter
    for _ in range(calls):
        started = clock()
        load("warm")
        samples.append(clock() - started)
    return statistics.median(samples) * 1e6


def measure(topology: str, env: dict[str, str], client: Any, entries: int) -> dict[str, Any]:
    nodes = masters(client)
    with librecache.Caches(env) as caches:
        bus = caches.invalidations
        assert bus is not None and bus.wait_subscribed(10)
        fill(caches, entries, "user:42")
        invalidation = timed_invalidation(caches, nodes, "user:42")
        scan = timed_scan_unlink(nodes, f"{env['REDIS_KEY_PREFIX']}::ROLES:e*", isinstance(client, RedisCluster))
        untagged = [hit_times(caches, False) for _ in range(3)]
        tagged = [hit_times(caches, True) for _ in range(3)]
    figures = {
        "entries": entries,
        "invalidate_tags": invalidation,
        "scan_unlink": scan,
        "speedup": scan["seconds"] / invalidation["seconds"],
        "hit_us": min(untagged),
        "tagged_hit_us": min(tagged),
        "tagged_hit_ratio": min(tagged) / min(untagged),
    }
    print(f"{topology:>8}  invalidate_tags over {entries:,} entries: {invalidation['seconds'] * 1000:8.2f} ms, "
          f"{invalidation['commands']:.0f} commands")
    print(f"{topology:>8}  SCAN + UNLINK of the same keys:      {scan['seconds'] * 1000:8.2f} ms, "
          f"{scan['commands']:.0f} commands ({figures['speedup']:.0f}x the time)")
    print(f"{topology:>8}  hit {figures['hit_us']:.1f} us, tagged hit {figures['tagged_hit_us']:.1f} us "
          f"({figures['tagged_hit_ratio']:.3f}x)", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000, help="tagged entries (default 100,000)")
    args = parser.parse_args()
    farm = ServerFarm()
    results: dict[str, Any] = {}
    try:
        server = farm.server()
        cluster = farm.cluster()
        for topology, uri, client in (
            ("single", server.url, redis.Redis(host=server.host, port=server.port)),
            ("cluster", cluster.uri(3), RedisCluster(host=cluster.nodes[0].host, port=cluster.nodes[0].port)),
        ):
            env = {"USE_REDIS": "true", "REDIS_URI": uri, "REDIS_KEY_PREFIX": f"bt{uuid.uuid4().hex[:6]}"}
            results[topology] = measure(topology, env, client, args.entries)
            client.close()
    finally:
        farm.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tags.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
