"""Live reload of policies and holds: on SIGHUP, or when the config file's content changes.

A reload that fails validation changes nothing: one log line names the problem and the rules
in force stay. Other sections (api, store, schedule, admin, log) take effect at the next start;
a reload that changes them says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from retention.config import Settings, load_config
from retention.engine import Engine
from retention.errors import ConfigError

logger = logging.getLogger(__name__)
RESTART_SECTIONS = ("api", "store", "schedule", "admin", "log")


class ConfigWatcher:
    def __init__(
        self, path: Path, engine: Engine, settings: Settings, *, every: float = 2.0
    ) -> None:
        self.path = path
        self.engine = engine
        self.settings = settings
        self.every = every
        self._digest = _digest(path)
        self._lock = asyncio.Lock()

    async def reload(self, why: str = "SIGHUP") -> bool:
        """Load the file again; put its rules in force when valid. True when they were."""
        async with self._lock:
            try:
                fresh = await asyncio.to_thread(load_config, self.path)
            except ConfigError as exc:
                logger.error("config reload (%s) rejected, the rules in force stay: %s", why, exc)
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
                )
            rules = fresh.rules()
            reevaluated = await self.engine.set_rules(rules)
            self.settings = fresh
            logger.info(
                "config reload (%s): %d policies and %d holds in force; %d conversations "
                "re-evaluated",
                why,
                len(rules.policies),
                len(rules.holds),
                reevaluated,
            )
            return True

    async def watch(self) -> None:
        """Poll the file's content (robust to editors' renames and ConfigMap symlink swaps)."""
        while True:
            await asyncio.sleep(self.every)
            digest = await asyncio.to_thread(_digest, self.path)
            if digest is not None and digest != self._digest:
                self._digest = digest
                await self.reload("file changed")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # mid-replace, or briefly gone: look again next time
