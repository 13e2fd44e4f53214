"""The dogpile.cache backends of librecache, registered with dogpile under
the names ``librecache.memory`` and ``librecache.redis`` (and
``librecache.undeclared``: the backend of a region whose namespace the
current configuration no longer declares)."""

from __future__ import annotations

from typing import Any

from dogpile.cache import register_backend
from dogpile.cache.api import CacheBackend

register_backend("librecache.memory", "librecache.backends.memory", "MemoryBackend")
register_backend("librecache.redis", "librecache.backends.redis", "RedisBackend")
register_backend("librecache.undeclared", "librecache.backends", "UndeclaredBackend")


def take_arguments(backend: str, arguments: Any, required: set[str], optional: set[str]) -> dict[str, Any]:
    """Check a backend's ``arguments``: all of ``required`` present, nothing
    outside ``required | optional``. dogpile ignores unknown arguments; a
    misspelt one here is an error that names it."""
    given = dict(arguments or {})
    unknown = sorted(set(given) - required - optional)
    if unknown:
        raise TypeError(f"{backend} backend: unknown argument(s) {', '.join(unknown)}")
    missing = sorted(required - set(given))
    if missing:
        raise TypeError(f"{backend} backend: missing argument(s) {', '.join(missing)}")
    return given


class UndeclaredBackend(CacheBackend):
    """The backend of a process-default region obtained while its namespace
    was declared (LIBRECACHE_NAMESPACES) and then reconfigured without it:
    every use raises :class:`~librecache.UnknownNamespaceError` listing the
    namespaces that exist now (never a silent miss, never the closed
    connection of the previous configuration).

    Arguments: ``name`` and ``valid`` (the valid names, comma-separated).
    """

    def __init__(self, arguments: Any) -> None:
        args = take_arguments("librecache.undeclared", arguments, {"name", "valid"}, set())
        self.name: str = args["name"]
        self.valid: str = args["valid"]

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        from ..errors import UnknownNamespaceError

        raise UnknownNamespaceError(self.name, self.valid)

    get = get_multi = set = set_multi = delete = delete_multi = get_mutex = _refuse  # type: ignore[assignment]

    def clear(self, progress: Any = None) -> int:
        return int(self._refuse())

    def keys(self) -> list[str]:
        return list(self._refuse())
