"""librecache against raw redis-py and plain dogpile.cache, measured in the
same run on the same loopback servers (a single Redis and a 6-node cluster
that this script starts and stops).

Run after the README's set-up:  ``.venv/bin/python -m benchmarks.run``
(``--quick`` for shorter rounds). Prints a table and writes
``benchmarks/results/run.json``.

Operations, per topology (memory, single Redis, cluster):

- memoised hit: a ``cache_on_arguments`` function whose value is cached;
- miss then store: the same function on a new argument each call;
- get_multi of 1,000 keys;
- stampede: 4 processes x 16 threads ask for one cold key at the same
  instant; the figure is how many times the creator ran.

Baselines: raw redis-py (GET + unpickle; MGET + unpickle, per slot and
pipelined per node on the cluster), plain dogpile.cache's backend of the
same kind (memory, redis, redis_cluster), and for the near cache a Redis
hit. Ratios are time per operation, librecache / baseline: lower is better.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from dogpile.cache import make_region
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

import librecache
from tests.servers import ServerFarm

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
VALUE = {"role": "admin", "permissions": ["read", "write", "share"], "n": 42, "pad": "x" * 40}


def rate(operation: Callable[[], Any], seconds: float, rounds: int) -> float:
    """Operations per second of ``operation``: the best of ``rounds``."""
    best = 0.0
    for _ in range(rounds):
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            for _ in range(20):
                operation()
            count += 20
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - started))
    return best


def memoised(region: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(hit, miss then store) operations of a function memoised in ``region``."""
    run = uuid.uuid4().hex[:8]
    fresh = (f"{run}-{n}" for n in itertools.count())

    @region.cache_on_arguments()
    def load(key: Any) -> dict[str, Any]:
        return VALUE

    load("warm")
    return (lambda: load("warm")), (lambda: load(next(fresh)))


def multi(region: Any, count: int = 1000) -> Callable[[], Any]:
    keys = [f"multi-{uuid.uuid4().hex[:6]}-{n}" for n in range(count)]
    region.set_multi({key: VALUE for key in keys})

    def get_all() -> Any:
        values = region.get_multi(keys)
        assert values[-1] == VALUE
        return values

    return get_all


