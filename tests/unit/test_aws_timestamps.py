"""The broker's botocore timestamp parser: AWS's two forms (epoch seconds, ISO 8601 with an
offset) parsed by the standard library into aware UTC datetimes naming the instant
botocore's own parser names; every other form left to botocore's parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from botocore.utils import parse_timestamp
from hypothesis import given
from hypothesis import strategies as st

from identity.aws import parse_aws_timestamp

# 1970 to 2200: what AWS can answer, and what every platform's fromtimestamp takes
epochs = st.integers(min_value=0, max_value=7_258_118_400)
moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2199, 12, 31), timezones=st.just(UTC)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(epochs, st.sampled_from([0.0, 0.25, 0.5]))
def test_epoch_seconds_name_botocores_instant_in_utc(seconds: int, fraction: float) -> None:
    for value in (seconds, seconds + fraction):
        parsed = parse_aws_timestamp(value)
        assert parsed == parse_timestamp(value)
        assert parsed.tzinfo is UTC


@given(moments, offsets, st.sampled_from(["seconds", "milliseconds"]))
def test_iso_8601_with_an_offset_names_botocores_instant(
    moment: datetime, offset: timezone, timespec: str
) -> None:
    text = moment.astimezone(offset).isoformat(timespec=timespec)
    parsed = parse_aws_timestamp(text)
    assert parsed == parse_timestamp(text)
    assert parsed.utcoffset() is not None


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-06T11:00:00Z",  # STS
        "2026-12-06T11:00:00.359Z",
        "2026-12-06T11:00:00+00:00",
    ],
)
def test_the_forms_aws_writes_are_read_directly(text: str) -> None:
    parsed = parse_aws_timestamp(text)
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.replace(microsecond=0) == datetime(2026, 12, 6, 11, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Dec 2026 11:00:00 GMT",  # RFC 822
        "1765018800",  # epoch seconds as text
        "2026-12-06T11:00:00",  # no offset: botocore decides what it means
        True,
    ],
)
def test_other_forms_are_botocores_to_read(value: object) -> None:
    assert parse_aws_timestamp(value) == parse_timestamp(value)


def test_what_no_parser_reads_is_refused_as_botocore_refuses_it() -> None:
    with pytest.raises(ValueError, match="Invalid timestamp"):
        parse_aws_timestamp("not a time")
