"""The ``librecache`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .config import CacheConfig
from .errors import LibrecacheError
from .keying import KeySpace
from .keys import CacheKeys

__all__ = ["main"]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def config_rows(config: CacheConfig) -> list[dict[str, Any]]:
    """One row per namespace: backend, key prefix, TTL."""
    keyspace = KeySpace(config.key_prefix)
    rows = []
    for namespace in CacheKeys:
        redis = config.uses_redis(namespace)
        rows.append(
            {
                "namespace": namespace.value,
                "backend": ("redis-cluster" if config.cluster else "redis") if redis else "memory",
                "key_prefix": keyspace.namespace(namespace) if redis else "-",
                "ttl_seconds": config.ttl(namespace),
                "forced_in_memory": namespace in config.forced_in_memory,
            }
        )
    return rows


def _show_config(config: CacheConfig, as_json: bool) -> int:
    rows = config_rows(config)
    settings = dict(config.describe())
    if as_json:
        print(json.dumps({"settings": settings, "namespaces": rows}, indent=2))
        return 0
    width = max(len(name) for name in settings)
    for name, value in settings.items():
        print(f"{name.ljust(width)}  {value}")
    print()
    table = [("NAMESPACE", "BACKEND", "KEY PREFIX", "TTL")]
    for row in rows:
        backend = row["backend"] + (" (forced)" if row["forced_in_memory"] else "")
        table.append((row["namespace"], backend, row["key_prefix"], _duration(row["ttl_seconds"])))
    widths = [max(len(line[column]) for line in table) for column in range(4)]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="librecache",
        description="Inspect the cache configuration that the environment describes.",
    )
    parser.add_argument("--env-file", help="read variables from this .env file as well")
    commands = parser.add_subparsers(dest="command")
    show = commands.add_parser("config", help="the resolved configuration, secrets masked (default)")
    show.add_argument("--json", action="store_true", help="print JSON for machines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = CacheConfig.from_env(env_file=args.env_file)
        return _show_config(config, getattr(args, "json", False))
    except LibrecacheError as exc:
        print(f"librecache: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
