"""The commands behind the CLI: one function per command, each returning its exit code.

They build nothing themselves: :mod:`retention.runtime` opens what they run on. The emulator
and the demo are imported only by the commands that use them, so ``retention check`` stays
light. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration (raised as
:class:`retention.errors.ConfigError` for the CLI to report), 3 due conversations remain, 130
interrupted (Ctrl-C; the CLI returns it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import shtab
from rich.console import Console

from retention import planfile, render, tracking
from retention.breaker import judge
from retention.config import TOKEN_ENV, Settings
from retention.errors import ConfigError, RetentionError
from retention.lease import lease_scope
from retention.logs import Event, JsonFormatter
from retention.metrics import overdue_after
from retention.models import SweepReport, TrackedConversation
from retention.runtime import (
    Runtime,
    breaker_limits,
    is_sqlite,
    open_fleet,
    open_runtime,
    open_store,
    preflight,
    run_daemon,
    secrets_of,
)
from retention.sweep import Progress

logger = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REMAINING = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command Ctrl-C stopped


def completion(parser: argparse.ArgumentParser, shell: str) -> int:
    """Print the completion script of ``parser``'s command line for ``shell`` on stdout."""
    _short_descriptions(parser)
    sys.stdout.write(shtab.complete(parser, shell=shell))
    return EXIT_OK


def _short_descriptions(parser: argparse.ArgumentParser) -> None:
    """Describe each command by its one-line help: shtab shows a command's description in
    zsh's menu, and ours are paragraphs (they are for ``--help``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._get_subactions():
                sub = action.choices[choice.dest]
                sub.description = choice.help
                _short_descriptions(sub)


def check(
    load: Callable[[], Settings],
    *,
    as_json: bool = False,
    tests: Callable[[Settings], dict[str, Any] | None] = lambda _settings: None,
) -> int:
    """Validate and summarise a config: loading it (``load``) raises on any problem, and the
    start-up checks are the ones ``run`` makes. ``tests`` runs the policy tests beside it
    (``retention test``), when there are any: exit 1 when a case does not hold.

    With ``as_json`` a problem is a JSON document too (``ok: false`` and the error's file, key
    and message) on stdout, besides the usual line on stderr; exit 2 either way.
    """
    if not as_json:
        settings = load()
        preflight(settings)
        ran = tests(settings)
        _check_text(settings)
        warnings = _check_warnings(settings)
        if ran is not None:
            for failure in ran["failures"]:
                print(f"  FAIL {failure}")
            verdict = f"{len(ran['failures'])} failed" if ran["failures"] else "ok"
            print(f"  tests      {render.plural(ran['cases'], 'case')} ({ran['file']}): {verdict}")
    else:
        try:
            settings = load()
            preflight(settings)
            ran = tests(settings)
        except ConfigError as exc:
            print(json.dumps(render.check_error_json(exc), indent=2))
            print(f"retention: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        warnings = _check_warnings(settings)
        body = render.check_json(settings, warnings=warnings)
        body["tests"] = ran
        _print_json(body, settings)
    for warning in warnings:
        print(f"retention: warning: {warning}", file=sys.stderr)
    return EXIT_FAILURE if ran is not None and ran["failures"] else EXIT_OK


SHORT_TOKEN = 8  # characters: a token shorter than this is likely masked in ordinary text too


def _check_warnings(settings: Settings) -> list[str]:
    warnings = list(settings.warnings)
    for account in settings.account_list():
        token = account.token.get_secret_value() if account.token else ""
        if 0 < len(token) < SHORT_TOKEN:
            warnings.append(
                f"the API token of account {account.name} is "
                f"{render.plural(len(token), 'character')} long: every log line and output "
                "masks it, and would mask ordinary text containing it"
            )
    if not settings.accounts and settings.token is None:
        warnings.append(
            f"no API token; set env {TOKEN_ENV} or [api] token_file before plan, once or run"
        )
    return warnings


def _print_json(body: object, settings: Settings) -> None:
    """A JSON document, alone on stdout; every token masked should one ever get into it."""
    scrub = secrets_of(settings).scrub
    print(json.dumps(_scrubbed(body, scrub), indent=2))


def _scrubbed(value: Any, scrub: Callable[[str], str]) -> Any:
    """``value`` with every text in it masked: the document stays valid JSON whatever the
    tokens are (masking the serialised text would cut into keys and literals)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: _scrubbed(item, scrub) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(item, scrub) for item in value]
    return value


