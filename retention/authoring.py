"""The policy-authoring commands: ``diff`` (what an edit does to the conversations the store
knows), ``test`` (the config's policy tests) and ``explain`` (one case, rule by rule).

None makes an API call or needs a token. Exit codes: 0 ok; 1 a policy test failed; 2 bad
usage or configuration; 3 (``diff``) the edit newly makes conversations due, now or within a
week: a CI job can ask for a second reviewer on that.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from retention import policytests
from retention.config import Settings
from retention.errors import ConfigError
from retention.impact import EXAMPLES, KINDS, Impact, Outcome
from retention.models import DEFAULT_ACCOUNT, ConversationFacts, Creator, Origin
from retention.policy import Rules
from retention.policy import explain as explain_reason
from retention.runtime import open_store
from retention.timefmt import format_duration
from retention.trace import trace

EXIT_OK, EXIT_FAILED, EXIT_NEWLY_DUE = 0, 1, 3
BATCH = 2000
LABELS = {
    "newly_due_now": "newly due now",
    "newly_due_unconfirmed": "maybe due now (newest message unknown)",
    "newly_due_within_day": "newly due within a day",
    "newly_due_within_week": "newly due within a week",
    "newly_deletable": "due, no longer dry-run",
    "no_longer_due": "no longer due",
    "newly_held": "newly held",
    "no_longer_held": "no longer held",
}


# ---- diff -------------------------------------------------------------------------------------


async def diff(
    current: Settings,
    new: Settings,
    *,
    account: str | None = None,
    as_json: bool = False,
    examples: int = EXAMPLES,
) -> int:
    """Both rule sets on every live conversation the current config's store knows, streamed a
    batch at a time; prints what changes; 3 when the edit newly makes any due."""
    now = datetime.now(UTC)
    names = [current.account(account).name] if account else [a.name for a in current.account_list()]
    old_rules, new_rules = current.rules(), new.rules()
    impacts = []
    async with open_store(current, create=False) as root:
        for name in names:
            impact = Impact(name, now, examples=examples)
            old_in, new_in = old_rules.for_account(name), new_rules.for_account(name)
            impact.newly_in_scope = _newly_in_scope(old_in, new_in)
            before, after = old_in.decide, new_in.decide
            was_dry, is_dry = current.safety.dry_run, new.safety.dry_run
            batches = root.for_account(name).decision_batches(BATCH)
            try:
                # The next batch is read (in the driver's thread) while this one is decided.
                reading = asyncio.ensure_future(anext(batches, None))
                while (batch := await reading) is not None:
                    reading = asyncio.ensure_future(anext(batches, None))
                    add, of = impact.add, Outcome.of
                    for row in batch:
                        facts = row.facts
                        add(
                            facts,
                            of(before(facts, now), dry_run_everywhere=was_dry),
                            of(after(facts, now), dry_run_everywhere=is_dry),
                        )
            finally:
                await batches.aclose()
            impacts.append(impact)
    newly = sum(i.newly_due for i in impacts)
    risky = any(i.newly_deletes for i in impacts)
    if as_json:
        doc = {
            "generated_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "current": current.source,
            "new": new.source,
            "newly_due": newly,
            "accounts": [i.as_json() for i in impacts],
        }
        print(json.dumps(doc, indent=2))
    else:
        _diff_text(impacts, current.source, new.source)
    return EXIT_NEWLY_DUE if risky else EXIT_OK


def _diff_text(impacts: list[Impact], current: str, new: str) -> None:
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    console.print(f"{current} -> {new}: evaluated on the store, now (no API call)")
    for impact in impacts:
        totals = impact.totals()
        label = "" if impact.account == DEFAULT_ACCOUNT else f"account {impact.account}: "
        console.print(f"{label}{impact.weighed} conversations weighed: {impact.summary()}")
        for (old, to), count in sorted(impact.moves().items(), key=lambda kv: -kv[1]):
            console.print(f"  {count} move from {_rule(old)} to {_rule(to)}")
        if not any(totals.values()):
            continue
        table = Table(show_header=True)
        table.add_column("agent")
        for kind in KINDS:
            table.add_column(LABELS[kind], justify="right")
        for agent_id, agent in sorted(impact.agents.items()):
            table.add_row(str(agent_id), *(str(agent.counts[k]) for k in KINDS))
        console.print(table)
        for agent_id, agent in sorted(impact.agents.items()):
            for kind in KINDS:
                for example in agent.examples.get(kind, []):
                    console.print(
                        f"  agent {agent_id} {LABELS[kind]}: {example['name']!r} "
                        f"({example['session_id']}): {example['before']} -> {example['after']}"
                    )


def _newly_in_scope(old: Rules, new: Rules) -> list[int] | str | None:
    """Agents the new rules bring into discovery's scope ("*": every agent), or None."""
    before, after = old.agents_in_scope(), new.agents_in_scope()
    if after is None:
        return None if before is None else "*"
    if before is None:
        return None
    added = sorted(after - before)
    return added or None


