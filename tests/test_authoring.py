"""Policy authoring: `diff` against what a following `plan` shows, `test` on the shipped example
tests and on a wrong expectation, `explain` on one described conversation."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retention import authoring
from retention.cli import main
from retention.config import load_config
from retention.emulator import Emulator
from retention.emulator.seed import sample_state
from retention.store import Store

from .conftest import REPO

EXAMPLE = REPO / "config.example.toml"
HELD_TICKET = "0d5e7a1c-4b2f-4c8e-9a31-5f0e6b7c8d90"
D = timedelta(days=1)


def example_config(url: str, db: Path, *, edit: str = "") -> str:
    """config.example.toml served by the emulator, on a store of its own, with no policy change
    grace (so that what a change makes due shows as due at once), then ``edit`` applied."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r'base_url = "[^"]*"', f'base_url = "{url}"', text, count=1)
    text = re.sub(r'(?m)^url = "sqlite[^"]*"', f'url = "sqlite+aiosqlite:///{db}"', text)
    text = text.replace('policy_change_grace = "1h"', 'policy_change_grace = "0"')
    text = re.sub(r"(?m)^max_deletions = \d+", "max_deletions = 100000", text)
    text = text.replace('session_ids = ["', f'session_ids = ["{HELD_TICKET}", "', 1)
    if edit == "drop-hold":
        text = text[: text.index("[[holds]]")]
    elif edit == "shorter":
        text = text.replace('max_age = "36h"', 'max_age = "1h"')
    return text


@pytest.fixture
async def served(tmp_path: Path, api_token: str) -> AsyncIterator[tuple[str, Path]]:
    now = datetime.now(UTC)
    state = sample_state(now=now)
    # A ticket the legal hold keeps by its session id: removing the hold makes it due at once,
    # on facts the store knows (its name and creation time).
    state.add_conversation(534, "QA-500 smoke", created_at=now - 3 * D, session_id=HELD_TICKET)
    emulator = Emulator(state)
    async with emulator.serve() as url:
        yield url, tmp_path


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


async def plan_due(config: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """`plan --json`'s due set (the CLI runs its own event loop: in a thread, beside ours,
    which serves the emulator)."""
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["plan", "--config", config, "--json"]) in (0, 3)
    return {item["session_id"] for item in json.loads(capsys.readouterr().out)["due"]}


def sessions(account: dict[str, Any], kind: str) -> dict[str, int]:
    """Every session the diff lists under ``kind`` (asked for every example), with its agent."""
    return {
        e["session_id"]: agent["agent_id"]
        for agent in account["agents"]
        for e in agent["examples"].get(kind, [])
    }


@pytest.mark.parametrize("edit", ["drop-hold", "shorter"])
async def test_diff_lists_exactly_what_a_following_plan_shows_newly_due(
    served: tuple[str, Path], capsys: pytest.CaptureFixture[str], edit: str
) -> None:
    url, folder = served
    db = folder / "retention.db"
    current = write(folder, "current.toml", example_config(url, db))
    new = write(folder, "new.toml", example_config(url, db, edit=edit))
    assert await asyncio.to_thread(main, ["db", "upgrade", "--config", current]) == 0
    before = await plan_due(current, capsys)  # discovers: the store knows every conversation
    code = await authoring.diff(
        load_config(Path(current)), load_config(Path(new)), as_json=True, examples=10_000
    )
    doc = json.loads(capsys.readouterr().out)
    (account,) = doc["accounts"]
    confirmed = sessions(account, "newly_due_now")
    unconfirmed = sessions(account, "newly_due_unconfirmed")
    assert len(confirmed) == account["totals"]["newly_due_now"] > 0
    assert code == 3 and doc["newly_due"] >= len(confirmed) + len(unconfirmed)
    after = await plan_due(new, capsys)
    newly = after - before
    # Exactly: what the diff knows to be due now, the plan shows; of those due only by a lower
    # bound (the newest message never read), the plan shows the ones its messages call confirms.
    assert set(confirmed) <= newly <= set(confirmed) | set(unconfirmed)
    if edit == "shorter":
        assert unconfirmed == {} and newly == set(confirmed)
        assert account["totals"]["no_longer_held"] == 0
    else:
        assert account["totals"]["no_longer_held"] > 0 and unconfirmed
        assert all(m["from"] == "legal" for m in account["moves"])
        store = await Store.open(f"sqlite+aiosqlite:///{db}", migrate=False)
        try:
            for session, agent in unconfirmed.items():
                if session in newly:
                    continue
                row = await store.get(agent, session)
                assert row is not None and row.last_activity_at is not None, session
                assert row.last_activity_at > datetime.now(UTC) - timedelta(days=30)
        finally:
            await store.close()
    # Against itself an edit changes nothing: exit 0.
    same = await authoring.diff(load_config(Path(new)), load_config(Path(new)), as_json=False)
    out = capsys.readouterr().out
    assert same == 0 and "no conversation's outcome changes" in out


# ---- policy tests -----------------------------------------------------------------------------


def test_the_shipped_example_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code = authoring.test(load_config(EXAMPLE))
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"config\.example\.tests\.toml: \d+ cases, ok", out)


