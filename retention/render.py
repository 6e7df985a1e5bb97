"""What commands print: rich tables on a terminal, plain columns elsewhere, and JSON.

The JSON documents (``plan``, ``status``, ``check`` and ``once`` with ``--json``) are a contract
scripts read: keys are only ever added. Timestamps in the documents made here are ISO 8601 UTC
with ``Z``; durations are seconds (``*_seconds``), with a text twin (``"15m"``) where people
read them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from retention.breaker import Verdict
from retention.config import Settings
from retention.database import parse_url
from retention.errors import ConfigError, StoreError
from retention.logs import SWEEP_COUNTERS, utc_text
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


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 hold``, ``2 holds``; ``many`` where adding an s will not do (``policies``)."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def titled(title: str) -> Table:
    """A table whose title sits at its left, unpadded: rich pads a left-justified title with
    spaces to the table's width, which leaves trailing spaces in every copy and log."""
    return Table(title=title, title_justify="default")


# How a plan names the clock an age runs on (``PlanItem.age_from``).
CLOCK_WORDS = {
    "created": "since created",
    "updated": "since updated",
    "last_activity": "since last activity",
    "ttl": "since its TTL was set",
}


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
                "age_from": item.age_from,
                "overdue_seconds": max(0, int((now - item.due_at).total_seconds())),
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
    """The due conversations, most overdue first: each one's age on the clock its rule
    measures (created, updated, last activity, its TTL), and a note on what decides it and
    what may still hold it back."""
    console = _console(out)
    if not items:
        console.print("Nothing is due.")
        return
    table = titled(f"{plural(len(items), 'conversation')} due at {stamp(now)}")
    # The account column once there is more than the one account of a config without them.
    several = any(item.account != DEFAULT_ACCOUNT for item in items)
    headers = ("account",) * several + ("agent", "session_id", "name", "age", "rule")
    for header in (*headers, "due since", "note"):
        table.add_column(header, no_wrap=header in ("session_id", "due since"))
    ordered = sorted(items, key=lambda i: (i.due_at, i.account, i.agent_id, i.session_id))
    for item in ordered:
        clock = CLOCK_WORDS.get(item.age_from, f"since {item.age_from}")
        table.add_row(
            *(item.account,) * several,
            str(item.agent_id),
            item.session_id,
            item.name,
            f"{format_duration(item.age)} {clock}",
            item.rule or "-",
            format_duration(now - item.due_at),
            "; ".join(plan_notes(item)),
        )
    console.print(table)


def plan_notes(item: PlanItem) -> list[str]:
    """Why a planned conversation is due, and what may hold it back or change the plan."""
    notes = []
    if item.basis:
        # The rule is a column of its own: say what it measures.
        notes.append(item.basis.removeprefix(f"policy {item.rule!r}: "))
    if item.held_by_breaker:
        notes.append("needs approval (breaker): `retention approve`")
    if item.grace_until is not None:
        notes.append(f"in grace until {stamp(item.grace_until)}")
    if item.unconfirmed:
        notes.append("unconfirmed: facts will be re-read before deleting")
    if item.retry_at is not None:
        notes.append(f"a DELETE failed; next attempt {stamp(item.retry_at)}")
    if item.state.value == "deleting":
        notes.append("left mid-delete: retried next")
    if item.dry_run:
        notes.append("dry-run: audited, not deleted")
    return notes


def status_table(
    rows: Sequence[AgentStatus],
    agents: Mapping[int, AgentRecord | None],
    *,
    now: datetime,
    out: TextIO,
    account: str = DEFAULT_ACCOUNT,
) -> None:
    console = _console(out)
    table = titled(f"account {account}: store at {stamp(now)}")
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


STATUS_FIGURES = ("tracked", "due", "overdue", "held", "in_grace", "deleted_24h")


