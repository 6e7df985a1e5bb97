"""A small Python API for applications that embed retention.

    from retention.embed import connect

    async with connect("retention.toml") as retention:
        record = await retention.create(532, "Support chat", ttl="2h")
        await retention.track(532, "8ff8078b-3e88-4ad1-8e3f-9a37324964af", ttl="30d")

It reads the same config file as the daemon and writes to the same store, so a running daemon
deletes what is created or tracked here when its TTL runs out. The token comes from env
CUSTOMGPT_API_TOKEN or ``[api] token_file``, as for the command line.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from retention import tracking
from retention.config import load_config, to_duration
from retention.models import TrackedConversation
from retention.runtime import open_runtime
from retention.sweep import ConversationRepository, Sweep


class Retention:
    """Create and track conversations with TTLs of their own; ask why one is kept."""

    def __init__(self, sweep: Sweep, conversations: ConversationRepository) -> None:
        self._sweep = sweep
        self._conversations = conversations

    async def create(
        self, agent_id: int, name: str, *, ttl: str | timedelta | None = None
    ) -> TrackedConversation:
        """Create a conversation through the API (one call) and track it."""
        return await tracking.create(self._sweep, agent_id=agent_id, name=name, ttl=_ttl(ttl))

    async def track(
        self, agent_id: int, session_id: str, *, ttl: str | timedelta | None = None
    ) -> TrackedConversation:
        """Register an existing conversation (one call, which also proves it exists)."""
        return await tracking.track(
            self._sweep, agent_id=agent_id, session_id=session_id, ttl=_ttl(ttl)
        )

    async def get(self, agent_id: int, session_id: str) -> TrackedConversation | None:
        """What the store knows of a conversation: facts, rule, due time and reason."""
        return await self._conversations.get(agent_id, session_id)


@asynccontextmanager
async def connect(config: str | os.PathLike[str]) -> AsyncIterator[Retention]:
    async with open_runtime(load_config(Path(config))) as runtime:
        yield Retention(runtime.sweep, runtime.store)


def _ttl(value: str | timedelta | None) -> timedelta | None:
    return None if value is None else to_duration(value)
