"""The rules of the cache, with no I/O: what a value read is worth.

dogpile.cache's rules, written once for both doors and every backend:

- a value is **absent** (must be created, callers wait for its creator)
  when nothing is stored, when it was written by another version of
  dogpile's format, when it is older than the namespace's last hard
  invalidation, or when it carries a tag invalidated after its creation
  began (:mod:`librecache.tags`: :func:`tagged_out`);
- it is **stale** (one caller recreates it while the others get it) when
  it is older than the expiration time, or than the last soft
  invalidation (which needs an expiration time);
- otherwise it is **fresh**.

A value's creation time (dogpile's ``ct``) is the time its creation
*started*: a creation that began before an invalidation makes a value
that this invalidation covers (see ``docs/design.rst``, Consistency).

:data:`USUAL_HEADER` recognises dogpile's usual bytes, which the hit
path (:func:`librecache.engine.ports.stored_hit`) judges without parsing
them into a :class:`~dogpile.cache.api.CachedValue`; :func:`judged_multi`
judges a whole batch of them (``get_multi``).
"""

from __future__ import annotations

import json
import operator
import re
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

from dogpile.cache.api import NO_VALUE, CachedValue
from dogpile.cache.exception import DogpileCacheException
from dogpile.cache.region import value_version

from .._compat import DOGPILE_METADATA_DELIMITER
from ..tags import TAG_FIELD
from .policy import PLAIN, Policy, jitter

__all__ = [
    "ABSENT",
    "CREATION_TIMES",
    "FRESH",
    "SOFT_WITHOUT_TTL",
    "STALE",
    "TAGGED_OUT",
    "USUAL_HEADER",
    "expiration_of",
    "judged_multi",
    "made",
    "parse_metadata",
    "reads_bytes",
    "refresh_due",
    "spare",
    "tagged_out",
    "throttled",
    "usual_time",
    "verdict",
]

#: The verdicts on a value read (see the module).
FRESH, STALE, ABSENT = "fresh", "stale", "absent"

#: The payload of an ABSENT verdict on a value whose tag was invalidated
#: (counted once: a flow that goes on from it sees nothing stored).
TAGGED_OUT: Any = object()

#: dogpile's message when soft invalidation meets a value without expiration time.
SOFT_WITHOUT_TTL = "Non-None expiration time required for soft invalidation"


def expiration_of(region: Any, expiration_time: float | None) -> float | None:
    """``get_or_create``'s reading of its ``expiration_time`` argument: the
    region's when ``None``; ``-1``: never expires (``None``)."""
    if expiration_time is None:
        expiration_time = region.expiration_time
    return None if expiration_time == -1 else expiration_time


def tagged_out(region: Any, metadata: dict[str, Any], count: bool = True) -> bool:
    """Whether the value with ``metadata`` carries a tag invalidated after
    its creation began (or is too old for the tags' record to vouch for it:
    :meth:`~librecache.tags.TagBook.valid`); counted as a ``tag_misses`` of
    ``region`` when ``count``. An untagged value: ``False``, at once."""
    tags = metadata.get(TAG_FIELD)
    if tags is None or region.tag_book.valid(tags, metadata["ct"]):
        return False
    stats = region.counters
    if count and stats is not None:
        stats.tag_misses += 1
    return True


def verdict(region: Any, value: Any, expiration_time: float | None, policy: Policy = PLAIN,
            key: str = "") -> tuple[str, Any]:
    """``(FRESH | STALE | ABSENT, payload)`` of ``value`` (a
    :class:`CachedValue` or ``NO_VALUE``) stored under ``key`` for a call
    whose expiration time is ``expiration_time`` (as :func:`expiration_of`
    reads it) and whose settings are ``policy``:

    - the value's TTL is ``expiration_time`` plus its jitter
      (:func:`~librecache.engine.policy.jitter`);
    - a value the fail-safe served is fresh until its throttle ends
      (its ``fs`` metadata), unless hard-invalidated or deleted;
    - with a fail-safe longer than the grace, a value expired for longer
      than the grace is absent (callers wait for its creator), though kept
      for the fail-safe (:func:`spare`).

    :raises DogpileCacheException: a soft-invalidated value and no
        expiration time (dogpile's rule).
    """
    if value is NO_VALUE:
        return ABSENT, None
    metadata = value.metadata
    created = metadata["ct"]
    invalidator = region.region_invalidator
    if metadata["v"] != value_version or invalidator.is_hard_invalidated(created):
        return ABSENT, None
    if TAG_FIELD in metadata and tagged_out(region, metadata):
        return ABSENT, TAGGED_OUT
    soft = invalidator.is_soft_invalidated(created)
    if soft and expiration_time is None:
        raise DogpileCacheException(SOFT_WITHOUT_TTL)
    if expiration_time is None:
        return FRESH, value.payload
    now = time.time()
    expires = expiration_time + jitter(key, created, policy.ttl_jitter) if policy.ttl_jitter else expiration_time
    age = now - created
    if not soft and age <= expires:
        return FRESH, value.payload
    if metadata.get("fs", 0.0) > now:  # served by the fail-safe: fresh for its throttle
        return FRESH, value.payload
    if policy.fail_safe > policy.grace and age > expires + policy.grace:
        return ABSENT, None
    return STALE, value.payload


