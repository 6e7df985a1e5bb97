"""Durations and the API's timestamp formats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retention.timefmt import (
    format_duration,
    parse_duration,
    parse_http_date,
    parse_timestamp,
    to_moment,
)


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
        ("1s", timedelta(seconds=1)),
        ("0.5s", timedelta(seconds=0.5)),
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


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=1), "1s"),
        (timedelta(seconds=12), "12s"),
        (timedelta(minutes=45), "45m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1), "1h"),
        (timedelta(days=2, hours=3), "2d3h"),
        (timedelta(days=1, hours=2, minutes=3, seconds=4), "1d2h"),  # the two largest units
        (timedelta(hours=2, minutes=3, seconds=4), "2h3m"),
        (timedelta(days=1, seconds=5), "1d5s"),
        (timedelta(seconds=59.9), "59s"),
        (-timedelta(hours=2), "-2h"),
        (-timedelta(seconds=1), "-1s"),
        (-timedelta(days=1, hours=12), "-1d12h"),
    ],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text


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
    assert parsed.tzinfo is UTC


# ---- 12-hour message times: ambiguous times resolve young ------------------------------------

PM = datetime(2023, 6, 25, 17, 1, 11, tzinfo=UTC)  # "25 Jun 2023 05:01:11" read as the evening
AM = PM - timedelta(hours=12)  # ... and as the morning
SHOWN = "25 Jun 2023 05:01:11"
M = timedelta(minutes=1)
HOUR = timedelta(hours=1)

# (id, the message's true time, the server's Date skew, the local clock's skew, the reading taken)
# The response arrives 20 s after the message; each clock reads the true time plus its skew.
SKEWS = [
    # A message at the evening reading: with our clock right, every server skew finds it.
    ("pm, server -2h", PM, -2 * HOUR, timedelta(0), PM),
    ("pm, server -1h", PM, -HOUR, timedelta(0), PM),
    ("pm, server -60s", PM, -M, timedelta(0), PM),  # issue 8: the morning was taken, 12h early
    ("pm, server on time", PM, timedelta(0), timedelta(0), PM),
    ("pm, server +60s", PM, M, timedelta(0), PM),
    ("pm, server +1h", PM, HOUR, timedelta(0), PM),
    ("pm, server +2h", PM, 2 * HOUR, timedelta(0), PM),
    # ... and with the server right, every local skew does: the later clock is the reference.
    ("pm, local -2h", PM, timedelta(0), -2 * HOUR, PM),
    ("pm, local -60s", PM, timedelta(0), -M, PM),
    ("pm, local +2h", PM, timedelta(0), 2 * HOUR, PM),
    ("pm, local a day ahead", PM, -M, timedelta(days=1), PM),
    ("pm, server -2h, local -60s", PM, -2 * HOUR, -M, PM),
    ("pm, server -60s, local -2h", PM, -M, -2 * HOUR, PM),
    ("pm, both -59m", PM, -59 * M, -59 * M, PM),
    # Both clocks behind by more than the hour: the one case read 12h early (documented).
    ("pm, both -2h", PM, -2 * HOUR, -2 * HOUR, AM),
    # A message at the morning reading: the evening one lies ~12h ahead of any sane clock.
    ("am, server -2h", AM, -2 * HOUR, timedelta(0), AM),
    ("am, server -60s", AM, -M, timedelta(0), AM),
    ("am, on time", AM, timedelta(0), timedelta(0), AM),
    ("am, server +60s", AM, M, timedelta(0), AM),
    ("am, server +2h", AM, 2 * HOUR, timedelta(0), AM),
    ("am, local +2h", AM, timedelta(0), 2 * HOUR, AM),
    # A clock far ahead makes the message look younger than it is: kept longer, never early.
    ("am, local a day ahead", AM, timedelta(0), timedelta(days=1), PM),
    ("am, server 12h ahead", AM, 12 * HOUR, timedelta(0), PM),
    # Both clocks far behind: neither reading is within the hour; the younger one is taken.
    ("am, both -2h", AM, -2 * HOUR, -2 * HOUR, PM),
]


@pytest.mark.parametrize(
    ("truth", "server_skew", "local_skew", "expected"),
    [row[1:] for row in SKEWS],
    ids=[row[0] for row in SKEWS],
)
def test_twelve_hour_time_under_skewed_clocks(
    truth: datetime, server_skew: timedelta, local_skew: timedelta, expected: datetime
) -> None:
    received = truth + timedelta(seconds=20)
    parsed = parse_timestamp(
        SHOWN, server_time=received + server_skew, local_time=received + local_skew
    )
    assert parsed == expected
    assert parsed.tzinfo is UTC


# (id, reference clock, reading taken): the bounds of "no more than one hour after".
BOUNDS = [
    ("evening equals the reference", PM, PM),
    ("evening an hour after, exactly", PM - HOUR, PM),
    ("evening a second past the hour", PM - HOUR - timedelta(seconds=1), AM),
    ("morning an hour after, exactly", AM - HOUR, AM),
    ("morning a second past the hour", AM - HOUR - timedelta(seconds=1), PM),
    ("both readings in the past", PM + 3 * HOUR, PM),
    ("only the morning in the past", AM + 3 * HOUR, AM),
]


@pytest.mark.parametrize(
    ("reference", "expected"), [row[1:] for row in BOUNDS], ids=[row[0] for row in BOUNDS]
)
@pytest.mark.parametrize("which", ["server", "local", "both"])
def test_twelve_hour_bounds(reference: datetime, expected: datetime, which: str) -> None:
    clocks = {
        "server": {"server_time": reference},
        "local": {"local_time": reference},
        "both": {"server_time": reference, "local_time": reference},
    }[which]
    assert parse_timestamp(SHOWN, **clocks) == expected


@pytest.mark.parametrize(
    ("server", "local"),
    [(AM - 3 * HOUR, PM - HOUR), (PM - HOUR, AM - 3 * HOUR)],
    ids=["local later", "server later"],
)
def test_the_later_clock_is_the_reference(server: datetime, local: datetime) -> None:
    assert parse_timestamp(SHOWN, server_time=server, local_time=local) == PM


@pytest.mark.parametrize(
    ("text", "reference", "expected"),
    [
        ("25 Jun 2023 12:30:00", datetime(2023, 6, 25, 13, 0, tzinfo=UTC), 12),
        ("25 Jun 2023 12:30:00", datetime(2023, 6, 25, 11, 30, tzinfo=UTC), 12),  # the hour
        ("25 Jun 2023 12:30:00", datetime(2023, 6, 25, 1, 0, tzinfo=UTC), 0),
        ("25 Jun 2023 11:59:59", datetime(2023, 6, 25, 11, 0, tzinfo=UTC), 11),
        ("25 Jun 2023 01:00:00", datetime(2023, 6, 25, 2, 0, tzinfo=UTC), 1),
    ],
)
def test_twelve_o_clock_reads_as_midnight_or_noon(
    text: str, reference: datetime, expected: int
) -> None:
    parsed = parse_timestamp(text, server_time=reference)
    assert (parsed.date(), parsed.hour) == (reference.date(), expected)


def test_without_a_clock_the_later_reading_is_taken() -> None:
    assert parse_timestamp(SHOWN) == PM


def test_iso_without_offset_or_z_is_utc() -> None:
    for text in ("2023-06-25T17:23:34", "2023-06-25T17:23:34.250000", "2023-06-25 17:23"):
        parsed = parse_timestamp(text)
        assert parsed.tzinfo is UTC, text
        assert (parsed.hour, parsed.minute) == (17, 23)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wed, 21 Oct 2015 07:28:00 GMT", datetime(2015, 10, 21, 7, 28, tzinfo=UTC)),
        ("Wed, 21 Oct 2015 07:28:00 -0000", datetime(2015, 10, 21, 7, 28, tzinfo=UTC)),
        ("Wed, 21 Oct 2015 09:28:00 +0200", datetime(2015, 10, 21, 7, 28, tzinfo=UTC)),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_http_date(value: str | None, expected: datetime | None) -> None:
    parsed = parse_http_date(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is UTC


def test_unknown_timestamp_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unrecognised timestamp 'yesterday'"):
        parse_timestamp("yesterday")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", datetime(2026, 10, 27, 12, 0, tzinfo=UTC)),
        ("1d12h", datetime(2026, 11, 25, 0, 0, tzinfo=UTC)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T06:30:00Z", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
        ("2026-11-01T08:30:00+02:00", datetime(2026, 11, 1, 6, 30, tzinfo=UTC)),
    ],
)
def test_a_moment_is_a_duration_ago_or_a_date_or_a_timestamp(text: str, expected: datetime) -> None:
    assert to_moment(text, datetime(2026, 11, 26, 12, 0, tzinfo=UTC)) == expected


@pytest.mark.parametrize("text", ["soon", "", "99999999d", "2026-13-01"])
def test_a_moment_that_cannot_be_read_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="invalid time"):
        to_moment(text, datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
