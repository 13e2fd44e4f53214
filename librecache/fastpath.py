"""The sync door of a region: its memoised functions and get-or-create
calls, run by the engine (:mod:`librecache.engine`).

- :func:`memoize`: dogpile's ``cache_on_arguments`` wraps functions with the
  ``decorator`` package, which binds the signature with :mod:`inspect` on
  every call. Here the binding is computed once: positional calls get the
  defaults appended from a precomputed table (the same arguments dogpile
  would pass to the key generator), and only calls with keyword arguments
  take the full binding; the keys of positional calls with ``str``
  arguments are remembered.
- :func:`get_or_create`, :func:`get_or_create_multi`: a call's direct path
  (the port's ``hit``: a near hit, or one read judged fresh), and
  otherwise the engine's flow, run by the sync door.
- :func:`get_multi`: dogpile's ``get_multi``, one read of a batch judged
  at once (:func:`librecache.engine.judge.judged_multi`).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE

from .backends.routing import sync_port
from .engine import flows
from .engine.doors import count, count_multi, run
from .engine.flows import Call, Found
from .engine.judge import expiration_of, judged_multi, reads_bytes
from .engine.policy import PLAIN, Policy
from .engine.ports import near_expiry
from .tags import CallTags, Tags, bound_tags, resolved_tags

__all__ = ["companions", "get_multi", "get_or_create", "get_or_create_multi", "key_function", "mangled_many",
           "memoize", "policies", "policy_of", "with_settings"]

_SIMPLE = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
#: Arguments -> key pairs remembered per memoised function, at most.
MEMO_SIZE = 4096


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


def policy_of(region: Any, settings: dict[str, Any] | None) -> Policy:
    """The policy of a call in ``region`` with ``settings`` (its keyword
    arguments: ``fail_safe=``, ``soft_timeout=``...): the namespace's, with
    them applied."""
    return region.policy if not settings else region.policy.for_call(**settings)  # type: ignore[no-any-return]


def policies(region: Any, settings: dict[str, Any] | None) -> Callable[[], Policy] | None:
    """:func:`policy_of` for every call of one memoised function: checked
    now (a bad setting raises at decoration), remembered per namespace
    policy (a ``configure()`` may change it); ``None`` without settings
    (the namespace's policy is the call's: ``region.policy``)."""
    if not settings:
        return None
    PLAIN.for_call(**settings)
    memo: list[Any] = [None, PLAIN]

    def policy() -> Policy:
        base = region.policy
        if memo[0] is not base:
            memo[0], memo[1] = base, policy_of(region, settings)
        return memo[1]  # type: ignore[no-any-return]

    return policy


def memoize(
    region: Any,
    key_generator: Callable[..., str],
    user_func: Callable[..., Any],
    expiration_time: Any,
    should_cache_fn: Any,
    settings: dict[str, Any] | None = None,
    tags: Tags = None,
) -> Callable[..., Any]:
    """The wrapper ``cache_on_arguments`` returns, with dogpile's attributes
    (``set``, ``get``, ``invalidate``, ``refresh``, ``original``);
    ``settings``: the call settings it was given (:func:`policy_of`);
    ``tags``: its values' tags, or a function of its arguments returning
    them (:mod:`librecache.tags`)."""
    expiration_is_callable = callable(expiration_time)
    policy_now = policies(region, settings)
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

    @functools.wraps(user_func)  # name, docstring, __wrapped__ (inspect.signature follows it)
    def cached(*args: Any, **kwargs: Any) -> Any:
        timeout = expiration_time() if expiration_is_callable else expiration_time
        policy = region.policy if policy_now is None else policy_now()
        if kwargs or len(args) != count:
            return get_or_create(region, key_of(args, kwargs), user_func, timeout, should_cache_fn, (args, kwargs),
                                 policy, bound_tags(tags, args, kwargs))
        text = type(args[0]) is str if single else all(type(arg) is str for arg in args)
        keys = memo.get(args) if text and region.key_mangler is memo_of[0] else None
        if keys is None:
            keys = keys_of(args, text)
        near = region.near_cache
        found = NO_VALUE
        if near is not None and near.enabled:  # where the port's hit looks first, a call sooner
            expires = region.expiration_time if timeout is None else timeout
            found = near.fetch(keys[1], expires if policy.plain_hit else near_expiry(expires, policy))
        if found is NO_VALUE:
            ports = region.ports  # sync_port(region), without the call when it is current
            port = ports[1] if ports is not None and ports[0] is region.backend else sync_port(region)
            found = port.hit(keys[1], timeout, policy)
            if type(found) is Found:
                return created(region, port, keys[1], keys[0], user_func, args, kwargs, timeout, should_cache_fn,
                               found, policy, bound_tags(tags, args, kwargs))
        stats = region.counters
        if stats is not None:
            stats.hits += 1
        return found

    def refresh(*args: Any, **kwargs: Any) -> Any:
        value = user_func(*args, **kwargs)
        region.set(key_of(args, kwargs), value, tags=resolved_tags(tags, args, kwargs) if tags else None)
        return value

    def invalidate(*args: Any, **kwargs: Any) -> None:
        region.delete(key_of(args, kwargs))

    def set_(value: Any, *args: Any, **kwargs: Any) -> None:
        region.set(key_of(args, kwargs), value, tags=resolved_tags(tags, args, kwargs) if tags else None)

    def get(*args: Any, **kwargs: Any) -> Any:
        return region.get(key_of(args, kwargs))

    return companions(cached, user_func, set_, invalidate, get, refresh)


def get_or_create(region: Any, key: Any, creator: Callable[..., Any], expiration_time: float | None = None,
                  should_cache_fn: Callable[[Any], bool] | None = None,
                  creator_args: tuple[Sequence[Any], Mapping[str, Any]] | None = None,
                  policy: Policy | None = None, tags: CallTags = ()) -> Any:
    """dogpile's :meth:`~dogpile.cache.region.CacheRegion.get_or_create` of
    ``region``, by the engine (:func:`librecache.engine.flows.get_or_create`);
    ``policy``: the call's (:func:`policy_of`), the namespace's if ``None``;
    ``tags``: as :class:`~librecache.engine.flows.Call`'s."""
    mangler = region.key_mangler
    mangled = mangler(key) if mangler is not None else key
    port = sync_port(region)
    if policy is None:
        policy = region.policy
    found = port.hit(mangled, expiration_time, policy)
    if type(found) is not Found:
        stats = region.counters
        if stats is not None:
            stats.hits += 1
        return found
    args, kwargs = creator_args if creator_args else ((), {})
    return created(region, port, mangled, key, creator, args, dict(kwargs), expiration_time, should_cache_fn, found,
                   policy, tags)


