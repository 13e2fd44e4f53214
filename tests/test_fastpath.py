"""librecache's cache_on_arguments keeps dogpile's keys and behaviour."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dogpile.cache import make_region

import librecache
from librecache.engine.judge import parse_metadata


def decorate_both(make_caches: Callable[..., librecache.Caches], fn: Callable[..., Any], **options: Any):  # type: ignore[no-untyped-def]
    ours_region = make_caches().region("TOOLS")
    theirs_region = make_region().configure("dogpile.cache.memory")
    return (ours_region, ours_region.cache_on_arguments(**options)(fn),
            theirs_region, theirs_region.cache_on_arguments(**options)(fn))


def stored_keys(region: Any) -> set[str]:
    backend = region.backend
    return set(backend.keys() if hasattr(backend, "keys") and callable(backend.keys) else backend._cache)


def test_same_keys_as_dogpile_with_defaults_and_positional_calls(make_caches: Callable[..., librecache.Caches]) -> None:
    def fn(a: int, b: int = 2, c: str = "x") -> tuple[int, int, str]:
        return (a, b, c)

    ours_region, ours, theirs_region, theirs = decorate_both(make_caches, fn)
    for call in [(1,), (1, 2), (1, 3), (1, 3, "y"), (4,)]:
        assert ours(*call) == theirs(*call)
    assert stored_keys(ours_region) == stored_keys(theirs_region)
    assert len(stored_keys(ours_region)) == 4  # (1,) and (1, 2) are the same call


def test_keyword_arguments_behave_as_in_dogpile(make_caches: Callable[..., librecache.Caches]) -> None:
    def fn(a: int, b: int = 2) -> int:
        return a + b

    _, ours, _, theirs = decorate_both(make_caches, fn)
    assert ours(1, b=5) == theirs(1, b=5) == 6  # bound to positional, as dogpile does

    def with_kwargs(a: int, **extra: Any) -> int:
        return a

    _, ours_kw, _, theirs_kw = decorate_both(make_caches, with_kwargs)
    with pytest.raises(ValueError) as ours_error:
        ours_kw(1, z=2)
    with pytest.raises(ValueError) as theirs_error:
        theirs_kw(1, z=2)
    assert str(ours_error.value) == str(theirs_error.value)
    with pytest.raises(TypeError):
        ours(1, 2, 3)  # too many arguments: Python's own error


def test_methods_namespace_to_str_and_attributes(make_caches: Callable[..., librecache.Caches]) -> None:
    region = make_caches().region("TOOLS")
    calls: list[int] = []

    class Service:
        @region.cache_on_arguments(namespace="svc", to_str=lambda v: f"<{v}>")
        def load(self, n: int) -> int:
            calls.append(n)
            return n * 10

    service = Service()
    assert service.load(3) == 30 and Service().load(3) == 30 and calls == [3]  # self is not in the key
    assert Service.load.__name__ == "load" and Service.load.__wrapped__ is not None
    Service.load.set(99, service, 3)
    assert service.load(3) == 99 and Service.load.get(service, 3) == 99
    Service.load.invalidate(service, 3)
    assert service.load(3) == 30 and calls == [3, 3]
    assert Service.load.refresh(service, 3) == 30 and Service.load.original is not None
    stored = region.backend.keys()  # the memory backend's list of keys
    assert any("svc" in key and "<3>" in key for key in stored)


def test_expiration_time_callable_and_should_cache(make_caches: Callable[..., librecache.Caches]) -> None:
    region = make_caches().region("TOOLS")
    seen: list[int] = []

    @region.cache_on_arguments(expiration_time=lambda: 60, should_cache_fn=lambda value: value > 0)
    def value_of(n: int) -> int:
        seen.append(n)
        return n

    value_of(-1), value_of(-1), value_of(1), value_of(1)
    assert seen == [-1, -1, 1]


def test_metadata_parsing() -> None:
    assert parse_metadata(b'{"ct": 1732600000.123456, "v": 2}') == {"ct": 1732600000.123456, "v": 2}
    assert parse_metadata(b'{"v": 2, "ct": 5}') == {"v": 2, "ct": 5}  # any other shape: json
    with pytest.raises(ValueError):
        parse_metadata(b"[1, 2]")
