"""Signed cache values (LIBRECACHE_SIGNING_KEY).

A pickle is code: whoever can write a value into Redis can make every
instance that unpickles it run anything. With a signing key, each value is
stored as ``LCS1`` + HMAC-SHA256(key, redis key + NUL + payload) + payload,
and a value whose MAC does not verify (forged, tampered, unsigned, or moved
from another key) is a cache miss and is never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

__all__ = ["Signer"]

MAGIC = b"LCS1"
_MAC_SIZE = hashlib.sha256().digest_size


class Signer:
    """Signs with the first key; verifies with any (for rotation)."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self._keys = [key.encode("utf-8") for key in keys]

    def __repr__(self) -> str:
        return f"<Signer {len(self._keys)} key(s)>"

    @staticmethod
    def _mac(key: bytes, name: str, payload: bytes) -> bytes:
        message = name.encode("utf-8", "surrogatepass") + b"\0" + payload
        return hmac.new(key, message, hashlib.sha256).digest()

    def sign(self, name: str, payload: bytes) -> bytes:
        """The stored form of ``payload`` under the Redis key ``name``."""
        return MAGIC + self._mac(self._keys[0], name, payload) + payload

    def verify(self, name: str, stored: bytes) -> bytes | None:
        """The payload, or ``None`` when ``stored`` is not validly signed for
        ``name`` by one of the keys."""
        if not stored.startswith(MAGIC) or len(stored) < len(MAGIC) + _MAC_SIZE:
            return None
        mac = stored[len(MAGIC):len(MAGIC) + _MAC_SIZE]
        payload = stored[len(MAGIC) + _MAC_SIZE:]
        for key in self._keys:
            if hmac.compare_digest(mac, self._mac(key, name, payload)):
                return payload
        return None
