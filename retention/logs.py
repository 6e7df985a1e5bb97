"""Logging set-up: readable text on a terminal, JSON lines elsewhere, always on stderr.

:class:`Secrets` is the one list of values no output may show (the API and admin tokens). The
runtime builds it; the API client scrubs the server's text with it where that text enters, and
the log handler scrubs every record with it, whatever the record carries.

Records that report something a script may act on carry fields besides their prose (see
:class:`Event` and :func:`fields`): a JSON line then has ``event``, ``account`` and the event's
own keys; the text format shows the prose only, as before.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import TextIO
from urllib.parse import quote

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Keys the JSON formatter writes itself: an extra field of that name would overwrite them.
_OWN_KEYS = frozenset({"time", "level", "logger", "message", "exception", "stack"})


class Event(enum.StrEnum):
    """What a record reports: the ``event`` field of a JSON log line. A finite set; records
    without one are diagnostics in prose only.

    About one conversation (with ``agent_id``, ``session_id``, ``rule`` and ``outcome``):
    ``deleted``, ``already_gone`` (the DELETE answered 404 at once), ``delete_failed``,
    ``dry_run`` (would have deleted), ``held`` (a hold won at the last decision),
    ``postponed`` (facts read again made it not due yet), ``withdrawn`` (decided again when its
    DELETE's turn came, it no longer held: not sent), ``gone`` (found gone before any DELETE),
    ``refresh_failed`` (its facts could not be read again), ``unverified`` (still listed after a
    DELETE answered 200: audited as failed, queued again), ``relisted`` (listed again after it
    was recorded gone).

    About an account or the daemon: ``sweep`` (the summary at every sweep's end, its counters
    as numbers), ``breaker`` (the mass-deletion breaker tripped), ``clock_guard`` (deleting
    nothing: the clock cannot be trusted), ``rules_changed``, ``grace`` (newly due
    conversations wait out the policy change grace), ``vanished``, ``platform_retention`` (the
    platform deletes before a policy would), ``reload``, ``daemon``, ``job`` (a scheduled
    sweep failed or was skipped), ``lease`` and ``audit_chain`` (the daemon's walk of an audit
    chain found a row that does not hold).
    """

    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    DELETE_FAILED = "delete_failed"
    DRY_RUN = "dry_run"
    HELD = "held"
    POSTPONED = "postponed"
    WITHDRAWN = "withdrawn"
    GONE = "gone"
    REFRESH_FAILED = "refresh_failed"
    UNVERIFIED = "unverified"
    RELISTED = "relisted"
    SWEEP = "sweep"
    BREAKER = "breaker"
    CLOCK_GUARD = "clock_guard"
    RULES_CHANGED = "rules_changed"
    GRACE = "grace"
    VANISHED = "vanished"
    PLATFORM_RETENTION = "platform_retention"
    RELOAD = "reload"
    DAEMON = "daemon"
    JOB = "job"
    LEASE = "lease"
    AUDIT_CHAIN = "audit_chain"


# The ``outcome`` of a record about one conversation: the audit's word where an audit row was
# written (deleted, already_gone, failed, dry_run); else kept (not deleted now) or gone.
OUTCOME_KEPT = "kept"
OUTCOME_GONE = "gone"

# A sweep's counters, in the order its summary line names them: numbers in the ``sweep``
# record and in ``retention once --json``.
SWEEP_COUNTERS = (
    "agents",
    "pages",
    "listed",
    "new",
    "gone",
    "due",
    "deleted",
    "already_gone",
    "failed",
    "unverified",
    "would_delete",
    "postponed",
    "refreshed",
    "refresh_walks",
)


def fields(event: Event, **values: object) -> dict[str, object]:
    """The ``extra=`` of a record reporting ``event``: ``{"event": ..., **values}``.

    Datetimes become ISO 8601 UTC text with ``Z``, durations seconds (a float). A key the
    record or the JSON formatter uses itself (``name``, ``message``, ``time``, ...) is a
    programming error: ValueError.
    """
    clash = (values.keys() & _STANDARD) | (values.keys() & _OWN_KEYS)
    if clash:
        raise ValueError(f"log field names taken by the record itself: {sorted(clash)}")
    out: dict[str, object] = {"event": event.value}
    for key, value in values.items():
        if isinstance(value, datetime):
            out[key] = utc_text(value)
        elif isinstance(value, timedelta):
            out[key] = value.total_seconds()
        else:
            out[key] = value
    return out


def utc_text(moment: datetime) -> str:
    """ISO 8601 in UTC with ``Z``, to the second: ``2026-11-26T12:00:00Z``."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


# The account whose work is being done (set by the engine for a sweep, a plan, a rules change):
# every record logged meanwhile names it, as the field ``account`` (JSON) or a ``[NAME]``
# prefix (text). Tasks started inside inherit it.
ACCOUNT: ContextVar[str | None] = ContextVar("retention_account", default=None)
MASK = "***"
# Any bearer credential, ours or not: also catches one the server cut short before echoing it.
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;)\]}]+")


