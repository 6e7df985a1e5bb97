"""Conversations retention creates or is told about: the commands and the Python API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.cli import main
from retention.embed import connect
from retention.emulator import Emulator
from retention.models import Origin, State
from retention.store import Store

from .conftest import served_config

CONFIG = """
[api]
base_url = "{url}"
requests_per_minute = 6000
max_attempts = 2
[store]
url = "sqlite+aiosqlite:///{db}"
[[policies]]
name = "test-chats"
agents = [532]
name_matches = ["Test*"]
max_age = "1h"
[[holds]]
name = "legal"
name_matches = ["LEGAL*"]
"""


@pytest.fixture(autouse=True)
def _token(api_token: str) -> None:
    """Commands here run in this process and read the token from the environment."""


@pytest.fixture
async def config(emulator: Emulator, tmp_path: Path) -> AsyncIterator[Path]:
    async with served_config(emulator, tmp_path, CONFIG) as path:
        yield path


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_create_quiet_prints_only_the_session_id(
    config: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await cli(
        "create",
        "--config",
        str(config),
        "--agent",
        "532",
        "--name",
        "Hi",
        "--ttl",
        "2h",
        "--quiet",
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out.strip() in emulator.live_sessions(532)
    assert out.count("\n") == 1


async def test_create_json_prints_the_record(
    config: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await cli(
        "create",
        "--config",
        str(config),
        "--agent",
        "532",
        "--name",
        "Hi",
        "--ttl",
        "90m",
        "--json",
    )
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["rule"], record["ttl_seconds"], record["origin"]) == ("ttl", 5400, "created")
    assert len(emulator.calls("POST")) == 1


async def test_track_registers_an_existing_conversation_with_one_call(
    config: Path, emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conversation = next(iter(emulator.state.agents[532].conversations.values()))
    conversation.messages = [datetime.now(UTC) - timedelta(minutes=3)]
    code = await cli(
        "track",
        "--config",
        str(config),
        "--agent",
        "532",
        "--session",
        conversation.session_id,
        "--ttl",
        "2h",
    )
    assert code == 0
    assert f"tracking {conversation.session_id} in agent 532" in capsys.readouterr().out
    assert len(emulator.served) == 1, "one messages call: facts and proof of existence"
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    try:
        record = await store.get(532, conversation.session_id)
    finally:
        await store.close()
    assert record is not None
    assert (record.origin, record.ttl, record.rule) == (
        Origin.REGISTERED,
        timedelta(hours=2),
        "ttl",
    )
    assert record.last_activity_at == conversation.messages[0].replace(microsecond=0)


async def test_track_of_an_unknown_conversation_fails_clearly(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await cli(
        "track",
        "--config",
        str(config),
        "--agent",
        "532",
        "--session",
        "00000000-0000-4000-8000-000000000000",
    )
    assert code == 1
    assert "retention: failed: messages: GET" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("ttl", "problem"),
    [
        ("soon", "--ttl: invalid duration 'soon'"),
        ("99999999999w", "--ttl: duration '99999999999w' is too long"),
    ],
)
async def test_a_bad_ttl_is_a_usage_error(
    config: Path, emulator: Emulator, capsys: pytest.CaptureFixture[str], ttl: str, problem: str
) -> None:
    code = await cli(
        "create", "--config", str(config), "--agent", "532", "--name", "x", "--ttl", ttl
    )
    assert code == 2
    assert problem in capsys.readouterr().err
    assert emulator.calls("POST") == [], "nothing is created upstream"


async def test_python_api_creates_tracks_and_a_hold_still_wins(
    config: Path, emulator: Emulator
) -> None:
    legal = emulator.state.add_conversation(532, "LEGAL matter", created_at=datetime.now(UTC))
    async with connect(config) as retention:
        created = await retention.create(532, "From the app", ttl="45m")
        held = await retention.track(532, legal.session_id, ttl=timedelta(seconds=1))
        again = await retention.get(532, created.session_id)
    assert created.rule == "ttl" and created.ttl == timedelta(minutes=45)
    assert again is not None and again.session_id == created.session_id
    assert (held.state, held.rule, held.due_at) == (State.HELD, "legal", None)
