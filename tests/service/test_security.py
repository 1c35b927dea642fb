"""API keys and rate limits."""

from __future__ import annotations

import time

import pytest

from service.api.security import KeyChecker, RateLimiter, hash_key, parse_keys
from service.vision.errors import RateLimited, Unauthorized


def test_keys_are_configured_as_digests_and_checked_by_name():
    checker = KeyChecker(parse_keys(f"alice:{hash_key('a-key')}, bob:{hash_key('b-key')}"))
    assert checker.identify("a-key") == "alice" and checker.identify("b-key") == "bob"
    with pytest.raises(Unauthorized, match="invalid"):
        checker.identify("a-key ")
    with pytest.raises(Unauthorized, match="missing"):
        checker.identify(None)
    assert KeyChecker({}).identify(None) == "anonymous"


@pytest.mark.parametrize("spec", ["alice", "alice:1234", ":" + "0" * 64, "alice:" + "z" * 64])
def test_malformed_key_entries_are_refused_without_echoing_them(spec):
    with pytest.raises(ValueError) as error:
        parse_keys(spec)
    assert "z" * 64 not in str(error.value)


def test_rate_limit_refuses_then_refills():
    limiter = RateLimiter(per_minute=120)  # 2 per second, bursts of 120
    for _ in range(120):
        limiter.check("alice")
    with pytest.raises(RateLimited) as refused:
        limiter.check("alice")
    assert 0 < refused.value.retry_after <= 0.5
    limiter.check("bob")  # buckets are per key
    time.sleep(refused.value.retry_after + 0.05)
    limiter.check("alice")
    RateLimiter(per_minute=0).check("anyone")  # off
