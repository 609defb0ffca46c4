"""``redis://`` and ``rediss://``: the state store in Redis, shared by any number of
machines. The contract is :class:`identity.store.Store`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from identity.errors import StoreError
from identity.store_values import check_member as _check_member
from identity.store_values import check_member_write
from identity.store_values import check_ttl as _check_ttl
from identity.store_values import check_value as _check_value

__all__ = ["REDIS_CONNECT_TIMEOUT", "REDIS_SOCKET_TIMEOUT", "RedisStore"]

_REDIS_PREFIX = "chime-broker:"
# Seconds to connect and to wait for a reply: a lost or hung Redis answers 503 that soon.
REDIS_CONNECT_TIMEOUT = 1.0
REDIS_SOCKET_TIMEOUT = 3.0
# INCR keeps an existing TTL; a counter without one (new, or written by an older
# broker) gets it here, inside the script, so no increment ever sees a counter
# that never expires.
_REDIS_INCR = """
local count = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
"""


_REDIS_COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def _milliseconds(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _reply_bytes(value: bytes | str | None) -> bytes | None:
    if isinstance(value, str):
        raise StoreError("redis store: replies are decoded; remove decode_responses from the URL")
    return value


class RedisStore:
    """``redis://`` / ``rediss://``: redis-py over a connection pool, keys prefixed
    ``chime-broker:``. Needs Redis >= 6.2 (GETDEL). The pool reconnects after fork."""

    def __init__(self, url: str) -> None:
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
                socket_timeout=REDIS_SOCKET_TIMEOUT,
                health_check_interval=30,
                # Only connection failures are retried: a command that timed out may
                # have run, and running INCR or GETDEL twice would be wrong.
                retry=Retry(
                    ExponentialBackoff(cap=0.2, base=0.02),
                    2,
                    supported_errors=(redis.ConnectionError,),
                ),
            )
        except ValueError as e:
            raise ValueError(f"invalid redis store URL: {e}") from None
        self._incr = self._client.register_script(_REDIS_INCR)
        self._compare_and_set = self._client.register_script(_REDIS_COMPARE_AND_SET)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as e:
            raise StoreError(f"redis store: {e}") from e

    def get(self, key: str) -> bytes | None:
        with self._errors():
            value = self._client.get(_REDIS_PREFIX + key)
        return _reply_bytes(value)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        with self._errors():
            values = self._client.mget([_REDIS_PREFIX + key for key in keys])
        return [_reply_bytes(value) for value in values]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._set(key, value, ttl)

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        return self._set(key, value, ttl, nx=True)

    def replace(self, key: str, value: bytes, ttl: float) -> bool:
        return self._set(key, value, ttl, xx=True)

    def compare_and_set(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        _check_value(value)
        _check_ttl(ttl)
        with self._errors():
            swapped = self._compare_and_set(
                keys=[_REDIS_PREFIX + key], args=[expected, value, _milliseconds(ttl)]
            )
        return bool(swapped == 1)

    def _set(
        self, key: str, value: bytes, ttl: float, *, nx: bool = False, xx: bool = False
    ) -> bool:
        """SET with a TTL (``nx``: only when absent; ``xx``: only when live); True when written."""
        _check_value(value)
        _check_ttl(ttl)
        with self._errors():
            written = self._client.set(
                _REDIS_PREFIX + key, value, px=_milliseconds(ttl), nx=nx, xx=xx
            )
        return bool(written)

    def get_and_delete(self, key: str) -> bytes | None:
        with self._errors():
            value = self._client.getdel(_REDIS_PREFIX + key)
        return _reply_bytes(value)

    def delete(self, key: str) -> None:
        with self._errors():
            self._client.delete(_REDIS_PREFIX + key)

    def set_and_add_member(
        self,
        key: str,
        value: bytes,
        ttl: float,
        map_key: str,
        member: str,
        member_value: bytes,
        map_ttl: float,
    ) -> None:
        check_member_write(value, ttl, member, member_value, map_ttl)
        with self._errors():
            # MULTI/EXEC: one round trip, and no reader sees the record without its member.
            pipe = self._client.pipeline(transaction=True)
            pipe.set(_REDIS_PREFIX + key, value, px=_milliseconds(ttl))
            pipe.hset(_REDIS_PREFIX + map_key, member, member_value)
            pipe.pexpire(_REDIS_PREFIX + map_key, _milliseconds(map_ttl))
            pipe.execute()

    def members(self, map_key: str) -> dict[str, bytes]:
        with self._errors():
            found = self._client.hgetall(_REDIS_PREFIX + map_key)
        held: dict[str, bytes] = {}
        for member, value in found.items():
            name, data = _reply_bytes(member), _reply_bytes(value)
            if name is not None and data is not None:
                held[name.decode("ascii")] = data
        return held

    def remove_members(self, map_key: str, members: Sequence[str]) -> None:
        for member in members:
            _check_member(member)
        if not members:
            return
        with self._errors():
            self._client.hdel(_REDIS_PREFIX + map_key, *members)

    def incr(self, key: str, ttl: float) -> int:
        _check_ttl(ttl)
        with self._errors():
            count = self._incr(keys=[_REDIS_PREFIX + key], args=[_milliseconds(ttl)])
        return int(count)

    def ping(self) -> None:
        with self._errors():
            self._client.ping()

    def close(self) -> None:
        with self._errors():
            self._client.close()
