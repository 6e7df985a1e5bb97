"""The running daemon checks its own audit chains: at start and every :data:`EVERY` after, it
walks each account's chain it works in (``audit verify`` without the command), logs an error
naming the first bad row when one does not hold, and hands each verdict on (``/metrics``:
``retention_audit_chain_valid``, so an alert fires on a broken chain).

Costs no API call: one streamed read of the chain (about 18 s of CPU per million rows; README:
Performance). A walk that fails to read the store is logged and tried again next time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from retention.chain import GENESIS, Head, Verdict
from retention.errors import StoreError
from retention.logs import Event, fields
from retention.store import Store

logger = logging.getLogger(__name__)
EVERY = timedelta(hours=1)
TICK = timedelta(minutes=1)


@dataclass(frozen=True)
class Watched:
    """One account's chain: its store, and whether this process works in it now."""

    store: Store
    held: Callable[[], bool] = lambda: True


async def watch(
    chains: Sequence[Watched],
    on_verdict: Callable[[Verdict], None],
    *,
    every: timedelta = EVERY,
    tick: timedelta = TICK,
) -> None:
    """Verify each chain as soon as this process works in it, then every ``every`` while it
    does (looked at every ``tick``: a replica that takes an account over walks it within one
    tick), until cancelled."""
    walked: dict[int, float] = {}  # chain index -> monotonic time of its last walk
    loop = asyncio.get_running_loop()
    while True:
        for index, watched in enumerate(chains):
            last = walked.get(index)
            due = last is None or loop.time() - last >= every.total_seconds()
            if due and watched.held():
                walked[index] = loop.time()
                await check(watched.store, on_verdict)
        await asyncio.sleep(tick.total_seconds())


async def check(store: Store, on_verdict: Callable[[Verdict], None]) -> Verdict | None:
    """One walk of ``store``'s account chain; None when the store could not be read."""
    try:
        verdict = await store.journal.audit.verify()
    except StoreError as exc:  # the database: no verdict (RetentionAuditChainUnverified)
        logger.warning("could not verify the audit chain: %s", exc)
        return None
    except Exception as exc:  # anything else the walk meets is the chain's own problem
        nothing = Head(store.account, 0, GENESIS)
        verdict = Verdict(store.account, 0, nothing, f"the walk failed: {exc}")
    if not verdict.ok:
        logger.error(
            "the audit chain does not hold: %s (`retention audit verify` names it too)",
            verdict.problem,
            extra=fields(Event.AUDIT_CHAIN, ok=False, seq=verdict.seq, problem=verdict.problem),
        )
    else:
        logger.debug("audit chain verified: %d rows, head #%d", verdict.checked, verdict.head.seq)
    on_verdict(verdict)
    return verdict
