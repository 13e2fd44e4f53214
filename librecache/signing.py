"""Signed cache values (LIBRECACHE_SIGNING_KEY).

A pickle is code: whoever can write a value into Redis can make every
instance that unpickles it run anything. With a signing key, each value is
stored as ``LCS1`` + HMAC-SHA256(key, redis key + NUL + payload) + payload,
and a value whose MAC does not verify (forged, tampered, unsigned, or moved
from another key) is a cache miss and is never unpickled.

Namespaces in the ``json`` and ``keyv`` formats (:mod:`librecache.formats`)
store a JSON document that other clients must still read, so the MAC goes
into the document instead, as its last field: ``{...,"lcs1":"<hex MAC>"}``,
the MAC taken over the redis key, NUL and the document without that field
(:class:`EnvelopeSigner`). A client that does not verify (keyv) ignores the
field; librecache reads a document without a valid one (one that keyv
wrote, for instance) as a miss.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

__all__ = ["EnvelopeSigner", "Signer"]

MAGIC = b"LCS1"
#: Values a :class:`Signer` remembers as verified, at most (then it forgets
#: them all), and the largest it remembers: at most 4 MiB per signer.
VERIFIED_SIZE = 1024
VERIFIED_MAX_BYTES = 4096
_MAGIC_SIZE = len(MAGIC)
_HEAD_SIZE = _MAGIC_SIZE + hashlib.sha256().digest_size


class Signer:
    """Signs with the first key; verifies with any (for rotation).

    Each key's HMAC state is computed once (the key's padding hashed); a
    signature copies it and hashes the message only. The stored forms
    verified lately (up to :data:`VERIFIED_MAX_BYTES` each) are remembered
    with the Redis key they were verified under, so a hot key's hit checks
    its bytes with a dictionary lookup: bytes that verified once under a key
    verify again under that key (a MAC covers the key and the payload only).
    Anything else is verified in full."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self._keyed = [hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256) for key in keys]
        self._verified: dict[bytes, str] = {}

    def __repr__(self) -> str:
        return f"<Signer {len(self._keyed)} key(s)>"

    @staticmethod
    def _mac(keyed: hmac.HMAC, name: str, payload: bytes) -> bytes:
        mac = keyed.copy()
        mac.update(name.encode("utf-8", "surrogatepass") + b"\0" + payload)
        return mac.digest()

    def sign(self, name: str, payload: bytes) -> bytes:
        """The stored form of ``payload`` under the Redis key ``name``."""
        return MAGIC + self._mac(self._keyed[0], name, payload) + payload

    def verify(self, name: str, stored: bytes) -> bytes | None:
        """The payload, or ``None`` when ``stored`` is not validly signed for
        ``name`` by one of the keys."""
        verified = self._verified
        small = len(stored) <= VERIFIED_MAX_BYTES  # larger values are never remembered: not hashed for the lookup
        if small and verified.get(stored) == name:
            return stored[_HEAD_SIZE:]
        if stored[:_MAGIC_SIZE] != MAGIC or len(stored) < _HEAD_SIZE:
            return None
        mac = stored[_MAGIC_SIZE:_HEAD_SIZE]
        payload = stored[_HEAD_SIZE:]
        for keyed in self._keyed:
            if hmac.compare_digest(mac, self._mac(keyed, name, payload)):
                if small:
                    if len(verified) >= VERIFIED_SIZE:
                        verified.clear()
                    verified[stored] = name
                return payload
        return None


_FIELD = re.compile(rb',"lcs1":"([0-9a-f]{64})"\}$')


class EnvelopeSigner(Signer):
    """Signs JSON documents with a last field ``"lcs1"`` holding the MAC
    (see the module), so that they stay JSON for other readers."""

    def sign(self, name: str, payload: bytes) -> bytes:
        if not payload.endswith(b"}"):
            raise ValueError("an EnvelopeSigner signs JSON objects only")
        mac = self._mac(self._keyed[0], name, payload).hex().encode("ascii")
        return payload[:-1] + b',"lcs1":"' + mac + b'"}'

    def verify(self, name: str, stored: bytes) -> bytes | None:
        match = _FIELD.search(stored)
        if match is None:
            return None
        payload = stored[:match.start()] + b"}"
        mac = bytes.fromhex(match.group(1).decode("ascii"))
        for keyed in self._keyed:
            if hmac.compare_digest(mac, self._mac(keyed, name, payload)):
                return payload
        return None
