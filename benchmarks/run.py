"""librecache against raw redis-py and plain dogpile.cache, measured in the
same run on the same loopback servers (a single Redis and a 6-node cluster
that this script starts and stops).

Run after the README's set-up:  ``.venv/bin/python -m benchmarks.run``
(``--quick`` for shorter rounds). Prints a table and writes
``benchmarks/results/run.json``; ``python -m benchmarks.chart`` draws it
(docs/_static/performance.svg).

The whole measurement is repeated (``--runs``, interleaved rounds in each,
every operation keeping its best round per run): each ratio is reported as
the median of the runs, with their lowest and highest (the spread). The hit,
the miss, get_multi and the 16-thread hit against their baselines, and the
near cache against a Redis hit, are measured once more in pairs of short
back-to-back rounds, until the median of the pairs is steady (spread: the
quartiles of the pairs): a load that comes and goes slows both sides of a
pair alike.

Operations, per topology (memory, single Redis, cluster):

- memoised hit: a ``cache_on_arguments`` function whose value is cached;
- miss then store: the same function on a new argument each call;
- get_multi of 1,000 keys;
- 16 threads: the memoised hit made by 16 threads at once (aggregate
  throughput), against 16 threads doing raw GET + unpickle through a
  redis-py pool of the same size;
- stampede: 4 processes x 16 threads ask for one cold key at the same
  instant; the figure is how many times the creator ran;
- signed hit (paired only): the memoised hit with LIBRECACHE_SIGNING_KEY,
  against the unsigned hit of the same value, at 100 B and 100 KB.

Baselines: raw redis-py (GET + unpickle; MGET + unpickle, per slot and
pipelined per node on the cluster), plain dogpile.cache's backend of the
same kind (memory, redis, redis_cluster), and for the near cache a Redis
hit. One more baseline shows what dogpile's rules cost by themselves: a raw
GET of a value in dogpile's format, judged by a few lines written by hand
(the header's creation time, the expiry, dogpile's own invalidation
check) and unpickled, which is the least a dogpile-compatible hit does
(:func:`checked_get`). Ratios are time per operation, librecache / baseline: lower is better
(for the near cache: how many times faster than a Redis hit).
"""

from __future__ import annotations

import argparse
import itertools
import os
import pickle
import statistics
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
from dogpile.cache.region import DefaultInvalidationStrategy
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

import librecache
from benchmarks.timing import paired_ratio, rate, save, threaded_rate
from tests.servers import ServerFarm

ROOT = Path(__file__).resolve().parent.parent
THREADS = 16
VALUE = {"role": "admin", "permissions": ["read", "write", "share"], "n": 42, "pad": "x" * 40}  # 100 B pickled
LARGE = {"role": "admin", "pad": "x" * 100_000}  # 100 KB pickled
SIGNING_KEY = "run-benchmark-signing-key-0123456789"


def memoised(region: Any, value: Any = VALUE) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(hit, miss then store) operations of a function memoised in
    ``region`` that returns ``value``."""
    run = uuid.uuid4().hex[:8]
    fresh = (f"{run}-{n}" for n in itertools.count())

    @region.cache_on_arguments()
    def load(key: Any) -> Any:
        return value

    load(run)
    return (lambda: load(run)), (lambda: load(next(fresh)))


def checked_get(raw: Any, key: str) -> Callable[[], Any]:
    """A raw ``GET`` of a value stored in dogpile's format under ``key``,
    judged as dogpile judges a value (creation time read from the header,
    an hour's expiry, dogpile's default invalidation check), then unpickled:
    the least work a hit that keeps dogpile's rules does, written inline."""
    raw.set(key, b'{"ct": %r, "v": 2}|' % time.time() + pickle.dumps(VALUE))
    invalidator = DefaultInvalidationStrategy()
    now = time.time

    def get() -> Any:
        header, _, pickled = raw.get(key).partition(b"|")
        created = float(header[7:-9])
        if now() - created <= 3600 and not invalidator.is_invalidated(created):
            return pickle.loads(pickled)
        raise AssertionError("the value is fresh: a hit")

    return get


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