def status_json(
    rows: Sequence[AgentStatus],
    agents: Mapping[int, AgentRecord | None],
    *,
    account: str,
    verdict: Verdict,
    sweeps: Sequence[SweepRecord],
    lease: Lease | None,
    now: datetime,
    would_delete: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """One account's part of ``status --json``: what :func:`status_table`, the breaker lines,
    :func:`sweeps_lines` and :func:`lease_line` print."""
    listed = []
    for row in rows:
        agent = agents.get(row.agent_id)
        figures = (row.tracked, row.due, row.overdue, row.held, row.grace, row.deleted_24h)
        platform = agent.platform_retention() if agent is not None else None
        listed.append(
            {
                "agent_id": row.agent_id,
                "name": (agent.name or None) if agent else None,
                **dict(zip(STATUS_FIGURES, figures, strict=True)),
                "platform_retention": platform,
            }
        )
    return {
        "account": account,
        "agents": listed,
        "totals": {key: sum(a[key] for a in listed) for key in STATUS_FIGURES},
        "breaker": {
            "tripped": verdict.tripped,
            "account": verdict.account,
            "agents": [
                {"agent_id": agent_id, "reason": reason}
                for agent_id, reason in sorted(verdict.agents.items())
            ],
            "reasons": verdict.reasons(),
        },
        "last_sweeps": [
            sweep_json(sweep, would_delete=(would_delete or {}).get(sweep.id, 0))
            for sweep in sweeps
        ],
        "lease": lease_json(lease, now=now),
    }


def statuses_json(
    accounts: Sequence[dict[str, Any]], *, overdue_after: timedelta, now: datetime
) -> dict[str, Any]:
    """``status --json``: every account's :func:`status_json`, in config order."""
    return {
        "generated_at": _utc(now),
        "overdue_after_seconds": _seconds(overdue_after),
        "overdue_after": format_duration(overdue_after),
        "accounts": list(accounts),
    }


def sweep_json(sweep: SweepRecord, *, would_delete: int = 0) -> dict[str, Any]:
    """A sweep as the store's sweep log keeps it (newest first in ``last_sweeps``), with what
    it would have deleted (its dry-run audit rows)."""
    seconds = (sweep.finished_at - sweep.started_at).total_seconds() if sweep.finished_at else None
    return {
        "id": sweep.id,
        "kind": sweep.kind,
        "dry_run": sweep.dry_run,
        "result": {True: "ok", False: "failed", None: "running"}[sweep.ok],
        "started_at": _utc(sweep.started_at),
        "finished_at": _utc(sweep.finished_at),
        "duration_seconds": round(seconds, 3) if seconds is not None else None,
        "listed": sweep.listed,
        "new": sweep.new,
        "due": sweep.due,
        "deleted": sweep.deleted,
        "already_gone": sweep.already_gone,
        "failed": sweep.failed,
        "would_delete": would_delete,
        "api_calls": sweep.api_calls,
        "api_calls_by_kind": dict(sorted(sweep.calls_by_kind.items())),
        "error": error_text(sweep.error),
    }


# What a sweep's stored error says when the exception had no message of its own.
_BARE_ERRORS = {
    "CancelledError": "cancelled (stopped or interrupted)",
    "KeyboardInterrupt": "interrupted",
    "TimeoutError": "timed out",
    "LeaseLost": "this process lost the account's lease",
}
_CLASS_PREFIX = re.compile(
    r"^(?:[A-Za-z_][\w]*\.)*[A-Z][A-Za-z0-9]*(?:Error|Exception|Lost|Limited): "
)


def error_text(stored: str | None) -> str | None:
    """A sweep's error as people read it: the message, without the Python class name the sweep
    log stores in front of it (``TransientApiError: list_agents: GET /projects: ...``)."""
    if stored is None:
        return None
    if stored in _BARE_ERRORS:
        return _BARE_ERRORS[stored]
    return _CLASS_PREFIX.sub("", stored, count=1)


_LEASE_KEYS = ("holder", "token", "acquired_at", "expires_at")


def lease_json(lease: Lease | None, *, now: datetime) -> dict[str, Any]:
    """The account's lease: ``state`` is never_taken, free (lapsed: ``holder`` held it last)
    or held (by ``holder`` until ``expires_at``)."""
    if lease is None:
        return {"state": "never_taken", **dict.fromkeys(_LEASE_KEYS)}
    return {
        "state": "held" if lease.expires_at > now else "free",
        "holder": lease.holder,
        "token": lease.token,
        "acquired_at": _utc(lease.acquired_at),
        "expires_at": _utc(lease.expires_at),
    }


def report_json(
    report: SweepReport | None,
    *,
    account: str,
    remaining: int | None,
    exit_code: int,
    error: str | None = None,
) -> dict[str, Any]:
    """One account's sweep in ``once --json``: the summary line's figures as numbers. A sweep
    that raised before it began has no report: its figures are null."""
    body: dict[str, Any] = {"account": account, "ok": error is None, "exit_code": exit_code}
    if report is None:
        return {**body, "error": error, **dict.fromkeys(_REPORT_KEYS)}
    seconds = (report.finished_at - report.started_at).total_seconds() if report.finished_at else 0
    outcomes = [
        {"outcome": outcome, "rule": rule or None, "count": count}
        for (outcome, rule), count in sorted(report.outcomes.items())
    ]
    return {
        **body,
        "error": error or report.error,
        "kind": report.kind,
        "dry_run": report.dry_run,
        "started_at": _utc(report.started_at),
        "finished_at": _utc(report.finished_at),
        "duration_seconds": round(seconds, 3),
        **{counter: getattr(report, counter) for counter in SWEEP_COUNTERS},
        "api_calls": sum(report.api_calls.values()),
        "api_calls_by_kind": dict(sorted(report.api_calls.items())),
        "outcomes": outcomes,
        "breaker": list(report.breaker),
        "breaker_scopes": list(report.breaker_scopes),
        "held_back": report.held_back,
        "remaining": remaining,
    }


_REPORT_KEYS = (
    "kind",
    "dry_run",
    "started_at",
    "finished_at",
    "duration_seconds",
    *SWEEP_COUNTERS,
    "api_calls",
    "api_calls_by_kind",
    "outcomes",
    "breaker",
    "breaker_scopes",
    "held_back",
    "remaining",
)


def once_json(
    accounts: Sequence[dict[str, Any]], *, dry_run: bool, exit_code: int, now: datetime
) -> dict[str, Any]:
    """``once --json``: every account's :func:`report_json` and their counters summed."""
    totals = {
        key: sum(a[key] or 0 for a in accounts)
        for key in (*SWEEP_COUNTERS, "api_calls", "remaining")
    }
    return {
        "generated_at": _utc(now),
        "ok": all(a["ok"] and not a["failed"] for a in accounts),
        "exit_code": exit_code,
        "dry_run": dry_run,
        "totals": totals,
        "accounts": list(accounts),
    }


def check_json(settings: Settings, *, warnings: Sequence[str]) -> dict[str, Any]:
    """``check --json`` of a valid config: what the text summary says, never a token."""
    rules = settings.rules()
    s = settings.schedule
    return {
        "ok": True,
        "source": settings.source,
        "error": None,
        "accounts": [
            {
                "name": a.name,
                "base_url": a.base_url,
                "requests_per_minute": a.requests_per_minute,
                "burst": a.burst,
                "token_set": a.token is not None,
                "token_source": a.token_source,
            }
            for a in settings.account_list()
        ],
        "store": {"url": shown_store_url(settings.store.url)},
        "schedule": {
            "discover": _cadence(s.discover_every, s.discover_cron),
            "delete": _cadence(s.delete_every, s.delete_cron),
            "reconcile": _cadence(s.reconcile_every, None),
        },
        "dry_run": settings.safety.dry_run,
        "policies": {
            "count": len(rules.policies),
            "items": [_policy_json(i, p) for i, p in enumerate(rules.policies)],
        },
        "holds": {
            "count": len(rules.holds),
            "items": [_hold_json(i, h) for i, h in enumerate(rules.holds)],
        },
        "warnings": list(warnings),
    }


def check_error_json(exc: ConfigError) -> dict[str, Any]:
    """``check --json`` of a config that does not load: what the one stderr line says."""
    return {
        "ok": False,
        "source": exc.source,
        "error": {"file": exc.source, "key": exc.key, "message": exc.problem, "text": str(exc)},
    }


def shown_store_url(url: str) -> str:
    """The store URL with any password masked."""
    try:
        return parse_url(url).render_as_string(hide_password=True)
    except StoreError:
        return url


def _cadence(every: timedelta, cron: str | None) -> dict[str, Any]:
    return {
        "every_seconds": _seconds(every),
        "every": format_duration(every),
        "cron": cron,
    }


def _rule_json(index: int, rule: Policy | Hold) -> dict[str, Any]:
    return {
        "index": index,
        "name": rule.name,
        "agents": "*" if rule.agents is None else sorted(rule.agents),
        "accounts": None if rule.accounts is None else sorted(rule.accounts),
        "name_matches": list(rule.name_matches),
        "name_regex": rule.name_regex,
    }


def _policy_json(index: int, policy: Policy) -> dict[str, Any]:
    return {
        **_rule_json(index, policy),
        "max_age_seconds": _seconds(policy.max_age),
        "max_age": format_duration(policy.max_age),
        "age_from": policy.age_from.value,
        "user_type": policy.user_type.value if policy.user_type is not None else None,
        "origins": None if policy.origins is None else sorted(o.value for o in policy.origins),
        "dry_run": policy.dry_run,
        "description": describe_policy(policy),
    }


def _hold_json(index: int, hold: Hold) -> dict[str, Any]:
    return {
        **_rule_json(index, hold),
        "session_ids": len(hold.session_ids),
        "description": describe_hold(hold),
    }


def _seconds(delta: timedelta) -> int | float:
    """A duration in seconds: whole ones as an integer (``900``, not ``900.0``)."""
    seconds = delta.total_seconds()
    return int(seconds) if seconds.is_integer() else seconds


def _utc(moment: datetime | None) -> str | None:
    return utc_text(moment) if moment is not None else None


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


def sweeps_lines(
    sweeps: Sequence[SweepRecord], *, out: TextIO, would_delete: Mapping[int, int] | None = None
) -> None:
    """The last sweeps, newest first, one line each. A dry-run sweep says so, and what it
    would have deleted (``would_delete``: by sweep id) instead of the deletions it never made."""
    if not sweeps:
        print("no sweep yet", file=out)
        return
    print("last sweeps:", file=out)
    for sweep in sweeps:
        result = {True: "ok", False: "FAILED", None: "running"}[sweep.ok]
        would = (would_delete or {}).get(sweep.id, 0)
        if sweep.dry_run:
            done = f"dry-run would_delete={would}"
        else:
            done = f"deleted={sweep.deleted}" + (f" would_delete={would}" if would else "")
        line = (
            f"  {stamp(sweep.started_at)} {sweep.kind:<8} {result:<7} "
            f"{done} failed={sweep.failed} api_calls={sweep.api_calls}"
        )
        if sweep.error:
            line += f" error: {error_text(sweep.error)}"
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
        bits.append(plural(len(hold.session_ids), "session id"))
    if names := _names_text(hold.name_matches, hold.name_regex):
        bits.append(names)
    return ", ".join(bits)
