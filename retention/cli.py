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
from datetime import timedelta
from pathlib import Path

from retention import __version__, commands, housekeeping, logs
from retention.commands import EXIT_FAILURE, EXIT_USAGE
from retention.config import Settings, config_path, is_agent_id, load_config, to_duration
from retention.errors import ConfigError, RetentionError

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
            return commands.check(_load(args))
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
            return housekeeping.demo(args.seconds)
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
            settings, dry_run=args.dry_run, cap=args.max, account=args.account
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
        return await commands.status(settings, account=args.account)
    if args.command == "db" and args.db_command == "backup":
        return await housekeeping.db_backup(settings, Path(args.file))
    if args.command == "db":
        return await housekeeping.db_upgrade(settings)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover


def _load(args: argparse.Namespace) -> Settings:
    return load_config(config_path(args.config, os.environ), from_env=args.config is None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
