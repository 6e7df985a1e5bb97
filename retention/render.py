"""What commands print: rich tables on a terminal, plain columns elsewhere, and JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from retention.config import Settings
from retention.models import (
    DEFAULT_ACCOUNT,
    AgentRecord,
    AgentStatus,
    AuditRecord,
    Lease,
    PlanItem,
    SweepRecord,
    SweepReport,
    TrackedConversation,
)
from retention.policy import Hold, Policy, explain
from retention.timefmt import format_duration


def stamp(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def plan_json(items: Sequence[PlanItem], report: SweepReport, *, now: datetime) -> dict[str, Any]:
    return {
        "generated_at": now.isoformat(),
        "dry_run": report.dry_run,
        "due": [
            {
                "account": item.account,
                "agent_id": item.agent_id,
                "session_id": item.session_id,
                "name": item.name,
                "rule": item.rule,
                "due_at": item.due_at.isoformat(),
                "age_seconds": int(item.age.total_seconds()),
                "age": format_duration(item.age),
                "reason": item.reason,
                "dry_run": item.dry_run,
                "state": item.state.value,
                "grace_until": item.grace_until.isoformat() if item.grace_until else None,
                "retry_at": item.retry_at.isoformat() if item.retry_at else None,
                "unconfirmed": item.unconfirmed,
                "held_by_breaker": item.held_by_breaker,
            }
            for item in items
        ],
        "count": len(items),
        "breaker": report.breaker,
        "held_back": report.held_back,
        "api_calls": report.api_calls,
    }


def plans_json(
    plans: Sequence[tuple[Sequence[PlanItem], SweepReport]], *, now: datetime
) -> dict[str, Any]:
    """Several accounts' plans as one (``plan --json`` and ``GET /v1/plan``): the shape of
    :func:`plan_json`, so that a script written for one account reads several; ``due`` lists
    every account's items in order (each names its account), ``breaker`` and ``held_back``
    name the account when there are several, ``api_calls`` are summed, and ``reports`` holds
    each account's own figures."""
    several = len(plans) > 1
    due: list[dict[str, Any]] = []
    reports: dict[str, dict[str, Any]] = {}
    for items, report in plans:
        body = plan_json(items, report, now=now)
        due.extend(body.pop("due"))
        del body["generated_at"]
        reports[report.account] = body

    def named(account: str, line: str) -> str:
        return f"{account}: {line}" if several else line

    calls: dict[str, int] = {}
    for body in reports.values():
        for kind, count in body["api_calls"].items():
            calls[kind] = calls.get(kind, 0) + count
    held = [named(name, r["held_back"]) for name, r in reports.items() if r["held_back"]]
    return {
        "generated_at": now.isoformat(),
        "dry_run": all(r["dry_run"] for r in reports.values()),
        "due": due,
        "count": len(due),
        "breaker": [named(name, line) for name, r in reports.items() for line in r["breaker"]],
        "held_back": "; ".join(held) if held else None,
        "api_calls": dict(sorted(calls.items())),
        "accounts": list(reports),
        "reports": reports,
    }


def _console(out: TextIO) -> Console:
    # Off a terminal (a pipe, a log file) nothing should wrap: give tables room.
    return Console(file=out, highlight=False, width=None if out.isatty() else 240)


def plan_table(items: Sequence[PlanItem], *, now: datetime, out: TextIO) -> None:
    console = _console(out)
    if not items:
        console.print("Nothing is due.")
        return
    table = Table(title=f"{len(items)} conversation(s) due at {stamp(now)}", title_justify="left")
    # The account column once there is more than the one account of a config without them.
    several = any(item.account != DEFAULT_ACCOUNT for item in items)
    headers = ("account",) * several + ("agent", "session_id", "name", "age", "rule")
    for header in (*headers, "due since", "note"):
        table.add_column(header, no_wrap=header in ("session_id", "due since", "age"))
    for item in items:
        notes = []
        if item.grace_until is not None:
            notes.append(f"waits for grace until {stamp(item.grace_until)}")
        if item.dry_run:
            notes.append("dry-run")
        if item.state.value == "deleting":
            notes.append("left mid-delete: retried next")
        if item.retry_at is not None:
            notes.append(f"a DELETE failed; next attempt {stamp(item.retry_at)}")
        if item.held_by_breaker:
            notes.append("held by the breaker: approve to delete")
        note = ", ".join(notes)
        table.add_row(
            *(item.account,) * several,
            str(item.agent_id),
            item.session_id,
            item.name,
            format_duration(item.age),
            item.rule or "-",
            format_duration(now - item.due_at),
            note,
        )
    console.print(table)


