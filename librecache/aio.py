"""Async services: awaitable region calls and memoised ``async def``.

One cache, two doors. The awaitable calls of a
:class:`~librecache.LibreRegion` (``aget``, ``aset``, ``adelete``,
``aget_or_create``, ``aget_multi``, ``aset_multi``, ``adelete_multi``,
``aget_or_create_multi``) and ``cache_on_arguments`` /
``cache_multi_on_arguments`` on an ``async def`` use the sync path's
pieces: the region's key mangler, its dogpile value format and serializer,
the backend's signing and expiry, dogpile's judgement of expiry and
invalidation (``_is_cache_miss``, ``_unexpired_value_fn``, soft
invalidation), the near cache, the counters, the creation lock's key and
protocol, and the circuit breaker. So a value set by one door is read by
the other, in this process and in every other.

Redis namespaces go through a :mod:`redis.asyncio` client per event loop
(:mod:`librecache.backends.aio_redis`): no sync call inside the loop and no
thread per call. Memory namespaces are process memory (a dictionary under
a lock held for microseconds) and never wait on I/O. Concurrent tasks of a
loop queue on an asyncio lock per key, so a cold key is created once per
process, and once per deployment with Redis (its creation lock).

``wrap=`` proxies (dogpile ``ProxyBackend``) are sync code: they apply to
async calls of memory namespaces, and are bypassed by async calls of Redis
namespaces (the proxies would block the loop on Redis).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from dogpile.cache.api import NO_VALUE, CachedValue
from dogpile.cache.exception import DogpileCacheException

from .backends.aio_redis import AsyncRedisStore, Held, keyed_lock
from .backends.redis import RedisBackend
from .fastpath import (
    SOFT_WITHOUT_TTL,
    companions,
    expiration_of,
    fresh,
    fresh_payload,
    judge,
    judged_multi,
    key_function,
    mangled_many,
)

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

class MemoryStore:
    """The async door of a memory namespace: the region's own backend
    calls (in memory, microseconds: nothing to await)."""

    def __init__(self, region: Any) -> None:
        self.region = region

    async def marks(self) -> None:
        return None

    def raw_reads(self) -> bool:
        return False

    def marks_due(self) -> bool:
        return False

    async def get(self, key: str) -> Any:
        return self.region._get_from_backend(key)

    async def get_multi(self, keys: list[str]) -> list[Any]:
        return list(self.region._get_multi_from_backend(keys)) if keys else []

    async def set(self, key: str, value: CachedValue, keep_near: bool = False) -> None:
        self.region._set_cached_value_to_backend(key, value)

    async def set_multi(self, mapping: Mapping[str, CachedValue], keep_near: bool = False) -> None:
        self.region._set_multi_cached_value_to_backend(mapping)

    async def delete_multi(self, keys: list[str]) -> None:
        if keys:
            self.region.backend.delete_multi(keys)

    @asynccontextmanager
    async def lock(self, key: str, wait: bool, started: float) -> AsyncIterator[Held]:
        async with keyed_lock(f"{self.region.namespace.value}\x00{key}", wait, None) as got:
            yield Held(got, got)


def store_of(region: Any) -> Any:
    """The async door of ``region``'s current backend (made once per backend)."""
    backend = region.backend  # configures the process default on first use
    cached = region.__dict__.get("_aio_store")
    if cached is not None and cached[0] is backend:
        return cached[1]
    unwrapped = region.unwrapped_backend
    store = AsyncRedisStore(region, unwrapped) if isinstance(unwrapped, RedisBackend) else MemoryStore(region)
    region.__dict__["_aio_store"] = (backend, store)
    return store


def _mangled(region: Any, key: Any) -> str:
    mangler = region.key_mangler
    return mangler(key) if mangler is not None else key  # type: ignore[no-any-return]


def _count(region: Any, hits: int, misses: int) -> None:
    stats = region._stats
    if stats is not None:
        stats.hits += hits
        stats.misses += misses


