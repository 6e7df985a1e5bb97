"""Command line: argv -> settings -> command. It parses and dispatches, nothing more.

The command bodies live in :mod:`retention.commands`; what they run on is built by
:mod:`retention.runtime`. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention import __version__, commands, evidence, housekeeping, logs
from retention.commands import EXIT_FAILURE, EXIT_USAGE
from retention.config import Settings, config_path, is_agent_id, load_config, to_duration
from retention.errors import ConfigError, RetentionError
from retention.models import AuditOutcome
from retention.timefmt import to_moment

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="retention",
        description="Enforce conversation-retention policies on CustomGPT.ai agents.",
    )
    parser.add_argument("--version", action="version", version=f"retention {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    init = commands.add_parser(
        "init",
        help="write a starter config that deletes nothing (dry_run on, policies commented out)",
        description="Write a starter config to PATH (default retention.toml; '-' for stdout): "
        "dry_run = true and every policy commented out, so it can delete nothing as it stands. "
        "Never overwrites a file (exit 2). Prints the next steps.",
    )
    init.add_argument("path", nargs="?", default="retention.toml", metavar="PATH")

    check = commands.add_parser(
        "check",
        help="validate the config and its policies (no token, no network needed)",
        description="Validate the config file and its policies, then summarise them. "
        "Exits 0 when valid, 2 with one line naming the file, the key and the problem.",
    )
    _config_option(check)
    check.add_argument(
        "--json", action="store_true", help="print JSON (only JSON) on stdout, errors too"
    )

    plan = commands.add_parser(
        "plan",
        help="discover and show what is due, when and by which rule; deletes nothing",
        description="Discover conversations (updating the local store) and print the ones that "
        "are due now, with their rule and due time. Sends only GET requests.",
    )
    _config_option(plan)
    _account_option(plan, "plan")
    plan.add_argument("--json", action="store_true", help="print JSON (only JSON) on stdout")
    plan.add_argument(
        "--out", type=Path, metavar="FILE", help="also write the plan for `retention apply`"
    )

    apply = commands.add_parser(
        "apply",
        help="delete exactly what a plan file lists, where still due and unheld",
        description="Delete the conversations a plan (`retention plan --out FILE`) lists that "
        "are still due and unheld under the same rules; never any other. Refuses a plan made "
        "under other rules, on another store, or older than --max-age. Approves the plan for "
        "the mass-deletion breaker. Exit 3 when some it lists are still due afterwards.",
    )
    _config_option(apply)
    apply.add_argument("plan_file", type=Path, metavar="FILE", help="the plan file")
    apply.add_argument(
        "--max-age", default="24h", help="refuse a plan older than this (default 24h)"
    )

    once = commands.add_parser(
        "once",
        help="one full sweep (discover, evaluate, delete what is due), then exit",
        description="Run one sweep, batch after batch until nothing due is left, and exit: 0 "
        "when it succeeded, 1 when it or a deletion failed, 3 when due conversations remain "
        "(the mass-deletion breaker, the clock guard, a stop) and --max did not ask for that.",
    )
    _config_option(once)
    _account_option(once, "once")
    once.add_argument(
        "--dry-run", action="store_true", help="delete nothing; audit what would be deleted"
    )
    once.add_argument(
        "--max", type=_positive, metavar="N", help="take at most N due conversations, then stop"
    )
    once.add_argument("--json", action="store_true", help="print JSON (only JSON) on stdout")

    approve = commands.add_parser(
        "approve",
        help="approve deleting what is due now, past the mass-deletion breaker",
        description="Approve exactly the conversations due now (of one agent with --agent): the "
        "breaker then lets them be deleted, over as many sweeps as the budget needs. Makes no "
        "API call. Run `retention plan` first to see them.",
    )
    _config_option(approve)
    _account_option(approve, "approve")
    approve.add_argument("--agent", type=_agent_id, help="only this agent's (default: all)")

    run = commands.add_parser(
        "run",
        help="run the daemon",
        description="Run the daemon. It takes the store's lease first: a second daemon on the "
        "same store refuses to start (exit 2), naming the holder, unless --standby.",
    )
    _config_option(run)
    run.add_argument(
        "--standby",
        action="store_true",
        help="wait for the store's lease and take over when its holder's lapses",
    )

    create = commands.add_parser(
        "create",
        help="create a conversation through the API and track it with its own TTL",
        description="Create a conversation (one API call) and track it. Its TTL beats every "
        "policy; a hold still wins.",
    )
    _config_option(create)
    _account_option(create, "create")
    create.add_argument("--agent", type=_agent_id, required=True, help="agent (project) id")
    create.add_argument("--name", required=True, help="the conversation's name")
    _record_options(create)

    track = commands.add_parser(
        "track",
        help="register an existing conversation, with its own TTL",
        description="Register an existing conversation (one API call, which also proves it "
        "exists). Its TTL beats every policy; a hold still wins.",
    )
    _config_option(track)
    _account_option(track, "track")
    track.add_argument("--agent", type=_agent_id, required=True, help="agent (project) id")
    track.add_argument("--session", required=True, help="the conversation's session_id")
    _record_options(track)

    status = commands.add_parser(
        "status",
        help="store figures per agent: tracked, due, overdue, held, deleted in 24h",
        description="Print figures from the local store. Makes no API call.",
    )
    _config_option(status)
    _account_option(status, "status")
    status.add_argument("--json", action="store_true", help="print JSON (only JSON) on stdout")

    audit = commands.add_parser(
        "audit",
        help="the tamper-evident audit trail: verify its hash chain, pin its head, export it",
        description="Every deletion's audit row carries a sequence number, the previous row's "
        "hash and its own (SHA-256 over a canonical encoding; README: Evidence for auditors). "
        "Makes no API call.",
    )
    audit_commands = audit.add_subparsers(
        dest="audit_command", metavar="ACTION", parser_class=_Parser
    )
    audit_commands.required = True
    verify = audit_commands.add_parser(
        "verify",
        help="walk the hash chain; exit 1 naming the first row edited, deleted or inserted",
        description="Walk each account's audit chain in order and recompute every hash. Exits 0 "
        "when every chain holds, 1 naming each account's first row that does not (an edited, "
        "deleted or inserted row).",
    )
    _config_option(verify)
    _account_option(verify, "audit")
    verify.add_argument(
        "--pin",
        metavar="SEQ:HASH",
        help="also require row SEQ to have HASH (a head printed earlier by `audit head`)",
    )
    verify.add_argument("--json", action="store_true", help="print JSON (only JSON) on stdout")
    head = audit_commands.add_parser(
        "head",
        help="print each account's latest sequence number and hash, to pin elsewhere",
        description="Print each account's chain head: the latest sequence number and its hash. "
        "Keep it outside the store; `audit verify --pin SEQ:HASH` checks the chain still has it.",
    )
    _config_option(head)
    _account_option(head, "audit")
    head.add_argument("--json", action="store_true", help="print JSON (only JSON) on stdout")
    export = audit_commands.add_parser(
        "export",
        help="stream audit rows with their hashes as JSON lines or CSV",
        description="Stream audit rows, oldest first, with their sequence numbers and hashes, "
        "as JSON lines or CSV, to stdout or --out FILE. Memory stays flat however many rows.",
    )
    _config_option(export)
    _account_option(export, "audit")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--since", metavar="WHEN", help="from this time: 30d (ago) or 2026-11-01")
    export.add_argument("--until", metavar="WHEN", help="before this time: 1d (ago) or a date")
    export.add_argument("--agent", type=_agent_id, metavar="ID", help="only this agent")
    export.add_argument("--rule", metavar="NAME", help="only rows of this rule")
    export.add_argument(
        "--outcome", choices=[o.value for o in AuditOutcome], help="only rows of this outcome"
    )
    export.add_argument("--out", type=Path, metavar="FILE", help="write here (must not exist)")

    report = commands.add_parser(
        "report",
        help="what was deleted, failed, due, overdue and held over a period, per account, "
        "agent and rule; table, --json or --html",
        description="Report a period (--since, default 30d) from the store: per account, agent "
        "and rule the deleted, failed, still due, overdue, held, in grace and breaker-blocked "
        "conversations, the delay from due to deleted, platform retention settings that "
        "conflict with a policy, and the audit chain's head and verification. Makes no API call.",
    )
    _config_option(report)
    _account_option(report, "report")
    report.add_argument("--since", default="30d", metavar="DURATION", help="period (default 30d)")
    report.add_argument(
        "--overdue-after",
        metavar="DURATION",
        help="due this long counts as overdue (default: the delete interval plus 1h)",
    )
    shown = report.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print JSON (only JSON) on stdout")
    shown.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained page")

    probe = commands.add_parser(
        "probe",
        help="exit 0 when the running daemon's /healthz (or --ready: /readyz) answers OK",
        description="Ask the daemon's admin surface, at the configured [admin] listen address, "
        "whether it is alive (or ready). For container HEALTHCHECKs and scripts.",
    )
    _config_option(probe)
    probe.add_argument("--ready", action="store_true", help="ask /readyz instead of /healthz")
    probe.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")

    db = commands.add_parser("db", help="store maintenance", description="Store maintenance.")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=_Parser)
    db_commands.required = True
    upgrade = db_commands.add_parser(
        "upgrade", help="apply pending migrations", description="Apply pending migrations."
    )
    _config_option(upgrade)
    backup = db_commands.add_parser(
        "backup",
        help="copy the live SQLite store to FILE, consistently (SQLite's online backup)",
        description="Copy the SQLite store to FILE (0600) with SQLite's online backup API: a "
        "consistent copy while the daemon runs. Never overwrites FILE. Restore: stop the daemon, "
        "copy FILE to the store's path, remove its -wal and -shm files, start the daemon.",
    )
    backup.add_argument("file", metavar="FILE", help="where the copy goes; must not exist")
    _config_option(backup)

    demo = commands.add_parser(
        "demo",
        help="the embedded demo: emulator, policies and daemon together (no token, no network)",
        description="Start the emulator in-process with seeded agents, run the daemon against it "
        "on a temporary store for a few cycles, and show what was deleted and kept, and why.",
    )
    demo.add_argument(
        "--seconds", type=float, default=20.0, help="how long the daemon runs (default 20)"
    )
    demo.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the demo's config and store in DIR (new or empty), to try `retention "
        "audit verify`, `report` and `status` on them afterwards",
    )

    emulate = commands.add_parser(
        "emulate",
        help="serve the CustomGPT API emulator on 127.0.0.1",
        description="Serve a fake CustomGPT conversation API for your own tests. Without "
        "--seed it serves a built-in sample of three agents with several pages each.",
    )
    emulate.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any)")
    emulate.add_argument(
        "--token", help="bearer token to accept (default: the emulator's own, shown at start)"
    )
    emulate.add_argument("--seed", type=Path, help="seed file (TOML; format in the README)")
    emulate.add_argument("--per-page", type=int, help="page size of lists (default 20)")
    emulate.add_argument(
        "--rate-limit", type=int, metavar="N", help="answer 429 after N requests a minute"
    )
    emulate.add_argument("--latency", type=float, default=0.0, help="seconds added per request")
    return parser


def _record_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ttl", help="delete this long after now, e.g. 2h (default: policies)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print only the session_id")
    shown.add_argument("--json", action="store_true", help="print the record as JSON")


def _ttl(args: argparse.Namespace) -> timedelta | None:
    return None if args.ttl is None else _duration_arg(args.ttl, "--ttl")


def _duration_arg(text: str, option: str) -> timedelta:
    try:
        return to_duration(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key=option) from None


def _moment_arg(text: str | None, option: str) -> datetime | None:
    """A point in time given as a duration ago (``30d``) or as a date or timestamp (UTC)."""
    if text is None:
        return None
    try:
        return to_moment(text, datetime.now(UTC))
    except ValueError as exc:
        raise ConfigError(str(exc), key=option) from None


def _agent_id(text: str) -> int:
    value = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None
    if not is_agent_id(value):
        raise argparse.ArgumentTypeError(f"not an agent id (a positive 64-bit integer): {text!r}")
    return value


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def _output(args: argparse.Namespace) -> str:
    return "quiet" if args.quiet else "json" if args.json else "text"


ACCOUNT_HELP = {
    "plan": "only this account (default: every account; --out needs one)",
    "once": "only this account (default: every account)",
    "status": "only this account (default: every account)",
    "approve": "the account (default: the only one)",
    "create": "the account to create it in (default: the only one)",
    "track": "the account it belongs to (default: the only one)",
    "audit": "only this account (default: every account)",
    "report": "only this account (default: every account)",
}


def _account_option(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--account", metavar="NAME", help=ACCOUNT_HELP[command])


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="config file (default: env RETENTION_CONFIG)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code; ``sys.exit(main())`` is the console script."""
    args = build_parser().parse_args(argv)
    logs.configure(level="INFO")
    try:
        if args.command == "init":
            return housekeeping.init(args.path)
        if args.command == "check":
            return commands.check(lambda: _load(args), as_json=args.json)
        if args.command == "emulate":
            return housekeeping.emulate(
                port=args.port,
                token=args.token,
                seed=args.seed,
                per_page=args.per_page,
                rate_limit=args.rate_limit,
                latency=args.latency,
            )
        if args.command == "demo":
            logs.configure(level="INFO", fmt="text")
            logging.getLogger("retention.deletion").setLevel(logging.WARNING)
            return housekeeping.demo(args.seconds, keep=args.keep)
        settings = _load(args)
        if args.command == "probe":
            return housekeeping.probe(settings, ready=args.ready, timeout=args.timeout)
        # Every account's token and the admin token: no log line may show one.
        tokens = [a.token for a in settings.account_list()] + [settings.admin_token]
        secret = [t.get_secret_value() for t in tokens if t]
        logs.configure(level=settings.log.level, fmt=settings.log.format, secrets=secret)
        return asyncio.run(_dispatch(args, settings))
    except ConfigError as exc:
        print(f"retention: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RetentionError as exc:
        print(f"retention: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "plan":
        return await commands.plan(settings, as_json=args.json, out=args.out, account=args.account)
    if args.command == "apply":
        return await commands.apply(
            settings, path=args.plan_file, max_age=_duration_arg(args.max_age, "--max-age")
        )
    if args.command == "once":
        return await commands.once(
            settings, dry_run=args.dry_run, cap=args.max, account=args.account, as_json=args.json
        )
    if args.command == "approve":
        return await commands.approve(settings, agent_id=args.agent, account=args.account)
    if args.command == "run":
        return await commands.run(settings, standby=args.standby)
    if args.command == "create":
        return await commands.create(
            settings,
            agent_id=args.agent,
            name=args.name,
            ttl=_ttl(args),
            output=_output(args),
            account=args.account,
        )
    if args.command == "track":
        return await commands.track(
            settings,
            agent_id=args.agent,
            session_id=args.session,
            ttl=_ttl(args),
            output=_output(args),
            account=args.account,
        )
    if args.command == "status":
        return await commands.status(settings, account=args.account, as_json=args.json)
    if args.command == "audit" and args.audit_command == "verify":
        return await evidence.audit_verify(
            settings, account=args.account, pin=args.pin, as_json=args.json
        )
    if args.command == "audit" and args.audit_command == "head":
        return await evidence.audit_head(settings, account=args.account, as_json=args.json)
    if args.command == "audit":
        return await evidence.audit_export(
            settings,
            account=args.account,
            fmt=args.format,
            since=_moment_arg(args.since, "--since"),
            until=_moment_arg(args.until, "--until"),
            agent_id=args.agent,
            rule=args.rule,
            outcome=args.outcome,
            out=args.out,
        )
    if args.command == "report":
        return await evidence.report(
            settings,
            account=args.account,
            since=_duration_arg(args.since, "--since"),
            overdue_after=None
            if args.overdue_after is None
            else _duration_arg(args.overdue_after, "--overdue-after"),
            as_json=args.json,
            html=args.html,
        )
    if args.command == "db" and args.db_command == "backup":
        return await housekeeping.db_backup(settings, Path(args.file))
    if args.command == "db":
        return await housekeeping.db_upgrade(settings)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover


def _load(args: argparse.Namespace) -> Settings:
    return load_config(config_path(args.config, os.environ), from_env=args.config is None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
