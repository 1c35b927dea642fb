"""API keys and per-key rate limits.

Keys are configured as SHA-256 digests (`FACEMARGIN_API_KEYS=name:hexdigest,...`), so the
environment, the compose file and the logs never hold a usable key. A presented key is hashed
and compared with every digest in constant time. Only the key's name is ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from dataclasses import dataclass

from service.vision.errors import RateLimited, Unauthorized

API_KEY_HEADER = "X-API-Key"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_keys(spec: str) -> dict[str, bytes]:
    """{name: digest bytes} from 'name:hexdigest,...'; raises ValueError on a malformed entry."""
    keys: dict[str, bytes] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, digest = entry.partition(":")
        if not sep or not name or len(digest) != 64:
            raise ValueError(
                f"FACEMARGIN_API_KEYS entry {name or entry[:8]!r}: expected NAME:SHA256HEX "
                "(make one with: facemargin hash-key)"
            )
        keys[name] = bytes.fromhex(digest)
    return keys


class KeyChecker:
    def __init__(self, keys: dict[str, bytes]) -> None:
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def identify(self, presented: str | None) -> str:
        """The key's name; raises Unauthorized. Every digest is compared, so timing does not
        reveal which (or whether any) key nearly matched."""
        if not self.enabled:
            return "anonymous"
        if not presented:
            raise Unauthorized(f"missing {API_KEY_HEADER} header")
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for name, expected in self.keys.items():
            if hmac.compare_digest(digest, expected):
                found = name
        if found is None:
            raise Unauthorized("invalid API key")
        return found


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per key: `per_minute` requests a minute, bursts up to the same number."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        if self.capacity <= 0:
            return
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(self.capacity, now))
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / self.rate
        raise RateLimited(
            f"rate limit of {int(self.capacity)} requests per minute reached",
            retry_after=math.ceil(wait * 1000) / 1000,
        )
