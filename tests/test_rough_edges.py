"""The rough edges a new user hits in the first hour (issue 13), each shown by a real run.

Commands run for real: in a process of their own (stdout and stderr apart, the log as a user
sees it) or ``main`` in this process, against the emulator on loopback and a SQLite store the
migrations build.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from rich.console import Console

from retention import render
from retention.budget import RequestBudget
from retention.client import CustomGPTClient
from retention.demo import _report
from retention.emulator import DEFAULT_TOKEN, Emulator, Fault
from retention.emulator.seed import EmulatorState
from retention.errors import TransientApiError
from retention.models import Origin, PlanItem, State, TrackedConversation
from retention.store import Store

from .conftest import ADMIN, COMMAND_SETTINGS, REPO, CommandConfig

H = timedelta(hours=1)
D = timedelta(days=1)
MINUTE = timedelta(minutes=1)
AUTH = {"Authorization": f"Bearer {ADMIN}"}
CONFIG = (
    COMMAND_SETTINGS
    + """
[[policies]]
name = "idle"
agents = [533]
max_age = "30d"
age_from = "last_activity"

[[policies]]
name = "test-chats"
agents = [532]
name_matches = ["Test*"]
max_age = "1h"

[[holds]]
name = "legal"
name_matches = ["LEGAL*"]
"""
)


def seeded_state() -> EmulatorState:
    """Three due: 'Idle chat' (created 40 days ago, last message 31 days ago: 1 day overdue on
    its policy's clock), 'Test b' (4h overdue) and 'Test a' (1h overdue); two kept."""
    now = datetime.now(UTC)
    state = EmulatorState()
    for agent_id in (532, 533):
        state.add_agent(agent_id, f"Agent {agent_id}", created_at=now - 400 * D)
    state.add_conversation(532, "Test a", created_at=now - 2 * H)
    state.add_conversation(532, "Test b", created_at=now - 5 * H)
    state.add_conversation(532, "LEGAL Test", created_at=now - 5 * H)
    state.add_conversation(533, "Idle chat", created_at=now - 40 * D, messages=[now - 31 * D])
    state.add_conversation(533, "Busy chat", created_at=now - 40 * D, messages=[now - 2 * D])
    return state


DUE = ["Idle chat", "Test b", "Test a"]  # most overdue first


Setup = CommandConfig


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    emulator = Emulator(seeded_state(), per_page=3)
    async with emulator.serve() as url:
        found = Setup(emulator, url, tmp_path / "retention.toml", CONFIG, log_format="text")
        found.write()
        yield found


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def run(*argv: str, token: str | None = DEFAULT_TOKEN) -> Ran:
    """The real command line in a process of its own, its stdout and stderr apart."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    environ.pop("CUSTOMGPT_API_TOKEN", None)
    if token is not None:
        environ["CUSTOMGPT_API_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "retention", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ, cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _rows(table: str, names: list[str]) -> list[str]:
    """The lines of a printed table that show one of ``names``, in the order printed."""
    return [line for line in table.splitlines() if any(f" {n} " in line for n in names)]


# ---- connection errors name the URL tried ----------------------------------------------------


async def test_a_connection_failure_names_the_full_url_tried_and_never_the_token(
    tmp_path: Path,
) -> None:
    port = _free_port()  # nothing listens there: a mistyped base_url
    url = f"http://127.0.0.1:{port}/api/v1/"
    path = tmp_path / "retention.toml"
    path.write_text(
        CONFIG.format(url=url, db=tmp_path / "r.db", log_format="text", max_deletions=1000),
        encoding="utf-8",
    )
    ran = await run("once", "--config", str(path))
    assert ran.code == 1, ran.err
    line = next(line for line in ran.err.splitlines() if line.startswith("retention: failed:"))
    # The policies name their agents: the first call lists agent 532's conversations.
    tried = f"http://127.0.0.1:{port}/api/v1/projects/532/conversations?page=1&order=desc"
    assert f"connection failed to {tried}" in line, line
    assert "gave up after 2 attempts" in line and "Connection refused" in line
    assert DEFAULT_TOKEN not in ran.out + ran.err


async def test_a_client_error_names_the_url_and_never_the_token(
    http: aiohttp.ClientSession,
) -> None:
    port = _free_port()
    client = CustomGPTClient(
        http,
        base_url=f"http://127.0.0.1:{port}/api/v1",
        token=SecretStr("tok-SECRET-1"),
        budget=RequestBudget(6000, burst=50),
        max_attempts=1,
    )
    with pytest.raises(TransientApiError) as caught:
        await client.list_agents()
    text = str(caught.value)
    assert f"connection failed to http://127.0.0.1:{port}/api/v1/projects?page=1" in text
    assert "SECRET" not in text


# ---- create: an empty or blank name is refused by the CLI and the HTTP API alike ------------


@pytest.mark.parametrize("name", ["", "   ", "x" * 256])
async def test_create_refuses_an_empty_blank_or_overlong_name_naming_the_field(
    setup: Setup, name: str
) -> None:
    ran = await run("create", "--config", str(setup.path), "--agent", "532", "--name", name)
    assert ran.code == 2, ran.err
    assert "--name" in ran.err
    problem = "at most 255 characters" if name.strip() else "must not be empty or only spaces"
    assert problem in ran.err
    assert setup.emulator.calls("POST") == []


@pytest.mark.parametrize("name", ["", "   ", "\t"])
async def test_the_http_api_refuses_a_blank_name_as_the_cli_does(
    http: aiohttp.ClientSession, admin: str, emulator: Emulator, store: Store, name: str
) -> None:
    body = {"agent_id": 532, "name": name}
    async with http.post(admin + "/v1/conversations", json=body, headers=AUTH) as response:
        assert response.status == 400
        error = await response.json()
    assert error == {"error": "name: must not be empty or only spaces", "field": "name"}
    assert emulator.calls("POST") == []
    assert await store.conversations() == []


# ---- plan: age on the deciding clock, most overdue first, notes ------------------------------


async def test_plan_shows_age_on_the_deciding_clock_most_overdue_first_with_notes(
    setup: Setup,
) -> None:
    assert (await run("db", "upgrade", "--config", str(setup.path))).code == 0
    ran = await run("plan", "--config", str(setup.path))
    assert ran.code == 0, ran.err
    rows = _rows(ran.out, DUE)
    assert [next(n for n in DUE if f" {n} " in row) for row in rows] == DUE, ran.out
    idle, test_b, _ = rows
    # 31 days since the last message (the policy's clock), not 40 since it was created. (Up
    # to 12h less: the API's message times have a 12-hour clock, read the younger way.)
    assert re.search(r"\b3[01]d\S* since last activity", idle), idle
    assert "40d" not in idle, idle
    assert re.search(r"\b5h\S* since created", test_b), test_b
    assert "max_age 30d from last activity" in idle  # the note says why
    assert "max_age 1h from created" in test_b

    ran = await run("plan", "--config", str(setup.path), "--json")
    items = {item["name"]: item for item in json.loads(ran.out)["due"]}
    assert items["Idle chat"]["age_from"] == "last_activity"
    assert 30 * D + 11 * H <= timedelta(seconds=items["Idle chat"]["age_seconds"]) < 31 * D + H
    assert items["Test b"]["age_from"] == "created"
    assert 4 * H <= timedelta(seconds=items["Test b"]["overdue_seconds"]) < 4 * H + 5 * MINUTE


async def test_plan_notes_say_what_the_breaker_holds_back(setup: Setup) -> None:
    setup.write(max_deletions=1)
    assert (await run("db", "upgrade", "--config", str(setup.path))).code == 0
    ran = await run("plan", "--config", str(setup.path))
    assert ran.code == 0, ran.err
    for row in _rows(ran.out, DUE):
        assert "needs approval (breaker)" in row, row


def test_plan_notes_name_grace_unconfirmed_and_dry_run() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    item = PlanItem(
        agent_id=532,
        session_id="s-1",
        name="Chat",
        rule="idle",
        due_at=now - H,
        age=31 * D,
        reason="policy 'idle': max_age 30d from last activity; due since 1h",
        dry_run=True,
        state=State.ACTIVE,
        grace_until=now + H,
        unconfirmed=True,
    )
    out = io.StringIO()
    render.plan_table([item], now=now, out=out)
    text = " ".join(out.getvalue().split())
    assert "in grace until 2026-11-26 13:00:00Z" in text
    assert "unconfirmed: facts will be re-read before deleting" in text
    assert "dry-run" in text


# ---- toggling --dry-run is not a rules change ----------------------------------------------


async def test_toggling_dry_run_does_not_claim_the_rules_changed(setup: Setup) -> None:
    ran = await run("once", "--config", str(setup.path), "--dry-run")
    assert ran.code == 0, ran.err
    ran = await run("once", "--config", str(setup.path))
    assert ran.code == 0, ran.err
    assert "rules changed" not in ran.err, ran.err
    assert "dry-run turned off" in ran.err, ran.err
    ran = await run("once", "--config", str(setup.path), "--dry-run")
    assert ran.code == 0, ran.err
    assert "rules changed" not in ran.err, ran.err


# ---- status: dry-run sweeps, and errors without class names ---------------------------------


async def test_status_marks_a_dry_run_sweep_and_what_it_would_delete(setup: Setup) -> None:
    assert (await run("once", "--config", str(setup.path), "--dry-run")).code == 0
    ran = await run("status", "--config", str(setup.path), token=None)
    assert ran.code == 0, ran.err
    [line] = [line for line in ran.out.splitlines() if " once " in line]
    assert "dry-run" in line and "would_delete=3" in line, line
    assert "deleted=" not in line, line
    ran = await run("status", "--config", str(setup.path), "--json", token=None)
    [sweep] = json.loads(ran.out)["accounts"][0]["last_sweeps"]
    assert (sweep["dry_run"], sweep["would_delete"], sweep["deleted"]) == (True, 3, 0)


async def test_status_shows_errors_without_python_class_names(setup: Setup) -> None:
    setup.emulator.faults.append(Fault.status(503, path="*/conversations", times=-1))
    assert (await run("once", "--config", str(setup.path))).code == 1
    ran = await run("status", "--config", str(setup.path), token=None)
    assert ran.code == 0, ran.err
    [line] = [line for line in ran.out.splitlines() if " once " in line]
    assert "FAILED" in line and "gave up after 2 attempts" in line, line
    assert not re.search(r"\b[A-Z][a-z]+[A-Za-z]*(Error|Exception)\b", line), line
    ran = await run("status", "--config", str(setup.path), "--json", token=None)
    [sweep] = json.loads(ran.out)["accounts"][0]["last_sweeps"]
    assert sweep["error"].startswith("list_conversations: GET /projects/"), sweep["error"]


# ---- once prints its summary once -----------------------------------------------------------


async def test_once_prints_its_summary_on_stdout_only(setup: Setup) -> None:
    ran = await run("once", "--config", str(setup.path))
    assert ran.code == 0, ran.err
    assert ran.out.count("sweep once ok") == 1, ran.out
    assert "sweep once ok" not in ran.err, ran.err
    assert "deleted agent 532" in ran.err  # the log itself is still there


# ---- titles without padding; counts in words ------------------------------------------------


async def test_tables_have_no_trailing_spaces(setup: Setup) -> None:
    assert (await run("db", "upgrade", "--config", str(setup.path))).code == 0
    for argv in (("plan",), ("status",), ("report",)):
        ran = await run(*argv, "--config", str(setup.path))
        assert ran.code == 0, ran.err
        lines = ran.out.splitlines()
        if argv == ("report",):  # its titles and tables (its prose wraps: not this test's)
            lines = [line for line in lines if line.startswith(("account ", "┏", "┃", "│"))]
        assert lines and all(line == line.rstrip() for line in lines), lines


def test_counts_are_pluralised() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    item = PlanItem(
        agent_id=532,
        session_id="s-1",
        name="Chat",
        rule="idle",
        due_at=now - H,
        age=2 * H,
        reason="policy 'idle': max_age 1h from created",
        dry_run=False,
        state=State.ACTIVE,
    )
    out = io.StringIO()
    render.plan_table([item], now=now, out=out)
    assert out.getvalue().startswith("1 conversation due at 2026-11-26 12:00:00Z\n")
    out = io.StringIO()
    render.plan_table([item, item], now=now, out=out)
    assert out.getvalue().startswith("2 conversations due at")
    assert (render.plural(1, "hold"), render.plural(2, "hold")) == ("1 hold", "2 holds")
    assert render.plural(1, "policy", "policies") == "1 policy"
    assert render.plural(0, "policy", "policies") == "0 policies"


# ---- the demo's kept rows add up ------------------------------------------------------------


def _tracked(
    session_id: str, name: str, state: State, rule: str | None, due_at: datetime | None
) -> TrackedConversation:
    now = datetime.now(UTC)
    return TrackedConversation(
        agent_id=533,
        session_id=session_id,
        remote_id=None,
        name=name,
        created_by=None,
        created_at=now - 2 * H,
        updated_at=now - 2 * H,
        origin=Origin.DISCOVERED,
        state=state,
        rule=rule,
        due_at=due_at,
    )


def _demo_report() -> tuple[str, Emulator]:
    now = datetime.now(UTC)
    state = EmulatorState()
    state.add_agent(533, "Sales", created_at=now - 400 * D)
    tracked = []
    rows: list[tuple[str, State, str | None, datetime | None]] = [
        ("Customer question 1", State.ACTIVE, None, None),
        ("LEGAL hold", State.HELD, "legal", None),
        ("Test import 1", State.ACTIVE, "test-chats", now - 30 * timedelta(seconds=1)),
        ("Test import 2", State.ACTIVE, "test-chats", now + H),
        ("QA-7 ticket", State.DELETING, "qa-tickets", now - H),
    ]
    for name, kept, rule, due in rows:
        remote = state.add_conversation(533, name, created_at=now - 2 * H)
        tracked.append(_tracked(remote.session_id, name, kept, rule, due))
    for n in (3, 4):  # arrived after the daemon's last walk: never discovered
        state.add_conversation(533, f"Test import {n}", created_at=now - 2 * H)
    console = Console(file=io.StringIO(), width=160)
    emulator = Emulator(state)
    _report(console, tracked, [], {"list_agents": 1}, emulator)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    return output, emulator


def test_the_demos_kept_rows_add_up_to_what_is_left_on_the_emulator() -> None:
    output, emulator = _demo_report()
    kept = output[output.index("Kept") :]
    counts = [int(m) for m in re.findall(r"│[^│\n]+│\s+(\d+)\s+│", kept)]
    assert sum(counts) == emulator.state.count() == 7, output
    assert re.search(r"arrived after the last discovery\s+│\s+2\s+│", kept), output


def test_a_not_yet_due_row_never_says_due_now() -> None:
    output, _ = _demo_report()
    for line in output.splitlines():
        if "not yet due" in line:
            assert "due now" not in line, line
    due = r"due under 'test-chats'\s+│\s+1\s+│ 'Test import 1', due since \d+s: the next deletion"
    assert re.search(due, output), output


def test_the_demos_titles_have_no_trailing_spaces() -> None:
    output, _ = _demo_report()
    assert all(line == line.rstrip() for line in output.splitlines()), output
    assert "Deleted: 0 conversations" in output