#: (ratio name, librecache operation, baseline operation): time ratios, librecache / baseline.
RATIOS = (
    ("hit vs dogpile", "librecache hit", "dogpile hit"),
    ("miss+store vs dogpile", "librecache miss+store", "dogpile miss+store"),
    ("get_multi vs dogpile", "librecache get_multi 1000", "dogpile get_multi 1000"),
    ("hit vs redis-py GET+unpickle", "librecache hit", "redis-py GET + unpickle"),
    ("GET+checks+unpickle vs GET+unpickle", "redis-py GET + dogpile's checks + unpickle",
     "redis-py GET + unpickle"),
    ("get_multi vs redis-py MGET+unpickle", "librecache get_multi 1000", "redis-py MGET 1000 + unpickle"),
    (f"{THREADS} threads hit vs redis-py GET+unpickle", f"librecache hit x{THREADS} threads",
     f"redis-py GET + unpickle x{THREADS} threads"),
)
NEAR = "near-cache hit speed-up vs redis hit"
#: Measured in pairs of short back-to-back rounds until steady (spread: the quartiles of the pairs):
#: (ratio name, librecache operation, baseline operation, seconds per round, threads).
PAIRED_HIT = "hit vs redis-py GET+unpickle, paired"
PAIRED_NEAR = "near-cache hit speed-up vs redis hit, paired"
PAIRED = (
    (PAIRED_HIT, "hit", "raw", 0.05, 1),
    ("GET+checks+unpickle vs GET+unpickle, paired", "raw checked", "raw", 0.05, 1),
    ("hit vs GET+checks+unpickle, paired", "hit", "raw checked", 0.05, 1),
    (PAIRED_NEAR, "hit", "near", 0.1, 1),
    ("miss+store vs dogpile, paired", "miss", "dogpile miss", 0.05, 1),
    ("get_multi vs redis-py MGET+unpickle, paired", "multi", "raw multi", 0.1, 1),
    (f"{THREADS} threads hit vs redis-py GET+unpickle, paired", "hit", "raw", 0.1, THREADS),
    ("signed hit vs hit, 100 B, paired", "signed hit", "hit", 0.05, 1),
    ("signed hit vs hit, 100 KB, paired", "signed hit 100 KB", "hit 100 KB", 0.05, 1),
)


