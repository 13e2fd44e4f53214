"""The ``librecache`` command: inspect, check and clear a deployment's cache.

Every subcommand reads the environment (and ``--env-file``); errors are one
readable line on standard error, never a traceback; secrets are never shown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import NoPermissionError, RedisClusterException, RedisError

from .clients.sentinel import sentinel_options
from .config import CacheConfig
from .errors import LibrecacheError
from .keyspace import KeySpace
from .namespaces import AnyNamespace, CacheKeys
from .registry import Caches
from .replies import text

__all__ = ["main"]

#: Keys whose MEMORY USAGE ``stats`` asks for per namespace; beyond that the
#: total is extrapolated from them (and marked with ``~``).
STATS_SAMPLE = 1000


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def config_rows(config: CacheConfig) -> list[dict[str, Any]]:
    """One row per namespace (built-ins, then declared ones): backend, key
    prefix, TTL, format."""
    keyspace = KeySpace(config.key_prefix)
    rows = []
    for namespace in config.namespaces:
        redis = config.uses_redis(namespace)
        rows.append(
            {
                "namespace": namespace.value,
                "backend": ("redis-cluster" if config.cluster else "redis") if redis else "memory",
                "key_prefix": keyspace.namespace(namespace) if redis else "-",
                "ttl_seconds": config.ttl(namespace),
                "forced_in_memory": namespace in config.forced_in_memory,
                "format": config.format(namespace),
                "declared": not isinstance(namespace, CacheKeys),
            }
        )
    return rows


# -- subcommands -------------------------------------------------------------------


def cmd_config(config: CacheConfig, args: argparse.Namespace) -> int:
    rows = config_rows(config)
    settings = dict(config.describe())
    if args.json:
        print(json.dumps({"settings": settings, "namespaces": rows}, indent=2))
        return 0
    width = max(len(name) for name in settings)
    for name, value in settings.items():
        print(f"{name.ljust(width)}  {value}")
    print()
    formats = any(row["format"] != "pickle" for row in rows)  # the column only when LIBRECACHE_FORMATS is used
    table: list[tuple[str, ...]] = [("NAMESPACE", "BACKEND", "KEY PREFIX", "TTL", "FORMAT")[:5 if formats else 4]]
    for row in rows:
        backend = row["backend"] + (" (forced)" if row["forced_in_memory"] else "")
        cells = (row["namespace"], backend, row["key_prefix"], _duration(row["ttl_seconds"]), row["format"])
        table.append(cells[:5 if formats else 4])
    _table(table)
    return 0


def _failure(config: CacheConfig, exc: BaseException) -> str:
    """What ``check`` says of a failed command: librecache's own sentence
    for an ACL refusal (its wording differs between servers: Redis writes
    "no permissions", Valkey "No permissions"), with the server's text
    after it; otherwise the error as redis-py words it."""
    seen: BaseException | None = exc
    for _ in range(5):  # the refusal itself, or what a wrapper was raised from
        if seen is None or isinstance(seen, NoPermissionError):
            break
        seen = seen.__cause__ or seen.__context__
    if isinstance(seen, NoPermissionError):
        prefix = f"{config.key_prefix}::*" if config.key_prefix else "the keys it uses"
        return (f"permission denied: the Redis user may not use {prefix} "
                f"(the user's ACL key and channel patterns must cover them; server: {seen})")
    return str(exc)


def cmd_check(config: CacheConfig, args: argparse.Namespace) -> int:
    if not config.use_redis:
        print("ok    redis is off: every namespace lives in process memory")
        return 0
    problems: list[str] = []
    try:
        caches = Caches(config)
    except (RedisError, RedisClusterException, OSError) as exc:
        print(f"FAIL  connect: {_failure(config, exc)}")
        return 1
    with caches:
        raw = caches.redis
        assert raw is not None
        try:
            started = time.perf_counter()
            raw.ping()
            print(f"ok    ping {1000 * (time.perf_counter() - started):.1f} ms")
            if config.tls:
                print(f"ok    tls: certificate verified{f' against {config.redis_ca}' if config.redis_ca else ''}")
            whoami = raw.execute_command("ACL WHOAMI")
            print(f"ok    authenticated as {whoami.decode() if isinstance(whoami, bytes) else whoami}")
            if isinstance(raw, RedisCluster):
                problems += _check_cluster(raw)
            elif config.sentinel:
                problems += _check_sentinel(config, raw)
        except (RedisError, RedisClusterException, OSError) as exc:
            print(f"FAIL  connect: {_failure(config, exc)}")
            return 1
        for namespace in config.namespaces:
            if not config.uses_redis(namespace):
                continue
            region = caches.region(namespace)
            probe = f"__librecache_check__:{uuid.uuid4().hex}"
            try:
                started = time.perf_counter()
                region.set(probe, probe)
                same = region.get(probe) == probe
                region.delete(probe)
            except (RedisError, RedisClusterException, OSError) as exc:
                problems.append(f"FAIL  {namespace.value}: {_failure(config, exc)}")
                continue
            if not same:
                problems.append(f"FAIL  {namespace.value}: the value read back differs from the one written")
            elif args.verbose:
                print(f"ok    {namespace.value}: round trip {1000 * (time.perf_counter() - started):.1f} ms")
        redis_count = sum(config.uses_redis(ns) for ns in config.namespaces)
        failed = sum(1 for line in problems if not line.startswith(("FAIL  cluster", "FAIL  sentinel")))
        if redis_count - failed:
            print(f"ok    {redis_count - failed} of {redis_count} Redis namespaces round-trip a key")
    for line in problems:
        print(line)
    return 1 if problems else 0


def _check_cluster(client: RedisCluster) -> list[str]:
    """Cluster state on every master, and the node roster of CLUSTER NODES
    (redis-py's own node list omits replicas that have not synced yet)."""
    problems = []
    masters = client.get_primaries()
    for node in masters:
        info = client.get_redis_connection(node).execute_command("CLUSTER INFO")
        state = info.get("cluster_state") if isinstance(info, dict) else str(info)
        if state != "ok":
            problems.append(f"FAIL  cluster: node {node.name} reports cluster_state:{state}")
    roster = client.get_redis_connection(masters[0]).execute_command("CLUSTER NODES")
    flags = {address: str(entry.get("flags", "")) for address, entry in roster.items()}
    for address, flag in sorted(flags.items()):
        if "fail" in flag:
            problems.append(f"FAIL  cluster: node {address} is marked {flag}")
    primaries = sum("master" in flag for flag in flags.values())
    replicas = sum("slave" in flag for flag in flags.values())
    if not problems:
        print(f"ok    cluster: state ok on {primaries} masters, {replicas} replicas")
    return problems


def _check_sentinel(config: CacheConfig, client: Any) -> list[str]:
    """The master the library reached and its replicas (its INFO
    replication), then each sentinel's view: the master it names, the
    replicas and other sentinels it knows. A sentinel that is down or names
    another master is a problem."""
    problems = []
    master = client.connection_pool.get_master_address()
    info = client.info("replication")
    replicas = [value for name, value in info.items() if name.startswith("slave") and isinstance(value, dict)]
    listed = ", ".join(f"replica {r['ip']}:{r['port']} ({r['state']}, lag {r['lag']})" for r in replicas)
    print(f"ok    master {master[0]}:{master[1]} (role {info.get('role')}): {listed or 'no replicas'}")
    name = config.sentinel_master
    named: Any
    state: Any
    known: Any
    for uri in config.redis_uris:
        sentinel = Redis(host=uri.host, port=uri.port, **sentinel_options(config))
        try:
            named = sentinel.sentinel_get_master_addr_by_name(name)
            state = sentinel.sentinel_master(name)
            known = sentinel.sentinel_slaves(name)
        except RedisError as exc:
            problems.append(f"FAIL  sentinel {uri.address}: {exc}")
            continue
        finally:
            sentinel.close()
        named = (text(named[0]), int(named[1])) if named else None
        address = f"{named[0]}:{named[1]}" if named else "none"
        up = sum(1 for replica in known if not replica["is_sdown"] and not replica["is_odown"])
        line = (f"sentinel {uri.address}: names master {address} ({state['flags']}), "
                f"{up} of {len(known)} replicas up, {state['num-other-sentinels']} other sentinels, "
                f"quorum {state['quorum']}")
        if named != (text(master[0]), int(master[1])):
            problems.append(f"FAIL  {line}: not the master reached")
        else:
            print(f"ok    {line}")
    return problems


def _memory_namespace(caches: Caches, namespace: AnyNamespace) -> bool:
    if caches.config.uses_redis(namespace):
        return False
    print(f"librecache: {namespace.value} lives in each process's memory; this command cannot see it",
          file=sys.stderr)
    return True


def cmd_keys(config: CacheConfig, args: argparse.Namespace) -> int:
    namespace = config.namespace(args.namespace)
    with Caches(config) as caches:
        if _memory_namespace(caches, namespace):
            return 0
        keys = caches.stored_keys(namespace, limit=args.limit + 1)
        for key in keys[: args.limit]:
            print(key)
        if len(keys) > args.limit:
            print(f"librecache: more than {args.limit} keys; showing the first {args.limit} (--limit)",
                  file=sys.stderr)
    return 0


def cmd_clear(config: CacheConfig, args: argparse.Namespace) -> int:
    if bool(args.namespace) == bool(args.all):
        print("librecache: name one NAMESPACE, or --all", file=sys.stderr)
        return 2
    namespaces = list(config.namespaces) if args.all else [config.namespace(args.namespace)]
    namespaces = [ns for ns in namespaces if config.uses_redis(ns)]
    if not namespaces:
        print("librecache: nothing to clear: those namespaces live in process memory", file=sys.stderr)
        return 0
    what = "every namespace" if args.all else namespaces[0].value
    where = f"under the prefix '{config.key_prefix}::'" if config.key_prefix else "(no prefix)"
    if not args.yes:
        if not sys.stdin.isatty():
            print("librecache: refusing to clear without --yes (no terminal to confirm on)", file=sys.stderr)
            return 2
        answer = input(f"Remove every key of {what} {where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("librecache: nothing removed", file=sys.stderr)
            return 1

    def progress(count: int) -> None:
        print(f"\r  {count:,} keys removed...", end="", file=sys.stderr, flush=True)

    total = 0
    with Caches(config) as caches:
        for namespace in namespaces:
            removed = caches.clear(namespace, progress=progress)
            total += removed
            if removed >= 1000:
                print(file=sys.stderr)
            print(f"{namespace.value}: {removed} keys removed")
    if args.all:
        print(f"total: {total} keys removed")
    return 0


def cmd_invalidate(config: CacheConfig, args: argparse.Namespace) -> int:
    if not config.use_redis:
        print("librecache: no Redis (USE_REDIS): each process keeps its own tags; nothing invalidated",
              file=sys.stderr)
        return 0
    try:
        with Caches(config) as caches:
            count = caches.invalidate_tags(*args.tag)
    except (TypeError, ValueError) as exc:
        print(f"librecache: {exc}", file=sys.stderr)
        return 2
    print(f"{count} tag{'' if count == 1 else 's'} invalidated: {', '.join(sorted(set(args.tag)))}")
    return 0


def cmd_stats(config: CacheConfig, args: argparse.Namespace) -> int:
    rows: list[tuple[str, ...]] = [("NAMESPACE", "BACKEND", "KEYS", "MEMORY")]
    data: list[dict[str, Any]] = []
    with Caches(config) as caches:
        for namespace in config.namespaces:
            if not config.uses_redis(namespace):
                rows.append((namespace.value, "memory", "-", "-"))
                data.append({"namespace": namespace.value, "backend": "memory", "keys": None, "bytes": None})
                continue
            backend = caches.region(namespace).backend
            sample: list[str] = []
            count = 0
            for key in backend.scan_keys():
                if count < STATS_SAMPLE:
                    sample.append(key)
                count += 1
            measured = backend.memory_usage(sample)
            estimate = measured * count / len(sample) if sample else 0
            exact = count <= STATS_SAMPLE
            rows.append((namespace.value, "redis", str(count), ("" if exact else "~") + _size(estimate)))
            data.append({"namespace": namespace.value, "backend": "redis", "keys": count,
                         "bytes": round(estimate), "bytes_exact": exact})
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        _table(rows)
    return 0


# -- the parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", default=argparse.SUPPRESS, help="read variables from this .env file too")
    parser = argparse.ArgumentParser(
        prog="librecache", parents=[common],
        description="Inspect, check and clear the caches that the environment describes.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    show = commands.add_parser("config", parents=[common], help="the resolved configuration, secrets masked (default)")
    show.add_argument("--json", action="store_true", help="print JSON for machines")
    check = commands.add_parser("check", parents=[common],
                                help="connect and round-trip a key in every Redis namespace")
    check.add_argument("-v", "--verbose", action="store_true", help="one line per namespace")
    keys = commands.add_parser("keys", parents=[common], help="the keys of a namespace (SCAN, bounded)")
    keys.add_argument("namespace", metavar="NAMESPACE")
    keys.add_argument("--limit", type=int, default=1000, help="at most this many keys (default 1000)")
    clear = commands.add_parser("clear", parents=[common], help="remove a namespace's keys (or --all)")
    clear.add_argument("namespace", metavar="NAMESPACE", nargs="?")
    clear.add_argument("--all", action="store_true", help="every namespace")
    clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    stats = commands.add_parser(
        "stats", parents=[common], help="key count and memory per namespace",
        description="What Redis holds per namespace (keys, memory), shared by every process. "
                    "Hits, misses and creations are counted in each process: read them with "
                    "Caches.stats() or librecache.metrics.PrometheusCollector.",
    )
    stats.add_argument("--json", action="store_true", help="print JSON for machines")
    invalidate = commands.add_parser(
        "invalidate", parents=[common], help="invalidate every entry carrying a tag (--tag, repeatable)",
        description="Every entry that carries one of the tags is a miss from now on, in every namespace and "
                    "process sharing this Redis and prefix (a few commands, whatever the number of entries).",
    )
    invalidate.add_argument("--tag", action="append", required=True, metavar="TAG", help="a tag; repeat for more")
    return parser


COMMANDS = {"config": cmd_config, "check": cmd_check, "keys": cmd_keys, "clear": cmd_clear, "stats": cmd_stats,
            "invalidate": cmd_invalidate}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    args = build_parser().parse_args(argv)
    command = args.command or "config"
    if command == "config" and not hasattr(args, "json"):
        args.json = False
    try:
        config = CacheConfig.from_env(env_file=getattr(args, "env_file", None))
        if command != "config":  # operators' commands report failures, never fall through quietly
            config = attrs.evolve(config, strict=True)
        return COMMANDS[command](config, args)
    except (LibrecacheError, KeyError) as exc:
        print(f"librecache: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except (RedisError, RedisClusterException, OSError) as exc:
        print(f"librecache: Redis: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
