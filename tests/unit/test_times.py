"""``rfc3339``: one format for every moment the broker writes, the same whether given a
datetime or seconds since the epoch, and the same on a repeat."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from identity.times import rfc3339

# 1970 to 2200, to the microsecond
SECONDS = st.floats(min_value=0, max_value=7_258_118_400, allow_nan=False, allow_infinity=False)


def _by_datetime(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def test_a_known_moment() -> None:
    moment = datetime(2026, 11, 27, 5, 0, 0, 999_999, tzinfo=UTC)
    assert rfc3339(moment) == "2026-11-27T05:00:00Z"
    assert rfc3339(moment.timestamp()) == "2026-11-27T05:00:00Z"
    east = moment.astimezone(timezone(timedelta(hours=9)))
    assert rfc3339(east) == "2026-11-27T05:00:00Z"


@given(SECONDS)
def test_seconds_and_datetimes_agree_and_the_fraction_is_dropped(at: float) -> None:
    moment = datetime.fromtimestamp(at, UTC)
    expected = _by_datetime(moment.timestamp())
    assert rfc3339(moment) == expected
    assert rfc3339(moment.timestamp()) == expected
    # again, from the formatter's memory
    assert rfc3339(moment) == expected


@given(st.integers(min_value=0, max_value=7_258_118_400))
def test_whole_seconds(at: int) -> None:
    assert rfc3339(at) == _by_datetime(at)
    assert rfc3339(at + 0.999) == _by_datetime(at)


def test_a_log_line_carries_the_same_moment_with_milliseconds() -> None:
    import json
    import logging

    from service.logs import JsonFormatter

    record = logging.LogRecord("chime_broker.test", logging.INFO, "", 0, "hello", None, None)
    record.created, record.msecs = 1_764_990_000.1239, 123.9
    line = json.loads(JsonFormatter().format(record))
    assert line["time"] == "2025-12-06T03:00:00.123Z"