def spare(region: Any, value: Any, expiration_time: float | None, policy: Policy, key: str = "") -> Any:
    """``value`` (a :class:`CachedValue`) when the fail-safe may serve it
    as its creator fails, else ``NO_VALUE``: a value of this version, not hard-invalidated
    (nor deleted: then nothing is read), expired for at most the fail-safe.
    A soft-invalidated value may be served, as soft invalidation allows."""
    if value is NO_VALUE or not policy.fail_safe or expiration_time is None:
        return NO_VALUE
    metadata = value.metadata
    created = metadata["ct"]
    if metadata["v"] != value_version or region.region_invalidator.is_hard_invalidated(created) \
            or tagged_out(region, metadata, count=False):
        return NO_VALUE
    expires = expiration_time + jitter(key, created, policy.ttl_jitter) if policy.ttl_jitter else expiration_time
    if time.time() - created > expires + policy.fail_safe:
        return NO_VALUE
    return value


def throttled(spared: CachedValue, until: float) -> CachedValue:
    """A value the fail-safe served (``spared``), to store again: its own
    creation time (so an invalidation after it still covers it, and the
    fail-safe's limit still counts from its expiry), its tags, and ``fs``,
    the end of its throttle."""
    metadata = {**spared.metadata, "v": value_version, "fs": until}
    return CachedValue(spared.payload, metadata)  # type: ignore[call-arg]


def refresh_due(value: Any, expiration_time: float | None, policy: Policy, key: str = "") -> bool:
    """Whether a fresh ``value`` is past its eager-refresh point: the
    policy's fraction of its TTL (jitter included)."""
    eager = policy.eager_refresh
    if eager is None or expiration_time is None or value is NO_VALUE:
        return False
    created = value.metadata["ct"]
    expires = expiration_time + jitter(key, created, policy.ttl_jitter) if policy.ttl_jitter else expiration_time
    return bool(time.time() - created > expires * eager)


def made(payload: Any, started: float, tags: tuple[str, ...] = ()) -> CachedValue:
    """A created value in dogpile's form, stamped with the time its creation
    started (not ended: an invalidation made while the creator ran covers
    it), carrying ``tags`` (checked: :func:`~librecache.tags.checked_tags`)."""
    if tags:
        return CachedValue(payload, {"ct": started, "v": value_version, TAG_FIELD: list(tags)})  # type: ignore[call-arg]
    return CachedValue(payload, {"ct": started, "v": value_version})  # type: ignore[call-arg]


def soft_without_ttl(region: Any, expiration_time: float | None) -> None:
    """dogpile's check after a creation: soft invalidation needs an expiration time.

    :raises DogpileCacheException: the namespace was soft-invalidated and
        the call has no expiration time.
    """
    if expiration_time is None and region.region_invalidator.was_soft_invalidated():
        raise DogpileCacheException(SOFT_WITHOUT_TTL)


#: A creation time as ``repr`` writes a time between 2001 and 2286: a form
#: that float() and JSON read alike, and whose text order is numeric order.
_USUAL_TIME = rb'[1-9][0-9]{9}\.[0-9]+'
#: dogpile's usual header with its time in that form (the time captured).
USUAL_HEADER = re.compile(rb'\{"ct": (%s), "v": 2\}' % _USUAL_TIME).fullmatch
_METADATA = re.compile(rb'^\{"ct": ([0-9.e+-]+), "v": (\d+)\}$')
#: Creation times of dogpile's usual headers read lately (by the header's
#: bytes): a hot key's hits skip the expression and the float parsing (two
#: thirds of judging a hit). At most :data:`CREATION_TIMES_SIZE`, then
#: emptied. A pure function's memo: shared by every region and thread.
CREATION_TIMES: dict[bytes, float] = {}
CREATION_TIMES_SIZE = 4096


#: dogpile's header of a tagged value (:func:`tagged_time`): the time and the tags' JSON list captured.
TAGGED_HEADER = re.compile(rb'\{"ct": (%s), "v": 2, "tg": (\[[^\]]*\])\}' % _USUAL_TIME).fullmatch
#: :func:`tagged_time`'s memo, as :data:`CREATION_TIMES` (at most :data:`CREATION_TIMES_SIZE`).
TAGGED_TIMES: dict[bytes, tuple[float, list[str]]] = {}


