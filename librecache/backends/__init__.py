"""The dogpile.cache backends of librecache, registered with dogpile under
the names ``librecache.memory`` and ``librecache.redis``."""

from __future__ import annotations

from typing import Any

from dogpile.cache import register_backend

register_backend("librecache.memory", "librecache.backends.memory", "MemoryBackend")
register_backend("librecache.redis", "librecache.backends.redis", "RedisBackend")


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
