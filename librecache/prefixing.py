"""A redis-py client that writes every key under ``{prefix}::``.

The equivalent of ioredis' ``keyPrefix``: each command's key arguments are
found from the server's own key specifications (``COMMAND INFO``, Redis 7+;
the first/last/step triple on older servers), so every command the server
knows is prefixed correctly, including ``EVAL``/``EVALSHA`` keys, ``XREAD
STREAMS``, ``ZUNIONSTORE`` and ``MIGRATE KEYS``. ``KEYS`` and ``SCAN`` are
confined to the prefix (their ``MATCH`` pattern is prefixed) and the key names
they return have the prefix removed. Other replies are returned as the
server sends them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ResponseError

from . import forks
from ._compat import SlotsOfPrefixedKeys
from .replies import text

__all__ = ["KeySpecs", "PrefixedRedis", "PrefixedRedisCluster"]

Args = tuple[Any, ...]
_Locator = Callable[[list[Any]], list[int]]



def _as_dict(value: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat list of pairs, as a dict of str keys."""
    if isinstance(value, dict):
        return {text(k): v for k, v in value.items()}
    items = list(value or ())
    return {text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _keyspec_locator(spec: dict[str, Any]) -> _Locator | None:
    """A function argv -> key positions for one key specification, following
    the algorithm of the server's ``getKeysUsingKeySpecs``; ``None`` when the
    specification is of the unknown type."""
    begin = _as_dict(spec.get("begin_search"))
    find = _as_dict(spec.get("find_keys"))
    begin_spec = _as_dict(begin.get("spec"))
    find_spec = _as_dict(find.get("spec"))
    begin_type, find_type = text(begin.get("type")), text(find.get("type"))
    if begin_type not in ("index", "keyword") or find_type not in ("range", "keynum"):
        return None

    def locate(argv: list[Any]) -> list[int]:
        argc = len(argv)
        if begin_type == "index":
            first = int(begin_spec["index"])
        else:
            keyword = text(begin_spec["keyword"]).upper()
            start = int(begin_spec["startfrom"])
            if start >= 0:
                candidates = range(start, argc)
            else:
                candidates = range(argc + start, 0, -1)
            first = -1
            for index in candidates:
                if 0 < index < argc and text(argv[index]).upper() == keyword:
                    first = index + 1
                    break
            if first < 0:
                return []
        if first >= argc:
            return []
        if find_type == "range":
            lastkey = int(find_spec["lastkey"])
            step = int(find_spec["keystep"])
            limit = int(find_spec["limit"])
            if lastkey >= 0:
                last = first + lastkey
            elif not limit:
                last = argc + lastkey
            else:
                last = first + ((argc - first) // limit + lastkey)
        else:
            numkeys = int(text(argv[first + int(find_spec["keynumidx"])]))
            step = int(find_spec["keystep"])
            first = first + int(find_spec["firstkey"])
            last = first + (numkeys - 1) * step
        return list(range(first, min(last, argc - 1) + 1, max(step, 1)))

    return locate


def _sort_locator(argv: list[Any]) -> list[int]:
    """SORT/SORT_RO: the sorted key, BY and GET patterns, and STORE."""
    positions = [1]
    index = 2
    while index < len(argv) - 1:
        word = text(argv[index]).upper()
        if word in ("BY", "GET"):
            pattern = text(argv[index + 1])
            if pattern != "#" and not (word == "BY" and pattern.lower() == "nosort"):
                positions.append(index + 1)
            index += 2
        elif word == "STORE":
            positions.append(index + 1)
            index += 2
        elif word == "LIMIT":
            index += 3
        else:
            index += 1
    return positions


class KeySpecs:
    """Where each command's keys are, learnt from the server once per command.

    :param fetch: runs ``COMMAND INFO <name>`` and returns the raw reply.
    """

    def __init__(self, fetch: Callable[[str], Any]) -> None:
        self._fetch = fetch
        self._locators: dict[str, tuple[bool, list[_Locator]]] = {}
        self._lock = threading.Lock()
        forks.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def _learn(self, name: str) -> tuple[bool, list[_Locator]]:
        reply = self._fetch(name)
        info = reply[0] if reply else None
        if not info:
            raise ResponseError(f"unknown command {name!r}: cannot tell where its keys are")
        has_subcommands = len(info) > 9 and bool(info[9])
        if name.split("|")[0] in ("sort", "sort_ro"):
            return has_subcommands, [_sort_locator]
        specs = info[8] if len(info) > 8 else None
        locators: list[_Locator] = []
        if specs:
            for raw in specs:
                locator = _keyspec_locator(_as_dict(raw))
                if locator is not None:
                    locators.append(locator)
        else:  # a server without key specifications: first, last, step
            first, last, step = int(info[3]), int(info[4]), int(info[5])
            if first > 0:

                def classic(argv: list[Any], f: int = first, la: int = last, s: int = step) -> list[int]:
                    return list(range(f, (len(argv) + la if la < 0 else la) + 1, s))

                locators.append(classic)
        return has_subcommands, locators

    def _entry(self, name: str) -> tuple[bool, list[_Locator]]:
        entry = self._locators.get(name)
        if entry is None:
            with self._lock:
                entry = self._locators.get(name)
                if entry is None:
                    entry = self._learn(name)
                    self._locators[name] = entry
        return entry

    def positions(self, argv: list[Any]) -> list[int]:
        """The indices of the key arguments in ``argv`` (the command's name
        first)."""
        name = text(argv[0]).lower()
        has_subcommands, locators = self._entry(name)
        if has_subcommands and len(argv) > 1:
            _, locators = self._entry(f"{name}|{text(argv[1]).lower()}")
        found: set[int] = set()
        for locate in locators:
            found.update(locate(argv))
        return sorted(found)


class _Prefixing:
    """The prefixing of arguments and replies, shared by the clients and
    their pipelines."""

    _key_prefix: str
    _key_specs: KeySpecs

    def __init__(self, *args: Any, key_prefix: str, key_specs: KeySpecs, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key_prefix = key_prefix
        self._key_specs = key_specs

    def prefixed_key(self, key: Any) -> Any:
        """``key`` under the prefix, as the server sees it."""
        if isinstance(key, (bytes, bytearray, memoryview)):
            return self._key_prefix.encode() + bytes(key)
        return self._key_prefix + str(key)

    def _unprefixed(self, key: Any) -> Any:
        raw = self._key_prefix.encode()
        if isinstance(key, bytes) and key.startswith(raw):
            return key[len(raw):]
        if isinstance(key, str) and key.startswith(self._key_prefix):
            return key[len(self._key_prefix):]
        return key

    def _pattern(self, pattern: Any) -> str:
        escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self._key_prefix)
        return escaped + text(pattern)

    def _prefix_args(self, args: Args, options: dict[str, Any]) -> tuple[list[Any], str]:
        """The arguments with their keys prefixed, and the command's name.
        A multi-word name (``"XINFO STREAM"``) is kept as one argument, as
        redis-py gave it, so that its reply callback still applies."""
        head = args[0]
        words = head.split(" ") if isinstance(head, str) else [head]
        name = text(words[0]).upper()
        if not self._key_prefix:
            return list(args), name
        argv = words + list(args[1:])
        if name == "SCAN":
            argv = self._scan_args(argv)
        elif name == "KEYS":
            argv[1] = self._pattern(argv[1])
        else:
            for index in self._key_specs.positions(argv):
                argv[index] = self.prefixed_key(argv[index])
        if options.get("keys"):
            options["keys"] = [self.prefixed_key(key) for key in options["keys"]]
        return [head, *argv[len(words):]], name

    def _scan_args(self, argv: list[Any]) -> list[Any]:
        for index in range(2, len(argv) - 1):
            if text(argv[index]).upper() == "MATCH":
                argv[index + 1] = self._pattern(argv[index + 1])
                return argv
        return argv + ["MATCH", self._pattern("*")]

    def _unprefix_reply(self, name: str, reply: Any) -> Any:
        if not self._key_prefix:
            return reply
        if name == "KEYS":
            return [self._unprefixed(key) for key in reply]
        if name == "SCAN" and isinstance(reply, (list, tuple)) and len(reply) == 2:
            return reply[0], [self._unprefixed(key) for key in reply[1]]
        return reply


class PrefixedRedis(_Prefixing, redis.Redis):
    """A :class:`redis.Redis` whose commands prefix every key with
    ``{prefix}::``. Get one from :attr:`librecache.Caches.redis`."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        argv, name = self._prefix_args(args, options)
        return self._unprefix_reply(name, super().execute_command(*argv, **options))

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> redis.client.Pipeline:
        """A pipeline whose commands are prefixed too."""
        pipe: redis.client.Pipeline = adopt(
            super().pipeline(transaction, shard_hint), PrefixedPipeline, self._key_prefix, self._key_specs
        )
        return pipe


class PrefixedPipeline(_Prefixing, redis.client.Pipeline):
    """The pipeline of a :class:`PrefixedRedis`."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        argv, _ = self._prefix_args(args, kwargs)
        return super().execute_command(*argv, **kwargs)


class PrefixedRedisCluster(SlotsOfPrefixedKeys, _Prefixing, RedisCluster):
    """A :class:`redis.cluster.RedisCluster` whose commands prefix every key
    with ``{prefix}::``."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        argv, name = self._prefix_args(args, options)
        if name == "KEYS":
            options.setdefault("target_nodes", RedisCluster.PRIMARIES)
        reply = super().execute_command(*argv, **options)
        if name == "KEYS" and isinstance(reply, dict):  # one reply per node
            return [self._unprefixed(key) for keys in reply.values() for key in keys]
        return self._unprefix_reply(name, reply)

    def mget(self, keys: Any, *args: Any) -> list[Any]:
        """``MGET`` of keys in any slots: one ``MGET`` per slot, pipelined
        per node; the values come back in the order of the keys. Not atomic
        across slots."""
        result: list[Any] = self.mget_nonatomic(keys, *args)
        return result

    def mset(self, mapping: Any) -> bool:
        """``MSET`` of keys in any slots: one ``MSET`` per slot, pipelined
        per node. Not atomic across slots."""
        return all(self.mset_nonatomic(mapping))

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        """A cluster pipeline whose commands are prefixed too."""
        pipe: ClusterPipeline = adopt(
            super().pipeline(transaction, shard_hint), PrefixedClusterPipeline, self._key_prefix, self._key_specs
        )
        return pipe


class PrefixedClusterPipeline(_Prefixing, ClusterPipeline):
    """The pipeline of a :class:`PrefixedRedisCluster`."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        argv, _ = self._prefix_args(args, kwargs)
        return super().execute_command(*argv, **kwargs)


def adopt(built: Any, cls: type, key_prefix: str, key_specs: KeySpecs) -> Any:
    """Turn a client or pipeline redis-py built into its prefixing subclass
    ``cls`` (redis-py's own constructors stay in charge of building it)."""
    built.__class__ = cls  # a private move on redis-py's objects: see librecache._compat
    built._key_prefix = key_prefix
    built._key_specs = key_specs
    return built
