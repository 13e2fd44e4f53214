"""The hot path of a region, made cheap without changing dogpile's semantics.

- :func:`memoize`: dogpile's ``cache_on_arguments`` wraps functions with the
  ``decorator`` package, which binds the signature with :mod:`inspect` on
  every call. Here the binding is computed once: positional calls get the
  defaults appended from a precomputed table (the same arguments dogpile
  would pass to the key generator), and only calls with keyword arguments
  take the full binding. A memoised call reads and judges the value itself
  (a near hit: one dictionary lookup; Redis: the bytes, by
  :func:`fresh_payload`; memory and proxies: dogpile's own tests), creates
  a missing one by dogpile's rules without its ``Lock`` machinery, and
  hands anything else (a stale value) to ``get_or_create``.
- :class:`LazyMutex`: dogpile fetches a key's creation mutex before it knows
  whether the value is there; this stand-in fetches the real one only when
  a value has to be created.
- :func:`get_multi`: dogpile's ``get_multi`` makes four passes over the
  keys (mangle, parse, check, unwrap), each a Python call per key; here
  ASCII keys are mangled in one step, and a batch whose values are all in
  dogpile's usual form and fresh is judged and unpickled in loops of C
  (one regular expression over its headers, ``min`` of their times as
  text); any other batch is judged value by value, in one pass.
- :func:`parse_metadata`: dogpile's metadata header is ``{"ct": <float>,
  "v": <int>}``; it is read without :mod:`json` when it has that exact
  shape, and with :mod:`json` otherwise.
"""

from __future__ import annotations

import functools
import inspect
import json
import operator
import pickle
import re
import threading
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

from dogpile.cache.api import NO_VALUE
from dogpile.cache.exception import DogpileCacheException

from ._compat import DOGPILE_METADATA_DELIMITER
from .metrics import Creation, thread_creations

__all__ = ["LazyMutex", "companions", "creating_uncached", "get_multi", "judged_multi", "key_function", "mangled_many",
           "memoize", "parse_metadata"]