def _check_text(settings: Settings) -> None:
    rules = settings.rules()
    print(f"{settings.source}: ok")
    for account in settings.account_list():
        label = "api" if not settings.accounts else f"account {account.name}"
        print(
            f"  {label:<10} {account.base_url} at {account.requests_per_minute} requests/minute, "
            f"token {'set' if account.token else 'not set'}"
        )
    print(f"  store      {render.shown_store_url(settings.store.url)}")
    print(f"  schedule   {render.schedule_line(settings)}")
    print(f"  dry_run    {str(settings.safety.dry_run).lower()}")
    print(f"  policies   {len(rules.policies)} (first match decides)")
    for index, policy in enumerate(rules.policies):
        print(f"    [{index}] {render.describe_policy(policy)}")
    print(f"  holds      {len(rules.holds)} (a held conversation is never deleted)")
    for index, hold in enumerate(rules.holds):
        print(f"    [{index}] {render.describe_hold(hold)}")
    if not rules.policies:
        print("  note: no policies, so nothing will ever be deleted")


class _NoSweepSummary(logging.Filter):
    """Drop the engine's summary of a sweep that ended well: the command prints that line on
    stdout itself. A failed sweep's (an error) stays: nothing else says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.__dict__.get("event") == Event.SWEEP.value and record.levelno < logging.ERROR
        )


@contextmanager
def summary_on_stdout(*, printed: bool) -> Iterator[None]:
    """While a command runs that prints each sweep's summary line on stdout (``printed``),
    the same line is not logged on stderr too, where a person reads the text log beside it.
    JSON log lines keep it: there it is the ``sweep`` event scripts read."""
    handlers = logging.getLogger().handlers
    text_log = not any(isinstance(h.formatter, JsonFormatter) for h in handlers)
    if not (printed and text_log):
        yield
        return
    engine_log, quiet = logging.getLogger("retention.engine"), _NoSweepSummary()
    engine_log.addFilter(quiet)
    try:
        yield
    finally:
        engine_log.removeFilter(quiet)


@contextmanager
def terminal_progress() -> Iterator[Progress | None]:
    """A live line on stderr while pages are listed and deletions made; nothing off a TTY."""
    if not sys.stderr.isatty():
        yield None
        return
    console = Console(stderr=True)
    counts = {"pages": 0, "deletions": 0}
    with console.status("starting") as status:

        def update(event: str, count: int) -> None:
            counts[event] = count
            status.update(f"pages listed: {counts['pages']}, deletions: {counts['deletions']}")

        yield update


async def plan(
    settings: Settings, *, as_json: bool, out: Path | None = None, account: str | None = None
) -> int:
    """What is due in every account (or ``account``), each planned on its own budget, at once.
    A plan file is one account's: ``--out`` takes the only account, or the one named."""
    if out is not None:
        account = settings.account(account).name
    names = _accounts(settings, account)
    with terminal_progress() as progress:
        # plan never reaches the deletion code; dry_run here would only mislabel the items.
        # plan discovers into an existing store, and never creates or migrates one.
        async with open_fleet(settings, accounts=names, progress=progress, create=False) as fleet:
            planned = await asyncio.gather(*(r.engine.plan() for r in fleet))
            if out is not None:
                runtime = fleet.one(account)
                text = planfile.dumps(
                    planned[0][0],
                    now=datetime.now(UTC),
                    account=runtime.account,
                    store_id=await runtime.store.identity(),
                    fingerprint=runtime.engine.fingerprint(),
                )
                await asyncio.to_thread(_write_new, out, text)
    now = datetime.now(UTC)
    body = render.plans_json(planned, now=now)
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        render.plan_table([i for found, _ in planned for i in found], now=now, out=sys.stdout)
        for reason in body["breaker"]:
            print(f"mass-deletion breaker: {reason}", file=sys.stderr)
        if body["held_back"]:
            print(f"deleting nothing now: {body['held_back']}", file=sys.stderr)
        calls = sum(body["api_calls"].values())
        print(f"{body['count']} due; this plan cost {calls} API calls", file=sys.stderr)
    if out is not None:
        print(
            f"plan written to {out}: `retention apply {out}` deletes exactly these", file=sys.stderr
        )
    return 0


async def apply(settings: Settings, *, path: Path, max_age: timedelta) -> int:
    """Delete exactly the conversations a plan lists that are still due and unheld."""
    try:
        plan = planfile.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the plan: {exc.strerror}", source=str(path)) from None
    except ValueError as exc:
        raise ConfigError(str(exc), source=str(path)) from None
    with terminal_progress() as progress, summary_on_stdout(printed=True):
        async with open_runtime(
            settings, account=_plan_account(settings, plan, path), progress=progress, writer=True
        ) as runtime:
            engine, now = runtime.engine, datetime.now(UTC)
            try:
                planfile.check(
                    plan,
                    now=now,
                    account=runtime.account,
                    store_id=await runtime.store.identity(),
                    fingerprint=engine.fingerprint(),
                    max_age=max_age,
                )
            except planfile.StalePlan as exc:
                raise ConfigError(str(exc), source=str(path)) from None
            # Applying a plan approves it for the breaker: exactly what it lists, where due.
            await runtime.store.approve_these(now, plan.due)
            report = await engine.sweep("apply", only=plan.due)
            left = await engine.remaining(among=plan.due)
    print(report.summary())
    skipped = len(plan.due) - report.deleted - report.already_gone - left
    print(
        f"applied {path}: {report.deleted} deleted, {report.already_gone} gone already, "
        f"{max(skipped, 0)} skipped (no longer due, held or gone), {left} still due",
        file=sys.stderr,
    )
    if not report.ok or report.failed:
        return EXIT_FAILURE
    return EXIT_REMAINING if left else EXIT_OK


