"""Pure parsing of durations ("36h"), the API's three timestamp formats and HTTP dates, to UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
DURATION_HELP = "use a number and a unit s, m, h, d or w, e.g. '90s', '15m', '36h', '30d', '2w'"


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``15m``, ``36h``, ``30d``, ``2w`` or a sum such as ``1d12h``.

    Raises ValueError with a readable message; zero and negative durations are rejected.
    """
    raw = text.strip()
    pos, seconds = 0, 0.0
    for match in _DURATION.finditer(raw):
        if raw[pos : match.start()].strip():
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2).lower()]
        pos = match.end()
    if not raw or raw[pos:].strip():  # nothing, or text no unit could start (pos 0 included)
        raise ValueError(f"invalid duration {text!r}: {DURATION_HELP}")
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be greater than zero")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """Render a duration compactly for people: ``2d3h``, ``45m``, ``12s``; negative gets ``-``."""
    total = int(delta.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size or (unit == "s" and not parts):
            count, total = divmod(total, size)
            parts.append(f"{count}{unit}")
        if len(parts) == 2:
            break
    return sign + "".join(parts)


def to_moment(text: str, now: datetime) -> datetime:
    """A point in time as people give one on a command line: a duration ago (``30d``: thirty
    days before ``now``), a date (``2026-11-01``: its midnight, UTC) or an ISO 8601 timestamp
    (UTC unless it names an offset). Raises ValueError naming the accepted forms."""
    raw = text.strip()
    try:
        return now - parse_duration(raw)
    except OverflowError:
        raise ValueError(f"invalid time {text!r}: that long ago is before the year 1") from None
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use a duration ago ('30d', '12h') or a date or timestamp "
            "('2026-11-01', '2026-11-01T12:00:00Z')"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S")
_TWELVE_HOUR = "%d %b %Y %I:%M:%S"
# How far past the later of the two clocks a 12-hour reading may lie and still be taken.
TWELVE_HOUR_SLACK = timedelta(hours=1)


def parse_timestamp(
    text: str, *, server_time: datetime | None = None, local_time: datetime | None = None
) -> datetime:
    """Parse any timestamp format the API sends and return an aware UTC datetime.

    Formats: ``2023-06-25T17:23:34.000000Z``, ``2023-04-30 16:43:53`` (UTC by the vendor's
    convention), other ISO 8601 with an offset or without one (then UTC), and the message lists'
    ``25 Jun 2023 05:01:11``.

    The last one is a 12-hour clock without AM/PM: ``05:01:11`` is 05:01 or 17:01 (and
    ``12:30:00`` is 00:30 or 12:30). Ambiguous times resolve young. The reference is the later of
    ``server_time`` (the response's ``Date``) and ``local_time`` (our clock when the response
    arrived). We take the later reading when it lies no more than one hour
    (:data:`TWELVE_HOUR_SLACK`) after the reference, exactly one hour included; else the earlier
    reading when that one does; else (both clocks lag by over an hour), or with no clock at all,
    the later reading again. As the later clock is the reference, one clock running behind cannot
    make a message look 12 hours older than it is, and the hour absorbs modest skew of both. A
    message is placed early only when both clocks lag it by more than an hour; otherwise a
    conversation may look up to 12 hours younger and be kept longer, never deleted sooner.
    """
    raw = text.strip()
    for fmt in _ISO_FORMATS:
        try:
            return datetime.strptime(raw, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        parsed = datetime.strptime(raw, _TWELVE_HOUR)
    except ValueError:
        pass
    else:
        return resolve_twelve_hour(parsed, server_time=server_time, local_time=local_time)
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"unrecognised timestamp {text!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_http_date(value: str | None) -> datetime | None:
    """An HTTP ``Date`` header (``Wed, 21 Oct 2015 07:28:00 GMT``) as aware UTC; None if unreadable.

    A zone of ``-0000`` means UTC (RFC 5322), never the local zone.
    """
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def resolve_twelve_hour(
    parsed: datetime, *, server_time: datetime | None, local_time: datetime | None
) -> datetime:
    """Pick the reading of a 12-hour time (see :func:`parse_timestamp` for the rule)."""
    # strptime's %I maps "12" to hour 0 and 1..11 to themselves: the AM reading.
    morning = parsed.replace(tzinfo=UTC)
    evening = morning + timedelta(hours=12)
    clocks = [c for c in (server_time, local_time) if c is not None]
    if not clocks:
        return evening
    latest = max(clocks) + TWELVE_HOUR_SLACK
    if evening <= latest or morning > latest:
        return evening
    return morning
