"""The types of memoised functions, for type checkers: what
``cache_on_arguments()`` returns keeps the function's parameters and
return type (``def f(x: int) -> list[int]`` stays ``(x: int) -> list[int]``;
an ``async def`` stays a coroutine function), and its companions are typed
alike. Nothing here runs: the decorators' own code is
:func:`librecache.fastpath.memoize` and :func:`librecache.aio.memoize_async`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from dogpile.cache.api import NoValue

__all__ = ["AsyncMemoised", "Memoised", "Memoiser"]

P = ParamSpec("P")
R = TypeVar("R")


class Memoised(Protocol[P, R]):
    """A memoised plain function: called as the function, plus dogpile's
    companions, each taking the function's arguments."""

    #: The function undecorated.
    original: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Delete the value of these arguments."""

    def set(self, value: R, /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Store ``value`` as the value of these arguments."""

    def get(self, *args: P.args, **kwargs: P.kwargs) -> R | NoValue:
        """The cached value of these arguments, or ``NO_VALUE``."""

    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function and store what it returns."""


class AsyncMemoised(Protocol[P, R]):
    """A memoised ``async def``: awaited as the function, with awaitable
    companions."""

    #: The function undecorated.
    original: Callable[P, Coroutine[Any, Any, R]]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]: ...

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Delete the value of these arguments."""

    async def set(self, value: R, /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Store ``value`` as the value of these arguments."""

    async def get(self, *args: P.args, **kwargs: P.kwargs) -> R | NoValue:
        """The cached value of these arguments, or ``NO_VALUE``."""

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await the function and store what it returns."""


class Memoiser(Protocol):
    """What ``cache_on_arguments(...)`` returns: the decorator."""

    # an async def matches both: the first wins, as intended
    @overload
    def __call__(  # type: ignore[overload-overlap]
            self, function: Callable[P, Coroutine[Any, Any, R]], /) -> AsyncMemoised[P, R]: ...

    @overload
    def __call__(self, function: Callable[P, R], /) -> Memoised[P, R]: ...

    def __call__(self, function: Callable[..., Any], /) -> Any: ...