def status_table(
    rows: Sequence[AgentStatus],
    agents: Mapping[int, AgentRecord | None],
    *,
    now: datetime,
    out: TextIO,
    account: str = DEFAULT_ACCOUNT,
) -> None:
    console = _console(out)
    table = Table(title=f"account {account}: store at {stamp(now)}", title_justify="left")
    headers = ("agent", "tracked", "due", "overdue", "held", "deleted 24h", "in grace", "platform")
    for header in headers:
        table.add_column(header, justify="right" if header != "platform" else "left")
    totals = [0, 0, 0, 0, 0, 0]
    for row in rows:
        figures = [row.tracked, row.due, row.overdue, row.held, row.deleted_24h, row.grace]
        totals = [a + b for a, b in zip(totals, figures, strict=True)]
        agent = agents.get(row.agent_id)
        label = f"{row.agent_id} {agent.name}".strip() if agent else str(row.agent_id)
        table.add_row(label, *map(str, figures), _platform(agent))
    table.add_row("all", *map(str, totals), "", end_section=True)
    console.print(table)


def _platform(agent: AgentRecord | None) -> str:
    """The platform's own retention, as its settings say (read at each reconcile)."""
    if agent is None or agent.platform_retention_period is None:
        return "-"
    if agent.platform_retention_period == "custom":
        return f"custom ({agent.platform_retention_days}d)"
    return agent.platform_retention_period


def lease_line(lease: Lease | None, *, now: datetime, out: TextIO) -> None:
    """Who holds the account's lease (a writer, or the replica whose share it is), until when."""
    if lease is None:
        print("lease: never taken", file=out)
    elif lease.expires_at <= now:
        print(f"lease: free (last held by {lease.holder})", file=out)
    else:
        print(f"lease: held by {lease.holder} until {stamp(lease.expires_at)}", file=out)


def sweeps_lines(sweeps: Sequence[SweepRecord], *, out: TextIO) -> None:
    """The last sweeps, newest first, one line each."""
    if not sweeps:
        print("no sweep yet", file=out)
        return
    print("last sweeps:", file=out)
    for sweep in sweeps:
        result = {True: "ok", False: "FAILED", None: "running"}[sweep.ok]
        line = (
            f"  {stamp(sweep.started_at)} {sweep.kind:<8} {result:<7} "
            f"deleted={sweep.deleted} failed={sweep.failed} api_calls={sweep.api_calls}"
        )
        if sweep.error:
            line += f" error={sweep.error}"
        print(line, file=out)


def record_json(record: TrackedConversation, *, now: datetime) -> dict[str, Any]:
    """A tracked conversation, its decision and the reason (the admin API's "why" view)."""
    return {
        "agent_id": record.agent_id,
        "session_id": record.session_id,
        "remote_id": record.remote_id,
        "name": record.name,
        "origin": record.origin.value,
        "state": record.state.value,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "last_activity_at": _iso(record.last_activity_at),
        "ttl_seconds": int(record.ttl.total_seconds()) if record.ttl is not None else None,
        "ttl_from": _iso(record.ttl_from),
        "rule": record.rule,
        "due_at": _iso(record.due_at),
        "due": record.due_at is not None and record.due_at <= now,
        "grace_until": _iso(record.grace_until),
        "retry_at": _iso(record.retry_at),
        "reason": explain(record.reason, record.due_at, now),
        "attempts": record.attempts,
        "last_error": record.last_error,
        "finished_at": _iso(record.finished_at),
    }


def audit_json(record: AuditRecord) -> dict[str, Any]:
    return {
        "at": record.at.isoformat(),
        "outcome": record.outcome.value,
        "rule": record.rule,
        "name": record.name,
        "age_seconds": int(record.age.total_seconds()),
        "detail": record.detail,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def schedule_line(settings: Settings) -> str:
    s = settings.schedule
    discover = f"cron '{s.discover_cron}'" if s.discover_cron else format_duration(s.discover_every)
    delete = f"cron '{s.delete_cron}'" if s.delete_cron else format_duration(s.delete_every)
    return (
        f"discover every {discover}, delete every {delete}, "
        f"reconcile every {format_duration(s.reconcile_every)}"
    )


def _agents_text(agents: frozenset[int] | None) -> str:
    return "all agents" if agents is None else "agents " + ", ".join(map(str, sorted(agents)))


def _names_text(globs: tuple[str, ...], regex: str | None) -> str:
    parts = []
    if globs:
        parts.append("names " + " | ".join(globs))
    if regex is not None:
        parts.append(f"name ~ /{regex}/")
    return ", ".join(parts)


def describe_policy(policy: Policy) -> str:
    bits = [f"{policy.name!r}: {_agents_text(policy.agents)}"]
    if names := _names_text(policy.name_matches, policy.name_regex):
        bits.append(names)
    if policy.user_type is not None:
        bits.append(f"by {policy.user_type.value}")
    if policy.origins is not None:
        bits.append("origin " + "/".join(sorted(o.value for o in policy.origins)))
    bits.append(f"max_age {format_duration(policy.max_age)} from {policy.age_from.value}")
    if policy.dry_run:
        bits.append("dry-run")
    return ", ".join(bits)


def describe_hold(hold: Hold) -> str:
    bits = [f"{hold.name!r}: {_agents_text(hold.agents)}"]
    if hold.session_ids:
        bits.append(f"{len(hold.session_ids)} session id(s)")
    if names := _names_text(hold.name_matches, hold.name_regex):
        bits.append(names)
    return ", ".join(bits)
