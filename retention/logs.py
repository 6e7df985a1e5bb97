"""Logging set-up: readable text on a terminal, JSON lines elsewhere, always on stderr."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RedactFilter(logging.Filter):
    """Last line of defence: replace any registered secret in a formatted record with ***."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        cleaned = message
        for secret in self.secrets:
            cleaned = cleaned.replace(secret, "***")
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure(
    *,
    level: str = "INFO",
    fmt: str = "auto",
    stream: TextIO | None = None,
    secrets: list[str] | None = None,
) -> logging.Handler:
    """Install one stderr handler on the root logger and return it.

    ``fmt`` is "json", "text" or "auto" (text when the stream is a terminal, JSON otherwise).
    """
    out = stream if stream is not None else sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    handler = logging.StreamHandler(out)
    if use_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(RedactFilter(secrets or []))
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