def _rule(name: str | None) -> str:
    return "no rule" if name is None else repr(name)


# ---- test -------------------------------------------------------------------------------------


def test(settings: Settings) -> int:
    """Run the config's policy tests; 1 when a case does not hold, 2 when there is no file."""
    path = Path(policytests.tests_path_for(settings.source))
    if not path.exists():
        raise ConfigError(
            f"no policy tests: write {path} beside the config (README: Editing policies safely)",
            key="tests",
        )
    failures, count = run_tests(settings, path)
    for failure in failures:
        print(f"FAIL {failure.message()}")
    verdict = "ok" if not failures else f"{len(failures)} of {count} failed"
    print(f"{path}: {count} case{'s' if count != 1 else ''}, {verdict}")
    return EXIT_FAILED if failures else EXIT_OK


def tests_beside(settings: Settings) -> dict[str, Any] | None:
    """The policy tests beside the config, run (``check`` shows them): the file, the number of
    cases and each failure's message; None when there is no such file."""
    path = Path(policytests.tests_path_for(settings.source))
    if not path.exists():
        return None
    failures, count = run_tests(settings, path)
    return {"file": str(path), "cases": count, "failures": [f.message() for f in failures]}


def run_tests(settings: Settings, path: Path) -> tuple[list[policytests.Failure], int]:
    """The failures among ``path``'s cases against the config's rules, and the number of cases.
    Raises ConfigError naming the file, case and key of a case that cannot be read."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    cases = policytests.parse(doc, source=str(path), now=datetime.now(UTC))
    rules = settings.rules()
    known = {a.name for a in settings.account_list()}
    for case in cases:
        if case.account not in known:
            raise ConfigError(
                f"unknown account {case.account!r} (accounts: {', '.join(sorted(known))})",
                source=str(path),
                key=f"{case.label}: account",
            )
    failures = [f for case in cases if (f := policytests.run(case, rules)) is not None]
    return failures, len(cases)


# ---- explain ----------------------------------------------------------------------------------


def explain(
    settings: Settings,
    *,
    agent_id: int,
    name: str,
    created: datetime,
    updated: datetime | None = None,
    last_message: datetime | None = None,
    creator: str | None = None,
    origin: str = Origin.DISCOVERED.value,
    ttl: timedelta | None = None,
    session_id: str = "explain",
    account: str | None = None,
    as_json: bool = False,
) -> int:
    """Decide one described conversation and print every rule weighed, in order, and why."""
    chosen = settings.account(account).name if account else settings.account_list()[0].name
    now = datetime.now(UTC)
    facts = ConversationFacts(
        agent_id=agent_id,
        session_id=session_id,
        name=name,
        created_at=created,
        updated_at=max(updated or created, created),
        origin=Origin(origin),
        creator=None if creator is None else Creator(creator),
        last_activity_at=last_message,
        ttl=ttl,
        ttl_from=created if ttl is not None else None,
    )
    result = trace(facts, settings.rules().for_account(chosen), now)
    decision = result.decision
    due = decision.due_at
    if as_json:
        print(json.dumps(result.as_json(now), indent=2))
        return EXIT_OK
    print(f"decision: {decision.kind.value}, by {_rule(decision.rule)}")
    print(f"  {explain_reason(decision.reason, due, now)}")
    if due is not None:
        print(f"  due at {due.strftime('%Y-%m-%d %H:%M:%SZ')} ({_relative(due, now)})")
    print("rules, in the order they are weighed:")
    for step in result.steps:
        print(f"  {step.line()}")
    return EXIT_OK


def _relative(due: datetime, now: datetime) -> str:
    if due <= now:
        return f"due since {format_duration(now - due)}"
    return f"in {format_duration(due - now)}"