_SIMPLE = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
#: Arguments -> key pairs remembered per memoised function, at most.
MEMO_SIZE = 4096
#: What a memoised call's read found when Redis holds no value for the key.
ABSENT: Any = object()
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

    # (key, mangled key) of positional calls whose arguments are all exactly
    # str (1 == 1.0 == True and a StrEnum member == its value as dict keys,
    # not as key text), for the key mangler they were made with (a
    # configure() may change it)
    memo: dict[tuple[Any, ...], tuple[str, str]] = {}
    memo_of: list[Any] = [None]
    single = count == 1

    def keys_of(args: tuple[Any, ...], text: bool) -> tuple[str, str]:
        mangler = region.key_mangler
        key = key_generator(*args)
        found = key, mangler(key)
        if text:
            if mangler is not memo_of[0] or len(memo) >= MEMO_SIZE:
                memo.clear()
                memo_of[0] = mangler
            memo[args] = found
        return found

    reads: list[Any] = [None, None]  # a backend, and its remember_read (None: no fast hits)

    @functools.wraps(user_func)  # name, docstring, __wrapped__ (inspect.signature follows it)
    def cached(*args: Any, **kwargs: Any) -> Any:
        timeout = expiration_time() if expiration_is_callable else expiration_time
        if kwargs or len(args) != count:
            return get_or_create(key_of(args, kwargs), creation, timeout, should_cache_fn, (args, kwargs))
        near = region._near
        nearby = near is not None and near.enabled
        if not nearby:
            backend = region.backend
            if backend is not reads[0]:
                reads[0], reads[1] = backend, getattr(backend, "remember_read", None)
        text = type(args[0]) is str if single else all(type(arg) is str for arg in args)
        keys = memo.get(args) if text and region.key_mangler is memo_of[0] else None
        if keys is None:
            keys = keys_of(args, text)
        if nearby:  # a near hit skips dogpile's lock machinery: NearCache.fetch's steps, inline
            entry = near.entries.get(keys[1])
            if entry is not None:
                payload, _, created, copy, pickled = entry
                expires = region.expiration_time if timeout is None else timeout
                if (expires is None or expires == -1 or time.time() - created <= expires) \
                        and created >= near.valid_from:
                    near.hits += 1
                    stats = region._stats
                    if stats is not None:
                        stats.hits += 1
                    if copy is not None:
                        return copy(payload)
                    return pickle.loads(payload) if pickled else payload
            found = NO_VALUE
        elif reads[1] is None:  # memory, or proxies: what the region reads (a CachedValue), judged as dogpile does
            expiration = expiration_of(region, timeout)
            judged = judge(region, region._get_from_backend(keys[1]), keys[1], expiration)
            # none, or hard-invalidated (dogpile's "no value"): created as a cold miss; stale: get_or_create's
            found = ABSENT if judged is None else judged[0] if fresh(judged, expiration) else NO_VALUE
        elif region.deserializer is None or region.async_creation_runner is not None or region._format is not None:
            found = NO_VALUE  # get_or_create reads it (a json or keyv namespace: through its format)
        else:  # so does a fresh value read from Redis (a backend with remember_read: Redis, no proxies)
            raw = reads[0].get_serialized(keys[1])
            if raw is NO_VALUE:
                found = ABSENT  # nothing to hand on
            else:
                found = fresh_payload(region, raw, timeout)
                if found is NO_VALUE:  # what was read is get_or_create's first read: no extra round trip
                    reads[1](keys[1], raw)
        if found is ABSENT:  # a cold miss: dogpile's rules for it, without its lock machinery
            return _create_absent(region, keys[1], creation, timeout, should_cache_fn, args, kwargs)
        if found is NO_VALUE:
            try:
                return get_or_create(keys[0], creation, timeout, should_cache_fn, (args, kwargs))
            finally:
                if reads[1] is not None:  # unused if get_or_create did not read (it always does)
                    reads[1](None, None)
        stats = region._stats
        if stats is not None:
            stats.hits += 1
        return found

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

    return companions(cached, user_func, set_, invalidate, get, refresh)


def companions(cached: Callable[..., Any], user_func: Callable[..., Any], set_: Callable[..., Any],
               invalidate: Callable[..., Any], get: Callable[..., Any],
               refresh: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``cached`` (and ``user_func``, as dogpile does) the attributes of
    a memoised function: ``set``, ``invalidate``, ``get``, ``refresh``,
    ``original``, and ``user_func``'s signature; shared by :func:`memoize`
    and :mod:`librecache.aio`."""
    # inspect.getfullargspec does not follow __wrapped__ but honours __signature__
    cached.__signature__ = inspect.signature(user_func)  # type: ignore[attr-defined]
    for target in (user_func, cached):
        target.set = set_  # type: ignore[attr-defined]
        target.invalidate = invalidate  # type: ignore[attr-defined]
        target.get = get  # type: ignore[attr-defined]
        target.refresh = refresh  # type: ignore[attr-defined]
        target.original = user_func  # type: ignore[attr-defined]
    return cached


def fresh_payload(region: Any, raw: bytes, timeout: float | None) -> Any:
    """The unpickled payload of ``raw`` (a value's bytes as the backend
    returns them) when dogpile's ``get_or_create`` with ``timeout`` (its
    ``expiration_time`` argument) would return it as it is: stored in
    dogpile's usual header, fresh, not invalidated (hard or soft); else
    ``NO_VALUE``, and the region reads it as it reads every value. Shared by
    the sync hit path and :mod:`librecache.aio`."""
    header, _, pickled = raw.partition(DOGPILE_METADATA_DELIMITER)
    usual = _USUAL_HEADER(header)
    if usual is None:  # another form, which JSON may read or refuse: dogpile's parser judges it
        return NO_VALUE
    created = float(usual[1])
    expires = region.expiration_time if timeout is None else timeout
    if (expires is None or expires == -1 or time.time() - created <= expires) \
            and not region.region_invalidator.is_invalidated(created):
        try:
            return region.deserializer(pickled)
        except Exception:  # not unpickled: as get_or_create reads it (logged)
            pass
    return NO_VALUE


#: dogpile's message when soft invalidation meets a value without expiration time.
SOFT_WITHOUT_TTL = "Non-None expiration time required for soft invalidation"


def expiration_of(region: Any, expiration_time: float | None) -> float | None:
    """``get_or_create``'s reading of its ``expiration_time`` argument."""
    if expiration_time is None:
        expiration_time = region.expiration_time
    return None if expiration_time == -1 else expiration_time


