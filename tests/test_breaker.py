"""The mass-deletion breaker: a table of verdicts, a bad edit that deletes nothing until approved,
`once` that finishes or says why not, and the breaker in plan, status, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retention.breaker import AgentDue, Limits, judge
from retention.cli import main
from retention.emulator import Emulator
from retention.policy import Policy
from retention.store import Store

from .conftest import EngineFactory, served_config

LIMITS = Limits(max_deletions=100, max_due_fraction=0.5, floor=20)


@pytest.mark.parametrize(
    ("figures", "account", "agents"),
    [
        ([], False, set()),
        ([AgentDue(1, 19, 0, 20)], False, set()),  # under the floor: a small agent is not blocked
        ([AgentDue(1, 20, 0, 40)], False, set()),  # exactly half is not more than half
        ([AgentDue(1, 21, 0, 40)], False, {1}),
        ([AgentDue(1, 20, 0, 39)], False, {1}),
        ([AgentDue(1, 0, 90, 90)], False, set()),  # own TTLs count toward max_deletions only
        ([AgentDue(1, 0, 101, 101)], True, set()),
        ([AgentDue(1, 50, 0, 1000), AgentDue(2, 51, 0, 1000)], True, set()),  # 101 in all
        ([AgentDue(1, 60, 0, 100), AgentDue(2, 30, 0, 100)], False, {1}),
        ([AgentDue(1, 30, 0, 0)], False, set()),  # no live figure: nothing to compare with
    ],
)
def test_the_breaker_judges_the_account_and_each_agent(
    figures: list[AgentDue], account: bool, agents: set[int]
) -> None:
    verdict = judge(figures, LIMITS)
    assert (verdict.account is not None, set(verdict.agents)) == (account, agents)
    assert verdict.tripped == (account or bool(agents))
    for agent in (1, 2):
        assert verdict.stops(agent) == (account or agent in agents)


def test_the_breaker_says_why_with_the_figures() -> None:
    verdict = judge([AgentDue(7, 30, 0, 40), AgentDue(8, 0, 200, 200)], LIMITS)
    [account, agent] = verdict.reasons()
    assert account.startswith("230 conversations due and not approved, more than max_deletions")
    assert agent.startswith("agent 7: 30 of 40 live conversations due and not approved (75%)")
    assert "retention approve --agent 7" in agent


EVERYTHING = Policy(name="all", agents=frozenset({532}), max_age=timedelta(seconds=1))


async def test_a_bad_edit_deletes_nothing_until_approved_then_exactly_the_approved(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    await make_engine((Policy(name="none", agents=frozenset({532}), name_matches=("X*",)),)).sweep()
    engine = make_engine((EVERYTHING,))  # every conversation of the agent, due at once
    report = await engine.sweep()
    assert report.deleted == 0 and emulator.calls("DELETE") == []
    assert report.breaker and report.breaker[0].startswith("agent 532: 45 of 45 live")
    assert report.breaker_scopes == ["532"]
    assert await store.approve(datetime.now(UTC)) == 45
    now = datetime.now(UTC)
    late = [  # due too, but after the approval: not covered by it (50 of 95 live: over half)
        emulator.state.add_conversation(532, f"Late {n}", created_at=now - timedelta(hours=1))
        for n in range(50)
    ]
    report = await engine.sweep()
    assert report.deleted == 45 and report.breaker[0].startswith("agent 532: 50 of 95 live")
    assert {c.session_id for c in late} == emulator.live_sessions(532)


async def test_dry_run_is_not_held_by_the_breaker(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    report = await make_engine((EVERYTHING,), dry_run=True).sweep()
    assert report.breaker == [] and report.would_delete == 45


CONFIG = """
[api]
base_url = "{url}"
requests_per_minute = 6000
[store]
url = "sqlite+aiosqlite:///{db}"
[safety]
max_deletions = {limit}
[[policies]]
name = "chats"
agents = [532]
name_matches = ["Chat*"]
max_age = "1s"
"""


@pytest.fixture(autouse=True)
def _token(api_token: str) -> None:
    """Commands here run in this process and read the token from the environment."""


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture
async def config(emulator: Emulator, tmp_path: Path) -> AsyncIterator[str]:
    # max_deletions 30 < 45 due: the account trips; a 500 batch would have hidden nothing.
    async with served_config(emulator, tmp_path, CONFIG, limit=30) as path:
        yield str(path)


async def test_once_stopped_by_the_breaker_exits_3_and_says_how_many_remain(
    emulator: Emulator, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("once", "--config", config) == 3
    err = capsys.readouterr().err
    assert (
        "45 due conversations remain in account default: 45 conversations due and not approved"
        in err
    )
    assert emulator.calls("DELETE") == []


async def test_plan_status_and_approve_then_once_finishes_the_whole_set(
    emulator: Emulator, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("db", "upgrade", "--config", config) == 0  # plan only reads a store
    capsys.readouterr()
    assert await cli("plan", "--config", config, "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["count"] == 45 and all(item["held_by_breaker"] for item in plan["due"])
    assert plan["breaker"][0].startswith("45 conversations due and not approved")
    assert await cli("status", "--config", config) == 0
    assert (
        "mass-deletion breaker in account default: 45 conversations due" in capsys.readouterr().out
    )
    assert await cli("approve", "--config", config) == 0
    assert "approved 45 due conversations in account default" in capsys.readouterr().out
    assert await cli("once", "--config", config) == 0
    assert len(emulator.calls("DELETE")) == 45 and emulator.live_sessions(532) == set()


async def test_once_goes_on_batch_after_batch_and_max_caps_it(
    emulator: Emulator, tmp_path: Path
) -> None:
    async with served_config(emulator, tmp_path, CONFIG, limit=1000) as path:
        with pytest.MonkeyPatch.context() as patch:
            # A 45-conversation agent all due trips the per-agent check: lift it here.
            patch.setenv("RETENTION_SAFETY__BREAKER_FLOOR", "1000")
            assert await cli("once", "--config", str(path), "--max", "10") == 0
            assert len(emulator.calls("DELETE")) == 10, "--max caps it, and asked: exit 0"
            assert await cli("once", "--config", str(path)) == 0
    assert len(emulator.calls("DELETE")) == 45 and emulator.live_sessions(532) == set()


async def test_a_sweep_until_done_takes_batch_after_batch(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    chats = Policy(name="chats", agents=frozenset({532}), name_matches=("Chat*",))
    engine = make_engine((replace(chats, max_age=timedelta(seconds=1)),), delete_batch=10)
    engine.context.options = replace(engine.options, breaker=Limits(floor=1000))
    one = await engine.sweep("delete")
    assert one.deleted == 10, "a daemon's sweep takes one batch"
    report = await engine.sweep("once", until_done=True)
    assert report.deleted == 35 and report.due == 35
    assert emulator.live_sessions(532) == set()


PLAN_CONFIG = """
[api]
base_url = "{url}"
requests_per_minute = 6000
[store]
url = "sqlite+aiosqlite:///{db}"
[[policies]]
name = "chats"
agents = [532]
name_matches = ["{glob}"]
max_age = "1s"
"""


async def test_apply_deletes_exactly_the_plan_and_counts_as_approval(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "plan.json"
    async with served_config(emulator, tmp_path, PLAN_CONFIG, glob="Chat 1*") as path:
        # 11 due (Chat 1, Chat 10..19), under the breaker's floor of 20.
        assert await cli("db", "upgrade", "--config", str(path)) == 0
        assert await cli("plan", "--config", str(path), "--out", str(plan_file)) == 0
        listed = {d["session_id"] for d in json.loads(plan_file.read_text())["due"]}
        assert len(listed) == 11
        late = emulator.state.add_conversation(
            532, "Chat 1 late", created_at=datetime.now(UTC) - timedelta(hours=1)
        )
        kept = next(
            c for c in emulator.state.agents[532].conversations.values() if c.name == "Chat 12"
        )
        kept.name, kept.updated_at = "Customer (renamed)", datetime.now(UTC)
        await asyncio.sleep(1.1)  # the plan's listing is now older than facts_max_age below
        capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RETENTION_SAFETY__FACTS_MAX_AGE", "1s")
            assert await cli("apply", "--config", str(path), str(plan_file)) == 0
        err = capsys.readouterr().err
    deleted = {c.path.rsplit("/", 1)[1] for c in emulator.calls("DELETE")}
    assert deleted <= listed, "never one the plan does not list"
    assert late.session_id not in deleted and kept.session_id not in deleted
    assert len(deleted) == 10
    assert "10 deleted, 0 gone already, 1 skipped (no longer due, held or gone), 0 still due" in err


async def test_a_stale_plan_deletes_nothing(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "plan.json"
    async with served_config(emulator, tmp_path, PLAN_CONFIG, glob="Chat 1*") as path:
        assert await cli("db", "upgrade", "--config", str(path)) == 0
        assert await cli("plan", "--config", str(path), "--out", str(plan_file)) == 0
        path.write_text(path.read_text().replace('"Chat 1*"', '"Chat 2*"'), encoding="utf-8")
        capsys.readouterr()
        assert await cli("apply", "--config", str(path), str(plan_file)) == 2
        assert "plan is stale: it was made under other rules" in capsys.readouterr().err
        path.write_text(path.read_text().replace('"Chat 2*"', '"Chat 1*"'), encoding="utf-8")
        body = json.loads(plan_file.read_text())
        body["created_at"] = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
        plan_file.write_text(json.dumps(body))
        assert await cli("apply", "--config", str(path), str(plan_file)) == 2
        assert "plan is stale: made 1d1h ago, more than --max-age 1d" in capsys.readouterr().err
        body["store_id"] = "another"
        body["created_at"] = datetime.now(UTC).isoformat()
        plan_file.write_text(json.dumps(body))
        assert await cli("apply", "--config", str(path), str(plan_file)) == 2
        assert "plan is stale: it was made on another store" in capsys.readouterr().err
        plan_file.write_text("{}")
        assert await cli("apply", "--config", str(path), str(plan_file)) == 2
        assert "not a plan file" in capsys.readouterr().err
    assert emulator.calls("DELETE") == []
