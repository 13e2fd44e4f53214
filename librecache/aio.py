"""Async services: awaitable region calls and memoised ``async def``: the
async door of the engine (:mod:`librecache.engine`).

One cache, two doors. The awaitable calls of a
:class:`~librecache.LibreRegion` (``aget``, ``aset``, ``adelete``,
``aget_or_create``, ``aget_multi``, ``aset_multi``, ``adelete_multi``,
``aget_or_create_multi``) and ``cache_on_arguments`` /
``cache_multi_on_arguments`` on an ``async def`` run the same flows as the
sync calls (:mod:`librecache.engine.flows`), awaiting each request: the
same keys, bytes, rules, locks, leases and Redis commands, the same near
cache and counters, the same circuit breaker. So a value set by one door is
read by the other, in this process and in every other.

Redis namespaces go through a :mod:`redis.asyncio` client per event loop
(:class:`~librecache.backends.aio_redis.AsyncRedisStore`): no sync call
inside the loop and no thread per call. Memory namespaces are process
memory (a dictionary under a lock held for microseconds) and never wait on
I/O. Concurrent tasks of a loop queue on an asyncio lock per key, so a cold
key is created once per process, and once per deployment with Redis (its
creation lock).

``wrap=`` proxies (dogpile ``ProxyBackend``) are sync code: they apply to
async calls of memory namespaces, and are bypassed by async calls of Redis
namespaces (the proxies would block the loop on Redis).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE

from .backends.routing import async_port
from .engine import flows
from .engine.doors import arun, count, count_multi
from .engine.flows import Call, Found
from .engine.judge import expiration_of, judged_multi
from .engine.policy import Policy
from .fastpath import companions, key_function, mangled_many, mangled_map, multi_call, policies
from .tags import CallTags, Tags, bound_tags, resolved_tags

__all__ = [
    "adelete",
    "adelete_multi",
    "aget",
    "aget_multi",
    "aget_or_create",
    "aget_or_create_multi",
    "aset",
    "aset_multi",
    "memoize_async",
    "memoize_multi_async",
]


def _mangled(region: Any, key: Any) -> str:
    mangler = region.key_mangler
    return mangler(key) if mangler is not None else key  # type: ignore[no-any-return]


def _count(region: Any, hits: int, misses: int) -> None:
    stats = region.counters
    if stats is not None:
        stats.hits += hits
        stats.misses += misses


# --------------------------------------------------------------------------
# Awaitable region calls
# --------------------------------------------------------------------------


async def aget(region: Any, key: Any, expiration_time: float | None = None, ignore_expiration: bool = False) -> Any:
    """:meth:`~dogpile.cache.region.CacheRegion.get`, awaitable."""
    port = async_port(region)
    mangled = _mangled(region, key)
    if port.marks_due():
        await port.marks()
    value = region.unexpired_value_fn(expiration_time, ignore_expiration)(await port.get(mangled))
    _count(region, value is not NO_VALUE, value is NO_VALUE)
    return value.payload


async def aget_multi(region: Any, keys: Iterable[Any], expiration_time: float | None = None,
                     ignore_expiration: bool = False) -> list[Any]:
    """:meth:`~dogpile.cache.region.CacheRegion.get_multi`, awaitable."""
    mangled = mangled_many(region, keys)
    if not mangled:
        return []
    port = async_port(region)
    if port.marks_due():
        await port.marks()
    raw = port.raw_reads()  # bytes judged as the sync get_multi judges them
    found = await (port.read_multi(mangled) if raw else port.get_multi(mangled))
    values = judged_multi(region, found, raw, expiration_time, ignore_expiration)
    missed = sum(value is NO_VALUE for value in values)
    _count(region, len(values) - missed, missed)
    return values


async def aset(region: Any, key: Any, value: Any, tags: tuple[str, ...] = ()) -> None:
    """:meth:`~dogpile.cache.region.CacheRegion.set`, awaitable; the entry
    carries ``tags`` (checked)."""
    await async_port(region).set(_mangled(region, key), region.new_value(value, region.tagged_metadata(tags)))


async def aset_multi(region: Any, mapping: Mapping[Any, Any], tags: tuple[str, ...] = ()) -> None:
    """:meth:`~dogpile.cache.region.CacheRegion.set_multi`, awaitable (one
    pipeline; per node on a cluster); every entry carries ``tags`` (checked)."""
    if not mapping:
        return
    metadata = region.tagged_metadata(tags)
    await async_port(region).set_multi(
        {_mangled(region, key): region.new_value(value, metadata) for key, value in mapping.items()}
    )


async def adelete(region: Any, key: Any) -> None:
    """:meth:`~dogpile.cache.region.CacheRegion.delete`, awaitable."""
    await async_port(region).delete_multi([_mangled(region, key)])


async def adelete_multi(region: Any, keys: Iterable[Any]) -> None:
    """:meth:`~dogpile.cache.region.CacheRegion.delete_multi`, awaitable
    (one ``DEL`` per slot on a cluster)."""
    await async_port(region).delete_multi(mangled_many(region, keys))


async def aget_or_create(region: Any, key: Any, creator: Callable[..., Any], expiration_time: float | None = None,
                         should_cache_fn: Callable[[Any], bool] | None = None,
                         creator_args: tuple[Sequence[Any], Mapping[str, Any]] | None = None,
                         policy: Policy | None = None, tags: CallTags = ()) -> Any:
    """:meth:`~dogpile.cache.region.CacheRegion.get_or_create`, awaitable;
    ``creator`` may be a plain function or a coroutine function. The same
    flow as the sync call (:func:`librecache.engine.flows.get_or_create`):
    the same commands, locks and rules. ``policy``: the call's, the
    namespace's if ``None``; ``tags``: as :class:`~librecache.engine.flows.Call`'s."""
    mangled = _mangled(region, key)
    port = async_port(region)
    if policy is None:
        policy = region.policy
    found = await port.hit(mangled, expiration_time, policy)
    if type(found) is not Found:
        stats = region.counters
        if stats is not None:
            stats.hits += 1
        return found
    args, kwargs = creator_args if creator_args else ((), {})
    return await _created(region, port, mangled, key, creator, args, dict(kwargs), expiration_time, should_cache_fn,
                          found, policy, tags)


async def _created(region: Any, port: Any, mangled: str, key: Any, creator: Callable[..., Any], args: Sequence[Any],
                   kwargs: dict[str, Any], expiration_time: float | None, should_cache_fn: Any, found: Found,
                   policy: Policy, tags: CallTags = ()) -> Any:
    """:func:`librecache.fastpath.created`, awaited."""
    budget = port.budget
    call = Call(region, mangled, key, creator, args, kwargs, expiration_of(region, expiration_time),
                should_cache_fn, None if budget is None else time.monotonic() + budget, None, policy, tags)
    outcome = await arun(flows.get_or_create(call, found), port)
    count(region.counters, outcome)
    return outcome.value


async def aget_or_create_multi(region: Any, keys: Iterable[Any], creator: Callable[..., Any],
                               expiration_time: float | None = None,
                               should_cache_fn: Callable[[Any], bool] | None = None,
                               policy: Policy | None = None, tags: CallTags = ()) -> list[Any]:
    """:meth:`~dogpile.cache.region.CacheRegion.get_or_create_multi`,
    awaitable: one read for every key, one creator call (sync or async)
    for the keys to create, one round trip to store what it returned."""
    keys = list(keys)
    port = async_port(region)
    if port.marks_due():
        await port.marks()
    call = multi_call(region, port, creator, expiration_time, should_cache_fn, policy, tags)
    outcome = await arun(flows.get_or_create_multi(call, keys, mangled_map(region, keys)), port)
    count_multi(region.counters, outcome, len(keys))
    return outcome.values


# --------------------------------------------------------------------------
# Memoised async def
# --------------------------------------------------------------------------


def memoize_async(region: Any, key_generator: Callable[..., str], user_func: Callable[..., Any],
                  expiration_time: Any, should_cache_fn: Any,
                  settings: dict[str, Any] | None = None, tags: Tags = None) -> Callable[..., Any]:
    """What ``cache_on_arguments`` returns for an ``async def``: an
    ``async def`` keyed exactly as the sync wrapper
    (:func:`librecache.fastpath.memoize`), with dogpile's companions made
    awaitable (``await f.set(value, *args)``, ``f.get``, ``f.invalidate``,
    ``f.refresh``) and ``f.original``."""
    key_of = key_function(key_generator, user_func)
    expiration_is_callable = callable(expiration_time)
    policy_now = policies(region, settings)

    @functools.wraps(user_func)
    async def cached(*args: Any, **kwargs: Any) -> Any:
        timeout = expiration_time() if expiration_is_callable else expiration_time
        return await aget_or_create(region, key_of(args, kwargs), user_func, timeout, should_cache_fn, (args, kwargs),
                                    None if policy_now is None else policy_now(), bound_tags(tags, args, kwargs))

    async def refresh(*args: Any, **kwargs: Any) -> Any:
        value = await user_func(*args, **kwargs)
        await aset(region, key_of(args, kwargs), value, region.tags_for_writing(resolved_tags(tags, args, kwargs)))
        return value

    async def invalidate(*args: Any, **kwargs: Any) -> None:
        await adelete(region, key_of(args, kwargs))

    async def set_(value: Any, *args: Any, **kwargs: Any) -> None:
        await aset(region, key_of(args, kwargs), value, region.tags_for_writing(resolved_tags(tags, args, kwargs)))

    async def get(*args: Any, **kwargs: Any) -> Any:
        return await aget(region, key_of(args, kwargs))

    return companions(cached, user_func, set_, invalidate, get, refresh)


def memoize_multi_async(region: Any, key_generator: Callable[..., Sequence[str]], user_func: Callable[..., Any],
                        expiration_time: Any, should_cache_fn: Any, asdict: bool,
                        settings: dict[str, Any] | None = None, tags: Tags = None) -> Callable[..., Any]:
    """What ``cache_multi_on_arguments`` returns for an ``async def``:
    dogpile's behaviour (one argument per key; a list, or with ``asdict`` a
    mapping), awaitable, with awaitable companions."""
    expiration_is_callable = callable(expiration_time)
    policy_now = policies(region, settings)

    @functools.wraps(user_func)
    async def cached(*args: Any, **kwargs: Any) -> Any:
        keys = key_generator(*args, **kwargs)
        lookup = dict(zip(keys, args, strict=True))
        timeout = expiration_time() if expiration_is_callable else expiration_time
        if not asdict:

            async def create(*keys_to_create: str) -> Any:
                return await user_func(*[lookup[key] for key in keys_to_create])

            return await aget_or_create_multi(region, keys, create, timeout, should_cache_fn,
                                              None if policy_now is None else policy_now(),
                                              bound_tags(tags, args, kwargs))

        async def create_from_dict(*keys_to_create: str) -> list[Any]:
            values = await user_func(*[lookup[key] for key in keys_to_create])
            return [values.get(lookup[key], NO_VALUE) for key in keys_to_create]

        def cache_if(value: Any) -> bool:
            return value is not NO_VALUE and (not should_cache_fn or bool(should_cache_fn(value)))

        values = await aget_or_create_multi(region, keys, create_from_dict, timeout, cache_if,
                                            None if policy_now is None else policy_now(),
                                            bound_tags(tags, args, kwargs))
        return {arg: value for arg, value in zip(args, values, strict=True) if value is not NO_VALUE}

    async def invalidate(*args: Any) -> None:
        await adelete_multi(region, key_generator(*args))

    def tags_of(arguments: Sequence[Any]) -> tuple[str, ...]:
        return region.tags_for_writing(resolved_tags(tags, arguments)) if tags is not None else ()

    async def set_(mapping: Mapping[Any, Any]) -> None:
        arguments = list(mapping)
        await aset_multi(region, dict(zip(key_generator(*arguments), (mapping[a] for a in arguments), strict=True)),
                         tags_of(arguments))

    async def get(*args: Any) -> list[Any]:
        return await aget_multi(region, key_generator(*args))

    async def refresh(*args: Any) -> Any:
        keys = key_generator(*args)
        values = await user_func(*args)
        if asdict:
            await aset_multi(region, dict(zip(keys, [values[arg] for arg in args], strict=True)), tags_of(args))
        else:
            await aset_multi(region, dict(zip(keys, values, strict=True)), tags_of(args))
        return values

    return companions(cached, user_func, set_, invalidate, get, refresh)
