"""The hot path of a region, made cheap without changing dogpile's semantics.

- :func:`memoize`: dogpile's ``cache_on_arguments`` wraps functions with the
  ``decorator`` package, which binds the signature with :mod:`inspect` on
  every call. Here the binding is computed once: positional calls get the
  defaults appended from a precomputed table (the same arguments dogpile
  would pass to the key generator), and only calls with keyword arguments
  take the full binding.
- :class:`LazyMutex`: dogpile fetches a key's creation mutex before it knows
  whether the value is there; this stand-in fetches the real one only when
  a value has to be created.
- :func:`parse_metadata`: dogpile's metadata header is ``{"ct": <float>,
  "v": <int>}``; it is read without :mod:`json` when it has that exact
  shape, and with :mod:`json` otherwise.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from dogpile.cache.api import NO_VALUE

from .metrics import Creation, thread_creations

__all__ = ["LazyMutex", "creating_uncached", "key_function", "memoize", "parse_metadata"]

_SIMPLE = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_METADATA = re.compile(rb'^\{"ct": ([0-9.e+-]+), "v": (\d+)\}$')


Bound = tuple[tuple[Any, ...], dict[str, Any]]


def binder(user_func: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], Bound]:
    """A function (args, kwargs) -> (args, kwargs) bound to the signature
    with defaults applied, as the ``decorator`` package computes them."""
    signature = inspect.signature(user_func)
    parameters = list(signature.parameters.values())
    simple = all(p.kind in _SIMPLE for p in parameters)
    count = len(parameters)
    defaults = tuple(p.default for p in parameters)

    def slow(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Bound:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.args, bound.kwargs

    if not simple:
        return slow

    def fast(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Bound:
        given = len(args)
        if kwargs or given > count:
            return slow(args, kwargs)
        if given == count:
            return args, kwargs
        missing = defaults[given:]
        if inspect.Parameter.empty in missing:
            return slow(args, kwargs)  # raises the TypeError Python would
        return args + missing, kwargs

    return fast


def memoize(
    region: Any,
    key_generator: Callable[..., str],
    user_func: Callable[..., Any],
    expiration_time: Any,
    should_cache_fn: Any,
) -> Callable[..., Any]:
    """The wrapper ``cache_on_arguments`` returns, with dogpile's attributes
    (``set``, ``get``, ``invalidate``, ``refresh``, ``original``)."""
    expiration_is_callable = callable(expiration_time)
    get_or_create = region._get_or_create_counted
    creation = Creation(region, user_func)

    count = _positional_count(user_func)
    key_of = key_function(key_generator, user_func)

    @functools.wraps(user_func)  # name, docstring, __wrapped__ (inspect.signature follows it)
    def cached(*args: Any, **kwargs: Any) -> Any:
        key = key_generator(*args) if not kwargs and len(args) == count else key_of(args, kwargs)
        timeout = expiration_time() if expiration_is_callable else expiration_time
        near = region._near
        if near is not None and near.enabled:  # a near hit skips dogpile's lock machinery
            value = near.lookup(region.key_mangler(key), region.expiration_time if timeout is None else timeout,
                                region.region_invalidator)
            if value is not NO_VALUE:
                stats = region._stats
                if stats is not None:
                    stats.hits += 1
                return value.payload
        return get_or_create(key, creation, timeout, should_cache_fn, (args, kwargs))

    def refresh(*args: Any, **kwargs: Any) -> Any:
        value = user_func(*args, **kwargs)
        region.set(key_of(args, kwargs), value)
        return value

    def invalidate(*args: Any, **kwargs: Any) -> None:
        region.delete(key_of(args, kwargs))

    def set_(value: Any, *args: Any, **kwargs: Any) -> None:
        region.set(key_of(args, kwargs), value)

    def get(*args: Any, **kwargs: Any) -> Any:
        return region.get(key_of(args, kwargs))

    # inspect.getfullargspec does not follow __wrapped__ but honours __signature__
    cached.__signature__ = inspect.signature(user_func)  # type: ignore[attr-defined]
    for target in (user_func, cached):
        target.set = set_  # type: ignore[attr-defined]
        target.invalidate = invalidate  # type: ignore[attr-defined]
        target.get = get  # type: ignore[attr-defined]
        target.refresh = refresh  # type: ignore[attr-defined]
        target.original = user_func  # type: ignore[attr-defined]
    return cached


def key_function(key_generator: Callable[..., str],
                 user_func: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
    """(args, kwargs) -> the key of a memoised call, as dogpile computes it
    (arguments bound to the signature, defaults applied); shared by
    :func:`memoize` and :func:`librecache.aio.memoize_async`."""
    bind = binder(user_func)
    count = _positional_count(user_func)

    def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if not kwargs and len(args) == count:
            return key_generator(*args)
        bound_args, bound_kwargs = bind(args, kwargs)
        return key_generator(*bound_args, **bound_kwargs)

    return key_of


def _positional_count(user_func: Callable[..., Any]) -> int:
    """How many positional parameters, or -1 when the signature is not a
    plain list of them (then every call is bound)."""
    parameters = list(inspect.signature(user_func).parameters.values())
    if all(p.kind in _SIMPLE for p in parameters):
        return len(parameters)
    return -1


#: The keys whose values this thread creates without caching them (see :class:`LazyMutex`).
_uncached = threading.local()


def creating_uncached(key: str) -> bool:
    """Whether this thread creates ``key``'s value without having (or having
    confirmed) its creation lock: the value is returned, not stored."""
    keys: set[str] | None = getattr(_uncached, "keys", None)
    return keys is not None and key in keys


class LazyMutex:
    """Stands for a key's creation mutex; takes the real one (from the
    region's registry, so that every thread of the process shares it) only
    when asked to acquire.

    A blocking acquire waits at most the call's budget (two attempts of
    connect and reply time-outs, counted from when the call started) when
    the real mutex offers ``acquire_within`` (the Redis one). A caller that
    cannot get or confirm the lock in time goes on as if it held it, but
    the value it creates is not stored (:func:`creating_uncached`), so no
    call ever waits for a lock timeout."""

    __slots__ = ("_created", "_key", "_mutex", "_registry", "_started", "_stats")

    def __init__(self, registry: Any, key: str, stats: Any = None) -> None:
        self._registry = registry
        self._key = key
        self._mutex: Any = None
        self._started = time.monotonic()
        #: The namespace's counters: a holder that releases without having
        #: created the value got another creator's (a lock wait).
        self._stats = stats
        self._created = 0

    def acquire(self, wait: bool = True) -> bool:
        if self._stats is not None:
            self._created = thread_creations()
        mutex = self._mutex = self._registry.get(self._key)
        within = getattr(mutex, "acquire_within", None) if wait else None
        if within is None:
            return bool(mutex.acquire(wait))
        if within(self._started):
            return True
        self._mutex = None
        keys = getattr(_uncached, "keys", None)
        if keys is None:
            keys = _uncached.keys = set()
        keys.add(self._key)
        return True

    def release(self) -> None:
        stats = self._stats
        if stats is not None and thread_creations() == self._created:
            stats.lock_waits += 1
        mutex, self._mutex = self._mutex, None
        if mutex is None:
            getattr(_uncached, "keys", set()).discard(self._key)
            return
        mutex.release()

    def locked(self) -> bool:
        """Whether a creator holds the key's lock, in this process or (with
        Redis) another one."""
        mutex = self._mutex if self._mutex is not None else self._registry.get(self._key)
        return bool(mutex.locked())


def parse_metadata(header: bytes) -> dict[str, Any]:
    """dogpile's metadata header, parsed."""
    match = _METADATA.match(header)
    if match is not None:
        return {"ct": float(match.group(1)), "v": int(match.group(2))}
    parsed = json.loads(header)
    if not isinstance(parsed, dict):
        raise ValueError("the metadata is not an object")
    return parsed