def judge(region: Any, value: Any, key: Any, expiration_time: float | None) -> tuple[Any, float] | None:
    """``(payload, created)`` of a value ``get_or_create`` may use (created
    as dogpile's soft invalidation reads it), or ``None`` when the value
    must be created: dogpile's own tests (its ``get_value``)."""
    if region._is_cache_miss(value, key):
        return None
    created = value.metadata["ct"]
    if region.region_invalidator.is_soft_invalidated(created):
        if expiration_time is None:
            raise DogpileCacheException(SOFT_WITHOUT_TTL)
        created = time.time() - expiration_time - 0.0001
    return value.payload, created


def fresh(found: tuple[Any, float] | None, expiration_time: float | None) -> bool:
    """dogpile's ``Lock._is_expired``, negated."""
    return found is not None and (expiration_time is None or time.time() - found[1] <= expiration_time)


def _create_absent(region: Any, key: str, creation: Creation, timeout: float | None, should_cache_fn: Any,
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``get_or_create`` of the mangled ``key`` whose read found nothing in
    Redis, by dogpile's rules for that case (its ``Lock``: take the creation
    mutex, re-check the value, create, store, release) without the lock
    machinery around them: the same mutex (:class:`LazyMutex`, so the
    creation lock, its budget and its counters), the same re-check (answered
    by the lock's own script), the same creator wrapper, checks and store."""
    expiration_time = expiration_of(region, timeout)
    mutex = region._mutex(key)
    mutex.acquire()
    try:
        again = judge(region, region._get_from_backend(key), key, expiration_time)
        if fresh(again, expiration_time):  # another caller created it meanwhile
            stats = region._stats
            if stats is not None:
                stats.hits += 1
            return again[0]  # type: ignore[index]
        created = creation(*args, **kwargs)
        value = region._value(created)
        if expiration_time is None and region.region_invalidator.was_soft_invalidated():
            raise DogpileCacheException(SOFT_WITHOUT_TTL)
        if not should_cache_fn or should_cache_fn(created):
            region._set_cached_value_to_backend(key, value)
        return created
    finally:
        mutex.release()


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


_CT_HEAD = b'{"ct": '
#: A creation time as ``repr`` writes a time between 2001 and 2286: a form
#: that float() and JSON read alike, and whose text order is numeric order.
_USUAL_TIME = rb'[1-9][0-9]{9}\.[0-9]+'
#: dogpile's usual header with its time in that form (the time captured).
_USUAL_HEADER = re.compile(rb'\{"ct": (%s), "v": 2\}' % _USUAL_TIME).fullmatch


def get_multi(region: Any, keys: Any, expiration_time: float | None, ignore_expiration: bool) -> list[Any]:
    """dogpile's :meth:`~dogpile.cache.region.CacheRegion.get_multi` of
    ``region``, with the same results: each value, or ``NO_VALUE`` when it
    is missing, older than ``expiration_time`` (the region's when
    ``None``) unless ``ignore_expiration``, or invalidated."""
    keys = mangled_many(region, keys)
    if not keys:
        return []
    raw = reads_bytes(region)
    found = region.backend.get_serialized_multi(keys) if raw else region._get_multi_from_backend(keys)
    return judged_multi(region, found, raw, expiration_time, ignore_expiration)


def reads_bytes(region: Any) -> bool:
    """Whether ``region``'s values are read as the backend's bytes and
    judged here (dogpile's pickled values: a deserializer, no json or keyv
    format, no near cache serving), rather than parsed by the region first.
    Shared by :func:`get_multi` and the async door."""
    near = region._near
    return region.deserializer is not None and region._format is None and (near is None or not near.enabled)


def mangled_many(region: Any, keys: Any) -> list[Any]:
    """``keys`` (any iterable) as the region's key mangler makes them (ASCII
    ``str`` keys in one step when it can: its ``many``)."""
    given = list(keys)
    mangler = region.key_mangler
    if mangler is None or not given:
        return given
    many = getattr(mangler, "many", None)
    mangled: list[Any] = many(given) if many is not None else [mangler(key) for key in given]
    return mangled


def judged_multi(region: Any, found: list[Any], raw: bool, expiration_time: float | None,
                 ignore_expiration: bool) -> list[Any]:
    """The answers of dogpile's ``get_multi`` for the values ``found`` under
    its keys: each payload, or ``NO_VALUE`` when missing, older than
    ``expiration_time`` (the region's when ``None``) unless
    ``ignore_expiration``, or invalidated. ``found``: the backend's bytes
    (``raw``; dogpile's pickled values) or :class:`CachedValue` objects.
    Shared by :func:`get_multi` and :func:`librecache.aio.aget_multi` (which
    loads the invalidation marks first: no sync read in an event loop)."""
    loads = region.deserializer
    is_invalidated: Callable[[float], bool] | None = None
    now = 0.0
    if ignore_expiration:
        expiration_time = None
    else:
        if expiration_time is None:
            expiration_time = region.expiration_time
        invalidator = region.region_invalidator
        now = time.time()
        # the marks are loaded by the first look; none set: no value is invalidated
        if invalidator.is_invalidated(now) or invalidator.was_hard_invalidated() \
                or invalidator.was_soft_invalidated():
            is_invalidated = invalidator.is_invalidated
    if raw:
        oldest = _oldest_text(region.region_invalidator, now, expiration_time, is_invalidated)
        if oldest is not None:
            every = _all_fresh(found, loads, _CT_HEAD + oldest)
            if every is not None:
                return every
            return _text_judged(region, found, oldest, now, expiration_time, is_invalidated)
    elif expiration_time is None and is_invalidated is None:  # no value can be stale: only read them
        return [value if value is NO_VALUE else value.payload for value in found]
    values: list[Any] = []
    append = values.append
    for value in found:
        if value is NO_VALUE or value is None:
            append(NO_VALUE)
        elif raw:  # a threshold text cannot say (another invalidator, a time of another form): as the region reads it
            append(_judged(region, value, now, expiration_time, is_invalidated))
        else:
            append(NO_VALUE if _stale(value.metadata["ct"], now, expiration_time, is_invalidated) else value.payload)
    return values


#: Headers in dogpile's usual form, creation times written as ``repr`` writes them, one per line.
_FORMED = re.compile(rb'(?:\{"ct": %s, "v": 2\}\n)*\{"ct": %s, "v": 2\}' % (_USUAL_TIME, _USUAL_TIME))
_HEADER = operator.itemgetter(0)
_PAYLOAD = operator.itemgetter(2)


def _all_fresh(found: list[Any], loads: Callable[[bytes], Any], threshold: bytes) -> list[Any] | None:
    """Every value of ``found`` (bytes, or ``NO_VALUE``) unpickled, when
    each one present is in dogpile's usual form with a creation time as
    :func:`_oldest_text` writes them, none is older than ``threshold`` (its
    header text), and each unpickles; else ``None``, and the caller judges
    them one by one. Judged and unpickled in loops of C (``map``, one
    regular expression over the headers joined, ``min``), not of Python: a
    batch of values all fresh is the common case, and the one that costs."""
    def split(values: list[Any]) -> list[tuple[bytes, bytes, bytes]]:
        return list(map(bytes.partition, values, repeat(DOGPILE_METADATA_DELIMITER, len(values))))

    present = found
    try:
        parts = split(present)
    except TypeError:  # NO_VALUE among them
        present = [value for value in found if value is not NO_VALUE]
        if not present:
            return list(found)
        try:
            parts = split(present)
        except TypeError:
            return None
    headers = list(map(_HEADER, parts))
    joined = b"\n".join(headers)
    # as many lines as values (no header holds a line break), each well formed, the oldest fresh
    if joined.count(b"\n") != len(headers) - 1 or _FORMED.fullmatch(joined) is None or min(headers) < threshold:
        return None
    try:
        values = list(map(loads, map(_PAYLOAD, parts)))
    except Exception:  # CantDeserializeException, or corrupt: the caller reads each as the region does (logged)
        return None
    if present is found:
        return values
    unpickled = iter(values)
    return [NO_VALUE if value is NO_VALUE else next(unpickled) for value in found]


def _text_judged(region: Any, found: list[Any], oldest: bytes, now: float, expiration_time: float | None,
                 is_invalidated: Callable[[float], bool] | None) -> list[Any]:
    """The values of ``found`` (bytes, or ``NO_VALUE``) judged one by one:
    dogpile's usual headers compared as text with ``oldest`` (see
    :func:`_oldest_text`), no float parsed; others as the region reads them."""
    loads = region.deserializer
    values: list[Any] = []
    append = values.append
    for value in found:
        if value is NO_VALUE:
            append(NO_VALUE)
            continue
        header, _, payload = value.partition(DOGPILE_METADATA_DELIMITER)
        usual = _USUAL_HEADER(header)
        if usual is not None:
            if usual[1] < oldest:
                append(NO_VALUE)
                continue
            try:
                append(loads(payload))
                continue
            except Exception:  # CantDeserializeException, or corrupt: as the region reads it (logged)
                pass
        append(_judged(region, value, now, expiration_time, is_invalidated))
    return values


def _oldest_text(invalidator: Any, now: float, expiration_time: float | None,
                 is_invalidated: Callable[[float], bool] | None) -> bytes | None:
    """The creation time before which a value is stale (expired, or
    invalidated), as dogpile's header writes times (``repr``: ten integer
    digits, a point, the decimals), so that headers of that form compare
    with it as text exactly as their times compare as numbers (the point at
    the same place; shorter decimals are smaller); ``None`` when that
    cannot be (an invalidator of another kind, a time of another form)."""
    oldest = 0.0 if expiration_time is None else now - expiration_time
    if is_invalidated is not None:
        before = getattr(invalidator, "invalidated_before", None)
        if before is None:
            return None
        oldest = max(oldest, before())
    if oldest == 0.0:
        return b"0"  # every ten-digit time is later
    text = repr(oldest).encode()
    if len(text) > 11 and text[10:11] == b"." and text[:10].isdigit():
        return text
    return None


def _judged(region: Any, value: bytes, now: float, expiration_time: float | None,
            is_invalidated: Callable[[float], bool] | None) -> Any:
    """The payload of ``value`` (bytes) as the region reads it, or
    ``NO_VALUE`` when it is missing, corrupt, expired or invalidated."""
    parsed = region._parse_serialized_from_backend(value)
    if parsed is NO_VALUE or _stale(parsed.metadata["ct"], now, expiration_time, is_invalidated):
        return NO_VALUE
    return parsed.payload


def _stale(created: float, now: float, expiration_time: float | None,
           is_invalidated: Callable[[float], bool] | None) -> bool:
    """dogpile's ``get_multi`` judgement of a value created at ``created``:
    older than ``expiration_time`` at ``now``, or invalidated."""
    return (expiration_time is not None and now - created > expiration_time) or \
        (is_invalidated is not None and is_invalidated(created))
