"""librecache: one dogpile.cache region per cache namespace, backed by process
memory, a Redis server or a Redis Cluster as the environment says."""

from __future__ import annotations

from .config import CacheConfig
from .errors import (
    ConfigurationError,
    CreationTimeout,
    LibrecacheError,
    SerializationError,
    UnknownNamespaceError,
    UnknownVariableWarning,
)
from .namespaces import CacheKeys
from .registry import (
    Caches,
    LibreRegion,
    ainvalidate_tags,
    configure,
    get_caches,
    get_region,
    invalidate_tags,
    redis_client,
)

__all__ = [
    "CacheConfig",
    "CacheKeys",
    "Caches",
    "ConfigurationError",
    "CreationTimeout",
    "LibreRegion",
    "LibrecacheError",
    "SerializationError",
    "UnknownNamespaceError",
    "UnknownVariableWarning",
    "ainvalidate_tags",
    "configure",
    "get_caches",
    "get_region",
    "invalidate_tags",
    "redis_client",
]

__version__ = "0.2.0"
