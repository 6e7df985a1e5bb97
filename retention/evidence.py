"""The evidence commands: ``audit verify``, ``audit head``, ``audit export`` and ``report``.

None makes an API call or needs a token: they read the store. Exit codes: 0 ok, 1 a chain
that does not hold (``audit verify``), 2 bad usage or configuration.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from retention import auditlog, chain
from retention.auditlog import AuditFilter
from retention.chain import Head
from retention.config import Settings
from retention.errors import ConfigError
from retention.ledger import COUNTS
from retention.report import Source, build, default_overdue_after
from retention.runtime import breaker_limits, open_store
from retention.store import Store
from retention.timefmt import format_duration

EXIT_OK, EXIT_BROKEN = 0, 1
CSV_COLUMNS = (*chain.FIELDS, "hash")


async def audit_verify(
    settings: Settings, *, account: str | None, pin: str | None, as_json: bool
) -> int:
    """Walk each account's chain (or ``account``'s); 1 when one does not hold."""
    async with open_store(settings, create=False) as root:
        names = await _audit_accounts(settings, root, account)
        if pin is not None and len(names) != 1:
            raise ConfigError("--pin checks one account's chain: add --account", key="--pin")
        pinned = None if pin is None else _pin(names[0], pin)
        verdicts = [await root.for_account(n).journal.audit.verify(pinned) for n in names]
    if as_json:
        print(
            json.dumps(
                {
                    "ok": all(v.ok for v in verdicts),
                    "accounts": [
                        {
                            "account": v.account,
                            "ok": v.ok,
                            "rows_checked": v.checked,
                            "head": {"seq": v.head.seq, "hash": v.head.hash},
                            "problem": v.problem,
                            "seq": v.seq,
                        }
                        for v in verdicts
                    ],
                },
                indent=2,
            )
        )
    else:
        for v in verdicts:
            if v.ok:
                print(f"account {v.account}: ok, {v.checked} rows, head {v.head.pin()}")
            else:
                print(f"account {v.account}: BROKEN: {v.problem}")
    return EXIT_OK if all(v.ok for v in verdicts) else EXIT_BROKEN


async def audit_head(settings: Settings, *, account: str | None, as_json: bool) -> int:
    async with open_store(settings, create=False) as root:
        names = await _audit_accounts(settings, root, account)
        heads = [await root.for_account(n).journal.audit.head() for n in names]
    if as_json:
        shown = [{"account": h.account, "seq": h.seq, "hash": h.hash} for h in heads]
        print(json.dumps({"accounts": shown}, indent=2))
    else:
        for h in heads:
            print(f"{h.account} {h.pin()}")
    return EXIT_OK


async def audit_export(
    settings: Settings,
    *,
    account: str | None,
    fmt: str,
    since: datetime | None,
    until: datetime | None,
    agent_id: int | None,
    rule: str | None,
    outcome: str | None,
    out: Path | None,
) -> int:
    """Stream the rows the filters select, account by account, oldest first."""
    where = AuditFilter(since=since, until=until, agent_id=agent_id, rule=rule, outcome=outcome)
    async with open_store(settings, create=False) as root:
        names = await _audit_accounts(settings, root, account)
        with _output(out) as stream:
            write = _jsonl_writer(stream) if fmt == "jsonl" else _csv_writer(stream)
            for name in names:
                async for row in root.for_account(name).journal.audit.rows(where):
                    write(row)
    return EXIT_OK


def _jsonl_writer(stream: IO[str]) -> Callable[[dict[str, Any]], None]:
    def write(row: dict[str, Any]) -> None:
        stream.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")

    return write


def _csv_writer(stream: IO[str]) -> Callable[[dict[str, Any]], None]:
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    return writer.writerow


@contextmanager
def _output(out: Path | None) -> Iterator[IO[str]]:
    """stdout, or a new file (never one that exists: an export is evidence, not a scratch)."""
    if out is None:
        try:
            yield sys.stdout
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if os.path.lexists(out):  # a dangling link too
        raise ConfigError(f"{out} exists; an export never overwrites a file", key="--out")
    try:  # 0600 (conversation names), under a temporary name until complete
        fd, partial = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}", key="--out") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            yield stream
        os.link(partial, out)  # never over a file that appeared meanwhile
    except FileExistsError:
        raise ConfigError(f"{out} exists; an export never overwrites a file", key="--out") from None
    finally:
        os.unlink(partial)


async def _audit_accounts(settings: Settings, root: Store, account: str | None) -> list[str]:
    """The accounts to read: every configured one and any other the store has a chain for
    (a retired account's audit stays evidence), or the one named."""
    stored = {h.account for h in await auditlog.heads(root.db)}
    configured = [a.name for a in settings.account_list()]
    if account is None:
        return sorted(set(configured) | stored)
    if account not in stored and account not in configured:
        raise ConfigError(
            f"no account {account!r} in the config or in the store's audit", key="--account"
        )
    return [account]


def _pin(account: str, text: str) -> Head:
    try:
        return chain.parse_pin(account, text)
    except ValueError as exc:
        raise ConfigError(str(exc), key="--pin") from None


async def report(
    settings: Settings,
    *,
    account: str | None,
    since: timedelta,
    overdue_after: timedelta | None,
    as_json: bool,
    html: Path | None,
) -> int:
    """The period's evidence: a table, the JSON document, or a self-contained HTML page."""
    overdue = overdue_after or default_overdue_after(settings.schedule.delete_every)
    async with open_store(settings, create=False) as root:
        names = await _audit_accounts(settings, root, account)
        rules, limits = settings.rules(), breaker_limits(settings)
        sources = [Source(root.for_account(n), rules.for_account(n), limits) for n in names]
        doc = await build(sources, now=datetime.now(UTC), period=since, overdue_after=overdue)
    if as_json:
        print(json.dumps(doc, indent=2))
    elif html is not None:
        from retention.reportpage import page  # only this command renders HTML

        _write_page(html, page(doc))
        if str(html) != "-":
            print(f"wrote {html}")
    else:
        report_table(doc, Console(highlight=False, width=None if sys.stdout.isatty() else 120))
    broken = [a["account"] for a in doc["accounts"] if not a["audit"]["ok"]]
    return EXIT_BROKEN if broken else EXIT_OK


SHORT = {"already_gone": "gone", "in_grace": "grace"}  # column headers that fit 80 columns


def report_table(doc: dict[str, Any], console: Console) -> None:
    """The report for a terminal: per account, the figures and the delays per agent and rule,
    then breaker, platform conflicts and the audit chain."""
    console.print(
        f"Report {doc['since']} to {doc['until']} ({doc['period']}); overdue: due longer than "
        f"{doc['overdue_after']}"
    )
    for acc in doc["accounts"]:
        # "default" sets a title at the left unpadded ("left" pads it to the table's width).
        figures = Table(title=f"account {acc['account']}", title_justify="default")
        delays = Table(title="delay from due to deleted", title_justify="default")
        for table in (figures, delays):
            table.add_column("agent")
            table.add_column("rule")
        for key in COUNTS:
            header = SHORT.get(key, key)
            figures.add_column(header, justify="right", no_wrap=True, min_width=len(header))
        for key in ("count", "p50", "p95", "max"):
            delays.add_column(key, justify="right")
        for agent in acc["agents"]:
            for row in agent["rules"]:
                names = (str(agent["agent_id"]), row["rule"] or "(no rule)")
                figures.add_row(*names, *(str(row[k]) for k in COUNTS))
                if row["delay_seconds"]["count"]:
                    delays.add_row(*names, *_delays(row["delay_seconds"]))
        figures.add_row("all", "", *(str(acc["totals"][k]) for k in COUNTS), style="bold")
        console.print(figures)
        if acc["delay_seconds"]["count"]:
            delays.add_row("all", "", *_delays(acc["delay_seconds"]), style="bold")
            console.print(delays)
        for reason in acc["breaker"]:
            console.print(f"breaker: {reason}")
        for conflict in acc["conflicts"]:
            console.print(f"platform conflict: {conflict['message']}")
        chain = acc["audit"]
        verdict = "verified" if chain["ok"] else f"BROKEN: {chain['problem']}"
        console.print(
            f"audit chain: {chain['rows_checked']} rows {verdict}; head "
            f"{chain['head']['seq']}:{chain['head']['hash']}"
        )


def _delays(summary: dict[str, Any]) -> list[str]:
    values = (summary[k] for k in ("p50", "p95", "max"))
    return [str(summary["count"]), *(format_duration(timedelta(seconds=v)) for v in values)]


def _write_page(path: Path, text: str) -> None:
    """Write the page to ``path`` (``-``: stdout) whole or not at all: a 0600 temporary file
    of its own, put in place by a rename. Refuses anything at ``path`` that is not a regular
    file (a link, a device): the rename would replace it."""
    if str(path) == "-":
        sys.stdout.write(text)
        return
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ConfigError(f"{path} is not a regular file; write the page elsewhere", key="--html")
    try:
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", key="--html") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(partial, path)
    except OSError as exc:
        Path(partial).unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}", key="--html") from None
