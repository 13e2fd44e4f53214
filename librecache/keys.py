"""Where :class:`Namespace` was first documented: the namespaces live in
:mod:`librecache.namespaces`, and this module keeps
``librecache.keys.Namespace`` (and ``CacheKeys``) importable."""

from .namespaces import CacheKeys, Namespace

__all__ = ["CacheKeys", "Namespace"]
