"""Command line: argv -> settings -> command. It parses and dispatches, nothing more.

The command bodies live in :mod:`retention.commands`; what they run on is built by
:mod:`retention.runtime`. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration,
3 due conversations remain (``once``, ``apply``), 130 interrupted (Ctrl-C).
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

from retention import authoring, commands, evidence, housekeeping, logs
from retention.cliparser import NO_CONFIG, build_parser
from retention.commands import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE
from retention.config import (
    Settings,
    config_path,
    load_config,
    to_duration,
)
from retention.errors import ConfigError, RetentionError
from retention.timefmt import to_moment

logger = logging.getLogger(__name__)


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


def _output(args: argparse.Namespace) -> str:
    return "quiet" if args.quiet else "json" if args.json else "text"


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``--config`` before the command and after it become one ``config``."""
    args = parser.parse_args(argv)
    first, after = args.config_first, getattr(args, "config", None)
    if first is not None and args.command in NO_CONFIG:
        parser.error(f"{args.command} takes no --config")
    if first is not None and after is not None and not _same_file(first, after):
        parser.error(
            f"--config given twice, naming two files: {first} (before the command) and {after} "
            "(after it); give one"
        )
    if args.command not in NO_CONFIG:
        args.config = after if after is not None else first
    return args


def _same_file(a: str, b: str) -> bool:
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code; ``sys.exit(main())`` is the console script."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C: asyncio.run has cancelled the command and closed what it opened.
        print("retention: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `| head`: the reader has what it wanted; stop writing, without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    logs.configure(level="INFO")
    try:
        if args.command == "completion":
            return commands.completion(parser, args.shell)
        if args.command == "init":
            return housekeeping.init(args.path)
        if args.command == "test":
            return authoring.test(_load(args))
        if args.command == "explain":
            now = datetime.now(UTC)
            return authoring.explain(
                _load(args),
                agent_id=args.agent,
                name=args.name,
                created=_moment_arg(args.created, "--created") or now,
                updated=_moment_arg(args.updated, "--updated"),
                last_message=_moment_arg(args.last_message, "--last-message"),
                creator=args.creator,
                origin=args.origin,
                ttl=_ttl(args),
                session_id=args.session,
                account=args.account,
                as_json=args.json,
            )
        if args.command == "check":
            return commands.check(
                lambda: _load(args), as_json=args.json, tests=authoring.tests_beside
            )
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
    if args.command == "diff":
        return await authoring.diff(
            settings,
            load_config(Path(args.new)),
            account=args.account,
            as_json=args.json,
            examples=args.examples,
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
