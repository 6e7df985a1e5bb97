"""The emulator's data: agents, conversations and messages, seeded from a file or a sample.

Seed file format (TOML; every age is a duration before the moment the emulator starts)::

    per_page = 20                    # optional: the paginator's page size (default 20)

    [[agents]]
    id = 532                         # the agent ("project") id
    name = "Support bot"
    retention_period = "custom"      # optional: custom | year | never (default "year")
    retention_days = 90              # optional: used with "custom"

    [[agents.conversations]]
    name = "Test run {n}"            # {n} is replaced by 1..count
    count = 5                        # optional: how many such conversations (default 1)
    age = "3d"                       # created this long ago
    updated = "2h"                   # optional: updated_at this long ago (default: = age)
    created_by = 17                  # optional: a team member's user id; omit for anonymous
    session_id = "8ff8078b-..."      # optional (only with count = 1); default: random UUID
    messages = ["3d", "1h"]          # optional: ages of its messages
"""

from __future__ import annotations

import bisect
import random
import tomllib
import uuid
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from retention.errors import ConfigError
from retention.timefmt import parse_duration


@dataclass(slots=True)
class EmuConversation:
    id: int
    session_id: str
    project_id: int
    name: str
    created_by: int | None
    created_at: datetime
    updated_at: datetime
    messages: list[datetime] = field(default_factory=list)


def _by_id(conversation: EmuConversation) -> int:
    return conversation.id


class Conversations(MutableMapping[str, EmuConversation]):
    """An agent's conversations by session id, kept in id order too: a page is a slice.

    A mapping like the dict it stands for (tests delete, pop and put back conversations), whose
    iteration runs oldest id first. A new conversation (the next id) is appended; one put back
    or out of order finds its place by bisection, as a removal does: O(log n) and a memmove,
    so a list page costs its own items whatever the agent's size.
    """

    __slots__ = ("_by_session", "_ordered")

    def __init__(self) -> None:
        self._by_session: dict[str, EmuConversation] = {}
        self._ordered: list[EmuConversation] = []

    def __getitem__(self, session_id: str) -> EmuConversation:
        return self._by_session[session_id]

    def __setitem__(self, session_id: str, conversation: EmuConversation) -> None:
        if session_id != conversation.session_id:
            raise ValueError("a conversation is kept under its own session id")
        if session_id in self._by_session:
            self._unorder(self._by_session[session_id])
        self._by_session[session_id] = conversation
        ordered = self._ordered
        if not ordered or ordered[-1].id < conversation.id:
            ordered.append(conversation)
        else:
            bisect.insort(ordered, conversation, key=_by_id)

    def __delitem__(self, session_id: str) -> None:
        self._unorder(self._by_session.pop(session_id))

    def __iter__(self) -> Iterator[str]:
        return (c.session_id for c in list(self._ordered))

    def __reversed__(self) -> Iterator[str]:
        return (c.session_id for c in reversed(list(self._ordered)))

    def __len__(self) -> int:
        return len(self._by_session)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_session

    def by_id(self, start: int, stop: int, *, newest_first: bool = True) -> list[EmuConversation]:
        """Positions ``start:stop`` of the list ordered by id, newest first unless told."""
        if not newest_first:
            return self._ordered[start:stop]
        count = len(self._ordered)
        return self._ordered[max(0, count - stop) : max(0, count - start)][::-1]

    def _unorder(self, conversation: EmuConversation) -> None:
        ordered = self._ordered
        at = bisect.bisect_left(ordered, conversation.id, key=_by_id)
        while at < len(ordered) and ordered[at] is not conversation:
            at += 1  # ids are unique in practice; a test may still have made two alike
        if at == len(ordered):
            at = next(i for i, c in enumerate(ordered) if c is conversation)
        del ordered[at]


@dataclass
class EmuAgent:
    id: int
    name: str
    created_at: datetime
    retention_period: str = "year"
    retention_days: int = 365
    conversations: Conversations = field(default_factory=Conversations)


class EmulatorState:
    """What the fake API holds. Deleted conversations are removed (a second DELETE is a 404)."""

    def __init__(self) -> None:
        self.agents: dict[int, EmuAgent] = {}
        self._next_id = 1000

    def add_agent(
        self,
        agent_id: int,
        name: str,
        *,
        created_at: datetime,
        retention_period: str = "year",
        retention_days: int = 365,
    ) -> EmuAgent:
        agent = EmuAgent(agent_id, name, created_at, retention_period, retention_days)
        self.agents[agent_id] = agent
        return agent

    def add_conversation(
        self,
        agent_id: int,
        name: str,
        *,
        created_at: datetime,
        updated_at: datetime | None = None,
        created_by: int | None = None,
        session_id: str | None = None,
        messages: list[datetime] | None = None,
    ) -> EmuConversation:
        """Add a conversation; ids grow with insertion, as the real API's autoincrement does."""
        self._next_id += 1
        conversation = EmuConversation(
            id=self._next_id,
            session_id=session_id or str(uuid.uuid4()),
            project_id=agent_id,
            name=name,
            created_by=created_by,
            created_at=created_at,
            updated_at=updated_at or created_at,
            messages=sorted(messages or []),
        )
        self.agents[agent_id].conversations[conversation.session_id] = conversation
        return conversation

    def find(self, agent_id: int, session_id: str) -> EmuConversation | None:
        agent = self.agents.get(agent_id)
        return agent.conversations.get(session_id) if agent else None

    def count(self) -> int:
        return sum(len(a.conversations) for a in self.agents.values())


