"""Durations and the API's timestamp formats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retention.timefmt import format_duration, parse_duration, parse_timestamp


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("36h", timedelta(hours=36)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(hours=36)),
        (" 1h 30m ", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("2H", timedelta(hours=2)),
    ],
)
def test_parse_duration_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("3 parsecs", "invalid duration"),
        ("", "invalid duration"),
        ("10", "invalid duration"),
        ("h", "invalid duration"),
        ("5y", "invalid duration"),
        ("1h and more", "invalid duration"),
        ("-5m", "invalid duration"),
        ("0s", "greater than zero"),
        ("0d0h", "greater than zero"),
    ],
)
def test_parse_duration_rejects_with_a_readable_message(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_duration(text)


@given(
    st.one_of(
        st.tuples(st.integers(1, 500), st.integers(0, 23)).map(
            lambda p: p[0] * 86400 + p[1] * 3600
        ),
        st.tuples(st.integers(1, 23), st.integers(0, 59)).map(lambda p: p[0] * 3600 + p[1] * 60),
        st.tuples(st.integers(0, 59), st.integers(0, 59)).map(lambda p: p[0] * 60 + p[1]),
    ).filter(bool)
)
def test_format_then_parse_round_trips_the_two_largest_units(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-06-25T17:23:34.000000Z", datetime(2023, 6, 25, 17, 23, 34, tzinfo=UTC)),
        ("2023-06-25T17:23:34Z", datetime(2023, 6, 25, 17, 23, 34, tzinfo=UTC)),
        ("2023-04-30 16:43:53", datetime(2023, 4, 30, 16, 43, 53, tzinfo=UTC)),
        ("2023-04-30T18:43:53+02:00", datetime(2023, 4, 30, 16, 43, 53, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_unambiguous_formats(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "not_after", "expected_hour"),
    [
        # Both readings in the past: the later (PM) one, which errs on keeping longer.
        ("25 Jun 2023 05:01:11", datetime(2023, 6, 25, 20, 0, tzinfo=UTC), 17),
        # The PM reading lies in the future: the AM one.
        ("25 Jun 2023 05:01:11", datetime(2023, 6, 25, 9, 0, tzinfo=UTC), 5),
        # 12 o'clock: 00:xx or 12:xx.
        ("25 Jun 2023 12:30:00", datetime(2023, 6, 25, 13, 0, tzinfo=UTC), 12),
        ("25 Jun 2023 12:30:00", datetime(2023, 6, 25, 1, 0, tzinfo=UTC), 0),
        # Both in the future (clock skew): the earlier one.
        ("25 Jun 2023 05:01:11", datetime(2023, 6, 24, 9, 0, tzinfo=UTC), 5),
        # No reference clock: the later reading.
        ("25 Jun 2023 05:01:11", None, 17),
    ],
)
def test_twelve_hour_format_takes_the_later_reading_not_in_the_future(
    text: str, not_after: datetime | None, expected_hour: int
) -> None:
    parsed = parse_timestamp(text, not_after=not_after)
    assert parsed.hour == expected_hour
    assert parsed.date() == datetime(2023, 6, 25).date()


def test_unknown_timestamp_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unrecognised timestamp 'yesterday'"):
        parse_timestamp("yesterday")