def config_with_tests(tmp_path: Path, cases: str) -> Any:
    config = tmp_path / "retention.toml"
    config.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "retention.tests.toml").write_text(cases, encoding="utf-8")
    return load_config(config)


def test_a_wrong_expectation_fails_naming_the_case_and_the_rule_that_decided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = config_with_tests(
        tmp_path,
        'at = "2026-11-26T12:00:00Z"\n\n[[cases]]\nname = "legal wins"\nagent = 532\n'
        'conversation = "LEGAL review 4"\ncreated = "2d"\nexpect = "deleted by \'qa-chats\' '
        'after 1h"\n\n[[cases]]\nname = "a ticket"\nagent = 534\nconversation = "QA-3"\n'
        'created = "1d"\nexpect = "deleted by \'qa-tickets\' after 1d"\n',
    )
    code = authoring.test(settings)
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[0] == (
        "FAIL cases[0] 'legal wins': expected deleted by 'qa-chats' after 1h, got held by "
        "'legal' (hold 'legal': decided: name 'LEGAL review 4' matches 'LEGAL*')"
    )
    assert out[1].startswith("FAIL cases[1] 'a ticket': expected deleted by 'qa-tickets' after")
    assert "got deleted by 'qa-tickets' after 1d12h" in out[1]
    assert out[2].endswith("retention.tests.toml: 2 cases, 2 of 2 failed")


@pytest.mark.parametrize(
    ("cases", "named"),
    [
        ('[[cases]]\nagent = 532\ncreated = "1d"\n', "cases[0] 'case 0': expect: required"),
        ('[[cases]]\nagent = 532\nexpect = "kept: no policy"\n', "cases[0] 'case 0': created"),
        (
            '[[cases]]\nname = "x"\nagent = "532"\ncreated = "1d"\nexpect = "kept: no policy"\n',
            "cases[0] 'x': agent: required",
        ),
        (
            '[[cases]]\nname = "x"\nagent = 1\ncreated = "1d"\nexpect = "gone soon"\n',
            "cases[0] 'x': expect: cannot read 'gone soon'",
        ),
        (
            '[[cases]]\nname = "x"\nagent = 1\ncreated = "soon"\nexpect = "kept: no policy"\n',
            "cases[0] 'x': created: invalid time 'soon'",
        ),
        (
            '[[cases]]\nname = "x"\nagent = 1\ncreated = "1d"\ncolour = 3\n'
            'expect = "kept: no policy"\n',
            "cases[0] 'x': colour: unknown key",
        ),
        ("[cases]\n", "cases: no [[cases]]"),
    ],
)
def test_a_bad_tests_file_names_the_case_and_key(tmp_path: Path, cases: str, named: str) -> None:
    from retention.errors import ConfigError

    settings = config_with_tests(tmp_path, cases)
    with pytest.raises(ConfigError) as caught:
        authoring.test(settings)
    assert "retention.tests.toml" in str(caught.value) and named in str(caught.value)


# ---- explain ----------------------------------------------------------------------------------


