"""What a call does when its creator is slow or fails, and how long a
value lives past its TTL: one namespace's settings (its variables), or
one call's (the keyword arguments of ``get_or_create``,
``cache_on_arguments`` and their kin). No I/O.

- **grace**: seconds past the TTL during which a value is *stale*: one
  caller recreates it while the others are served it;
- **fail-safe**: seconds past the TTL during which a value is kept to be
  served when its creator fails (raises, or outlasts the soft time-out);
  once served it is stored as fresh for the **throttle**, in every process;
- **soft time-out**: how long callers wait for a creator while a stale
  value exists; the creator goes on in the background;
- **hard time-out**: how long callers wait for a creator at all, then
  :class:`~librecache.CreationTimeout`;
- **eager refresh**: the fraction of the TTL after which a hit starts one
  refresh in the background;
- **TTL jitter**: up to this many seconds added to each value's TTL,
  drawn when it is stored (:func:`jitter`).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import attrs

__all__ = ["CALL_SETTINGS", "DEFAULT_THROTTLE", "PLAIN", "Policy", "jitter"]

#: Seconds a value served by the fail-safe is fresh, by default (FusionCache's).
DEFAULT_THROTTLE = 30.0

#: The keyword arguments a call takes, each a :class:`Policy` field.
CALL_SETTINGS = ("fail_safe", "fail_safe_throttle", "soft_timeout", "hard_timeout", "eager_refresh", "ttl_jitter")


def _seconds(name: str, value: Any, positive: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        wanted = "greater than 0" if positive else "0 or more"
        raise ValueError(f"{name}={value!r}: must be a number of seconds {wanted}")


@attrs.frozen
class Policy:
    """One namespace's or one call's settings (see the module); seconds,
    ``None`` or 0 for off."""

    grace: float = 0.0
    fail_safe: float = 0.0
    fail_safe_throttle: float = DEFAULT_THROTTLE
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    eager_refresh: float | None = None
    ttl_jitter: float = 0.0
    #: Whether a creator runs under a time-out (soft or hard).
    timed: bool = attrs.field(init=False, eq=False, repr=False)
    #: Whether a fresh value is judged as dogpile judges it: no jitter
    #: lengthens its TTL, no eager refresh shortens it (the hit paths'
    #: shortcut; the grace and the fail-safe only matter past the TTL).
    plain_hit: bool = attrs.field(init=False, eq=False, repr=False)

    @timed.default
    def _timed(self) -> bool:
        return self.soft_timeout is not None or self.hard_timeout is not None

    @plain_hit.default
    def _plain_hit(self) -> bool:
        return self.eager_refresh is None and not self.ttl_jitter

    def __attrs_post_init__(self) -> None:
        for name in ("grace", "fail_safe", "ttl_jitter"):
            _seconds(name, getattr(self, name), positive=False)
        for name in ("fail_safe_throttle", "soft_timeout", "hard_timeout"):
            _seconds(name, getattr(self, name), positive=True)
        eager = self.eager_refresh
        if eager is not None and (isinstance(eager, bool) or not isinstance(eager, (int, float))
                                  or not 0 < eager < 1):
            raise ValueError(f"eager_refresh={eager!r}: must be a fraction of the TTL between 0 and 1 (excluded)")
        if self.soft_timeout is not None and self.hard_timeout is not None and self.soft_timeout >= self.hard_timeout:
            raise ValueError(f"soft_timeout={self.soft_timeout!r} must be shorter than "
                             f"hard_timeout={self.hard_timeout!r}")

    def for_call(self, **settings: Any) -> Policy:
        """This policy with a call's keyword arguments (those not ``None``)
        applied.

        :raises ValueError: a setting out of range, naming it.
        :raises TypeError: an unknown setting.
        """
        given = {name: value for name, value in settings.items() if value is not None}
        if not given:
            return self
        unknown = set(given) - set(CALL_SETTINGS)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return attrs.evolve(self, **given)

    @property
    def kept(self) -> float:
        """Seconds past the TTL a value is kept: the larger of the grace and the fail-safe."""
        return max(self.grace, self.fail_safe)


#: No fail-safe, no time-out, no eager refresh, no jitter.
PLAIN = Policy()


def jitter(key: str, created: float, most: float) -> float:
    """The seconds added to the TTL of the value stored under ``key`` at
    ``created`` (its creation time): 0 to ``most``, drawn from a hash of
    both, so that every process reads the same TTL from the value itself
    (nothing more is stored), and values written together spread."""
    if not most:
        return 0.0
    digest = hashlib.blake2b(f"{key}\x00{created!r}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return most * int.from_bytes(digest, "big") / 2.0**64
