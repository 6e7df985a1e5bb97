"""The command line's grammar: every command, its options and their help (argparse, with
shtab's completion hints). :mod:`retention.cli` parses with it and dispatches.

Exit codes and environment variables are in :data:`EPILOG`, the top-level help.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import shtab

from retention import __version__, tracking
from retention.commands import EXIT_USAGE
from retention.config import ADMIN_TOKEN_ENV, CONFIG_ENV, ENV_PREFIX, TOKEN_ENV, is_agent_id
from retention.models import AuditOutcome


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


EPILOG = f"""\
--config FILE may come before or after the command: `retention --config F status` is
`retention status --config F`. Given in both places, both must name the same file (exit 2
otherwise). Without it, env {CONFIG_ENV} names the file.

exit codes:
  0    ok
  1    runtime failure (the API, the store, a deletion failed); also a policy test
       fails (test, check), an audit chain does not hold (audit verify, report)
  2    bad usage or configuration (also a stale plan, a missing store for status or plan)
  3    due conversations remain that once or apply was asked to delete (the
       mass-deletion breaker, the clock guard or the audit held them back);
       for diff: the edit newly makes conversations due
  130  interrupted (Ctrl-C); `run` and `emulate` stop gracefully on it and exit 0

environment:
  {CONFIG_ENV}            the config file, when --config is not given
  {TOKEN_ENV}         the API token (or [api] token_file); with [[accounts]],
                              each account's token_env names its own variable
  {ADMIN_TOKEN_ENV}       the admin surface's bearer token (or [admin] token_file)
  {ENV_PREFIX}<SECTION>__<KEY>  overrides that key of the file, e.g.
                              {ENV_PREFIX}SAFETY__DRY_RUN=true (env wins over the file)

