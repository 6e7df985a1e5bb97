"""Machine-readable output: ``--json`` on check, status and once, and JSON log records with fields.

Each command runs for real (in a subprocess, or ``main`` in this process) against the emulator on
loopback and a SQLite store the migrations build; the documents are compared with what the
emulator holds and served.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retention import logs
from retention.cli import main
from retention.config import load_config
from retention.emulator import DEFAULT_TOKEN, Emulator, Fault
from retention.emulator.seed import EmulatorState
from retention.emulator.server import serve_many
from retention.logs import SWEEP_COUNTERS, Event, fields
from retention.reload import ConfigWatcher

from .conftest import COMMAND_SETTINGS, QA_RULES, REPO, CommandConfig

H = timedelta(hours=1)
D = timedelta(days=1)
# (agent, name, age): what the emulator holds before the first command.
SEED = [
    (532, "Test old", 2 * H),
    (532, "Test young", 10 * timedelta(minutes=1)),
    (532, "LEGAL Test", 2 * H),
    (532, "Customer", 40 * D),
    (532, "QA-1 ticket", 2 * D),
    (533, "QA-2 ticket", 1 * D),
    (533, "Test elsewhere", 5 * H),
    (533, "QA-3 ticket", 3 * D),
    (534, "LEGAL QA-4", 9 * D),
]
# Matched, expired and not held under the policies below, by agent and rule.
EXPECTED = {
    "Test old": (532, "qa-chats"),
    "QA-1 ticket": (532, "qa-tickets"),
    "QA-3 ticket": (533, "qa-tickets"),
}
CONFIG = COMMAND_SETTINGS + QA_RULES
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
COUNTERS = {*SWEEP_COUNTERS, "api_calls"}


def seeded_state() -> EmulatorState:
    now = datetime.now(UTC)
    state = EmulatorState()
    for agent_id in (532, 533, 534):
        state.add_agent(agent_id, f"Agent {agent_id}", created_at=now - 400 * D)
    for agent_id, name, age in SEED:
        state.add_conversation(agent_id, name, created_at=now - age, created_by=None)
    return state


@pytest.fixture
def seeded() -> Emulator:
    return Emulator(seeded_state(), per_page=3)


Setup = CommandConfig


@pytest.fixture
async def setup(seeded: Emulator, tmp_path: Path) -> AsyncIterator[Setup]:
    async with seeded.serve() as url:
        found = Setup(seeded, url, tmp_path / "retention.toml", CONFIG)
        found.write()
        yield found


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def document(self) -> dict[str, Any]:
        """stdout, which must hold exactly one JSON document and nothing else."""
        body = json.loads(self.out)  # raises on anything before or after the document
        assert isinstance(body, dict)
        assert self.out.endswith("}\n") and self.out.count("\n}\n") == 1
        return body

    def records(self) -> list[dict[str, Any]]:
        """stderr as JSON log records: every line must be one."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        records = [json.loads(line) for line in lines if line.startswith("{")]
        plain = [line for line in lines if not line.startswith("{")]
        assert all(line.startswith("retention: ") for line in plain), plain
        return records


async def run(
    *argv: str, token: str | None = DEFAULT_TOKEN, env: dict[str, str] | None = None
) -> Ran:
    """The real command line in a process of its own, its stdout and stderr apart."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    environ.pop("CUSTOMGPT_API_TOKEN", None)
    if token is not None:
        environ["CUSTOMGPT_API_TOKEN"] = token
    environ.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "retention", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ, cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def names(emulator: Emulator) -> dict[int, set[str]]:
    return {
        agent_id: {c.name for c in agent.conversations.values()}
        for agent_id, agent in emulator.state.agents.items()
    }


def of(records: list[dict[str, Any]], event: Event) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == event.value]


# ---- once --json and the log records of a real sweep -------------------------------------------


async def test_once_json_is_one_document_whose_figures_are_what_the_emulator_saw(
    setup: Setup,
) -> None:
    ran = await run("once", "--config", str(setup.path), "--json")
    assert ran.code == 0, ran.err
    body = ran.document()
    left = names(setup.emulator)
    assert {n for agent in left.values() for n in agent}.isdisjoint(EXPECTED)
    assert (body["ok"], body["exit_code"], body["dry_run"]) == (True, 0, False)
    assert ISO_Z.match(body["generated_at"])
    [account] = body["accounts"]
    assert (account["account"], account["ok"], account["exit_code"]) == ("default", True, 0)
    assert account["error"] is None and account["kind"] == "once"
    assert ISO_Z.match(account["started_at"]) and ISO_Z.match(account["finished_at"])
    for counter in COUNTERS | {"remaining"}:
        assert type(account[counter]) is int, counter
    deletes = setup.emulator.calls("DELETE")
    assert account["deleted"] == len(deletes) == 3
    assert (account["due"], account["failed"], account["remaining"]) == (3, 0, 0)
    assert account["listed"] == len(SEED)
    assert account["new"] == len(SEED)
    assert account["agents"] == 3
    assert account["pages"] == len(setup.emulator.calls("GET", "*/conversations"))
    # Every request the emulator served belongs to the sweep, and is counted by its kind.
    assert account["api_calls"] == len(setup.emulator.served)
    assert sum(account["api_calls_by_kind"].values()) == account["api_calls"]
    assert account["outcomes"] == [
        {"outcome": "deleted", "rule": "qa-chats", "count": 1},
        {"outcome": "deleted", "rule": "qa-tickets", "count": 2},
    ]
    assert account["breaker"] == [] and account["held_back"] is None
    assert body["totals"] == {key: account[key] for key in body["totals"]}
    assert DEFAULT_TOKEN not in ran.out + ran.err


async def test_json_log_records_of_a_real_once_carry_fields_not_only_prose(
    setup: Setup,
) -> None:
    before = {
        c.session_id: (agent_id, c.name)
        for agent_id, agent in setup.emulator.state.agents.items()
        for c in agent.conversations.values()
    }
    ran = await run("once", "--config", str(setup.path), "--json")
    assert ran.code == 0, ran.err
    records = ran.records()
    assert records, "the log is JSON lines on stderr"
    deleted = of(records, Event.DELETED)
    assert len(deleted) == 3
    served = {s.path.rsplit("/", 1)[-1] for s in setup.emulator.calls("DELETE")}
    for record in deleted:
        assert record["account"] == "default"
        assert record["outcome"] == "deleted"
        assert record["session_id"] in served
        assert isinstance(record["agent_id"], int)
        assert record["confirmed_by_404"] is False
        assert ISO_Z.match(record["due_at"])
        assert isinstance(record["delay_seconds"], float)
        assert record["level"] == "info" and record["message"].startswith("deleted agent ")
    assert {before[r["session_id"]][1]: (r["agent_id"], r["rule"]) for r in deleted} == EXPECTED
    assert all(before[r["session_id"]][0] == r["agent_id"] for r in deleted)

    [summary] = of(records, Event.SWEEP)
    assert summary["account"] == "default" and summary["outcome"] == "ok"
    assert summary["kind"] == "once" and summary["dry_run"] is False
    for counter in COUNTERS:
        assert type(summary[counter]) is int, counter
    assert (summary["deleted"], summary["due"], summary["failed"]) == (3, 3, 0)
    assert summary["listed"] == len(SEED) and summary["new"] == len(SEED)
    assert summary["api_calls"] == len(setup.emulator.served)
    assert summary["message"].startswith("sweep once ok in ")
    body = ran.document()
    assert {k: summary[k] for k in COUNTERS} == {k: body["accounts"][0][k] for k in COUNTERS}


async def test_the_text_log_stays_prose(setup: Setup) -> None:
    setup.write(log_format="text")
    ran = await run("once", "--config", str(setup.path))
    assert ran.code == 0, ran.err
    assert not any(line.startswith("{") for line in ran.err.splitlines())
    assert re.search(
        r"retention\.deletion: \[default\] deleted agent 532 \S+ 'Test old' \(", ran.err
    )
    assert "event" not in ran.err and "session_id=" not in ran.err
    assert "deleted=3" in ran.out  # the summary line, as before


async def test_once_json_dry_run_counts_and_logs_what_it_would_delete(setup: Setup) -> None:
    ran = await run("once", "--config", str(setup.path), "--dry-run", "--json")
    assert ran.code == 0, ran.err
    [account] = ran.document()["accounts"]
    assert (account["would_delete"], account["deleted"], account["dry_run"]) == (3, 0, True)
    assert setup.emulator.calls("DELETE") == []
    would = of(ran.records(), Event.DRY_RUN)
    assert {(r["agent_id"], r["rule"], r["outcome"]) for r in would} == {
        (532, "qa-chats", "dry_run"),
        (532, "qa-tickets", "dry_run"),
        (533, "qa-tickets", "dry_run"),
    }


async def test_once_json_exits_1_when_deletes_fail_and_logs_each_failure(setup: Setup) -> None:
    setup.emulator.faults.append(Fault.status(503, method="DELETE", times=-1))
    ran = await run("once", "--config", str(setup.path), "--json")
    assert ran.code == 1
    body = ran.document()
    assert (body["ok"], body["exit_code"]) == (False, 1)
    [account] = body["accounts"]
    assert (account["failed"], account["deleted"], account["exit_code"]) == (3, 0, 1)
    assert account["ok"] is True, "the sweep itself ran to its end"
    failures = of(ran.records(), Event.DELETE_FAILED)
    assert len(failures) == 3
    for record in failures:
        assert record["outcome"] == "failed" and record["status"] == 503
        assert record["rule"] in ("qa-chats", "qa-tickets")
        assert record["attempts"] == 1 and ISO_Z.match(record["retry_at"])
        assert "503" in record["error"]
    [summary] = of(ran.records(), Event.SWEEP)
    assert (summary["outcome"], summary["failed"]) == ("ok", 3)


async def test_once_json_exits_3_past_the_breaker_and_says_why(setup: Setup) -> None:
    setup.write(max_deletions=2)
    ran = await run("once", "--config", str(setup.path), "--json")
    assert ran.code == 3, ran.err
    body = ran.document()
    [account] = body["accounts"]
    assert (body["exit_code"], account["exit_code"], account["remaining"]) == (3, 3, 3)
    assert account["deleted"] == 0 and account["breaker_scopes"] == ["account"]
    assert "max_deletions 2" in account["breaker"][0]
    [tripped] = of(ran.records(), Event.BREAKER)
    assert tripped["outcome"] == "tripped" and tripped["scopes"] == ["account"]
    assert tripped["account"] == "default" and tripped["reasons"] == account["breaker"]
    assert "3 due conversations remain in account default" in ran.err


async def test_once_json_of_a_failed_sweep_still_prints_its_document(setup: Setup) -> None:
    setup.emulator.token = "rotated"  # every call a 401
    ran = await run("once", "--config", str(setup.path), "--json")
    assert ran.code == 1
    assert "retention: failed:" in ran.err and "401" in ran.err
    [account] = ran.document()["accounts"]
    assert (account["ok"], account["exit_code"], account["remaining"]) == (False, 1, None)
    assert "401" in account["error"]
    [summary] = of(ran.records(), Event.SWEEP)
    assert summary["outcome"] == "failed" and "401" in summary["error"]


MANY = """
[api]
requests_per_minute = 600
max_attempts = 2

[store]
url = "sqlite+aiosqlite:///{db}"

[log]
format = "json"

[[accounts]]
name = "north"
token_env = "NORTH_TOKEN"
base_url = "{north}"

[[accounts]]
name = "south"
token_env = "SOUTH_TOKEN"
base_url = "{south}"

[[policies]]
name = "qa-tickets"
agents = "*"
name_regex = "^QA-\\\\d+"
max_age = "36h"
"""


async def test_once_json_names_every_account_and_the_one_that_failed(tmp_path: Path) -> None:
    north = Emulator(seeded_state(), token="north-token", per_page=3)
    south = Emulator(seeded_state(), token="south-token", per_page=3)
    async with serve_many({"north": north, "south": south}) as urls:
        config = tmp_path / "retention.toml"
        config.write_text(MANY.format(db=tmp_path / "r.db", **urls), encoding="utf-8")
        tokens = {"NORTH_TOKEN": "revoked", "SOUTH_TOKEN": "south-token"}
        ran = await run("once", "--config", str(config), "--json", token=None, env=tokens)
    assert ran.code == 1
    body = ran.document()
    assert [a["account"] for a in body["accounts"]] == ["north", "south"]
    failed, done = body["accounts"]
    assert (failed["ok"], failed["exit_code"]) == (False, 1) and "401" in failed["error"]
    assert failed["deleted"] == 0, "its report, from the sweep that failed"
    assert (done["ok"], done["exit_code"], done["deleted"]) == (True, 0, 2)
    assert done["deleted"] == len(south.calls("DELETE"))
    assert (body["ok"], body["exit_code"], body["totals"]["deleted"]) == (False, 1, 2)
    assert "retention: account north failed" in ran.err
    sweeps = {r["account"]: r for r in of(ran.records(), Event.SWEEP)}
    assert (sweeps["north"]["outcome"], sweeps["south"]["outcome"]) == ("failed", "ok")
    assert "revoked" not in ran.out + ran.err and "south-token" not in ran.out + ran.err


# ---- status --json ---------------------------------------------------------------------------


async def test_status_json_figures_match_what_the_emulator_holds(setup: Setup) -> None:
    assert (await run("once", "--config", str(setup.path))).code == 0
    ran = await run("status", "--config", str(setup.path), "--json", token=None)
    assert ran.code == 0, ran.err
    body = ran.document()
    assert ISO_Z.match(body["generated_at"])
    assert (body["overdue_after_seconds"], body["overdue_after"]) == (120, "2m")
    [account] = body["accounts"]
    assert account["account"] == "default"
    left = names(setup.emulator)
    agents = {a["agent_id"]: a for a in account["agents"]}
    assert set(agents) == set(left)
    for agent_id, present in left.items():
        figures = agents[agent_id]
        assert figures["name"] == f"Agent {agent_id}"
        assert figures["tracked"] == len(present), "every conversation left is tracked"
        assert figures["held"] == sum(name.startswith("LEGAL") for name in present)
        gone = [n for n, (agent, _) in EXPECTED.items() if agent == agent_id]
        assert figures["deleted_24h"] == len(gone)
        assert (figures["due"], figures["overdue"], figures["in_grace"]) == (0, 0, 0)
        platform = setup.emulator.state.agents[agent_id]
        assert figures["platform_retention"] == {
            "period": platform.retention_period,
            "days": platform.retention_days,
        }
    assert account["totals"] == {
        "tracked": len(SEED) - 3,
        "due": 0,
        "overdue": 0,
        "held": 2,
        "in_grace": 0,
        "deleted_24h": 3,
    }
    assert account["breaker"] == {"tripped": False, "account": None, "agents": [], "reasons": []}
    [sweep] = account["last_sweeps"]
    assert (sweep["kind"], sweep["result"], sweep["deleted"], sweep["failed"]) == (
        "once",
        "ok",
        3,
        0,
    )
    assert sweep["api_calls"] == len(setup.emulator.served)
    assert ISO_Z.match(sweep["started_at"]) and isinstance(sweep["duration_seconds"], float)
    lease = account["lease"]
    assert lease["state"] == "free", "once gave its lease back"
    assert lease["holder"] and ISO_Z.match(lease["expires_at"])


async def test_status_json_shows_the_breaker_and_a_store_never_swept(setup: Setup) -> None:
    setup.write(max_deletions=2)
    assert (await run("db", "upgrade", "--config", str(setup.path))).code == 0
    ran = await run("status", "--config", str(setup.path), "--json")
    [account] = ran.document()["accounts"]
    assert account["agents"] == [] and account["last_sweeps"] == []
    assert account["lease"] == {
        "state": "never_taken",
        "holder": None,
        "token": None,
        "acquired_at": None,
        "expires_at": None,
    }
    assert (await run("once", "--config", str(setup.path))).code == 3
    ran = await run("status", "--config", str(setup.path), "--json")
    [account] = ran.document()["accounts"]
    breaker = account["breaker"]
    assert breaker["tripped"] is True and "max_deletions 2" in breaker["account"]
    assert breaker["reasons"] == [breaker["account"]]
    assert account["totals"]["due"] == 3


async def test_status_json_of_a_missing_store_prints_nothing_and_exits_2(setup: Setup) -> None:
    ran = await run("status", "--config", str(setup.path), "--json")
    assert (ran.code, ran.out) == (2, "")
    assert "retention db upgrade" in ran.err


# ---- check --json ----------------------------------------------------------------------------


def test_check_json_summarises_the_config_and_never_shows_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTOMGPT_API_TOKEN", "sk-json-SECRET")
    example = str(REPO / "config.example.toml")
    assert main(["check", "--config", example, "--json"]) == 0
    out, err = capsys.readouterr()
    body = json.loads(out)
    assert (body["ok"], body["source"], body["error"]) == (True, example, None)
    assert body["accounts"] == [
        {
            "name": "default",
            "base_url": "https://app.customgpt.ai/api/v1/",
            "requests_per_minute": 60,
            "burst": 5,
            "token_set": True,
            "token_source": "env CUSTOMGPT_API_TOKEN",
        }
    ]
    assert body["schedule"]["discover"] == {"every_seconds": 900, "every": "15m", "cron": None}
    assert body["policies"]["count"] == len(body["policies"]["items"]) == 3
    first = body["policies"]["items"][0]
    assert (first["name"], first["agents"], first["max_age_seconds"], first["max_age"]) == (
        "qa-chats",
        [532],
        3600,
        "1h",
    )
    assert body["holds"]["count"] == 1 and body["holds"]["items"][0]["name"] == "legal"
    assert body["warnings"] == []
    assert "sk-json-SECRET" not in out + err


def test_check_json_warns_in_the_document_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "retention.toml"
    config.write_text(
        '[api]\nrequest_timeout = "10s"\n'
        '[store]\nurl = "postgresql+asyncpg://app:hunter2@db.example/retention"\n'
        '[[accounts]]\nname = "acme"\ntoken_env = "ACME_TOKEN"\n',
        encoding="utf-8",
    )
    assert main(["check", "--config", str(config), "--json"]) == 0
    out, err = capsys.readouterr()
    body = json.loads(out)
    [account] = body["accounts"]
    assert (account["name"], account["token_set"]) == ("acme", False)
    assert body["warnings"] and all(f"retention: warning: {w}" in err for w in body["warnings"])
    assert body["policies"] == {"count": 0, "items": []}
    assert "hunter2" not in out and body["store"]["url"].startswith("postgresql+asyncpg://app:")


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            '[[policies]]\nname = "qa"\nagents = [1]\nmax_age = "3 parsecs"\n',
            "policies[0] 'qa': max_age",
            "invalid duration '3 parsecs'",
        ),
        ("[api]\ncolour = 'blue'\n", "api.colour", "unknown key"),
        ("[schedule\n", None, "not valid TOML"),
    ],
)
def test_check_json_of_a_bad_config_is_a_document_too_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["check", "--config", str(path), "--json"]) == 2
    out, err = capsys.readouterr()
    body = json.loads(out)
    assert body["ok"] is False and body["source"] == str(path)
    error = body["error"]
    assert (error["file"], error["key"]) == (str(path), key)
    assert error["message"].startswith(message)
    assert err.strip() == f"retention: error: {error['text']}", "the usual line on stderr too"


def test_check_json_without_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.toml"
    assert main(["check", "--config", str(missing), "--json"]) == 2
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is False and "file not found" in body["error"]["message"]


# ---- the fields helper -----------------------------------------------------------------------


def test_fields_refuse_a_key_the_record_uses_itself() -> None:
    with pytest.raises(ValueError, match="name"):
        fields(Event.DELETED, name="Test old")
    with pytest.raises(ValueError, match="message"):
        fields(Event.SWEEP, message="x")
    moment = datetime(2026, 11, 26, 12, 0, 0, 123, tzinfo=UTC)
    assert fields(Event.GRACE, grace_until=moment, wait=timedelta(minutes=15)) == {
        "event": "grace",
        "grace_until": "2026-11-26T12:00:00Z",
        "wait": 900.0,
    }


def test_every_event_is_documented() -> None:
    documented = Event.__doc__ or ""
    assert [e for e in Event if f"``{e.value}``" not in documented] == []


async def test_reload_records_say_whether_the_rules_were_taken(tmp_path: Path) -> None:
    path = tmp_path / "retention.toml"
    policy = '[[policies]]\nname = "p"\nagents = [1]\nmax_age = "1h"\n'
    path.write_text(policy, encoding="utf-8")
    watcher = ConfigWatcher(path, [], load_config(path), settle=0.01)
    stream = io.StringIO()
    handler = logs.configure(fmt="json", stream=stream)
    try:
        path.write_text(policy.replace('"1h"', '"1 parsec"'), encoding="utf-8")
        assert await watcher.reload() is False
        path.write_text(policy + '[[holds]]\nname = "h"\n', encoding="utf-8")
        assert await watcher.reload("file changed") is True
    finally:
        logging.getLogger().removeHandler(handler)
    records = of([json.loads(line) for line in stream.getvalue().splitlines()], Event.RELOAD)
    rejected, accepted = records
    assert (rejected["outcome"], rejected["trigger"]) == ("rejected", "SIGHUP")
    assert (rejected["file"], rejected["key"]) == (str(path), "policies[0] 'p': max_age")
    assert "invalid duration '1 parsec'" in rejected["error"]
    assert (accepted["outcome"], accepted["trigger"]) == ("accepted", "file changed")
    assert (accepted["policies"], accepted["holds"], accepted["reevaluated"]) == (1, 1, 0)


def test_a_short_token_leaves_the_json_valid_and_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Masking works on the document's texts, not on its serialised form: a token that is also
    a letter of `true` or of a key leaves the JSON valid (and `check` says the token is short)."""
    monkeypatch.setenv("CUSTOMGPT_API_TOKEN", "e")
    config = tmp_path / "retention.toml"
    config.write_text('[api]\nbase_url = "https://app.customgpt.ai/api/v1/"\n', encoding="utf-8")
    assert main(["check", "--config", str(config), "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["ok"] is True and "name" in document["accounts"][0]
    assert "is 1 character long" in captured.err