def _plan_account(settings: Settings, plan: planfile.Plan, path: Path) -> str:
    """The account a plan was made in, as configured now: a ConfigError naming the plan file
    when the config has no such account."""
    names = [a.name for a in settings.account_list()]
    if plan.account not in names:
        raise ConfigError(
            f"the plan was made in account {plan.account!r}, which this config does not have "
            f"(accounts: {', '.join(names)})",
            source=str(path),
        )
    return plan.account


def _accounts(settings: Settings, account: str | None) -> list[str]:
    """Every configured account's name, or the one named (a ConfigError when unknown)."""
    if account is not None:
        return [settings.account(account).name]
    return [a.name for a in settings.account_list()]


def _write_new(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the plan: {exc.strerror}", key="--out") from None


async def once(
    settings: Settings,
    *,
    dry_run: bool,
    cap: int | None = None,
    account: str | None = None,
    as_json: bool = False,
) -> int:
    """One sweep in every account (or ``account``), at once, each deleting its whole due set
    batch after batch on its own budget, unless something stops it (``--max``: per account).

    Exit 1 when a sweep failed (in any account: the others run to their end), else 3
    (``EXIT_REMAINING``) when due conversations remain that ``--max`` did not leave on purpose:
    the breaker tripped, the clock guard held back, or a failure cut the sweep short.

    ``as_json`` prints one JSON document on stdout instead of the summary lines; the exit code
    and stderr are the same. A sweep that raised is in it too (``ok: false``, its ``error``).
    """
    names = _accounts(settings, account)
    reports: dict[str, SweepReport] = {}  # every sweep's report, a failed one's too
    with terminal_progress() as progress, summary_on_stdout(printed=not as_json):
        async with open_fleet(
            settings, accounts=names, dry_run=dry_run, progress=progress, writer=True
        ) as fleet:
            outcomes: list[tuple[SweepReport, int] | BaseException]
            if len(names) == 1:  # a failure is the command's: the CLI reports it
                try:
                    outcomes = [await _once_in(fleet.one(names[0]), cap, reports)]
                except RetentionError as exc:
                    if as_json:
                        _print_once_json(settings, names, [exc], reports, cap=cap, dry_run=dry_run)
                    raise
            else:
                outcomes = await asyncio.gather(
                    *(_once_in(r, cap, reports) for r in fleet), return_exceptions=True
                )
    if as_json:
        return _print_once_json(settings, names, outcomes, reports, cap=cap, dry_run=dry_run)
    codes = []
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            print(f"retention: account {name} failed: {outcome}", file=sys.stderr)
            codes.append(EXIT_FAILURE)
        else:
            print(outcome[0].summary())
            codes.append(_once_result(*outcome, cap=cap))
    return EXIT_FAILURE if EXIT_FAILURE in codes else max(codes)


def _print_once_json(
    settings: Settings,
    names: list[str],
    outcomes: Sequence[tuple[SweepReport, int] | BaseException],
    reports: dict[str, SweepReport],
    *,
    cap: int | None,
    dry_run: bool,
) -> int:
    """``once --json``: one document for every account; the exit code as without it."""
    accounts = []
    for name, outcome in zip(names, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            if len(names) > 1:
                print(f"retention: account {name} failed: {outcome}", file=sys.stderr)
            report, left, error = reports.get(name), None, str(outcome)
            # Alone, the error is the command's (the CLI's exit code); among several, a failure.
            alone = len(names) == 1 and isinstance(outcome, ConfigError)
            code = EXIT_USAGE if alone else EXIT_FAILURE
        else:
            (report, left), error = outcome, None
            code = _once_result(report, left, cap=cap)
        accounts.append(
            render.report_json(report, account=name, remaining=left, exit_code=code, error=error)
        )
    codes = [a["exit_code"] for a in accounts]
    code = EXIT_FAILURE if EXIT_FAILURE in codes else max(codes)
    body = render.once_json(
        accounts,
        dry_run=dry_run or settings.safety.dry_run,
        exit_code=code,
        now=datetime.now(UTC),
    )
    _print_json(body, settings)
    return code


async def _once_in(
    runtime: Runtime, cap: int | None, reports: dict[str, SweepReport]
) -> tuple[SweepReport, int]:
    engine = runtime.engine
    engine.listeners.append(lambda report: reports.__setitem__(report.account, report))
    report = await engine.sweep("once", until_done=True, cap=cap)
    return report, await engine.remaining()


def _once_result(report: SweepReport, left: int, *, cap: int | None) -> int:
    """The account's exit code; the line on stderr that says why due conversations remain."""
    if not report.ok or report.failed:
        return EXIT_FAILURE
    if left and not (cap is not None and report.due >= cap):
        why = "; ".join([*report.breaker, *([report.held_back] if report.held_back else [])])
        print(
            f"retention: {render.plural(left, 'due conversation')} "
            f"remain{'s' if left == 1 else ''} in account {report.account}"
            + (f": {why}" if why else ""),
            file=sys.stderr,
        )
        return EXIT_REMAINING
    return EXIT_OK


async def approve(settings: Settings, *, agent_id: int | None, account: str | None = None) -> int:
    name = settings.account(account).name
    async with open_store(settings, create=False) as store:
        approved = await store.for_account(name).approve(datetime.now(UTC), agent_id=agent_id)
    scope = f"agent {agent_id} of account {name}" if agent_id is not None else f"account {name}"
    print(
        f"approved {render.plural(approved, 'due conversation')} in {scope} "
        "for deletion past the breaker"
    )
    return EXIT_OK


async def run(settings: Settings, *, standby: bool = False) -> int:
    preflight(settings)  # exactly what `retention check` refuses, before anything is opened
    logger.info("effective configuration: %s", json.dumps(settings.describe(), sort_keys=True))
    # On a shared database (PostgreSQL) every `run` is a replica: the live ones split the
    # accounts through their leases. A SQLite file has one writer: a second refuses or stands by.
    shared = not is_sqlite(settings.store.url)
    async with open_fleet(settings, writer=not shared, standby=standby, replica=shared) as fleet:
        return await run_daemon(fleet)


async def create(
    settings: Settings,
    *,
    agent_id: int,
    name: str,
    ttl: timedelta | None,
    output: str,
    account: str | None = None,
) -> int:
    # A writer like run: with a daemon running, create through its admin API instead.
    async with open_runtime(settings, account=account, writer=True) as runtime:
        record = await tracking.create(runtime.sweep, agent_id=agent_id, name=name, ttl=ttl)
    _print_record(record, output, verb="created")
    return 0


async def track(
    settings: Settings,
    *,
    agent_id: int,
    session_id: str,
    ttl: timedelta | None,
    output: str,
    account: str | None = None,
) -> int:
    async with open_runtime(settings, account=account, writer=True) as runtime:
        record = await tracking.track(
            runtime.sweep, agent_id=agent_id, session_id=session_id, ttl=ttl
        )
    _print_record(record, output, verb="tracking")
    return 0


def _print_record(record: TrackedConversation, output: str, *, verb: str) -> None:
    if output == "quiet":
        print(record.session_id)
    elif output == "json":
        print(json.dumps(render.record_json(record, now=datetime.now(UTC)), indent=2))
    else:
        due = render.stamp(record.due_at) if record.due_at else "never"
        print(
            f"{verb} {record.session_id} in agent {record.agent_id} ({record.name!r}): "
            f"due {due} by {record.rule or 'no rule'}"
        )


async def status(settings: Settings, *, account: str | None = None, as_json: bool = False) -> int:
    """The store's figures, breaker and last sweeps, account by account (or ``account``)."""
    accounts = []
    async with open_store(settings, create=False) as root:
        now = datetime.now(UTC)
        overdue = overdue_after(settings.schedule.delete_every)
        for name in _accounts(settings, account):
            store = root.for_account(name)
            journal = store.journal
            rows = await journal.status(now, overdue_after=overdue)
            agents = await store.all_agents()
            verdict = judge(await store.due_figures(now), breaker_limits(settings))
            sweeps = await journal.last_sweeps(5)
            would_delete = await journal.would_delete(sweeps, now)
            lease = await root.lease(lease_scope(name))
            if as_json:
                accounts.append(
                    render.status_json(
                        rows,
                        agents,
                        account=name,
                        verdict=verdict,
                        sweeps=sweeps,
                        lease=lease,
                        now=now,
                        would_delete=would_delete,
                    )
                )
                continue
            render.status_table(rows, agents, now=now, out=sys.stdout, account=name)
            for reason in verdict.reasons():
                print(f"mass-deletion breaker in account {name}: {reason}", file=sys.stdout)
            render.sweeps_lines(sweeps, out=sys.stdout, would_delete=would_delete)
            render.lease_line(lease, now=now, out=sys.stdout)
    if as_json:
        _print_json(render.statuses_json(accounts, overdue_after=overdue, now=now), settings)
    return 0
