"""Replicas that share the accounts of one store: each holds its fair share of account leases.

Several ``retention run`` processes on one PostgreSQL store coordinate through the store alone:
each heartbeats a row in ``replicas`` (live while younger than the lease time), and every third
of the lease time it renews the account leases it holds, hands over any beyond its fair share
(the number of accounts over the number of live replicas, rounded up), and takes free or
lapsed ones up to it. So N replicas split M accounts about evenly, and rebalance when one joins
(the others hand accounts over) or leaves (its leases lapse, or a clean stop gives them back,
and the others take them).

An account's lease (:mod:`retention.lease`) is held by at most one replica: taking it is a
compare-and-swap on its fencing token in one row. A replica works only in accounts it holds:
the daemon starts no sweep in another, every request carries the lease in its User-Agent and is
not sent once the lease is not held here, and every intent to delete is fenced by the token in
the same statement. A replica hands an account over by standing down first (nothing new goes
out), waiting for the requests in flight to be answered, and only then releasing the lease: the
next holder's first request comes after this one's last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from retention.clocks import Clock, utc_now
from retention.errors import StoreError
from retention.lease import LeaseKeeper
from retention.store import Store

logger = logging.getLogger(__name__)
BALANCE_JOB = "balance"  # the daemon's health names a balancing that keeps failing so


@dataclass(frozen=True)
class Slot:
    """One account a replica may hold: its lease, and whether its client is idle."""

    account: str
    keeper: LeaseKeeper
    idle: Callable[[], bool]  # no request in flight under the account's lease


def fair_share(accounts: int, replicas: int) -> int:
    """How many accounts one of ``replicas`` live replicas holds at most."""
    return math.ceil(accounts / max(replicas, 1))


class Replicas:
    def __init__(
        self,
        store: Store,
        slots: Sequence[Slot],
        *,
        holder: str,
        ttl: timedelta,
        request_timeout: timedelta = timedelta(seconds=30),
        failing_since: dict[str, datetime] | None = None,
        clock: Clock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.slots = list(slots)
        self.holder = holder
        self.ttl = ttl
        # Every request ends (answered or timed out) within this: a handover waits that long
        # for the requests in flight, and none is sent closer than this to the lease's lapse.
        self.request_timeout = request_timeout
        # Where a balancing that keeps failing is told (the daemon's health: /readyz).
        self.failing_since = failing_since if failing_since is not None else {}
        self.clock = clock  # None: the database's clock, as the leases use
        self.monotonic = monotonic
        self.started_at = clock() if clock is not None else utc_now()
        self.live: list[str] = [holder]  # as the last round found them

    def held(self) -> list[str]:
        """The accounts this replica holds now."""
        return [s.account for s in self.slots if s.keeper.valid()]

    async def run(self) -> None:
        """Balance every third of the lease time until cancelled; then give every lease back."""
        try:
            while True:
                try:
                    await self.balance()
                except Exception as exc:
                    # The store is away (what is held lapses by itself) or a round failed: say
                    # so, count it for /readyz, and try again next round.
                    logger.warning("replicas: balancing failed: %s", exc)
                    self.failing_since.setdefault(BALANCE_JOB, utc_now())
                else:
                    self.failing_since.pop(BALANCE_JOB, None)
                await asyncio.sleep(self.ttl.total_seconds() / 3)
        finally:
            await asyncio.shield(self.leave())

    async def balance(self) -> None:
        """One round: beat, renew, hand over the surplus, take up to the fair share."""
        now = self.clock() if self.clock is not None else await self.store.db_now()
        await self.store.beat(self.holder, started_at=self.started_at, now=now)
        live = await self.store.live_replicas(now=now, within=self.ttl)
        if self.holder not in live:
            live = sorted([*live, self.holder])
        if live != self.live:
            logger.info("replicas: %d live (%s)", len(live), ", ".join(live))
        self.live = live
        share = fair_share(len(self.slots), len(live))
        held = [s for s in self.slots if s.keeper.valid() and await s.keeper.renew_once()]
        if len(held) > share:  # all at once: the others' renewals do not wait on one handover
            surplus, held = held[share:], held[:share]
            await asyncio.gather(*(self.hand_over(s) for s in surplus))
        if len(held) < share:
            # Each replica starts looking at its own place in the list: first picks spread out.
            start = live.index(self.holder) * share
            order = self.slots[start % len(self.slots) :] + self.slots[: start % len(self.slots)]
            for slot in order:
                if len(held) >= share:
                    break
                if slot not in held and await slot.keeper.try_take():
                    held.append(slot)
        await self.store.forget_dead_replicas(older_than=now - 10 * self.ttl)

    async def hand_over(self, slot: Slot) -> None:
        """Give an account back: stand down, let its requests in flight end, release. A
        request still unanswered after the request timeout (it cannot be) leaves the lease to
        lapse instead: the next holder starts only after that."""
        slot.keeper.stand_down()
        deadline = self.monotonic() + self.request_timeout.total_seconds() + 1.0
        while not slot.idle() and self.monotonic() < deadline:  # noqa: ASYNC110 - a counter
            await asyncio.sleep(0.05)
        if not slot.idle():
            logger.warning(
                "replicas: account %s left to lapse: a request is unanswered", slot.account
            )
            return
        await slot.keeper.release()
        logger.info("replicas: account %s handed over", slot.account)

    async def leave(self) -> None:
        """A clean stop: hand every account over (at once) and remove this replica's row."""
        held = [slot for slot in self.slots if slot.keeper.valid()]
        for slot, outcome in zip(
            held,
            await asyncio.gather(*(self.hand_over(s) for s in held), return_exceptions=True),
            strict=True,
        ):
            if isinstance(outcome, Exception):
                logger.warning("replicas: could not give %s back: %s", slot.account, outcome)
        with contextlib.suppress(StoreError):  # else the row ages out
            await self.store.forget_replica(self.holder)