def created(region: Any, port: Any, mangled: str, key: Any, creator: Callable[..., Any], args: Sequence[Any],
            kwargs: dict[str, Any], expiration_time: float | None, should_cache_fn: Any, found: Found,
            policy: Policy, tags: CallTags = ()) -> Any:
    """The rest of a get-or-create call whose direct path found no fresh
    value: the engine's flow, from what was read (``found``), counted."""
    budget = port.budget
    call = Call(region, mangled, key, creator, args, kwargs, expiration_of(region, expiration_time),
                should_cache_fn, None if budget is None else time.monotonic() + budget,
                region.async_creation_runner, policy, tags)
    outcome = run(flows.get_or_create(call, found), port)
    count(region.counters, outcome)
    return outcome.value


def get_or_create_multi(region: Any, keys: Any, creator: Callable[..., Any], expiration_time: float | None = None,
                        should_cache_fn: Callable[[Any], bool] | None = None,
                        policy: Policy | None = None, tags: CallTags = ()) -> list[Any]:
    """dogpile's :meth:`~dogpile.cache.region.CacheRegion.get_or_create_multi`
    of ``region``, by the engine (:func:`librecache.engine.flows.get_or_create_multi`)."""
    keys = list(keys)
    port = sync_port(region)
    call = multi_call(region, port, creator, expiration_time, should_cache_fn, policy, tags)
    outcome = run(flows.get_or_create_multi(call, keys, mangled_map(region, keys)), port)
    count_multi(region.counters, outcome, len(keys))
    return outcome.values


