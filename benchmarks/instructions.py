"""Instructions per operation, counted by valgrind's callgrind: the figure
to compare across commits (it repeats to well under 1% on a shared
machine, where time per operation moves by 5-10% between runs).

Run after the README's set-up:  ``.venv/bin/python -m benchmarks.instructions``
(``--cases hit,miss`` to choose; ``--json PATH`` to keep the figures).
Needs ``valgrind`` (Debian's package). Starts its own Redis servers on
127.0.0.1 (a single server and a 6-node cluster) and stops them.

The cases of a topology run in one child process under ``valgrind
--tool=callgrind --separate-threads=yes --dump-before=sched_yield``: each
case is set up and warmed, then runs a short and a long series of the same
operation, and the child calls :func:`os.sched_yield` between the phases,
which makes callgrind write the counts of each phase apart. The
instructions of the main thread (where every operation runs; the library's
background threads are counted apart and left out) of the long series
minus those of the short one, divided by the difference in operations, is
the cost of one operation. One hash seed for every child (``PYTHONHASHSEED=0``).

Cases, on a single Redis and on the cluster (the memory cases once):

- ``hit``: a memoised function's hit (sync), unsigned and signed
  (LIBRECACHE_SIGNING_KEY), against raw redis-py ``GET`` + unpickle and
  against dogpile.cache's own redis backend;
- ``ahit``: the same memoised ``async def``'s hit, against raw
  ``redis.asyncio`` ``GET`` + unpickle;
- ``miss``: a memoised call on a new argument (miss, create, store), sync
  and async, against dogpile's redis backend;
- ``multi``: ``get_multi`` of 100 keys, per key, against raw ``MGET`` + unpickle;
- ``near``: a near-cache hit;
- ``tagged``: the ``hit`` case's function with two tags on its values (one
  from its argument), against the untagged hit (docs/tags.rst);
- ``memory``: a memoised hit and miss in a memory namespace, against
  dogpile's memory backend.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VALUE = {"role": "admin", "permissions": ["read", "write", "share"], "n": 42, "pad": "x" * 40}
#: Operations of the short and the long series (a tenth for ``get_multi``:
#: each of its operations reads :data:`MULTI` keys).
SHORT, LONG = 200, 1200
MULTI = 100
SIGNING_KEY = "instructions-benchmark-key-0123456789abcdef"


# --------------------------------------------------------------------------
# The operations (in the child)
# --------------------------------------------------------------------------


def _memoised(region: Any, tagged: bool = False) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """A memoised function's hit and miss (``tagged``: its values carry
    two tags, one from its argument)."""
    run = uuid.uuid4().hex[:8]
    fresh = (f"{run}-{n}" for n in itertools.count())
    settings = {"tags": lambda key: [f"user:{key}", "org:7"]} if tagged else {}

    @region.cache_on_arguments(**settings)
    def load(key: Any) -> dict[str, Any]:
        return VALUE

    return (lambda: load("warm")), (lambda: load(next(fresh)))


def _amemoised(region: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    run = uuid.uuid4().hex[:8]
    fresh = (f"{run}-{n}" for n in itertools.count())

    @region.cache_on_arguments()
    async def load(key: Any) -> dict[str, Any]:
        return VALUE

    return (lambda: load("warm")), (lambda: load(next(fresh)))


def _dogpile_region(topology: str, env: dict[str, str]) -> Any:
    from dogpile.cache import make_region

    if topology == "memory":
        return make_region().configure("dogpile.cache.memory")
    host, port = env["REDIS_URI"].split(",")[0].removeprefix("redis://").split(":")
    if topology == "single":
        return make_region().configure("dogpile.cache.redis", arguments={"host": host, "port": int(port)})
    import redis.cluster

    return make_region().configure("dogpile.cache.redis_cluster",
                                   arguments={"startup_nodes": [redis.cluster.ClusterNode(host, int(port))]})


def _raw_client(topology: str, env: dict[str, str], asynchronous: bool = False) -> Any:
    host, port = env["REDIS_URI"].split(",")[0].removeprefix("redis://").split(":")
    if asynchronous:
        import redis.asyncio
        import redis.asyncio.cluster

        return (redis.asyncio.Redis(host=host, port=int(port)) if topology == "single"
                else redis.asyncio.cluster.RedisCluster(host=host, port=int(port)))
    import redis
    import redis.cluster

    return redis.Redis(host=host, port=int(port)) if topology == "single" else \
        redis.cluster.RedisCluster(host=host, port=int(port))


def operation(case: str, topology: str, env: dict[str, str]) -> tuple[Callable[[], Any], bool]:
    """The operation of ``case`` (and whether it is a coroutine function),
    set up and ready."""
    import librecache

    if case == "raw":
        client = _raw_client(topology, env)
        client.set("raw-get", pickle.dumps(VALUE))
        return (lambda: pickle.loads(client.get("raw-get"))), False
    if case == "araw":
        aclient = _raw_client(topology, env, asynchronous=True)

        async def get() -> Any:
            return pickle.loads(await aclient.get("raw-get"))

        _raw_client(topology, env).set("raw-get", pickle.dumps(VALUE))
        return get, True
    if case == "raw multi":
        client = _raw_client(topology, env)
        keys = [f"raw-multi-{n}" for n in range(MULTI)]
        for key in keys:
            client.set(key, pickle.dumps(VALUE))
        fetch = client.mget_nonatomic if topology == "cluster" else client.mget
        return (lambda: [pickle.loads(value) for value in fetch(keys)]), False
    if case.startswith("dogpile"):
        hit, miss = _memoised(_dogpile_region(topology, env))
        return (miss if case.endswith("miss") else hit), False
    caches = librecache.Caches({**env, **({"LIBRECACHE_SIGNING_KEY": SIGNING_KEY} if "signed" in case else {}),
                                **({"LIBRECACHE_NEAR_CACHE_NAMESPACES": "ROLES"} if case == "near" else {})})
    if case == "near":
        assert caches.invalidations is not None and caches.invalidations.wait_subscribed(10)
        while not all(near.enabled for near in caches.invalidations.near_caches.values()):
            caches.invalidations.wait_subscribed(1)
    region = caches.region("ROLES")
    if case == "multi":
        keys = [f"multi-{n}" for n in range(MULTI)]
        region.set_multi({key: VALUE for key in keys})
        return (lambda: region.get_multi(keys)), False
    if case.startswith("async"):
        hit, miss = _amemoised(region)
        return (miss if case.endswith("miss") else hit), True
    if case == "tagged hit":
        assert caches.invalidations is not None and caches.invalidations.wait_subscribed(10)
        caches.invalidate_tags("user:other")  # a record that is not the hit's
    hit, miss = _memoised(region, tagged=case.startswith("tagged"))
    return (miss if case.endswith("miss") else hit), False


def series(case: str) -> tuple[int, int]:
    """The lengths of ``case``'s short and long series."""
    return (SHORT // 10, LONG // 10) if "multi" in case else (SHORT, LONG)


def child(cases: list[str], topology: str, env: dict[str, str]) -> None:
    """Per case: set up, warm up, then a short and a long series of
    operations in this (the main) thread, a phase boundary
    (:func:`os.sched_yield`: a callgrind dump) before and after each series."""
    warnings.simplefilter("ignore")  # dogpile's redis backends warn on redis-py 8's setex
    for case in cases:
        if case.startswith("async") or case == "araw":
            async def main(case: str = case) -> None:
                op, _ = operation(case, topology, env)
                for _ in range(50):
                    await op()
                for count in series(case):
                    os.sched_yield()
                    for _ in range(count):
                        await op()
                os.sched_yield()

            asyncio.run(main())
        else:
            op, _ = operation(case, topology, env)
            for _ in range(50):
                op()
            for count in series(case):
                os.sched_yield()
                for _ in range(count):
                    op()
            os.sched_yield()
    os._exit(0)  # no clean-up counted


# --------------------------------------------------------------------------
# The measurement (in the parent)
# --------------------------------------------------------------------------

#: (row, case in the child, per-operation divisor): per topology.
ROWS = {
    "hit": [("raw GET + unpickle", "raw", 1), ("librecache hit", "hit", 1),
            ("librecache hit, signed", "signed hit", 1), ("dogpile redis hit", "dogpile hit", 1)],
    "tagged": [("librecache hit", "hit", 1), ("librecache hit, tagged", "tagged hit", 1)],
    "ahit": [("raw asyncio GET + unpickle", "araw", 1), ("librecache async hit", "async hit", 1)],
    "miss": [("librecache miss+store", "miss", 1), ("librecache async miss+store", "async miss", 1),
             ("dogpile redis miss+store", "dogpile miss", 1)],
    "multi": [("raw MGET + unpickle, per key", "raw multi", MULTI), ("librecache get_multi, per key", "multi", MULTI)],
    "near": [("librecache near hit", "near", 1)],
    "memory": [("librecache memory hit", "hit", 1), ("dogpile memory hit", "dogpile hit", 1),
               ("librecache memory miss+store", "miss", 1), ("dogpile memory miss+store", "dogpile miss", 1)],
}
#: (ratio, row, baseline row).
RATIOS = [
    ("hit / raw GET + unpickle", "librecache hit", "raw GET + unpickle"),
    ("tagged hit / hit", "librecache hit, tagged", "librecache hit"),
    ("signed hit / raw GET + unpickle", "librecache hit, signed", "raw GET + unpickle"),
    ("dogpile hit / raw GET + unpickle", "dogpile redis hit", "raw GET + unpickle"),
    ("async hit / raw asyncio GET + unpickle", "librecache async hit", "raw asyncio GET + unpickle"),
    ("miss+store / dogpile's", "librecache miss+store", "dogpile redis miss+store"),
    ("async miss+store / dogpile's", "librecache async miss+store", "dogpile redis miss+store"),
    ("get_multi / raw MGET, per key", "librecache get_multi, per key", "raw MGET + unpickle, per key"),
    ("Redis hit / near hit", "librecache hit", "librecache near hit"),
    ("memory hit / dogpile's", "librecache memory hit", "dogpile memory hit"),
    ("memory miss+store / dogpile's", "librecache memory miss+store", "dogpile memory miss+store"),
]


def measured(cases: list[str], topology: str, env: dict[str, str], folder: Path) -> list[float]:
    """Instructions per operation of each of ``cases`` (child cases), in one child."""
    out = folder / f"{topology}.out"
    command = ["setarch", "-R", "valgrind", "--tool=callgrind", "--separate-threads=yes", "--dump-before=sched_yield",
               f"--callgrind-out-file={out}", sys.executable, "-m", "benchmarks.instructions",
               "--child", json.dumps(cases), "--topology", topology, "--env", json.dumps(env)]
    # one hash seed: str hashes, and so dict and set layouts, are the same in every child
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
                               "PYTHONHASHSEED": "0"})
    if done.returncode != 0:
        raise RuntimeError(f"{topology} failed:\n{done.stderr[-3000:]}")
    dumps = sorted(folder.glob(f"{topology}.out.*-01"), key=lambda path: int(path.name.split(".")[-1].split("-")[0]))
    if len(dumps) != 3 * len(cases):  # set-up, short, long per case: something else called sched_yield
        raise RuntimeError(f"{len(dumps)} phases for {len(cases)} cases in {topology}")
    totals = [int(next(line for line in path.read_text().splitlines() if line.startswith("totals:")).split()[1])
              for path in dumps]
    return [(totals[3 * n + 2] - totals[3 * n + 1]) / (series(case)[1] - series(case)[0])
            for n, case in enumerate(cases)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--topologies", default="single,cluster",
                        help="single, cluster (the memory cases come with --cases memory)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--topology", help=argparse.SUPPRESS)
    parser.add_argument("--env", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child), args.topology, json.loads(args.env))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    sys.path.insert(0, str(ROOT))
    from tests.servers import ServerFarm

    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    topologies = [topology.strip() for topology in args.topologies.split(",") if topology.strip()]
    unknown = [case for case in cases if case not in ROWS] + [t for t in topologies if t not in ("single", "cluster")]
    if unknown:
        parser.error(f"unknown case or topology: {', '.join(unknown)} (cases: {', '.join(ROWS)}; "
                     "topologies: single, cluster)")
    farm = ServerFarm()
    figures: dict[str, dict[str, float]] = {}
    try:
        envs: dict[str, dict[str, str]] = {}
        for topology in topologies:
            prefix = f"instr{uuid.uuid4().hex[:6]}"
            if topology == "single":
                envs["single"] = {"USE_REDIS": "true", "REDIS_URI": farm.server().url, "REDIS_KEY_PREFIX": prefix}
            elif topology == "cluster":
                envs["cluster"] = {"USE_REDIS": "true", "REDIS_URI": farm.cluster().uri(3), "REDIS_KEY_PREFIX": prefix}
        if "memory" in cases:
            envs["memory"] = {}
        with tempfile.TemporaryDirectory(prefix="librecache-callgrind-") as temporary:
            for topology, env in envs.items():
                rows = list(dict.fromkeys(row for case in cases if (case == "memory") == (topology == "memory")
                                          for row in ROWS[case]))  # each row once (cases share some)
                counts = measured([child_case for _, child_case, _ in rows], topology, env, Path(temporary))
                figures[topology] = {name: count / divisor for (name, _, divisor), count in zip(rows, counts,
                                                                                              strict=True)}
                for name, count in figures[topology].items():
                    print(f"{topology:>8}  {name:<36} {count:>12,.0f} instructions", flush=True)
    finally:
        farm.stop()
    print()
    print(f"{'instructions per operation':<40}" + "".join(f"{t:>14}" for t in figures))
    names = list(dict.fromkeys(name for row in figures.values() for name in row))
    for name in names:
        print(f"{name:<40}" + "".join(f"{figures[t][name]:>14,.0f}" if name in figures[t] else f"{'-':>14}"
                                      for t in figures))
    print()
    print(f"{'ratio':<40}" + "".join(f"{t:>14}" for t in figures))
    for ratio, ours, base in RATIOS:
        cells = [f"{figures[t][ours] / figures[t][base]:>13.3f}x" if ours in figures[t] and base in figures[t]
                 else f"{'-':>14}" for t in figures]
        if any(cell.strip() != "-" for cell in cells):
            print(f"{ratio:<40}" + "".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps({"instructions": figures}, indent=2))


if __name__ == "__main__":
    main()
