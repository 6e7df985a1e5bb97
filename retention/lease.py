"""One writer per store and account: take the lease, keep it with a heartbeat, give it back.

A writer (``run``, ``once``, ``apply``, ``create``, ``track``) takes the lease of its scope
(``account:default``) in the store before it changes anything: a row naming the holder (host,
pid, start time), a fencing token that only grows, and an expiry that a heartbeat renews every
third of ``lease_ttl``. A second writer refuses to start, naming the holder and when its lease
expires, or, as a standby, waits and takes over once the lease lapses. Every intent to delete is
written in the same statement as a check that the lease is still this holder's
(``Store.set_state(fence=...)``), and just before a DELETE goes out the keeper's own reckoning,
on the monotonic clock, must still say the lease is held: a holder that was paused or cut off
past its lease deletes nothing after.

On SQLite the keeper also holds an advisory OS lock on a file beside the database for as long
as it runs; a standby that takes over a lapsed lease from a process that is stopped but still
alive proceeds without it (the fencing token is what protects the data).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from retention.clocks import Clock, utc_now
from retention.errors import ConfigError, LeaseLost, StoreError
from retention.models import Lease
from retention.store import Store

logger = logging.getLogger(__name__)
ACCOUNT_SCOPE = "account:default"


def lease_scope(account: str) -> str:
    """The lease of one account's writes: ``account:NAME``."""
    return f"account:{account}"


class LeaseHeld(ConfigError):
    """Another writer holds the lease: this one refuses to start (exit 2)."""