def stampede(kind: str, env: dict[str, str]) -> int:
    """Creator calls when 4 processes x 16 threads ask for one cold key."""
    counter = f"stampede-count-{uuid.uuid4().hex[:8]}"
    key = f"cold-{uuid.uuid4().hex[:8]}"
    start_at = repr(time.time() + 2.0)
    environ = {**os.environ, **env, "PYTHONPATH": str(ROOT), "BENCH_KIND": kind, "BENCH_KEY": key,
               "BENCH_COUNTER": counter, "BENCH_START_AT": start_at}
    workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.stampede_worker"], env=environ,
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    calls = 0
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        calls += int(out.strip().splitlines()[-1])
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one round")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds; each operation keeps its best")
    parser.add_argument("--quick", action="store_true", help="0.3 s rounds, 2 of them")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 0.3, 2
    warnings.simplefilter("ignore")  # dogpile's redis backends warn on redis-py 8's setex

    pending: list[tuple[dict[str, float], str, Callable[[], Any]]] = []

    def measure(operation: Callable[[], Any], row: dict[str, float], name: str) -> None:
        """Queue an operation; all are measured together, in interleaved rounds."""
        operation()  # warm, and fail early
        pending.append((row, name, operation))

    def measure_all() -> None:
        # Round-robin over every operation, keeping each one's best round, so
        # that the machine's drift over the run does not favour either side.
        for _ in range(args.rounds):
            for row, name, operation in pending:
                row[name] = max(row.get(name, 0.0), rate(operation, args.seconds, 1))

    ops: dict[str, dict[str, float]] = {}
    stampedes: dict[str, dict[str, int]] = {}
    farm = ServerFarm()
    to_close: list[Any] = []
    try:
        single = farm.server()
        cluster = farm.cluster()
        envs = {
            "memory": {},
            "single": {"USE_REDIS": "true", "REDIS_URI": single.url, "REDIS_KEY_PREFIX": "bench"},
            "cluster": {"USE_REDIS": "true", "REDIS_URI": cluster.uri(3), "REDIS_KEY_PREFIX": "bench"},
        }
        for topology, env in envs.items():
            row: dict[str, float] = {}
            ours = librecache.Caches(env)
            to_close.append(ours)
            # one namespace per operation: the misses must not evict (memory's LRU bound) the others' keys
            hit, _ = memoised(ours.region("ROLES"))
            _, miss = memoised(ours.region("PLUGINS"))
            measure(hit, row, "librecache hit")
            measure(miss, row, "librecache miss+store")
            measure(multi(ours.region("TOOLS")), row, "librecache get_multi 1000")
            near_env = {**env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"}
            if topology != "memory":
                near = librecache.Caches(near_env)
                to_close.append(near)
                assert near.invalidations is not None and near.invalidations.wait_subscribed(5)
                time.sleep(0.1)
                hit, _ = memoised(near.region("ROLES"))
                hit()
                measure(hit, row, "librecache near-cache hit")
            # plain dogpile.cache, same kind of backend
            if topology == "memory":
                plain = make_region().configure("dogpile.cache.memory")
            elif topology == "single":
                plain = make_region().configure(
                    "dogpile.cache.redis", arguments={"host": single.host, "port": single.port})
            else:
                plain = make_region().configure(
                    "dogpile.cache.redis_cluster",
                    arguments={"startup_nodes": [redis.cluster.ClusterNode("127.0.0.1", n.port)
                                                 for n in cluster.nodes[:3]]})
            hit, miss = memoised(plain)
            measure(hit, row, "dogpile hit")
            measure(miss, row, "dogpile miss+store")
            try:
                measure(multi(plain), row, "dogpile get_multi 1000")
            except (redis.RedisError, RedisClusterException) as exc:  # dogpile cluster: MSET/MGET across slots
                print(f"dogpile {topology} get_multi: {type(exc).__name__}: {exc}")
                row["dogpile get_multi 1000"] = 0.0
            # raw redis-py
            if topology != "memory":
                raw: Any = (redis.Redis(host=single.host, port=single.port) if topology == "single"
                            else RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port))
                raw.set("raw-get", pickle.dumps(VALUE))
                measure(lambda raw=raw: pickle.loads(raw.get("raw-get")), row, "redis-py GET + unpickle")
                keys = [f"raw-{n}" for n in range(1000)]
                raw.mset_nonatomic({key: pickle.dumps(VALUE) for key in keys}) if topology == "cluster" else \
                    raw.mset({key: pickle.dumps(VALUE) for key in keys})
                fetch = raw.mget_nonatomic if topology == "cluster" else raw.mget
                measure(lambda fetch=fetch, keys=keys: [pickle.loads(v) for v in fetch(keys)],
                        row, "redis-py MGET 1000 + unpickle")
                to_close.append(raw)
            ops[topology] = row
            stampedes[topology] = {
                "librecache": stampede("librecache", env),
                "dogpile": stampede(f"dogpile-{topology}", {"BENCH_PORT": str(
                    single.port if topology == "single" else cluster.nodes[0].port)}),
            }
        measure_all()
    finally:
        for closable in to_close:
            closable.close()
        farm.stop()

    ratios: dict[str, dict[str, float | None]] = {}
    for topology, row in ops.items():
        def ratio(ours: str, base: str, row: dict[str, float] = row) -> float | None:
            return row[base] / row[ours] if row.get(base) and row.get(ours) else None

        ratios[topology] = {
            "hit vs dogpile": ratio("librecache hit", "dogpile hit"),
            "miss+store vs dogpile": ratio("librecache miss+store", "dogpile miss+store"),
            "get_multi vs dogpile": ratio("librecache get_multi 1000", "dogpile get_multi 1000"),
            "hit vs redis-py GET+unpickle": ratio("librecache hit", "redis-py GET + unpickle"),
            "get_multi vs redis-py MGET+unpickle": ratio("librecache get_multi 1000", "redis-py MGET 1000 + unpickle"),
            "near-cache hit speed-up vs redis hit": (row["librecache near-cache hit"] / row["librecache hit"]
                                                     if "librecache near-cache hit" in row else None),
        }

    names = sorted({name for row in ops.values() for name in row})
    print(f"\n{'ops/s':<34}" + "".join(f"{t:>14}" for t in ops))
    for name in names:
        print(f"{name:<34}" + "".join(f"{ops[t].get(name, 0):>14,.0f}" for t in ops))
    print(f"\n{'time ratio, librecache/baseline':<40}" + "".join(f"{t:>12}" for t in ops))
    for name in ratios["memory"]:
        cells = "".join(f"{'-' if ratios[t][name] is None else f'{ratios[t][name]:.2f}x':>12}" for t in ops)
        print(f"{name:<40}{cells}")
    print(f"\n{'stampede: creator calls (4 x 16)':<40}" + "".join(f"{t:>12}" for t in ops))
    for who in ("librecache", "dogpile"):
        print(f"{who:<40}" + "".join(f"{stampedes[t][who]:>12}" for t in ops))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "run.json").write_text(json.dumps({"ops_per_second": ops, "ratios": ratios,
                                                  "stampede_creator_calls": stampedes}, indent=2))


if __name__ == "__main__":
    main()