def ratios_of(row: dict[str, float]) -> dict[str, float | None]:
    """The ratios of one run's operations per second (``None``: not measured)."""
    ratios: dict[str, float | None] = {
        name: row[base] / row[ours] if row.get(base) and row.get(ours) else None for name, ours, base in RATIOS}
    hit, near = row.get("librecache hit"), row.get("librecache near-cache hit")
    ratios[NEAR] = near / hit if near and hit else None
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.4, help="length of one round")
    parser.add_argument("--rounds", type=int, default=4,
                        help="interleaved rounds per run; each operation keeps its best")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the whole measurement (the spread)")
    parser.add_argument("--quick", action="store_true", help="0.2 s rounds, 2 of them, 2 runs")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.runs = 0.2, 2, 2
    warnings.simplefilter("ignore")  # dogpile's redis backends warn on redis-py 8's setex

    pending: list[tuple[str, str, Callable[[], Any], int]] = []

    def measure(operation: Callable[[], Any], topology: str, name: str, threads: int = 1) -> None:
        """Queue an operation; all are measured together, in interleaved rounds."""
        operation()  # warm, and fail early
        pending.append((topology, name, operation, threads))

    def measure_all() -> dict[str, dict[str, float]]:
        # Round-robin over every operation, keeping each one's best round, so
        # that the machine's drift over the run does not favour either side.
        run: dict[str, dict[str, float]] = {}
        for _ in range(args.rounds):
            for topology, name, operation, threads in pending:
                took = (rate(operation, args.seconds) if threads == 1
                        else threaded_rate(operation, args.seconds, threads))
                row = run.setdefault(topology, {})
                row[name] = max(row.get(name, 0.0), took)
        return run

    stampedes: dict[str, dict[str, int]] = {}
    pairs: dict[str, dict[str, Callable[[], Any]]] = {}
    paired: dict[str, dict[str, dict[str, float]]] = {}
    runs: list[dict[str, dict[str, float]]] = []
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
            ours = librecache.Caches(env)
            to_close.append(ours)
            # one namespace per operation: the misses must not evict (memory's LRU bound) the others' keys
            hit, _ = memoised(ours.region("ROLES"))
            _, miss = memoised(ours.region("PLUGINS"))
            many = multi(ours.region("TOOLS"))
            measure(hit, topology, "librecache hit")
            measure(miss, topology, "librecache miss+store")
            measure(many, topology, "librecache get_multi 1000")
            near_env = {**env, "LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"}
            if topology != "memory":
                pairs[topology] = {"hit": hit, "miss": miss, "multi": many}
                measure(hit, topology, f"librecache hit x{THREADS} threads", THREADS)
                near = librecache.Caches(near_env)
                to_close.append(near)
                assert near.invalidations is not None and near.invalidations.wait_subscribed(5)
                time.sleep(0.1)
                hit, _ = memoised(near.region("ROLES"))
                hit()
                measure(hit, topology, "librecache near-cache hit")
                pairs[topology]["near"] = hit
                # LIBRECACHE_SIGNING_KEY: a hit of the same values, signed
                signed = librecache.Caches({**env, "LIBRECACHE_SIGNING_KEY": SIGNING_KEY})
                to_close.append(signed)
                pairs[topology]["signed hit"] = memoised(signed.region("ROLES"))[0]
                pairs[topology]["hit 100 KB"] = memoised(ours.region("TOOLS"), LARGE)[0]
                pairs[topology]["signed hit 100 KB"] = memoised(signed.region("TOOLS"), LARGE)[0]
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
            measure(hit, topology, "dogpile hit")
            measure(miss, topology, "dogpile miss+store")
            if topology != "memory":
                pairs[topology]["dogpile miss"] = miss
            try:
                measure(multi(plain), topology, "dogpile get_multi 1000")
            except (redis.RedisError, RedisClusterException) as exc:  # dogpile cluster: MSET/MGET across slots
                print(f"dogpile {topology} get_multi: {type(exc).__name__}: {exc}")
            # raw redis-py, with a pool as large as librecache's
            if topology != "memory":
                size = max(THREADS, max(pool.max_connections for pool in ours._connection.pools()))  # type: ignore[union-attr]
                raw: Any = (redis.Redis(host=single.host, port=single.port, max_connections=size)
                            if topology == "single"
                            else RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, max_connections=size))
                raw.set("raw-get", pickle.dumps(VALUE))
                get = lambda raw=raw: pickle.loads(raw.get("raw-get"))  # noqa: E731
                measure(get, topology, "redis-py GET + unpickle")
                pairs[topology]["raw"] = get
                pairs[topology]["raw checked"] = checked_get(raw, "raw-checked")
                measure(pairs[topology]["raw checked"], topology, "redis-py GET + dogpile's checks + unpickle")
                measure(get, topology, f"redis-py GET + unpickle x{THREADS} threads", THREADS)
                keys = [f"raw-{n}" for n in range(1000)]
                raw.mset_nonatomic({key: pickle.dumps(VALUE) for key in keys}) if topology == "cluster" else \
                    raw.mset({key: pickle.dumps(VALUE) for key in keys})
                fetch = raw.mget_nonatomic if topology == "cluster" else raw.mget
                pairs[topology]["raw multi"] = lambda fetch=fetch, keys=keys: [pickle.loads(v) for v in fetch(keys)]
                measure(pairs[topology]["raw multi"], topology, "redis-py MGET 1000 + unpickle")
                to_close.append(raw)
            stampedes[topology] = {
                "librecache": stampede("librecache", env),
                "dogpile": stampede(f"dogpile-{topology}", {"BENCH_PORT": str(
                    single.port if topology == "single" else cluster.nodes[0].port)}),
            }
        for number in range(args.runs):
            runs.append(measure_all())
            print(f"run {number + 1} of {args.runs} done", flush=True)
        for topology, ops_of in pairs.items():
            paired[topology] = {
                name: paired_ratio(ops_of[ours_op], ops_of[base_op], seconds=seconds,
                                   measure=rate if threads == 1 else
                                   (lambda op, s, threads=threads: threaded_rate(op, s, threads)))
                for name, ours_op, base_op, seconds, threads in PAIRED}
            print(f"{topology} paired: " + ", ".join(f"{name} {figure['median']:.2f}x ({figure['pairs']:.0f} pairs)"
                                                      for name, figure in paired[topology].items()), flush=True)
    finally:
        for closable in to_close:
            closable.close()
        farm.stop()

    topologies = list(runs[0])
    per_run = [{topology: ratios_of(run[topology]) for topology in topologies} for run in runs]
    ratios: dict[str, dict[str, float | None]] = {}
    spread: dict[str, dict[str, list[float] | None]] = {}
    for topology in topologies:
        ratios[topology], spread[topology] = {}, {}
        for name in per_run[0][topology]:
            seen = [value for value in (one[topology][name] for one in per_run) if value is not None]
            ratios[topology][name] = statistics.median(seen) if seen else None
            spread[topology][name] = [min(seen), max(seen)] if seen else None
    for topology, figures in paired.items():
        for name, figure in figures.items():
            ratios[topology][name] = figure["median"]
            spread[topology][name] = [figure["q1"], figure["q3"]]
    for topology in topologies:
        for name, *_ in PAIRED:
            ratios[topology].setdefault(name, None)
            spread[topology].setdefault(name, None)
    ops = {topology: {name: statistics.median(run[topology][name] for run in runs)
                      for name in runs[0][topology]} for topology in topologies}

    names = sorted({name for row in ops.values() for name in row})
    print(f"\n{'ops/s (median of runs)':<56}" + "".join(f"{t:>12}" for t in ops))
    for name in names:
        print(f"{name:<56}" + "".join(f"{ops[t].get(name, 0):>12,.0f}" for t in ops))
    print(f"\n{'time ratio, librecache/baseline (spread)':<56}" + "".join(f"{t:>24}" for t in ops))
    for name in ratios["memory"]:
        cells = ""
        for topology in ops:
            value, low_high = ratios[topology][name], spread[topology][name]
            cell = "-" if value is None or low_high is None else \
                f"{value:.2f}x ({low_high[0]:.2f}-{low_high[1]:.2f})"
            cells += f"{cell:>24}"
        print(f"{name:<56}{cells}")
    print(f"\n{'stampede: creator calls (4 x 16)':<56}" + "".join(f"{t:>12}" for t in ops))
    for who in ("librecache", "dogpile"):
        print(f"{who:<56}" + "".join(f"{stampedes[t][who]:>12}" for t in ops))
    save("run", {"ops_per_second": ops, "ratios": ratios, "ratio_spread": spread, "paired": paired,
                 "stampede_creator_calls": stampedes, "runs": runs,
                 "settings": {"seconds": args.seconds, "rounds": args.rounds, "runs": args.runs,
                              "cpus": os.cpu_count(), "load_average": os.getloadavg()}})


if __name__ == "__main__":
    main()
