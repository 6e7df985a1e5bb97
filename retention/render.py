"""What commands print: rich tables on a terminal, plain columns elsewhere, and JSON."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from retention.engine import PlanItem
from retention.models import SweepReport
from retention.store import AgentStatus
from retention.timefmt import format_duration


def stamp(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def plan_json(items: Sequence[PlanItem], report: SweepReport, *, now: datetime) -> dict[str, Any]:
    return {
        "generated_at": now.isoformat(),
        "dry_run": report.dry_run,
        "due": [
            {
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
            }
            for item in items
        ],
        "count": len(items),
        "api_calls": report.api_calls,
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
    for header in ("agent", "session_id", "name", "age", "rule", "due since", "note"):
        table.add_column(header, no_wrap=header in ("session_id", "due since", "age"))
    for item in items:
        note = "dry-run" if item.dry_run else ("retry" if item.state.value == "deleting" else "")
        table.add_row(
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
    platform: dict[int, str],
    *,
    now: datetime,
    out: TextIO,
) -> None:
    console = _console(out)
    table = Table(title=f"store at {stamp(now)}", title_justify="left")
    for header in ("agent", "tracked", "due", "overdue", "held", "deleted 24h", "platform"):
        table.add_column(header, justify="right" if header != "platform" else "left")
    totals = [0, 0, 0, 0, 0]
    for row in rows:
        figures = [row.tracked, row.due, row.overdue, row.held, row.deleted_24h]
        totals = [a + b for a, b in zip(totals, figures, strict=True)]
        table.add_row(str(row.agent_id), *map(str, figures), platform.get(row.agent_id, "-"))
    table.add_row("all", *map(str, totals), "", end_section=True)
    console.print(table)