def tagged_time(header: bytes) -> tuple[float, list[str]] | None:
    """The creation time and tags of ``header`` when it is dogpile's usual
    header with tags (:data:`TAGGED_HEADER`), remembered in
    :data:`TAGGED_TIMES`; ``None`` for any other form."""
    tagged = TAGGED_HEADER(header)
    if tagged is None:
        return None
    try:
        tags = json.loads(tagged[2])
    except ValueError:
        return None
    if type(tags) is not list or not all(type(tag) is str for tag in tags):
        return None
    found = float(tagged[1]), tags
    if len(TAGGED_TIMES) >= CREATION_TIMES_SIZE:
        TAGGED_TIMES.clear()
    TAGGED_TIMES[header] = found
    return found


def usual_time(header: bytes) -> float | None:
    """The creation time of ``header`` when it is dogpile's usual header
    with its time in ``repr``'s form (:data:`USUAL_HEADER`), remembered in
    :data:`CREATION_TIMES`; ``None`` for any other form (dogpile's parser
    judges it)."""
    usual = USUAL_HEADER(header)
    if usual is None:
        return None
    created = float(usual[1])
    if len(CREATION_TIMES) >= CREATION_TIMES_SIZE:
        CREATION_TIMES.clear()
    CREATION_TIMES[header] = created
    return created
_CT_HEAD = b'{"ct": '


def parse_metadata(header: bytes) -> dict[str, Any]:
    """dogpile's metadata header, parsed (without :mod:`json` when it has
    dogpile's usual shape)."""
    match = _METADATA.match(header)
    if match is not None:
        return {"ct": float(match.group(1)), "v": int(match.group(2))}
    parsed = json.loads(header)
    if not isinstance(parsed, dict):
        raise ValueError("the metadata is not an object")
    return parsed


def reads_bytes(region: Any) -> bool:
    """Whether ``region``'s values are judged from the backend's bytes
    (:func:`librecache.engine.ports.stored_hit`, :func:`judged_multi`): dogpile's pickled
    values (a deserializer, no json or keyv format, no near cache serving),
    rather than parsed by the region first."""
    near = region.near_cache
    return region.deserializer is not None and region.value_format is None and (near is None or not near.enabled)


# --------------------------------------------------------------------------
# A batch (get_multi)
# --------------------------------------------------------------------------


def judged_multi(region: Any, found: list[Any], raw: bool, expiration_time: float | None,
                 ignore_expiration: bool) -> list[Any]:
    """The answers of dogpile's ``get_multi`` for the values ``found`` under
    its keys: each payload, or ``NO_VALUE`` when missing, older than
    ``expiration_time`` (the region's when ``None``) unless
    ``ignore_expiration``, or invalidated. ``found``: the backend's bytes
    (``raw``; dogpile's pickled values) or :class:`CachedValue` objects.

    A batch whose values are all in dogpile's usual form and fresh (the
    common case, and the one that costs) is judged and unpickled in loops
    of C: one regular expression over the joined headers, ``min`` of their
    creation times as text, ``map(loads)``; any other batch value by value.
    """
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
    elif expiration_time is None and is_invalidated is None and (
            ignore_expiration or not any(value is not NO_VALUE and TAG_FIELD in value.metadata for value in found)):
        return [value if value is NO_VALUE else value.payload for value in found]  # none can be stale: read them
    values: list[Any] = []
    append = values.append
    for value in found:
        if value is NO_VALUE or value is None:
            append(NO_VALUE)
        elif raw:  # a threshold text cannot say (another invalidator, a time of another form): as the region reads it
            append(_judged(region, value, now, expiration_time, is_invalidated))
        else:
            metadata = value.metadata
            append(NO_VALUE if _stale(metadata["ct"], now, expiration_time, is_invalidated)
                   or (TAG_FIELD in metadata and tagged_out(region, metadata)) else value.payload)
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
    them one by one."""
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
        usual = USUAL_HEADER(header)
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
    with it as text exactly as their times compare as numbers; ``None``
    when that cannot be (an invalidator of another kind, a time of another
    form)."""
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
    parsed = region.parse_stored(value)
    if parsed is NO_VALUE or _stale(parsed.metadata["ct"], now, expiration_time, is_invalidated) \
            or (TAG_FIELD in parsed.metadata and tagged_out(region, parsed.metadata)):
        return NO_VALUE
    return parsed.payload


def _stale(created: float, now: float, expiration_time: float | None,
           is_invalidated: Callable[[float], bool] | None) -> bool:
    """dogpile's ``get_multi`` judgement of a value created at ``created``:
    older than ``expiration_time`` at ``now``, or invalidated."""
    return (expiration_time is not None and now - created > expiration_time) or \
        (is_invalidated is not None and is_invalidated(created))