async def _create(region: Any, creator: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """Run a sync or async creator, counted as a creation (a miss)."""
    started = time.perf_counter()
    try:
        value = creator(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        return value
    finally:
        stats = region._stats
        if stats is not None:
            stats.created(time.perf_counter() - started)


# --------------------------------------------------------------------------
# Awaitable region calls
# --------------------------------------------------------------------------


async def aget(region: Any, key: Any, expiration_time: float | None = None, ignore_expiration: bool = False) -> Any:
    """:meth:`~dogpile.cache.region.CacheRegion.get`, awaitable."""
    store = store_of(region)
    mangled = _mangled(region, key)
    if store.marks_due():
        await store.marks()
    value = region._unexpired_value_fn(expiration_time, ignore_expiration)(await store.get(mangled))
    _count(region, value is not NO_VALUE, value is NO_VALUE)
    return value.payload


async def aget_multi(region: Any, keys: Iterable[Any], expiration_time: float | None = None,
                     ignore_expiration: bool = False) -> list[Any]:
    """:meth:`~dogpile.cache.region.CacheRegion.get_multi`, awaitable."""
    mangled = mangled_many(region, keys)
    if not mangled:
        return []
    store = store_of(region)
    if store.marks_due():
        await store.marks()
    raw = store.raw_reads()  # bytes judged as the sync get_multi judges them
    found = await (store.read_multi(mangled) if raw else store.get_multi(mangled))
    values = judged_multi(region, found, raw, expiration_time, ignore_expiration)
    missed = sum(value is NO_VALUE for value in values)
    _count(region, len(values) - missed, missed)
    return values


async def aset(region: Any, key: Any, value: Any) -> None:
    """:meth:`~dogpile.cache.region.CacheRegion.set`, awaitable."""
    await store_of(region).set(_mangled(region, key), region._value(value))


async def aset_multi(region: Any, mapping: Mapping[Any, Any]) -> None:
    """:meth:`~dogpile.cache.region.CacheRegion.set_multi`, awaitable (one
    pipeline; per node on a cluster)."""
    if not mapping:
        return
    metadata = region._gen_metadata()
    await store_of(region).set_multi(
        {_mangled(region, key): region._value(value, metadata) for key, value in mapping.items()}
    )


async def adelete(region: Any, key: Any) -> None:
    """:meth:`~dogpile.cache.region.CacheRegion.delete`, awaitable."""
    await store_of(region).delete_multi([_mangled(region, key)])


async def adelete_multi(region: Any, keys: Iterable[Any]) -> None:
    """:meth:`~dogpile.cache.region.CacheRegion.delete_multi`, awaitable
    (one ``DEL`` per slot on a cluster)."""
    await store_of(region).delete_multi(mangled_many(region, keys))


async def aget_or_create(region: Any, key: Any, creator: Callable[..., Any], expiration_time: float | None = None,
                         should_cache_fn: Callable[[Any], bool] | None = None,
                         creator_args: tuple[Sequence[Any], Mapping[str, Any]] | None = None) -> Any:
    """:meth:`~dogpile.cache.region.CacheRegion.get_or_create`, awaitable;
    ``creator`` may be a plain function or a coroutine function.

    dogpile's rules: a fresh value is returned; a missing or hard-invalidated
    one is created by one caller at a time (the others wait, then read
    it); an expired one is created by one caller while the others get the
    expired value. Waiting for another process's creation lock is bounded
    by the call budget; past it the caller creates the value itself and
    does not store it."""
    started = time.monotonic()  # the call budget counts from here
    store = store_of(region)
    mangled = _mangled(region, key)
    if store.marks_due():
        await store.marks()
    if store.raw_reads():  # a fresh value is judged from its bytes, as the sync hit path does
        serialized = await store.read(mangled)
        if serialized is not NO_VALUE:
            payload = fresh_payload(region, serialized, expiration_time)
            if payload is not NO_VALUE:
                _count(region, 1, 0)
                return payload
        value = store.parse(serialized)
    else:
        value = await store.get(mangled)
    expiration_time = expiration_of(region, expiration_time)
    found = judge(region, value, key, expiration_time)
    if fresh(found, expiration_time):
        _count(region, 1, 0)
        return found[0]  # type: ignore[index]
    args, kwargs = creator_args if creator_args else ((), {})
    async with store.lock(mangled, found is None, started) as held:
        if not held.acquired:  # another creator is at work: the expired value meanwhile
            _count(region, 1, 0)
            return found[0]  # type: ignore[index]
        if found is None:  # created meanwhile by the caller we waited for?
            again = judge(region, await store.get(mangled), key, expiration_time)
            if fresh(again, expiration_time):
                _count(region, 1, 0)
                stats = region._stats
                if stats is not None:
                    stats.lock_waits += 1
                return again[0]  # type: ignore[index]
        created = await _create(region, creator, args, kwargs)
        value = region._value(created)
        if expiration_time is None and region.region_invalidator.was_soft_invalidated():
            raise DogpileCacheException(SOFT_WITHOUT_TTL)
        if held.confirmed and (not should_cache_fn or should_cache_fn(created)):
            await store.set(mangled, value, keep_near=True)
        return created


async def aget_or_create_multi(region: Any, keys: Iterable[Any], creator: Callable[..., Any],
                               expiration_time: float | None = None,
                               should_cache_fn: Callable[[Any], bool] | None = None) -> list[Any]:
    """:meth:`~dogpile.cache.region.CacheRegion.get_or_create_multi`,
    awaitable: one read for every key, one creator call (sync or async)
    for the keys to create, one write for what it returned."""
    started = time.monotonic()
    keys = list(keys)
    expiration_time = expiration_of(region, expiration_time)
    store = store_of(region)
    unique = sorted(set(keys))
    mangled = {key: _mangled(region, key) for key in unique}
    if store.marks_due():
        await store.marks()
    read = await store.get_multi([mangled[key] for key in unique])
    found = {key: judge(region, value, key, expiration_time) for key, value in zip(unique, read, strict=True)}
    results = {key: found[key][0] for key in unique if fresh(found[key], expiration_time)}  # type: ignore[index]
    to_create: list[Any] = []
    if len(results) < len(unique):
        async with AsyncExitStack() as locks:
            confirmed: dict[Any, bool] = {}
            for key in unique:  # sorted: no two callers wait for each other
                if key in results:
                    continue
                held = await locks.enter_async_context(store.lock(mangled[key], found[key] is None, started))
                if held.acquired:
                    confirmed[key] = held.confirmed
                else:  # another creator is at work: the expired value meanwhile
                    results[key] = found[key][0]  # type: ignore[index]
            waited = [key for key in confirmed if found[key] is None]
            if waited:  # created meanwhile by the callers we waited for?
                for key, value in zip(waited, await store.get_multi([mangled[k] for k in waited]), strict=True):
                    again = judge(region, value, key, expiration_time)
                    if fresh(again, expiration_time):
                        results[key] = again[0]  # type: ignore[index]
                        del confirmed[key]
                        if region._stats is not None:
                            region._stats.lock_waits += 1
            to_create = sorted(confirmed)
            if to_create:
                created = list(await _create(region, creator, to_create, {}))
                if expiration_time is None and region.region_invalidator.was_soft_invalidated():
                    raise DogpileCacheException(SOFT_WITHOUT_TTL)
                metadata = region._gen_metadata()
                storing = {}
                for key, value in zip(to_create, created, strict=True):
                    results[key] = value
                    if confirmed[key] and (not should_cache_fn or should_cache_fn(value)):
                        storing[mangled[key]] = region._value(value, metadata)
                await store.set_multi(storing, keep_near=True)
    # the creator run counted one miss; its other keys are misses too
    _count(region, len(keys) - len(to_create), max(0, len(to_create) - 1))
    return [results[key] for key in keys]


# --------------------------------------------------------------------------
# Memoised async def
# --------------------------------------------------------------------------


def memoize_async(region: Any, key_generator: Callable[..., str], user_func: Callable[..., Any],
                  expiration_time: Any, should_cache_fn: Any) -> Callable[..., Any]:
    """What ``cache_on_arguments`` returns for an ``async def``: an
    ``async def`` keyed exactly as the sync wrapper
    (:func:`librecache.fastpath.memoize`), with dogpile's companions made
    awaitable (``await f.set(value, *args)``, ``f.get``, ``f.invalidate``,
    ``f.refresh``) and ``f.original``."""
    key_of = key_function(key_generator, user_func)
    expiration_is_callable = callable(expiration_time)

    @functools.wraps(user_func)
    async def cached(*args: Any, **kwargs: Any) -> Any:
        timeout = expiration_time() if expiration_is_callable else expiration_time
        return await aget_or_create(region, key_of(args, kwargs), user_func, timeout, should_cache_fn,
                                    (args, kwargs))

    async def refresh(*args: Any, **kwargs: Any) -> Any:
        value = await user_func(*args, **kwargs)
        await aset(region, key_of(args, kwargs), value)
        return value

    async def invalidate(*args: Any, **kwargs: Any) -> None:
        await adelete(region, key_of(args, kwargs))

    async def set_(value: Any, *args: Any, **kwargs: Any) -> None:
        await aset(region, key_of(args, kwargs), value)

    async def get(*args: Any, **kwargs: Any) -> Any:
        return await aget(region, key_of(args, kwargs))

    return companions(cached, user_func, set_, invalidate, get, refresh)


def memoize_multi_async(region: Any, key_generator: Callable[..., Sequence[str]], user_func: Callable[..., Any],
                        expiration_time: Any, should_cache_fn: Any, asdict: bool) -> Callable[..., Any]:
    """What ``cache_multi_on_arguments`` returns for an ``async def``:
    dogpile's behaviour (one argument per key; a list, or with ``asdict`` a
    mapping), awaitable, with awaitable companions."""
    expiration_is_callable = callable(expiration_time)

    @functools.wraps(user_func)
    async def cached(*args: Any, **kwargs: Any) -> Any:
        keys = key_generator(*args, **kwargs)
        lookup = dict(zip(keys, args, strict=True))
        timeout = expiration_time() if expiration_is_callable else expiration_time
        if not asdict:

            async def create(*keys_to_create: str) -> Any:
                return await user_func(*[lookup[key] for key in keys_to_create])

            return await aget_or_create_multi(region, keys, create, timeout, should_cache_fn)

        async def create_from_dict(*keys_to_create: str) -> list[Any]:
            values = await user_func(*[lookup[key] for key in keys_to_create])
            return [values.get(lookup[key], NO_VALUE) for key in keys_to_create]

        def cache_if(value: Any) -> bool:
            return value is not NO_VALUE and (not should_cache_fn or bool(should_cache_fn(value)))

        values = await aget_or_create_multi(region, keys, create_from_dict, timeout, cache_if)
        return {arg: value for arg, value in zip(args, values, strict=True) if value is not NO_VALUE}

    async def invalidate(*args: Any) -> None:
        await adelete_multi(region, key_generator(*args))

    async def set_(mapping: Mapping[Any, Any]) -> None:
        arguments = list(mapping)
        await aset_multi(region, dict(zip(key_generator(*arguments), (mapping[a] for a in arguments), strict=True)))

    async def get(*args: Any) -> list[Any]:
        return await aget_multi(region, key_generator(*args))

    async def refresh(*args: Any) -> Any:
        keys = key_generator(*args)
        values = await user_func(*args)
        if asdict:
            await aset_multi(region, dict(zip(keys, [values[arg] for arg in args], strict=True)))
        else:
            await aset_multi(region, dict(zip(keys, values, strict=True)))
        return values

    return companions(cached, user_func, set_, invalidate, get, refresh)