def multi_call(region: Any, port: Any, creator: Callable[..., Any], expiration_time: float | None,
               should_cache_fn: Any, policy: Policy | None = None, tags: CallTags = ()) -> Call:
    """The :class:`~librecache.engine.flows.Call` of a multi-key flow (both
    doors); ``policy``: the call's, the namespace's if ``None``."""
    budget = port.budget
    return Call(region, "", None, creator, (), {}, expiration_of(region, expiration_time), should_cache_fn,
                None if budget is None else time.monotonic() + budget, None,
                region.policy if policy is None else policy, tags)


#: The settings and tags of the memoised multi-key function running in
#: this context (dogpile's ``cache_multi_on_arguments`` calls
#: ``get_or_create_multi`` without them: :func:`with_settings` passes them
#: through here).
MULTI_SETTINGS: contextvars.ContextVar[tuple[dict[str, Any], CallTags] | None] = \
    contextvars.ContextVar("multi_settings", default=None)


def with_settings(decorated: Callable[..., Any], settings: dict[str, Any], tags: Tags = None) -> Callable[..., Any]:
    """``decorated`` (dogpile's memoised multi-key function), whose calls
    of ``get_or_create_multi`` get ``settings`` and ``tags`` (a function's
    bound to the call's arguments); its companions kept."""
    @functools.wraps(decorated)
    def cached(*args: Any, **kwargs: Any) -> Any:
        token = MULTI_SETTINGS.set((settings, bound_tags(tags, args, kwargs)))
        try:
            return decorated(*args, **kwargs)
        finally:
            MULTI_SETTINGS.reset(token)

    return cached


def tagged_multi_companions(region: Any, decorated: Any, key_generator: Callable[..., Sequence[str]],
                            user_func: Callable[..., Any], asdict: bool, tags: Tags) -> None:
    """dogpile's ``set`` and ``refresh`` of a memoised multi-key function
    (``decorated``), whose entries carry ``tags`` (a function's called with
    the arguments the values are for)."""
    def tags_of(arguments: Sequence[Any]) -> tuple[str, ...]:
        return region.tags_for_writing(resolved_tags(tags, arguments))  # type: ignore[no-any-return]

    def set_(mapping: Mapping[Any, Any]) -> None:
        arguments = list(mapping)
        region.set_multi(dict(zip(key_generator(*arguments), (mapping[a] for a in arguments), strict=True)),
                         tags=tags_of(arguments))

    def refresh(*args: Any) -> Any:
        keys = key_generator(*args)
        values = user_func(*args)
        stored = [values[arg] for arg in args] if asdict else values
        region.set_multi(dict(zip(keys, stored, strict=True)), tags=tags_of(args))
        return values

    decorated.set = set_
    decorated.refresh = refresh


def mangled_map(region: Any, keys: list[Any]) -> dict[Any, str]:
    """Each of ``keys`` (once) as the region stores it."""
    unique = list(dict.fromkeys(keys))
    return dict(zip(unique, mangled_many(region, unique), strict=True))


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


def get_multi(region: Any, keys: Any, expiration_time: float | None, ignore_expiration: bool) -> list[Any]:
    """dogpile's :meth:`~dogpile.cache.region.CacheRegion.get_multi` of
    ``region``, with the same results: each value, or ``NO_VALUE`` when it
    is missing, older than ``expiration_time`` (the region's when
    ``None``) unless ``ignore_expiration``, or invalidated."""
    keys = mangled_many(region, keys)
    if not keys:
        return []
    raw = reads_bytes(region)
    found = region.backend.get_serialized_multi(keys) if raw else region.read_cached_many(keys)
    return judged_multi(region, found, raw, expiration_time, ignore_expiration)


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