def load_seed(path: Path, *, now: datetime) -> tuple[EmulatorState, int | None]:
    """Build a state from a seed file; returns it and the file's ``per_page``, if any."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read seed: {exc}", source=str(path)) from None
    try:
        return _from_dict(raw, now), _optional_int(raw, "per_page")
    except (KeyError, TypeError, ValueError) as exc:
        message = f"missing key {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
        raise ConfigError(message, source=str(path)) from None


def _optional_int(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{key} must be a positive integer")
    return value


def _from_dict(raw: dict[str, Any], now: datetime) -> EmulatorState:
    state = EmulatorState()
    for a_index, agent in enumerate(raw.get("agents", [])):
        where = f"agents[{a_index}]"
        agent_id = int(agent["id"])
        state.add_agent(
            agent_id,
            str(agent.get("name", f"Agent {agent_id}")),
            created_at=now - timedelta(days=400),
            retention_period=str(agent.get("retention_period", "year")),
            retention_days=int(agent.get("retention_days", 365)),
        )
        for c_index, spec in enumerate(agent.get("conversations", [])):
            try:
                _add_seeded(state, agent_id, spec, now)
            except (KeyError, TypeError, ValueError) as exc:
                detail = f"missing key {exc.args[0]!r}" if isinstance(exc, KeyError) else exc
                raise ValueError(f"{where}.conversations[{c_index}]: {detail}") from None
    return state


def _add_seeded(state: EmulatorState, agent_id: int, spec: dict[str, Any], now: datetime) -> None:
    count = int(spec.get("count", 1))
    age = parse_duration(str(spec["age"]))
    updated = parse_duration(str(spec["updated"])) if "updated" in spec else None
    messages = [now - parse_duration(str(m)) for m in spec.get("messages", [])]
    if count != 1 and "session_id" in spec:
        raise ValueError("session_id needs count = 1")
    for n in range(1, count + 1):
        state.add_conversation(
            agent_id,
            str(spec["name"]).replace("{n}", str(n)),
            created_at=now - age,
            updated_at=now - updated if updated is not None else None,
            created_by=int(spec["created_by"]) if "created_by" in spec else None,
            session_id=spec.get("session_id"),
            messages=messages,
        )


HELD_SAMPLE_SESSION = "8ff8078b-3e88-4ad1-8e3f-9a37324964af"
SAMPLE_AGENTS = ((532, "Support bot"), (533, "Sales assistant"), (534, "Internal QA agent"))
_SAMPLE_NAMES = (
    "Test run {n}",
    "QA-{n} smoke",
    "Customer chat {n}",
    "Refund question {n}",
    "LEGAL review {n}",
    "Onboarding {n}",
)
_SAMPLE_AGES = (
    timedelta(minutes=10),
    timedelta(minutes=50),
    timedelta(hours=3),
    timedelta(hours=20),
    timedelta(days=2),
    timedelta(days=8),
    timedelta(days=35),
    timedelta(days=100),
    timedelta(days=400),
)


def sample_state(*, now: datetime, per_agent: int = 45, seed: int = 7) -> EmulatorState:
    """The built-in sample: three agents, each with several pages of varied conversations."""
    rng = random.Random(seed)
    state = EmulatorState()
    for agent_id, agent_name in SAMPLE_AGENTS:
        retention = ("custom", 90) if agent_id == 533 else ("year", 365)
        state.add_agent(
            agent_id,
            agent_name,
            created_at=now - timedelta(days=500),
            retention_period=retention[0],
            retention_days=retention[1],
        )
        # Oldest first, so ids grow with creation time as they do on the real service.
        specs = sorted(
            ((rng.choice(_SAMPLE_AGES) * rng.uniform(0.9, 1.1), n) for n in range(per_agent)),
            key=lambda pair: -pair[0],
        )
        for age, n in specs:
            created = now - age
            name = rng.choice(_SAMPLE_NAMES).replace("{n}", str(n + 1))
            spread = rng.randint(0, 4)
            messages = [created + (now - created) * rng.random() ** 3 for _ in range(spread)]
            state.add_conversation(
                agent_id,
                name,
                created_at=created,
                created_by=rng.choice([None, None, 17, 23]),
                session_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                messages=messages,
            )
    # The session id that config.example.toml's "legal" hold names, so the example has an effect.
    state.add_conversation(
        SAMPLE_AGENTS[0][0],
        "Escalated complaint",
        created_at=now - timedelta(days=40),
        session_id=HELD_SAMPLE_SESSION,
    )
    return state


def big_state(
    *,
    now: datetime,
    agent_id: int = 532,
    conversations: int = 1_000_000,
    spacing: timedelta = timedelta(seconds=30),
    name: str = "Chat {n}",
    seed: int = 7,
) -> EmulatorState:
    """One agent with many conversations, for benchmarks: a million in seconds.

    Oldest first, one every ``spacing`` up to ``now``; ``{n}`` in ``name`` becomes 1..count;
    every other one a team member's. No messages. Session ids are random UUIDs from ``seed``,
    so two states built alike are alike. Builds the objects directly, not through
    :meth:`EmulatorState.add_conversation`, which checks and sorts what this need not.
    """
    rng = random.Random(seed)
    state = EmulatorState()
    agent = state.add_agent(agent_id, f"Agent {agent_id}", created_at=now - timedelta(days=500))
    oldest = now - spacing * conversations
    step = spacing.total_seconds()
    numbered = "{n}" in name
    first_id = state._next_id + 1
    for n in range(conversations):
        created = oldest + timedelta(seconds=step * (n + 1))
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        agent.conversations[session_id] = EmuConversation(
            id=first_id + n,
            session_id=session_id,
            project_id=agent_id,
            name=name.replace("{n}", str(n + 1)) if numbered else name,
            created_by=None if n % 2 else 17,
            created_at=created,
            updated_at=created,
        )
    state._next_id = first_id + conversations - 1
    return state
