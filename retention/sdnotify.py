"""systemd's notify protocol: READY, STOPPING and watchdog pings to ``$NOTIFY_SOCKET``.

One datagram of ``KEY=VALUE`` lines per message, sent on an ``AF_UNIX`` datagram socket to the
path in ``$NOTIFY_SOCKET`` (an ``@`` in front names a socket in the abstract namespace), as
``sd_notify(3)`` does: https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html.
Without ``$NOTIFY_SOCKET`` (not under systemd, or not ``Type=notify``) every call does nothing.
A message that cannot be sent is logged, never raised: the daemon runs on without systemd's
bookkeeping rather than stop over it. Standard library only; imports nothing of the project.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
SEND_TIMEOUT = 1.0  # seconds; systemd reads its socket at once: a full queue is a stuck manager


class Notifier:
    """Sends state changes to the service manager; a no-op without an address.

    Build it with :meth:`from_env`; tests pass the address of a socket they listen on.
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._stopping = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asks for in the environment: ``$NOTIFY_SOCKET``, and a watchdog
        when ``$WATCHDOG_USEC`` is set for this process (``$WATCHDOG_PID`` unset or ours)."""
        env = os.environ if environ is None else environ
        address = env.get(NOTIFY_SOCKET) or None
        if address is not None and not address.startswith(("/", "@")):
            logger.warning(
                "ignoring %s=%r: not a path nor an abstract socket", NOTIFY_SOCKET, address
            )
            address = None
        return cls(address, watchdog_usec=_watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the watchdog's timeout, as sd_watchdog_enabled(3) advises;
        None without a watchdog."""
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 1_000_000 / 2

    def notify(self, *lines: str) -> bool:
        """Send one message of ``KEY=VALUE`` lines; True when it was sent. Never raises."""
        if self.address is None or not lines:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto("\n".join(lines).encode("utf-8", "replace"), target)
        except OSError as exc:
            logger.warning("could not notify the service manager (%s): %s", lines[0], exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """The daemon serves: systemd's start job is done (``Type=notify``)."""
        return self.notify("READY=1", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """The daemon has begun to stop; sent once however often it is asked."""
        if self._stopping:
            return False
        self._stopping = True
        return self.notify("STOPPING=1", *_status(status))

    async def keep_alive(self) -> None:
        """Ping the watchdog from the event loop at half its timeout until cancelled: a loop that
        hangs stops the pings, and systemd restarts the service. Returns at once without one."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    pid = env.get(WATCHDOG_PID)
    if pid and pid.strip() != str(os.getpid()):
        return None  # meant for another process (the one systemd started, not a child of it)
    try:
        usec = int(env.get(WATCHDOG_USEC, ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def _status(status: str | None) -> list[str]:
    # One line: a line break would end the STATUS field and start a field of its own.
    return [f"STATUS={' '.join(status.split())}"] if status else []
