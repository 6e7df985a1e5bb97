"""Live reload of policies and holds: on SIGHUP, or when the config file's content changes.

Either way the file is read until it has settled (the same bytes twice, ``settle`` seconds
apart), and exactly those bytes are parsed: an editor or a script caught mid-write is never
loaded. A reload that fails validation changes nothing: one log line names the problem and the
rules in force stay. Other sections (api, store, schedule, admin, log) take effect at the next
start; a reload that changes them says so. A valid half of an edit can still settle (a slow
writer): the policy change grace keeps what it would newly delete.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from retention.clocks import utc_now
from retention.config import Settings, load_config
from retention.engine import Engine
from retention.errors import ConfigError, LeaseLost, StoreError
from retention.impact import KINDS, Impact
from retention.logs import Event, fields, utc_text
from retention.render import plural

logger = logging.getLogger(__name__)
RESTART_SECTIONS = ("api", "accounts", "store", "schedule", "admin", "log")


class ConfigWatcher:
    def __init__(
        self,
        path: Path,
        engines: Engine | Sequence[Engine],
        settings: Settings,
        *,
        every: float = 2.0,
        settle: float = 1.0,
        settle_tries: int = 30,
    ) -> None:
        self.path = path
        self.engines = [engines] if isinstance(engines, Engine) else list(engines)
        self.settings = settings
        self.every = every
        self.settle = settle
        self.settle_tries = settle_tries
        self._digest = _digest(_read(path))
        self._lock = asyncio.Lock()
        # Told of every reload's result (True: the new rules are in force): the metrics.
        self.listeners: list[Callable[[bool], None]] = []
        # The last accepted reload: when, why, and what it did per account (impact.as_json);
        # GET /v1/reloads/last serves it.
        self.last: dict[str, Any] | None = None

    async def reload(self, why: str = "SIGHUP") -> bool:
        """Load the settled file; put its rules in force when valid. True when they were."""
        accepted = await self._reload(why)
        for listener in self.listeners:
            listener(accepted)
        return accepted

    async def _reload(self, why: str) -> bool:
        async with self._lock:
            content = await self._settled()
            if content is None:
                logger.error(
                    "config reload (%s) rejected, the rules in force stay: %s kept changing "
                    "(or could not be read) for %.0fs",
                    why,
                    self.path,
                    self.settle * self.settle_tries,
                    extra=fields(
                        Event.RELOAD,
                        outcome="rejected",
                        trigger=why,
                        error=f"{self.path} kept changing or could not be read",
                    ),
                )
                return False
            self._digest = _digest(content)
            try:
                fresh = await asyncio.to_thread(load_config, self.path, content=content)
            except ConfigError as exc:
                logger.error(
                    "config reload (%s) rejected, the rules in force stay: %s",
                    why,
                    exc,
                    extra=fields(
                        Event.RELOAD,
                        outcome="rejected",
                        trigger=why,
                        error=str(exc),
                        file=exc.source,
                        key=exc.key,
                    ),
                )
                return False
            changed = [
                s for s in RESTART_SECTIONS if getattr(fresh, s) != getattr(self.settings, s)
            ]
            if fresh.safety.dry_run != self.settings.safety.dry_run:
                changed.append("safety.dry_run")
            if changed:
                logger.warning(
                    "config reload (%s): changes to %s take effect at the next start",
                    why,
                    ", ".join(changed),
                    extra=fields(
                        Event.RELOAD, outcome="restart_needed", trigger=why, sections=changed
                    ),
                )
            rules = fresh.rules()
            # Every account's engine gets the rules that apply in it at once, before anything
            # is awaited: a deletion decides each conversation again under the rules in force,
            # so a new hold protects in every account from this moment, not after the others'
            # re-evaluation.
            for engine in self.engines:
                engine.context.rules = rules.for_account(engine.account)
            self.settings = fresh
            reevaluated = 0
            impacts: list[Impact] = []
            for engine in self.engines:
                lease = engine.context.lease
                if lease is not None and not lease.valid():
                    continue  # a replica's: the replica that holds the account re-evaluates it
                try:
                    reevaluated += await engine.apply_rules()
                    if engine.last_impact is not None:
                        impacts.append(engine.last_impact)
                except (StoreError, LeaseLost) as exc:
                    # The rules are in force; this account's store was not re-evaluated under
                    # them. Every sweep re-evaluates first (the stored fingerprint still
                    # differs), so its next one does, or the writer that took over.
                    logger.error(
                        "config reload (%s): rules in force, but re-evaluating account %s "
                        "failed (its next sweep retries): %s",
                        why,
                        engine.account,
                        exc,
                        extra=fields(
                            Event.RELOAD,
                            outcome="reevaluate_failed",
                            trigger=why,
                            account=engine.account,
                            error=str(exc),
                        ),
                    )
            totals: Counter[str] = Counter()
            for impact in impacts:
                totals.update(impact.totals())
            summary = "; ".join(
                f"{i.account}: {i.summary()}" if len(self.engines) > 1 else i.summary()
                for i in impacts
            )
            logger.info(
                "config reload (%s): %s and %s in force; %s changed%s",
                why,
                plural(len(rules.policies), "policy", "policies"),
                plural(len(rules.holds), "hold"),
                plural(reevaluated, "decision"),
                f": {summary}" if summary else "",
                extra=fields(
                    Event.RELOAD,
                    outcome="accepted",
                    trigger=why,
                    policies=len(rules.policies),
                    holds=len(rules.holds),
                    reevaluated=reevaluated,
                    impact={kind: totals[kind] for kind in KINDS},
                ),
            )
            self.last = {
                "at": utc_text(utc_now()),
                "trigger": why,
                "policies": len(rules.policies),
                "holds": len(rules.holds),
                "decisions_changed": reevaluated,
                "totals": {kind: totals[kind] for kind in KINDS},
                "accounts": [i.as_json() for i in impacts],
            }
            return True

    async def watch(self) -> None:
        """Poll the file's content (robust to editors' renames and ConfigMap symlink swaps)."""
        while True:
            await asyncio.sleep(self.every)
            digest = _digest(await asyncio.to_thread(_read, self.path))
            if digest is not None and digest != self._digest:
                await self.reload("file changed")

    async def _settled(self) -> bytes | None:
        """The file's bytes once two reads ``settle`` seconds apart agree; None if they never do."""
        before = await asyncio.to_thread(_read, self.path)
        for _ in range(self.settle_tries):
            await asyncio.sleep(self.settle)
            after = await asyncio.to_thread(_read, self.path)
            if after is not None and after == before:
                return after
            before = after
        return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None  # mid-replace, or briefly gone: look again next time


def _digest(content: bytes | None) -> str | None:
    return hashlib.sha256(content).hexdigest() if content is not None else None