class Secrets:
    """The values no log line, stored text, HTTP answer or CLI line may show.

    Each value is also known in its URL-encoded and JSON-escaped forms; ``scrub`` replaces them
    all, longest first, with ``***``, and masks whatever follows ``Bearer``. Empty values are
    ignored. Its repr never shows a value.
    """

    __slots__ = ("_forms",)

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        self._forms: list[str] = []
        for value in values:
            self.add(value)

    def add(self, value: str | None) -> None:
        if not value:
            return
        forms = {value, quote(value, safe=""), json.dumps(value)[1:-1]}
        self._forms = sorted(set(self._forms) | forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def __repr__(self) -> str:
        return f"Secrets({len(self._forms)} forms)"

    def scrub(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return _BEARER.sub(rf"\g<1>{MASK}", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields become keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str)


class RedactFilter(logging.Filter):
    """Last line of defence: mask every secret in what a record will print.

    That is the message with its arguments, the traceback (formatted here into ``exc_text``,
    which both formatters print instead of formatting it again), the stack, and every ``extra``
    field, nested values included.
    """

    def __init__(self, secrets: Secrets) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        scrub = self.secrets.scrub
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and not key.startswith("_"):
                record.__dict__[key] = _scrubbed(value, scrub)
        return True


class AccountFilter(logging.Filter):
    """Name the account of the work in hand on every record (see :data:`ACCOUNT`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        account = record.__dict__.get("account") or ACCOUNT.get()
        if account is not None:
            record.account = account
        record._account_prefix = f"[{account}] " if account is not None else ""
        return True


class _RedactingHandler(logging.StreamHandler[TextIO]):
    """A stream handler that masks the secrets once more in the finished line."""

    def __init__(self, stream: TextIO, secrets: Secrets) -> None:
        super().__init__(stream)
        self.secrets = secrets
        self.addFilter(AccountFilter())
        self.addFilter(RedactFilter(secrets))

    def format(self, record: logging.LogRecord) -> str:
        return self.secrets.scrub(super().format(record))


_PLAIN = logging.Formatter()


def _scrubbed(value: object, scrub: Callable[[str], str]) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {_scrubbed(k, scrub): _scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrubbed(v, scrub) for v in value]
    text = str(value)  # what the JSON formatter would print
    cleaned = scrub(text)
    return value if cleaned == text else cleaned


def configure(
    *,
    level: str = "INFO",
    fmt: str = "auto",
    stream: TextIO | None = None,
    secrets: Secrets | Iterable[str] | None = None,
) -> logging.Handler:
    """Install one stderr handler on the root logger and return it.

    ``fmt`` is "json", "text" or "auto" (text when the stream is a terminal, JSON otherwise).
    ``secrets`` are masked in every line it writes.
    """
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    masked = secrets if isinstance(secrets, Secrets) else Secrets(secrets or ())
    handler = _RedactingHandler(out, masked)
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(name)s: %(_account_prefix)s%(message)s", "%H:%M:%S"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_retention", False):
            root.removeHandler(old)
    handler._retention = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("aiohttp.access", "alembic", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The daemon reports skipped (coalesced) runs itself, at INFO and in its own words.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    return handler