def holder_name(now: datetime) -> str:
    return f"{socket.gethostname()} pid={os.getpid()} started={now.isoformat(timespec='seconds')}"


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        *,
        scope: str = ACCOUNT_SCOPE,
        ttl: timedelta = timedelta(seconds=30),
        lock_file: Path | None = None,
        holder: str | None = None,
        margin: timedelta = timedelta(0),
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.scope = scope
        self.ttl = ttl
        self.lock_file = lock_file
        # Lease times are the database's own (None): writers on several machines compare
        # expiries on one clock, so one whose clock runs ahead cannot take a lease early.
        self.clock = clock
        # A request goes out under the lease only this long before its lapse at the latest:
        # the request timeout, for replicas, so every request ends before another can take over.
        self.margin = margin.total_seconds()
        self.monotonic = monotonic
        self.holder = holder or holder_name(utc_now())
        self.lost = asyncio.Event()
        self._lease: Lease | None = None
        self._valid_until = 0.0  # monotonic: a pause past this cannot go unnoticed
        self._lock_fd: int | None = None

    async def _now(self) -> datetime:
        return self.clock() if self.clock is not None else await self.store.db_now()

    def current(self) -> Lease:
        """The lease to fence intents with; LeaseLost when it is not (or no longer) ours."""
        if self._lease is None or not self.valid():
            raise LeaseLost(f"the lease on {self.scope} is not held by this process")
        return self._lease

    def valid(self) -> bool:
        return (
            self._lease is not None
            and not self.lost.is_set()
            and (self.monotonic() < self._valid_until)
        )

    async def take(self, *, standby: bool = False, poll: float | None = None) -> Lease:
        """Take the lease, or raise LeaseHeld; as a standby, wait until it can be taken."""
        self._lock_fd = _os_lock(self.lock_file) if self.lock_file else None
        said = False
        while True:
            started = self.monotonic()
            # Holding the OS lock proves no live process on this host holds the store: a lease
            # left by one that died (SIGKILL, a crash) is taken at once, not after it lapses.
            try:
                lease = await self.store.take_lease(
                    self.scope,
                    self.holder,
                    now=await self._now(),
                    ttl=self.ttl,
                    force=self._lock_fd is not None,
                )
            except StoreError as exc:
                if not standby:
                    raise
                # A holder paused inside a write keeps SQLite's lock: nobody can write until it
                # resumes or dies. A standby keeps waiting.
                logger.warning("standing by: the store is busy (%s)", exc)
                await asyncio.sleep(poll or self.ttl.total_seconds() / 3)
                continue
            if lease is not None:
                self._hold(lease, started)
                logger.info("lease on %s taken (token %d)", self.scope, lease.token)
                return lease
            held = await self.store.lease(self.scope)
            who = held.holder if held else "another writer"
            until = held.expires_at.isoformat(timespec="seconds") if held else "soon"
            if not standby:
                raise LeaseHeld(
                    f"another retention holds the store's lease on {self.scope}: {who}, until "
                    f"{until} (renewed while it runs); stop it, start this one with --standby, "
                    "or, while a daemon runs, create and track through its admin API"
                )
            if not said:
                logger.warning("standing by: %s holds the lease until %s", who, until)
                said = True
            await asyncio.sleep(poll or self.ttl.total_seconds() / 3)
            if self._lock_fd is None and self.lock_file:
                self._lock_fd = _os_lock(self.lock_file)

    async def try_take(self) -> bool:
        """One attempt at a free, lapsed or already-ours lease (a replica taking its share);
        True when it is held now. No OS lock: replicas share the store on purpose."""
        started = self.monotonic()
        lease = await self.store.take_lease(
            self.scope, self.holder, now=await self._now(), ttl=self.ttl
        )
        if lease is None:
            return False
        if self._lease is None or lease.token != self._lease.token:
            logger.info("lease on %s taken (token %d)", self.scope, lease.token)
        self._hold(lease, started)
        return True

    async def renew_once(self) -> bool:
        """Renew a held lease once; False (and not held any more) when it is no longer ours:
        lapsed and taken by another, or this process was paused past it."""
        if self._lease is None:
            return False
        started = self.monotonic()
        renewed = await self.store.renew_lease(self._lease, now=await self._now(), ttl=self.ttl)
        if renewed is None or started > self._valid_until:
            logger.warning(
                "lease on %s lost (taken by another, or this process paused)", self.scope
            )
            self._lease = None
            return False
        self._hold(renewed, started)
        return True

    def stand_down(self) -> None:
        """Stop counting the lease as held here, at once and locally: no new request or intent
        goes out under it. :meth:`release` then gives it back in the store."""
        self._valid_until = 0.0

    def describe(self) -> str:
        """Who acts, under which lease: for the User-Agent of every request made under it.
        LeaseLost when the lease is not (or no longer) held, or lapses within the margin."""
        lease = self.current()
        if self.monotonic() + self.margin >= self._valid_until:
            raise LeaseLost(
                f"the lease on {self.scope} lapses before a request sent now would end: "
                "it waits for the renewal"
            )
        return f"replica {self.holder}; lease {lease.scope}#{lease.token}"

    async def keep(self) -> None:
        """Renew every third of the lease's time until cancelled; on a loss, say so and stop."""
        while not self.lost.is_set():
            await asyncio.sleep(self.ttl.total_seconds() / 3)
            if self._lease is None:
                return
            started = self.monotonic()
            renewed = await self.store.renew_lease(self._lease, now=await self._now(), ttl=self.ttl)
            if renewed is None or started > self._valid_until:
                logger.error(
                    "lost the lease on %s (another writer took over, or this process was paused "
                    "past it): deleting nothing more and stopping",
                    self.scope,
                )
                self.lost.set()
                return
            self._hold(renewed, started)

    async def release(self) -> None:
        if self._lease is not None and not self.lost.is_set():
            await self.store.release_lease(self._lease, now=await self._now())
        self._lease = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _hold(self, lease: Lease, taken_at: float) -> None:
        self._lease = lease
        # Counted from before the request that took it: the server-side expiry is later still.
        self._valid_until = taken_at + self.ttl.total_seconds()


def _os_lock(path: Path) -> int | None:
    """An advisory exclusive lock on ``path`` (created 0600), or None while another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