`retention COMMAND --help` tells more; `retention completion bash|zsh` prints a completion
script (e.g. `retention completion bash > ~/.local/share/bash-completion/completions/retention`).
"""

# Commands that read no config: --config before them is a usage error, as after them.
NO_CONFIG = frozenset({"init", "demo", "emulate", "completion"})


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="retention",
        description="Enforce conversation-retention policies on CustomGPT.ai agents.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"retention {__version__}")
    _files(
        parser.add_argument(
            "--config",
            dest="config_first",
            metavar="FILE",
            help="config file for the command (default: env RETENTION_CONFIG); also accepted "
            "after the command",
        )
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    init = commands.add_parser(
        "init",
        help="write a starter config that deletes nothing (dry_run on, policies commented out)",
        description="Write a starter config to PATH (default retention.toml; '-' for stdout): "
        "dry_run = true and every policy commented out, so it can delete nothing as it stands. "
        "Never overwrites a file (exit 2). Prints the next steps.",
    )
    _files(init.add_argument("path", nargs="?", default="retention.toml", metavar="PATH"))

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
        "are due now, most overdue first: each one's age on its rule's clock (created, updated, "
        "last activity or its own TTL), the rule, how long it has been due, and a note on why "
        "and on what may still hold it back (the breaker, a policy change's grace, facts to "
        "re-read). Sends only GET requests.",
    )
    _config_option(plan)
    _account_option(plan, "plan")
    plan.add_argument("--json", action="store_true", help="print JSON (only JSON) on stdout")
    _files(
        plan.add_argument(
            "--out", type=Path, metavar="FILE", help="also write the plan for `retention apply`"
        )
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
    _files(apply.add_argument("plan_file", type=Path, metavar="FILE", help="the plan file"))
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
    create.add_argument(
        "--name",
        type=_conversation_name,
        required=True,
        help=f"the conversation's name (1 to {tracking.NAME_MAX} characters, not only spaces)",
    )
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
        description="Print figures from the local store, the breaker, the last sweeps (a "
        "dry-run sweep says so, and what it would have deleted) and the lease. Makes no API call.",
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
        dest="audit_command", metavar="ACTION", parser_class=Parser
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
    _files(
        export.add_argument("--out", type=Path, metavar="FILE", help="write here (must not exist)")
    )

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
    _files(
        shown.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained page")
    )

    test = commands.add_parser(
        "test",
        help="run the config's policy tests (<config>.tests.toml beside it)",
        description="Run the sample conversations of the tests file beside the config "
        "(retention.toml: retention.tests.toml) against the pure policy code; print each case "
        "that does not hold with the rule that decided instead. Exit 1 when one fails, 2 when "
        "the file is missing or does not read. No API call.",
    )
    _config_option(test)

    diff = commands.add_parser(
        "diff",
        help="what an edit of the rules does to the conversations the store knows",
        description="Evaluate the rules of --config (current) and of NEW on every conversation "
        "the current config's store knows, and print what the edit changes per account and "
        "agent: newly due (now, within a day, within a week), no longer due, newly and no "
        "longer held, rule moves, with examples. Exit 3 when the edit newly makes "
        "conversations due, 0 when not. No API call.",
    )
    _config_option(diff)
    _files(diff.add_argument("new", metavar="NEW", help="the edited config file"))
    _account_option(diff, "diff")
    diff.add_argument("--json", action="store_true", help="print JSON (only JSON) on stdout")
    diff.add_argument(
        "--examples", type=_positive, default=3, metavar="N", help="examples per kind (3)"
    )

    explain = commands.add_parser(
        "explain",
        help="decide one described conversation and show every rule weighed, in order",
        description="Describe a conversation (times as durations ago, e.g. 3d, or timestamps) "
        "and print the decision, its rule and due time, and every hold, the own TTL and every "
        "policy in the order they are weighed, each with why it took the conversation or "
        "passed it by. No API call.",
    )
    _config_option(explain)
    _account_option(explain, "explain")
    explain.add_argument("--agent", type=_agent_id, required=True, metavar="ID")
    explain.add_argument("--name", required=True, help="the conversation's name")
    explain.add_argument("--created", default=None, metavar="WHEN", help="3d ago (default now)")
    explain.add_argument("--updated", metavar="WHEN", help="last renamed (default: created)")
    explain.add_argument(
        "--last-message", metavar="WHEN", help="newest message (unknown if left out)"
    )
    explain.add_argument("--creator", choices=("anonymous", "team_member"))
    explain.add_argument(
        "--origin", choices=("discovered", "created", "registered"), default="discovered"
    )
    explain.add_argument("--ttl", help="its own TTL, e.g. 2h (from --created)")
    explain.add_argument("--session", default="explain", metavar="ID", help="its session id")
    explain.add_argument("--json", action="store_true", help="print JSON (only JSON) on stdout")

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
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=Parser)
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
    _files(backup.add_argument("file", metavar="FILE", help="where the copy goes; must not exist"))
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
    _files(
        demo.add_argument(
            "--keep",
            type=Path,
            metavar="DIR",
            help="keep the demo's config and store in DIR (new or empty), to try `retention "
            "audit verify`, `report` and `status` on them afterwards",
        ),
        shtab.DIRECTORY,
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
    _files(emulate.add_argument("--seed", type=Path, help="seed file (TOML; format in the README)"))
    emulate.add_argument("--per-page", type=int, help="page size of lists (default 20)")
    emulate.add_argument(
        "--rate-limit", type=int, metavar="N", help="answer 429 after N requests a minute"
    )
    emulate.add_argument("--latency", type=float, default=0.0, help="seconds added per request")

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh) on stdout",
        description="Print a completion script for bash or zsh on stdout. Load it for this "
        "shell with `source <(retention completion bash)`, or install it: bash: `retention "
        "completion bash > ~/.local/share/bash-completion/completions/retention`; zsh: "
        "`retention completion zsh > ~/.zfunc/_retention` with ~/.zfunc in $fpath.",
    )
    completion.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    return parser


def _files(action: argparse.Action, kind: object = shtab.FILE) -> argparse.Action:
    """Have the completion scripts offer paths (files, or folders) for this argument."""
    action.complete = kind  # type: ignore[attr-defined]
    return action


def _record_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ttl", help="delete this long after now, e.g. 2h (default: policies)")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print only the session_id")
    shown.add_argument("--json", action="store_true", help="print the record as JSON")


def _agent_id(text: str) -> int:
    value = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None
    if not is_agent_id(value):
        raise argparse.ArgumentTypeError(f"not an agent id (a positive 64-bit integer): {text!r}")
    return value


def _conversation_name(text: str) -> str:
    """A name the API's create accepts, by the rule the admin API's POST applies too."""
    problem = tracking.name_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


ACCOUNT_HELP = {
    "plan": "only this account (default: every account; --out needs one)",
    "once": "only this account (default: every account)",
    "status": "only this account (default: every account)",
    "approve": "the account (default: the only one)",
    "create": "the account to create it in (default: the only one)",
    "track": "the account it belongs to (default: the only one)",
    "audit": "only this account (default: every account)",
    "report": "only this account (default: every account)",
    "diff": "only this account (default: every account)",
    "explain": "the account whose rules decide (default: the first)",
}


def _account_option(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--account", metavar="NAME", help=ACCOUNT_HELP[command])


def _config_option(parser: argparse.ArgumentParser) -> None:
    _files(
        parser.add_argument(
            "--config",
            metavar="FILE",
            help="config file (default: env RETENTION_CONFIG); also accepted before the command",
        )
    )
