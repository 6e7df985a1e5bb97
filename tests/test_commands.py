"""plan, once, status and db upgrade through the command line, against a seeded emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.cli import main
from retention.emulator import Emulator
from retention.emulator.seed import EmulatorState
from retention.migrate import head_revision

from .conftest import COMMAND_API, QA_RULES, served_config

H = timedelta(hours=1)
D = timedelta(days=1)
# (agent, name, age, created_by): what the emulator holds before the first command.
SEED = [
    (532, "Test old", 2 * H, None),
    (532, "Test young", 10 * timedelta(minutes=1), None),
    (532, "LEGAL Test", 2 * H, None),
    (532, "Customer", 40 * D, 17),
    (532, "QA-1 ticket", 2 * D, None),
    (533, "QA-2 ticket", 1 * D, None),
    (533, "Test elsewhere", 5 * H, None),
    (533, "QA-3 ticket", 3 * D, 17),
    (534, "LEGAL QA-4", 9 * D, None),
]
# Worked out by hand from the policies below: matched, expired and not held.
EXPECTED = {"Test old", "QA-1 ticket", "QA-3 ticket"}
CONFIG = COMMAND_API + '\n[store]\nurl = "{store}"\n' + QA_RULES


@pytest.fixture(autouse=True)
def _token(api_token: str) -> None:
    """Commands here run in this process and read the token from the environment."""


@pytest.fixture
def seeded() -> Emulator:
    now = datetime.now(UTC)
    state = EmulatorState()
    for agent_id in (532, 533, 534):
        state.add_agent(agent_id, f"Agent {agent_id}", created_at=now - 400 * D)
    for agent_id, name, age, created_by in SEED:
        state.add_conversation(agent_id, name, created_at=now - age, created_by=created_by)
    return Emulator(state, per_page=3)


@pytest.fixture
async def config(seeded: Emulator, tmp_path: Path, blank_store_url: str) -> AsyncIterator[str]:
    """The config of a store nobody has opened: a SQLite file, or an empty PostgreSQL one."""
    async with served_config(seeded, tmp_path, CONFIG, store=blank_store_url) as path:
        yield str(path)


async def cli(*argv: str) -> int:
    """Run the command line in a thread: it has its own event loop, ours serves the emulator."""
    return await asyncio.to_thread(main, list(argv))


def names(emulator: Emulator) -> set[str]:
    return {c.name for a in emulator.state.agents.values() for c in a.conversations.values()}


async def test_plan_json_lists_exactly_the_due_and_deletes_nothing(
    seeded: Emulator, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("db", "upgrade", "--config", config) == 0  # plan never creates a store
    capsys.readouterr()
    assert await cli("plan", "--config", config, "--json") == 0
    out = capsys.readouterr().out
    plan = json.loads(out)  # stdout holds JSON and nothing else
    assert {item["name"] for item in plan["due"]} == EXPECTED
    assert plan["count"] == 3
    first = plan["due"][0]
    assert set(first) >= {
        "agent_id",
        "session_id",
        "name",
        "rule",
        "due_at",
        "age_seconds",
        "reason",
    }
    assert {s.method for s in seeded.served} == {"GET"}
    assert names(seeded) == {name for _, name, _, _ in SEED}


async def test_plan_table_is_readable(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("db", "upgrade", "--config", config) == 0
    assert await cli("plan", "--config", config) == 0
    captured = capsys.readouterr()
    assert "3 conversations due" in captured.out
    assert "qa-tickets" in captured.out and "Test old" in captured.out
    assert "3 due; this plan cost" in captured.err


async def test_once_deletes_exactly_the_expired_matched_unheld_then_rests(
    seeded: Emulator, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("once", "--config", config) == 0
    assert names(seeded) == {name for _, name, _, _ in SEED} - EXPECTED
    assert "deleted=3" in capsys.readouterr().out
    served_before = len(seeded.served)
    assert await cli("once", "--config", config) == 0
    second = seeded.served[served_before:]
    assert [s for s in second if s.method != "GET"] == []
    listings = [s.path for s in second if s.path.endswith("/conversations")]
    assert sorted(listings) == sorted(
        f"/api/v1/projects/{a}/conversations" for a in (532, 533, 534)
    )


async def test_once_dry_run_sends_no_delete(
    seeded: Emulator, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("once", "--config", config, "--dry-run") == 0
    assert {s.method for s in seeded.served} == {"GET"}
    assert "would_delete=3" in capsys.readouterr().out


async def test_once_exits_1_when_a_delete_fails(seeded: Emulator, config: str) -> None:
    from retention.emulator import Fault

    seeded.faults.append(Fault.status(503, method="DELETE", times=-1))
    assert await cli("once", "--config", config) == 1


async def test_once_exits_1_when_the_sweep_fails(
    seeded: Emulator, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    seeded.token = "rotated"
    assert await cli("once", "--config", config) == 1
    err = capsys.readouterr().err
    assert "retention: failed:" in err and "401" in err


async def test_commands_that_call_the_api_need_a_token(
    config: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CUSTOMGPT_API_TOKEN")
    assert await cli("plan", "--config", config) == 2
    assert "no API token" in capsys.readouterr().err


async def test_status_and_db_upgrade_need_no_token(
    config: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("db", "upgrade", "--config", config) == 0
    assert f"upgraded from empty to {head_revision()}" in capsys.readouterr().out
    assert await cli("once", "--config", config) == 0
    capsys.readouterr()
    monkeypatch.delenv("CUSTOMGPT_API_TOKEN")
    assert await cli("db", "upgrade", "--config", config) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert await cli("status", "--config", config) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "532 Agent 532" in line)
    # agent 532: 5 listed, 2 deleted -> 3 tracked, of which 1 held; 2 deleted in 24h; 0 in grace
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert cells == ["532 Agent 532", "3", "0", "0", "1", "2", "0", "year"]
    assert "last sweeps:" in out and " once     ok      deleted=3 failed=0" in out
    assert "lease: free (last held by " in out, "once gave its lease back"