def test_explain_prints_the_decision_and_every_rule_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = datetime.now(UTC)
    code = authoring.explain(
        load_config(EXAMPLE),
        agent_id=532,
        name="QA-12 smoke",
        created=now - timedelta(days=3),
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "decision: policy, by 'qa-tickets'"
    assert out[1].startswith("  policy 'qa-tickets': max_age 1d12h from created; due since 1d")
    assert out[4:] == [
        "  hold 'legal': passed: none of its selectors takes 'QA-12 smoke'",
        "  policy 'qa-chats': passed: name 'QA-12 smoke' matches none of 'Test*'",
        "  policy 'qa-tickets': decided: matches (first match decides): max_age 1d12h from created",
        "  policy 'idle-anonymous': not reached: an earlier rule decided",
    ]


def test_check_runs_the_policy_tests_beside_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUSTOMGPT_API_TOKEN", "a-token-for-check-1234")
    config_with_tests(
        tmp_path,
        '[[cases]]\nname = "legal wins"\nagent = 532\nconversation = "LEGAL review 4"\n'
        'created = "2d"\nexpect = "deleted by \'qa-chats\' after 1h"\n',
    )
    config = str(tmp_path / "retention.toml")
    assert main(["check", "--config", config]) == 1
    out = capsys.readouterr().out
    assert "FAIL cases[0] 'legal wins': expected deleted by 'qa-chats' after 1h" in out
    assert "tests      1 case (" in out and "): 1 failed" in out
    assert main(["check", "--config", config, "--json"]) == 1
    tests = json.loads(capsys.readouterr().out)["tests"]
    assert tests["cases"] == 1 and "got held by 'legal'" in tests["failures"][0]
    assert main(["check", "--config", str(EXAMPLE)]) == 0
    assert "tests      9 cases (" in capsys.readouterr().out


def test_the_cli_runs_test_explain_and_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["test", "--config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("9 cases, ok")
    args = ["explain", "--config", str(EXAMPLE), "--agent", "533", "--name", "Hi", "--json"]
    assert main([*args, "--creator", "anonymous", "--created", "60d", "--last-message", "31d"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["decision"], doc["rule"]) == ("policy", "idle-anonymous")
    assert [s["verdict"] for s in doc["steps"]] == ["passed", "passed", "passed", "decided"]
    assert main(["explain", "--config", str(EXAMPLE), "--agent", "1", "--name", "x",
                 "--created", "later"]) == 2  # fmt: skip
    assert "--created" in capsys.readouterr().err
    lonely = tmp_path / "no-tests.toml"
    lonely.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["test", "--config", str(lonely)]) == 2
    assert "no-tests.tests.toml" in capsys.readouterr().err
    assert main(["diff", "--config", str(lonely), str(tmp_path / "missing.toml")]) == 2


async def test_diff_counts_an_edit_that_ends_dry_run_or_widens_the_agents(
    served: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither changes a decision's rule or due time, and both let `once` delete what it would
    not have: exit 3, and say which."""
    url, folder = served
    db = folder / "retention.db"
    narrow = example_config(url, db).replace('agents = "*"', "agents = [532]", 1)
    narrow = narrow.replace("agents = [532, 533]", "agents = [532]")
    current = write(folder, "current.toml", narrow.replace("dry_run = false", "dry_run = true", 1))
    assert await asyncio.to_thread(main, ["db", "upgrade", "--config", current]) == 0
    await plan_due(current, capsys)
    real = write(folder, "real.toml", narrow)  # [safety] dry_run = false
    code = await authoring.diff(load_config(Path(current)), load_config(Path(real)), as_json=True)
    (account,) = json.loads(capsys.readouterr().out)["accounts"]
    assert code == 3 and account["totals"]["newly_deletable"] > 0
    assert account["totals"]["newly_due_now"] == 0 and account["agents_newly_in_scope"] is None
    wider = write(folder, "wider.toml", narrow.replace("agents = [532]", "agents = [532, 534]", 1))
    code = await authoring.diff(load_config(Path(real)), load_config(Path(wider)), as_json=True)
    (account,) = json.loads(capsys.readouterr().out)["accounts"]
    assert code == 3 and account["agents_newly_in_scope"] == [534]


def test_a_case_naming_the_clock_fails_when_the_policy_changes_clock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`after 30d from last message`: an edit to `age_from = "created"` (which makes a 60-day
    old chat with yesterday's message due now) fails the shipped case that names its clock."""
    config = tmp_path / "retention.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    config.write_text(text.replace('age_from = "last_activity"', 'age_from = "created"'))
    tests = (REPO / "config.example.tests.toml").read_text(encoding="utf-8")
    (tmp_path / "retention.tests.toml").write_text(tests, encoding="utf-8")
    assert authoring.test(load_config(config)) == 1
    out = capsys.readouterr().out
    assert (
        "expected deleted by 'idle-anonymous' after 30d from last message, got deleted by "
        "'idle-anonymous' after 30d from created"
    ) in out
