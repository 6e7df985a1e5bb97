"""Pure parsing of durations ("36h") and of the API's three timestamp formats, always to UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

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
    if not raw or pos == 0 or raw[pos:].strip():
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


_ISO_FORMATS = ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%S")
_TWELVE_HOUR = "%d %b %Y %I:%M:%S"


def parse_timestamp(text: str, *, not_after: datetime | None = None) -> datetime:
    """Parse any timestamp format the API sends and return an aware UTC datetime.

    Formats: ``2023-06-25T17:23:34.000000Z``, ``2023-04-30 16:43:53`` (UTC by the vendor's
    convention), other ISO 8601 with an offset, and the message lists' ``25 Jun 2023 05:01:11``.

    The last one is a 12-hour clock without AM/PM, so ``05:01:11`` is 05:01 or 17:01. We take the
    later reading that is not after ``not_after`` (normally the time of the response), and the
    earlier one only when both lie in the future. A conversation's last activity is therefore never
    placed earlier than the truth: at worst it looks up to 12 hours younger, and it is kept longer,
    never deleted sooner.
    """
    raw = text.strip()
    for fmt in _ISO_FORMATS:
        try:
            return datetime.strptime(raw, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        return _resolve_twelve_hour(datetime.strptime(raw, _TWELVE_HOUR), not_after)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"unrecognised timestamp {text!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _resolve_twelve_hour(parsed: datetime, not_after: datetime | None) -> datetime:
    # strptime's %I maps "12" to hour 0 and 1..11 to themselves: the AM reading.
    morning = parsed.replace(tzinfo=UTC)
    evening = morning + timedelta(hours=12)
    if not_after is None or evening <= not_after:
        return evening
    return morning
