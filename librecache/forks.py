"""Fork safety: a forked child (gunicorn ``--preload``, uWSGI, Celery
prefork, :mod:`multiprocessing`) gets a working cache of its own.

A child inherits the parent's memory but none of its threads. Whatever a
parent thread held at the moment of the fork (a lock, a pooled connection
in the middle of a reply) stays held, or half-read, in the child for ever.
So, right after every fork, in the child (``os.register_at_fork``), every
object registered here runs its ``_after_fork()``:

- locks and events are made anew (no parent thread can hold the new ones);
- inherited connections are forgotten, closing only the child's copy of
  each descriptor (the parent's sockets stay open and unharmed), so the
  child opens its own;
- background threads (reconnect and keep-alive, the invalidation and
  near-cache listener) are marked as not running; each starts again in
  the child on first use, and the listener reloads the stored invalidation
  marks before the child trusts a cached value;
- near caches are emptied, and serve again once the child's own listener
  has subscribed.

The hook costs nothing per call: objects compare :data:`generation` (an
integer that each fork increments in the child) on the paths that start
threads. Forks that bypass Python's hooks (a C extension calling
``fork()`` itself: uWSGI without ``py-call-osafterfork``) are caught by
:func:`check`, which compares process ids, on slow paths only (the first
failure a registry meets), so such servers should run the hooks.

Python's own import locks are not renewed by a fork: a module that a
background thread imports for the first time while another thread forks
stays locked in the child, and the child's first import of it hangs for
ever. Modules the background threads would import lazily are therefore
imported here, up front: ``encodings.idna`` (``socket.getaddrinfo`` imports
it on the first connect, which happens in a background thread when a
pre-fork server forks right after configuring), and what redis-py imports
to read its own version when it makes a connection (``importlib.metadata``
reading the package's metadata: ``email`` and its parsers, on redis-py 8),
by reading that version once here.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (see the module's docstring)
import importlib.metadata
import logging
import os
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["ForkAware", "check", "generation", "register", "register_function"]

log = logging.getLogger(__name__)

try:  # see the module's docstring: what a connection would import in a background thread
    importlib.metadata.version("redis")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover (redis-py is a dependency)
    pass

#: Incremented in a child after every fork.
generation = 0

_pid = os.getpid()
_objects: weakref.WeakSet[Any] = weakref.WeakSet()
_functions: list[Callable[[], None]] = []


class ForkAware(Protocol):
    def _after_fork(self) -> None:
        """Make this object usable in a freshly forked child."""


def register(obj: ForkAware) -> None:
    """Run ``obj._after_fork()`` in every child forked from now on (held
    weakly: a collected object is simply skipped)."""
    _objects.add(obj)


def register_function(function: Callable[[], None]) -> None:
    """Run ``function()`` in every child forked from now on (module state)."""
    _functions.append(function)


def _in_child() -> None:
    global generation, _pid
    _pid = os.getpid()
    generation += 1
    for function in list(_functions):
        _run(function)
    for obj in list(_objects):
        _run(obj._after_fork)


def _run(function: Callable[[], None]) -> None:
    try:
        function()
    except Exception:  # one broken object must not break the others
        log.exception("librecache: resetting %r after a fork failed", function)


def check() -> bool:
    """Reset everything if this process is a child forked without Python's
    fork hooks; True if it was. Costs a system call: slow paths only."""
    if os.getpid() != _pid:
        _in_child()
        return True
    return False


os.register_at_fork(after_in_child=_in_child)
