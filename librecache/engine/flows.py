"""The flows of a cache call, written once, doing no I/O.

A flow is a generator. It yields a *request* (a named tuple below: read
this key, take this lock, run the creator, store this value...) and is
sent its result, until it returns an *outcome* (what happened: a hit, a
wait for another creator, a stale value served, a creation). A door
(:mod:`librecache.engine.doors`) performs the requests: the sync door
with plain calls, the async door awaiting them. A *port* does the I/O of
one region for one door (:mod:`librecache.engine.ports`); each request
names the port method that performs it (:data:`OPS`).

So dogpile's get-or-create, its multi-key form and the memoised call are
decided here once, for both doors and every backend: which command a
flow sends, when it waits, what it stores and when it releases. The
rules a value is judged by are :mod:`librecache.engine.judge`.

Locks and leases. A value is created under two locks: this process's
queue for the key (:class:`Queue`: a thread lock, or an asyncio lock), so
that one caller per process goes further, then the key's cross-process
lock (:class:`TryLock`: a Redis lock, or a memory backend's lease). The
cross-process lock's token is the *lease* a store must present
(:class:`Store`): a write or a delete of the key revokes it, so a creation
that began before an invalidation never stores its value after it.

The flows send the same requests from either door, so both doors send the
same Redis commands for the same case.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

from dogpile.cache.api import NO_VALUE, CachedValue

from ..errors import CreationTimeout
from .judge import ABSENT, FRESH, made, refresh_due, soft_without_ttl, spare, throttled, verdict
from .policy import PLAIN, Policy

__all__ = [
    "ACQUIRED",
    "ANY",
    "CHANGED",
    "CREATED",
    "HELD",
    "HIT",
    "OPS",
    "SPARED",
    "STALE",
    "WAITED",
    "Call",
    "Found",
    "LockReply",
    "MultiOutcome",
    "Outcome",
    "acquire",
    "get_or_create",
    "get_or_create_multi",
    "refresh",
]

#: How often a caller waiting for another process's creation lock asks again.
LOCK_POLL_INTERVAL = 0.02
#: A value that changes under a waiting caller this many times is created
#: without the lock (and not stored): a flow never loops for ever.
MAX_CHANGES = 8


# --------------------------------------------------------------------------
# What a port answers
# --------------------------------------------------------------------------


class _Any:
    def __repr__(self) -> str:
        return "ANY"


#: A :class:`Found`'s ``seen`` when the port cannot tell what is stored
#: (through proxies, a key whose write was lost): :class:`TryLock` then
#: takes the lock whatever the value, and the port reads it again.
ANY: Any = _Any()


class Found(NamedTuple):
    """What a read found."""

    #: dogpile's :class:`~dogpile.cache.api.CachedValue`, or ``NO_VALUE``.
    value: Any
    #: What is stored, as the port tells it apart (Redis: the bytes;
    #: memory: the object); ``None`` when nothing is; :data:`ANY`.
    seen: Any


#: :class:`LockReply` states.
ACQUIRED, CHANGED, HELD, ABANDONED = "acquired", "changed", "held", "abandoned"


class LockReply(NamedTuple):
    """The answer to one :class:`TryLock`."""

    #: ``ACQUIRED`` (create), ``CHANGED`` (the value is not what was seen:
    #: judge ``current``), ``HELD`` (another creator holds the lock),
    #: ``ABANDONED`` (held by an acquisition of this process that failed
    #: midway: break it, then try again).
    state: str
    #: ``ACQUIRED``: the token a store presents; ``None``: taken in this
    #: process only (Redis could not be asked), and what is created is not stored.
    lease: Any = None
    #: The value stored now, when the port read it (``CHANGED``; ``ACQUIRED`` through proxies):
    #: a :class:`Found` (a backend's own reply holds what it read, which its port turns into one).
    current: Any = None
    #: ``ABANDONED``: the holder's token.
    holder: Any = None


# --------------------------------------------------------------------------
# Requests: each names the port method that performs it (OPS)
# --------------------------------------------------------------------------


class Read(NamedTuple):
    """Read ``key`` -> :class:`Found`."""

    key: str


class ReadMany(NamedTuple):
    """Read ``keys`` -> a :class:`Found` each (one round trip)."""

    keys: list[str]


class Queue(NamedTuple):
    """Take this process's queue for ``key`` (blocking until ``deadline``,
    :func:`time.monotonic`, or for ever when ``None``, if ``wait``; else
    only if free) -> a handle for :class:`Dequeue`, or ``None``."""

    key: str
    wait: bool
    deadline: float | None


class Dequeue(NamedTuple):
    """Leave the queue taken by :class:`Queue`."""

    key: str
    handle: Any


class TryLock(NamedTuple):
    """One attempt at ``key``'s cross-process lock -> :class:`LockReply`.
    Atomic with a look at the value: when what is stored is not ``seen``
    (a :class:`Found`'s), the answer is ``CHANGED`` with the value, and no
    lock is taken; ``seen`` :data:`ANY`: no look."""

    key: str
    seen: Any


class BreakLock(NamedTuple):
    """Release ``key``'s lock held by ``holder`` (an abandoned token of this process)."""

    key: str
    holder: Any


class Sleep(NamedTuple):
    """Pause ``seconds`` (a poll of a lock held elsewhere)."""

    seconds: float


class Create(NamedTuple):
    """Run ``creator(*args, **kwargs)`` -> its value (awaited by the async
    door when it is awaitable)."""

    creator: Callable[..., Any]
    args: Sequence[Any]
    kwargs: dict[str, Any]


class Store(NamedTuple):
    """Store ``value`` under ``key`` if ``lease`` still holds its lock, and
    release the lock -> whether it was stored. The lease is consumed
    (released) whatever happens, even when the store raises."""

    key: str
    value: CachedValue
    lease: Any


class StoreMany(NamedTuple):
    """:class:`Store` for each ``(key, value, lease)`` (one round trip) ->
    whether each was stored."""

    items: list[tuple[str, CachedValue, Any]]


class Release(NamedTuple):
    """Release ``key``'s lock if ``lease`` still holds it."""

    key: str
    lease: Any


class HandOff(NamedTuple):
    """Hand the stale value's recreation to dogpile's
    ``async_creation_runner`` (the sync door only): the runner gets a
    mutex whose ``release()`` releases ``lease`` and leaves the queue."""

    call: Call
    handle: Any
    lease: Any


class Start(NamedTuple):
    """Start ``creator(*args, **kwargs)`` beside the caller (a thread of the
    registry's pool, or a task: :mod:`librecache.engine.background`) -> a
    job for :class:`Wait`. Only for a call with a time-out."""

    creator: Callable[..., Any]
    args: Sequence[Any]
    kwargs: dict[str, Any]


class Wait(NamedTuple):
    """Wait for ``job`` at most ``seconds`` (``None``: until it ends) ->
    ``(True, its value)``, or ``(False, None)`` while it runs on; the
    creator's exception is raised."""

    job: Any
    seconds: float | None


class Spare(NamedTuple):
    """What this process still holds of ``key`` (its near cache's copy,
    served or kept since the channel was lost) -> a :class:`CachedValue`
    or ``NO_VALUE``, for the fail-safe when nothing was read."""

    key: str


class Detach(NamedTuple):
    """Give ``outcome`` to the caller now (raise it, when it is an
    exception); the door runs the rest of the flow in the background, where
    a failure is logged and counted, never raised."""

    outcome: Any


class Note(NamedTuple):
    """Count ``event``, one of the region's counters (:mod:`librecache.stats`)."""

    event: str


#: The port method that performs each request (:class:`Detach` is the door's own).
OPS: dict[type, str] = {
    Read: "read", ReadMany: "read_many", Queue: "queue", Dequeue: "dequeue", TryLock: "try_lock",
    BreakLock: "break_lock", Sleep: "sleep", Create: "create", Store: "store", StoreMany: "store_many",
    Release: "release", HandOff: "hand_off", Start: "start", Wait: "wait", Note: "note", Spare: "spare",
}


# --------------------------------------------------------------------------
# Outcomes: counted by the doors (librecache.stats)
# --------------------------------------------------------------------------

#: :class:`Outcome` kinds: a fresh value; another creator's value after
#: waiting for its lock; a stale value while another recreates it; a
#: value this call created; a stale value the fail-safe served (its
#: creator failed, or outlasted the soft time-out).
HIT, WAITED, STALE, CREATED, SPARED = "hit", "waited", "stale", "created", "spared"


class Outcome(NamedTuple):
    """What a single-key flow did."""

    kind: str
    value: Any
    #: ``CREATED``: how long the creator ran.
    seconds: float = 0.0


class MultiOutcome(NamedTuple):
    """What a multi-key flow did."""

    #: The value of each key asked for, in order.
    values: list[Any]
    #: Keys created (by one creator run), keys that waited for another creator.
    created: int
    waited: int
    #: How long the creator ran; ``None``: it did not run.
    seconds: float | None


class Call:
    """One get-or-create call: its key, creator and rules.

    :param region: the :class:`~librecache.LibreRegion`.
    :param key: the key as stored (mangled); ``orig_key`` as given.
    :param expiration: the call's expiration time, as
        :func:`~librecache.engine.judge.expiration_of` reads it.
    :param deadline: when waiting for another creator ends
        (:func:`time.monotonic`), or ``None``: never.
    :param runner: dogpile's ``async_creation_runner`` (sync door only).
    :param policy: the call's fail-safe, time-outs, eager refresh and
        jitter (:class:`~librecache.engine.policy.Policy`).
    :param tags: the tags its created values carry (:mod:`librecache.tags`):
        checked strings, or a function of no argument that returns them
        (a memoised function's ``tags=`` callable, bound to its arguments),
        called when a creation starts.
    """

    __slots__ = ("args", "creator", "deadline", "expiration", "key", "kwargs", "orig_key", "policy", "region",
                 "runner", "should_cache", "started", "tags")

    def __init__(self, region: Any, key: str, orig_key: Any, creator: Callable[..., Any], args: Sequence[Any],
                 kwargs: dict[str, Any], expiration: float | None, should_cache: Callable[[Any], bool] | None,
                 deadline: float | None, runner: Any = None, policy: Policy = PLAIN,
                 tags: tuple[str, ...] | Callable[[], Any] = ()) -> None:
        self.region = region
        self.key = key
        self.orig_key = orig_key
        self.creator = creator
        self.args = args
        self.kwargs = kwargs
        self.expiration = expiration
        self.should_cache = should_cache
        self.deadline = deadline
        self.runner = runner
        self.policy = policy
        self.tags = tags
        #: When the call began (:func:`time.monotonic`): its time-outs count
        #: from here (0.0 for a call without time-outs).
        self.started = time.monotonic() if policy.timed else 0.0


Flow = Generator[Any, Any, Any]


# --------------------------------------------------------------------------
# The flows
# --------------------------------------------------------------------------


def acquire(key: str, seen: Any, wait: bool, deadline: float | None) -> Generator[Any, Any, LockReply]:
    """Take ``key``'s cross-process lock, this process's queue being held:
    poll while another creator holds it (if ``wait``, until ``deadline``);
    break a lock this process abandoned. Returns the last reply:
    ``ACQUIRED``, ``CHANGED`` (judge the value), or ``HELD`` (not waiting,
    or the deadline passed)."""
    while True:
        reply: LockReply = yield TryLock(key, seen)
        state = reply.state
        if state is ABANDONED:
            yield BreakLock(key, reply.holder)
            continue
        if state is not HELD or not wait:
            return reply
        pause = LOCK_POLL_INTERVAL if deadline is None else min(LOCK_POLL_INTERVAL, deadline - time.monotonic())
        if pause <= 0:
            return reply
        yield Sleep(pause)


def get_or_create(call: Call, found: Found | None = None) -> Generator[Any, Any, Outcome]:
    """dogpile's ``get_or_create`` of one key: a fresh value is returned; an
    absent one (missing, hard-invalidated) is created by one caller of the
    deployment while the others wait for it; a stale one (expired,
    soft-invalidated) is recreated by one caller while the others get the
    stale value. Waiting ends at the call's deadline: the caller then
    creates the value itself and does not store it.

    The call's policy (:mod:`librecache.engine.policy`) adds: a fresh value
    past its eager-refresh point is returned and refreshed in the
    background (:func:`refresh`); a value the fail-safe keeps is served
    when the creator fails or outlasts the soft time-out; a caller gives up
    at the hard time-out (:class:`~librecache.CreationTimeout`).

    :param found: what the caller already read of the key (the doors' hit
        path hands its read on), or ``None``: read it first.
    """
    region, policy = call.region, call.policy
    if found is None:
        found = yield Read(call.key)
    kind, payload = verdict(region, found.value, call.expiration, policy, call.key)
    if kind is FRESH:
        if policy.eager_refresh is not None and refresh_due(found.value, call.expiration, policy, call.key):
            return (yield from refresh(call, found, payload))
        return Outcome(HIT, payload)
    spared = spare(region, found.value, call.expiration, policy, call.key) if policy.fail_safe else NO_VALUE
    wait = kind is ABSENT
    deadline, why = _deadline(call, spared) if policy.timed else (call.deadline, None)
    handle = yield Queue(call.key, wait, deadline)
    if handle is None:
        if not wait:  # another caller of this process recreates it
            return Outcome(STALE, payload)
        return (yield from _gave_up(call, why, spared))
    lease = None
    try:
        seen = found.seen
        reply = LockReply(HELD)
        for _ in range(MAX_CHANGES):
            reply = yield from acquire(call.key, seen, wait, deadline)
            if reply.state is ACQUIRED:
                lease = reply.lease
            if reply.current is not None:  # created meanwhile by the caller we waited for?
                now, current = verdict(region, reply.current.value, call.expiration, policy, call.key)
                if now is FRESH:
                    return Outcome(WAITED if wait else HIT, current)
                seen = reply.current.seen
                payload = current  # the newer stale value is the one to serve meanwhile,
                wait = wait or now is ABSENT  # and a value deleted meanwhile is not served at all
                spared = spare(region, reply.current.value, call.expiration, policy, call.key)
                deadline, why = _deadline(call, spared)
            if reply.state is not CHANGED:
                break
        if reply.state is HELD and not wait:  # another process recreates it
            return Outcome(STALE, payload)
        if reply.state is HELD and why is not None:  # a time-out passed while another process creates it
            return (yield from _gave_up(call, why, spared))
        if reply.state is ACQUIRED and not wait and call.runner is not None and not call.tags:
            # (dogpile's runner stores with region.set: a tagged value is recreated here instead)
            yield HandOff(call, handle, lease)  # the runner releases both
            handle = lease = None
            return Outcome(STALE, payload)
        lease, given = None, lease
        return (yield from _create(call, given, spared))
    finally:
        if lease is not None:
            yield Release(call.key, lease)
        if handle is not None:
            yield Dequeue(call.key, handle)


def _deadline(call: Call, spared: Any) -> tuple[float | None, str | None]:
    """When a caller stops waiting for a creator, and why: the soft
    time-out when the fail-safe has a value to serve, the hard time-out,
    or (``None``) the call's budget, whichever comes first."""
    policy = call.policy
    deadline, why = call.deadline, None
    if not policy.timed:
        return deadline, why
    for seconds, reason in ((policy.soft_timeout if spared is not NO_VALUE else None, SOFT),
                            (policy.hard_timeout, HARD)):
        if seconds is not None and (deadline is None or call.started + seconds < deadline):
            deadline, why = call.started + seconds, reason
    return deadline, why


#: Why a caller stopped waiting (:func:`_deadline`).
SOFT, HARD = "soft_timeouts", "hard_timeouts"


def _gave_up(call: Call, why: str | None, spared: Any) -> Generator[Any, Any, Outcome]:
    """A caller that waited for another creator until its deadline: at the
    soft time-out it is served the fail-safe's value, at the hard one it
    raises :class:`~librecache.CreationTimeout`, at the call's budget it
    creates the value itself and does not store it (as dogpile's lock
    time-out)."""
    if why is None:
        return (yield from _create(call, None))
    yield Note(why)
    if why is SOFT:
        yield Note("stale_served")
        return Outcome(SPARED, spared.payload)
    raise CreationTimeout(call.region.name, call.orig_key, call.policy.hard_timeout)


def _create(call: Call, lease: Any, spared: Any = NO_VALUE, timed: bool = True) -> Generator[Any, Any, Outcome]:
    """Run the creator and store its value with ``lease`` (consumed:
    stored, or released); ``None``: not stored.

    With a time-out (and ``timed``), the creator runs beside the caller: at
    the soft time-out (with a value to spare) the caller is served that
    value, at the hard time-out it raises
    :class:`~librecache.CreationTimeout`; either way the creator goes on in
    the background and stores its value when it ends. A creator that fails
    while the fail-safe has a value to spare (``spared``, a
    :class:`CachedValue`) serves it instead, and stores it again as fresh
    for the throttle (:func:`~librecache.engine.judge.throttled`)."""
    policy = call.policy
    detached = [False]
    try:
        tags = creation_tags(call)
        started = time.time()  # the value's creation time: see judge.made
        clock = time.perf_counter()
        try:
            if timed and policy.timed:
                created = yield from _created(call, call.args, call.kwargs, spared,
                                              lambda: Outcome(SPARED, spared.payload), call.orig_key, detached)
            else:
                created = yield Create(call.creator, call.args, call.kwargs)
        except Exception:
            if spared is NO_VALUE and policy.fail_safe:  # nothing read (Redis away?): this process's copy
                spared = spare(call.region, (yield Spare(call.key)), call.expiration, policy, call.key)
            if spared is NO_VALUE:
                raise
            if detached[0]:  # the caller was served already: a failure in the background
                yield Note("background_failures")
            else:
                yield Note("stale_served")
            if lease is not None:  # no other creator of the deployment runs it again meanwhile
                lease, given = None, lease
                yield Store(call.key, throttled(spared, time.time() + policy.fail_safe_throttle), given)
            return Outcome(SPARED, spared.payload)
        seconds = time.perf_counter() - clock
        soft_without_ttl(call.region, call.expiration)
        if lease is not None and (call.should_cache is None or call.should_cache(created)):
            lease, given = None, lease
            yield Store(call.key, made(created, started, tags), given)
        return Outcome(CREATED, created, seconds)
    finally:
        if lease is not None:
            yield Release(call.key, lease)


def creation_tags(call: Call) -> tuple[str, ...]:
    """The tags of the values ``call`` creates, checked for its namespace
    (a function's, called now: ``LibreRegion.tags_for_writing``).

    :raises TypeError, ValueError: a tag that is not a non-empty string, or
        a namespace whose entries cannot carry tags.
    """
    tags = call.tags
    if not tags:
        return ()
    return call.region.tags_for_writing(tags() if callable(tags) else tags)  # type: ignore[no-any-return]


def _created(call: Call, args: Sequence[Any], kwargs: dict[str, Any], spared: Any,
             stale: Callable[[], Any], key: Any, detached: list[bool]) -> Generator[Any, Any, Any]:
    """The creator's value, run beside the caller (the call's policy has a
    time-out). At the soft time-out (when ``spared`` is a value to spare)
    the caller gets ``stale()``, at the hard one
    :class:`~librecache.CreationTimeout` for ``key``; the rest of the flow
    then goes on in the background (``detached[0]`` is set)."""
    job = yield Start(call.creator, args, kwargs)
    deadline, why = _deadline(call, spared)
    done, created = yield Wait(job, None if deadline is None else max(0.0, deadline - time.monotonic()))
    if not done:
        yield Note(why or HARD)
        detached[0] = True
        if why is SOFT:
            yield Note("stale_served")
            yield Detach(stale())
        else:
            yield Detach(CreationTimeout(call.region.name, key, call.policy.hard_timeout))
        done, created = yield Wait(job, None)
    return created


def refresh(call: Call, found: Found, payload: Any) -> Generator[Any, Any, Outcome]:
    """Eager refresh: ``payload`` (fresh, past its refresh point) is the
    outcome at once; when no caller of this process refreshes the key and
    its creation lock is free (so one caller of the deployment refreshes
    it), the creator runs in the background and stores its value under
    the lock's lease, as any creation."""
    handle = yield Queue(call.key, False, None)
    if handle is None:
        return Outcome(HIT, payload)
    lease = None
    try:
        reply = yield from acquire(call.key, found.seen, False, None)
        if reply.state is not ACQUIRED:  # another refreshes it, or has
            return Outcome(HIT, payload)
        lease = reply.lease
        yield Note("eager_refreshes")
        yield Detach(Outcome(HIT, payload))
        lease, given = None, lease
        yield from _create(call, given, timed=False)
        return Outcome(HIT, payload)
    finally:
        if lease is not None:
            yield Release(call.key, lease)
        yield Dequeue(call.key, handle)


def get_or_create_multi(call: Call, keys: Sequence[Any], mangled: dict[Any, str]) -> Generator[Any, Any, MultiOutcome]:
    """dogpile's ``get_or_create_multi``: one read of every key, the rules
    of :func:`get_or_create` for each key that is not fresh (locks taken
    in sorted order, so that no two callers wait for each other), one
    creator run (``call.creator(*keys_to_create)``) for the keys to
    create, one round trip to store what it returned.

    The call's policy applies as to :func:`get_or_create`, the batch
    counting as one creation: the fail-safe serves the batch's stale values
    when every key to create has one, the soft time-out likewise, and the
    keys past their eager-refresh point are refreshed by one creator run in
    the background.

    :param keys: the keys asked for (duplicates allowed), as given.
    :param mangled: each key as stored.
    """
    region, policy = call.region, call.policy
    unique = sorted(set(keys))
    found: list[Found] = yield ReadMany([mangled[key] for key in unique])
    results: dict[Any, Any] = {}
    pending: list[tuple[Any, str, Any, Any]] = []
    spares: dict[Any, Any] = {}
    due: list[tuple[Any, Any]] = []
    for key, got in zip(unique, found, strict=True):
        name = mangled[key]
        kind, payload = verdict(region, got.value, call.expiration, policy, name)
        if kind is FRESH:
            results[key] = payload
            if policy.eager_refresh is not None and refresh_due(got.value, call.expiration, policy, name):
                due.append((key, got.seen))
            continue
        spared = spare(region, got.value, call.expiration, policy, name)
        if spared is not NO_VALUE:
            spares[key] = spared
        pending.append((key, kind, payload, got.seen))
    held: list[list[Any]] = []  # [key, queue handle, lease]
    to_create: list[Any] = []
    waited = 0

    def outcome(created: int, seconds: float | None) -> MultiOutcome:
        return MultiOutcome([results[key] for key in keys], created, waited, seconds)

    try:
        for key, kind, payload, seen in pending:
            name = mangled[key]
            wait = kind is ABSENT
            deadline, why = _deadline(call, spares.get(key, NO_VALUE))
            handle = yield Queue(name, wait, deadline)
            if handle is None:
                if not wait:
                    results[key] = payload
                elif why is None:
                    to_create.append(key)  # waited the whole budget: created, not stored
                else:
                    results[key] = (yield from _gave_up(call, why, spares.get(key, NO_VALUE))).value
                continue
            entry = [key, handle, None]
            held.append(entry)
            reply = LockReply(HELD)
            for _ in range(MAX_CHANGES):
                reply = yield from acquire(name, seen, wait, deadline)
                if reply.state is ACQUIRED:
                    entry[2] = reply.lease
                if reply.current is not None:
                    now, current = verdict(region, reply.current.value, call.expiration, policy, name)
                    if now is FRESH:
                        results[key] = current
                        waited += wait
                        break
                    seen = reply.current.seen
                    payload = current
                    wait = wait or now is ABSENT
                    spares.pop(key, None)
                    spared = spare(region, reply.current.value, call.expiration, policy, name)
                    if spared is not NO_VALUE:
                        spares[key] = spared
                    deadline, why = _deadline(call, spares.get(key, NO_VALUE))
                if reply.state is not CHANGED:
                    break
            if key in results:
                continue
            if reply.state is HELD and not wait:
                results[key] = payload
            elif reply.state is HELD and why is not None:
                results[key] = (yield from _gave_up(call, why, spares.get(key, NO_VALUE))).value
            else:
                to_create.append(key)
        if not to_create:
            if due:
                return (yield from _refresh_many(call, due, mangled, outcome(0, None)))
            return outcome(0, None)
        leases = {entry[0]: entry for entry in held}
        every = spares if all(key in spares for key in to_create) else {}
        created, seconds = yield from _create_many(call, to_create, leases, every, mangled,
                                                   lambda values: _with(results, to_create, values, outcome))
        for key, value in zip(to_create, created, strict=True):
            results[key] = value
        return outcome(len(to_create) if seconds is not None else 0, seconds)
    finally:
        for key, handle, lease in reversed(held):
            if lease is not None:
                yield Release(mangled[key], lease)
            yield Dequeue(mangled[key], handle)


def _with(results: dict[Any, Any], keys: list[Any], values: list[Any],
          outcome: Callable[[int, float | None], MultiOutcome]) -> MultiOutcome:
    """The outcome of a batch whose ``keys`` got ``values`` (served stale)."""
    results.update(zip(keys, values, strict=True))
    return outcome(0, None)


def _create_many(call: Call, to_create: list[Any], leases: dict[Any, list[Any]], spares: dict[Any, Any],
                 mangled: dict[Any, str], served: Callable[[list[Any]], MultiOutcome],
                 timed: bool = True) -> Generator[Any, Any, tuple[list[Any], float | None]]:
    """:func:`_create` for a batch: one creator run for ``to_create``, its
    values stored in one round trip with the leases held (``leases``:
    ``[key, queue handle, lease]`` by key; each lease consumed). ``spares``:
    every key's value to spare (or empty: the batch has none to serve);
    ``served`` makes the caller's outcome from them. Returns the values and
    the creator's seconds (``None``: the stale values were served)."""
    policy, region = call.policy, call.region
    detached = [False]
    tags = creation_tags(call)
    started = time.time()
    clock = time.perf_counter()
    try:
        if timed and policy.timed:
            created = yield from _created(call, tuple(to_create), {},
                                          next(iter(spares.values())) if spares else NO_VALUE,
                                          lambda: served([spares[key].payload for key in to_create]),
                                          tuple(to_create), detached)
        else:
            created = yield Create(call.creator, tuple(to_create), {})
    except Exception:
        if not spares:
            raise
        yield Note("background_failures" if detached[0] else "stale_served")
        until = time.time() + policy.fail_safe_throttle
        stores = []
        for key in to_create:
            holding = leases.get(key)
            if holding is not None and holding[2] is not None:
                spared = spares[key]
                stores.append((mangled[key], throttled(spared, until), holding[2]))
                holding[2] = None
        if stores:
            yield StoreMany(stores)
        return [spares[key].payload for key in to_create], None
    seconds = time.perf_counter() - clock
    soft_without_ttl(region, call.expiration)
    stores = []
    for key, value in zip(to_create, created, strict=True):
        holding = leases.get(key)
        if holding is not None and holding[2] is not None and (call.should_cache is None or call.should_cache(value)):
            stores.append((mangled[key], made(value, started, tags), holding[2]))
            holding[2] = None
    if stores:
        yield StoreMany(stores)
    return list(created), seconds


def _refresh_many(call: Call, due: list[tuple[Any, Any]], mangled: dict[Any, str],
                  outcome: MultiOutcome) -> Generator[Any, Any, MultiOutcome]:
    """:func:`refresh` for a batch: ``outcome`` at once; the keys ``due``
    (``(key, what was seen)``) whose queue and lock are free here are
    refreshed by one creator run in the background."""
    held: list[list[Any]] = []
    try:
        for key, seen in due:
            name = mangled[key]
            handle = yield Queue(name, False, None)
            if handle is None:
                continue
            entry = [key, handle, None]
            held.append(entry)
            reply = yield from acquire(name, seen, False, None)
            if reply.state is ACQUIRED:
                entry[2] = reply.lease
        refreshed = [entry[0] for entry in held if entry[2] is not None]
        if not refreshed:
            return outcome
        yield Note("eager_refreshes")
        yield Detach(outcome)
        yield from _create_many(call, refreshed, {entry[0]: entry for entry in held}, {}, mangled,
                                lambda values: outcome, timed=False)
        return outcome
    finally:
        for key, handle, lease in reversed(held):
            if lease is not None:
                yield Release(mangled[key], lease)
            yield Dequeue(mangled[key], handle)
