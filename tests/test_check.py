"""`check` refuses exactly what `run` refuses: a table of malformed and dangerous configs.

Every row exits 2 from both commands with the same single line on stderr, naming the file (or
env variable) and the key; `run` refuses before it opens anything (no store file, no network:
the API address is an unused loopback port), so nothing here can hang or delete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from retention.cli import main
from retention.config import TOKEN_ENV

SECRET = "sk-table-SECRET"
UNREACHABLE = "http://127.0.0.1:9/api/v1/"
POLICY = '[[policies]]\nname = "p"\nagents = [532]\nmax_age = "1h"\n'


@dataclass(frozen=True)
class Row:
    id: str
    text: str | bytes | None  # the config file's content; None: no file at all
    expected: str  # in the one stderr line, after "retention: error: <where>: "
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # beside the config, mode 0600
    folder: bool = False  # the config path is a folder


def policy(*lines: str, name: str = "p") -> str:
    body = {"agents": "[532]", "max_age": '"1h"'}
    for line in lines:
        key, _, value = line.partition(" = ")
        body[key] = value
    return f'[[policies]]\nname = "{name}"\n' + "".join(f"{k} = {v}\n" for k, v in body.items())


ROWS = [
    # unknown keys, at every level
    Row("unknown-section", POLICY + "[schedul]\ndelete_every = '1m'\n", "schedul: unknown key"),
    Row("unknown-top-key", 'colour = "blue"\n' + POLICY, "colour: unknown key"),
    Row("unknown-api-key", "[api]\nrequests_per_min = 60\n", "api.requests_per_min: unknown key"),
    Row("unknown-store-key", '[store]\npath = "r.db"\n', "store.path: unknown key"),
    Row(
        "unknown-schedule-key", "[schedule]\ndelete_evry = '1m'\n", "schedule.delete_evry: unknown"
    ),
    Row("unknown-safety-key", "[safety]\ndryrun = true\n", "safety.dryrun: unknown key"),
    Row("unknown-admin-key", "[admin]\nport = 8080\n", "admin.port: unknown key"),
    Row("unknown-log-key", "[log]\ncolour = true\n", "log.colour: unknown key"),
    Row("unknown-policy-key", policy('max_agee = "1h"'), "policies[0] 'p': max_agee: unknown key"),
    Row("unknown-hold-key", '[[holds]]\nname = "h"\nsession = "x"\n', "holds[0] 'h': session:"),
    # wrong types
    Row("str-for-int", '[api]\nrequests_per_minute = "sixty"\n', "api.requests_per_minute:"),
    Row("str-for-bool", '[safety]\ndry_run = "yes please"\n', "safety.dry_run:"),
    Row("int-section", "api = 5\n", "api:"),
    Row("policies-not-a-list", 'policies = "all"\n', "policies:"),
    Row("agent-id-as-string", policy('agents = ["532"]'), "policies[0] 'p': agents: must be"),
    Row(
        "bool-duration",
        policy("max_age = true"),
        "policies[0] 'p': max_age: expected a duration such as",
    ),
    Row("bad-enum", policy('age_from = "touched"'), "policies[0] 'p': age_from:"),
    Row("bad-log-level", '[log]\nlevel = "LOUD"\n', "log.level:"),
    # bad and zero durations
    Row(
        "bad-duration",
        policy('max_age = "3 parsecs"'),
        "policies[0] 'p': max_age: invalid duration '3 parsecs'",
    ),
    Row(
        "zero-max-age",
        policy('max_age = "0s"'),
        "policies[0] 'p': max_age: duration '0s' must be greater",
    ),
    Row("zero-interval", "[schedule]\ndelete_every = '0s'\n", "schedule.delete_every: duration"),
    Row("zero-timeout", "[api]\nrequest_timeout = '0m'\n", "api.request_timeout: duration '0m'"),
    Row("unitless-duration", "[safety]\nfacts_max_age = 10\n", "safety.facts_max_age: write"),
    Row(
        "endless-duration",
        "[schedule]\nreconcile_every = '99999999w'\n",
        "schedule.reconcile_every: duration '99999999w' is too long",
    ),
    Row(
        "sub-second-interval",
        "[schedule]\ndiscover_every = '0.5s'\n",
        "schedule.discover_every: interval 0s is too short",
    ),
    # bad crons: those only APScheduler refuses are found by the daemon's own trigger code
    Row(
        "cron-minute-61",
        '[schedule]\ndelete_cron = "61 * * * *"\n',
        "schedule.delete_cron: invalid cron",
    ),
    Row(
        "cron-step-0",
        '[schedule]\ndiscover_cron = "*/0 * * * *"\n',
        "schedule.discover_cron: invalid cron",
    ),
    Row(
        "cron-weekday-8",
        '[schedule]\ndelete_cron = "* * * * 8"\n',
        "schedule.delete_cron: invalid cron",
    ),
    Row(
        "cron-never",
        '[schedule]\ndelete_cron = "0 0 30 2 *"\n',
        "schedule.delete_cron: cron expression '0 0 30 2 *' never fires",
    ),
    Row(
        "cron-3-fields", '[schedule]\ndelete_cron = "* * *"\n', "schedule.delete_cron: invalid cron"
    ),
    Row(
        "cron-bad-month",
        '[schedule]\ndelete_cron = "0 0 1 foo *"\n',
        "schedule.delete_cron: invalid cron",
    ),
    # bad regexes and globs
    Row("regex-unclosed", policy('name_regex = "("'), "policies[0] 'p': name_regex: invalid"),
    Row(
        "regex-backref",
        policy('name_regex = "(a)\\\\1"'),
        "policies[0] 'p': name_regex: invalid regex",
    ),
    Row(
        "regex-lookbehind",
        policy('name_regex = "(?<=a)b"'),
        "policies[0] 'p': name_regex: invalid regex",
    ),
    Row(
        "glob-unclosed",
        policy('name_matches = ["Test[a-"]'),
        "policies[0] 'p': name_matches: invalid glob",
    ),
    Row("glob-empty", policy('name_matches = [""]'), "policies[0] 'p': name_matches: empty glob"),
    Row("hold-bad-regex", '[[holds]]\nname = "h"\nname_regex = "["\n', "holds[0] 'h': name_regex"),
    # empty agent lists, duplicate or reserved names, a broad policy
    Row(
        "empty-agents",
        policy("agents = []"),
        "policies[0] 'p': agents: an empty list matches no agent",
    ),
    Row("hold-empty-agents", '[[holds]]\nname = "h"\nagents = []\n', "holds[0] 'h': agents: an"),
    Row("duplicate-policy", POLICY + policy(name="P"), "policies[1] 'P': name: duplicate of"),
    Row("reserved-name", policy(name="ttl"), "policies[0] 'ttl': name: 'ttl' is reserved"),
    Row("empty-name", policy(name=""), "policies[0]: name:"),
    Row(
        "broad-policy",
        policy('agents = "*"', 'max_age = "1h"'),
        "policies[0] 'p': confirm_broad: applies to every conversation",
    ),
    # a token in the file, or a bad token file
    Row("api-token", f'[api]\ntoken = "{SECRET}"\n', "api.token: the token never goes in"),
    Row("admin-token", f'[admin]\ntoken = "{SECRET}"\n', "admin.token: the token never goes"),
    Row(
        "token-file-two-lines",
        '[api]\ntoken_file = "token"\n',
        "api.token_file: token file",
        files={"token": f"{SECRET}\nsecond\n"},
    ),
    Row("token-file-missing", '[api]\ntoken_file = "nope"\n', "api.token_file: cannot read"),
    Row(
        "env-token-two-lines",
        POLICY,
        f"env {TOKEN_ENV}: must hold exactly one line",
        env={TOKEN_ENV: f"{SECRET}\n{SECRET}"},
    ),
    # bad URLs and schemes
    Row("base-url-ftp", '[api]\nbase_url = "ftp://x.example/"\n', "api.base_url: must be an https"),
    Row(
        "base-url-http",
        '[api]\nbase_url = "http://app.customgpt.ai/"\n',
        "api.base_url: plain http",
    ),
    Row(
        "base-url-metadata",
        '[api]\nbase_url = "http://169.254.169.254/"\n',
        "api.base_url: 169.254.169.254 is a cloud metadata",
    ),
    Row(
        "base-url-link-local",
        '[api]\nbase_url = "https://[fe80::1]/"\n',
        "api.base_url: fe80::1 is a link-local",
    ),
    Row(
        "base-url-credentials",
        f'[api]\nbase_url = "https://me:{SECRET}@127.0.0.1:9/"\n',
        "api.base_url: credentials in the URL",
    ),
    Row("base-url-no-host", '[api]\nbase_url = "https:///api/v1/"\n', "api.base_url: must be"),
    Row("store-not-a-url", '[store]\nurl = "retention.db"\n', "store.url: not a SQLAlchemy URL"),
    Row("store-sync-driver", '[store]\nurl = "sqlite:///r.db"\n', "store.url: driver 'sqlite'"),
    Row("store-unknown-db", '[store]\nurl = "nosuch://x/y"\n', "store.url: unknown database"),
    Row("store-in-memory", '[store]\nurl = "sqlite+aiosqlite://"\n', "store.url: an in-memory"),
    # out-of-range numbers
    Row("rpm-zero", "[api]\nrequests_per_minute = 0\n", "api.requests_per_minute: Input should"),
    Row("rpm-huge", "[api]\nrequests_per_minute = 100000\n", "api.requests_per_minute:"),
    Row("concurrency-zero", "[api]\nmax_concurrency = 0\n", "api.max_concurrency:"),
    Row("attempts-many", "[api]\nmax_attempts = 21\n", "api.max_attempts:"),
    Row("agent-zero", policy("agents = [0]"), "policies[0] 'p': agents: must be"),
    Row("agent-64-bit", policy("agents = [9223372036854775808]"), "policies[0] 'p': agents:"),
    # the admin surface
    Row("listen-no-port", '[admin]\nlisten = "8080"\n', "admin.listen: expected host:port"),
    Row("listen-open", '[admin]\nlisten = "0.0.0.0:8080"\n', "admin.listen: refusing to listen"),
    Row("listen-open-v6", '[admin]\nlisten = "[::]:8080"\n', "admin.listen: refusing to listen"),
    # env overrides are held to the same rules, and named
    Row(
        "env-cron",
        POLICY,
        "env RETENTION_SCHEDULE__DELETE_CRON: schedule.delete_cron: invalid cron",
        env={"RETENTION_SCHEDULE__DELETE_CRON": "61 * * * *"},
    ),
    Row(
        "env-listen",
        POLICY,
        "env RETENTION_ADMIN__LISTEN: admin.listen: refusing to listen",
        env={"RETENTION_ADMIN__LISTEN": "0.0.0.0:8080"},
    ),
    Row(
        "env-base-url",
        POLICY,
        "env RETENTION_API__BASE_URL: api.base_url: plain http",
        env={"RETENTION_API__BASE_URL": "http://app.customgpt.ai/api/v1/"},
    ),
    # the file itself
    Row("broken-toml", "[api\nbase_url = 1\n", "not valid TOML: Expected ']' at the end of"),
    Row("duplicate-toml-key", "[api]\nburst = 1\nburst = 2\n", "not valid TOML: Cannot overwrite"),
    Row("not-utf8", b"[api]\nburst = 1\n# caf\xe9\n", "not UTF-8 text: byte 0xe9 on line 3"),
    Row("a-folder", None, "is a folder, not a config file", folder=True),
    Row("no-file", None, "file not found"),
]


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("retention: error: ")
    return lines[0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_check_and_run_refuse_the_same_config_with_the_same_line(
    row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    text = row.text.decode("utf-8", "replace") if isinstance(row.text, bytes) else row.text or ""
    # Keys the row does not set point nowhere reachable, and at a store inside tmp_path.
    if "base_url" not in text and "RETENTION_API__BASE_URL" not in row.env:
        monkeypatch.setenv("RETENTION_API__BASE_URL", UNREACHABLE)
    if "token_file" not in text:
        monkeypatch.setenv(TOKEN_ENV, SECRET)  # else the env token would beat the file
    if "[store]" not in text:
        monkeypatch.setenv("RETENTION_STORE__URL", f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    for key, value in row.env.items():
        monkeypatch.setenv(key, value)
    for name, content in row.files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "retention.toml"
    if row.folder:
        path.mkdir()
    elif isinstance(row.text, bytes):
        path.write_bytes(row.text)
    elif row.text is not None:
        path.write_text(row.text, encoding="utf-8")
    before = sorted(os.listdir(tmp_path))

    checked = _one_line_error(["check", "--config", str(path)], capsys)
    ran = _one_line_error(["run", "--config", str(path)], capsys)

    assert ran == checked, "check and run refuse with the same words"
    # Named: the file (or the env variable the row's value came from), then the key.
    where = "" if row.expected.startswith("env ") else f"{path}: "
    assert checked.startswith(f"retention: error: {where}{row.expected}")
    assert SECRET not in checked
    assert sorted(os.listdir(tmp_path)) == before, "run opened nothing: no store, no file"


def test_the_table_has_at_least_40_rows() -> None:
    assert len(ROWS) >= 40
    assert len({row.id for row in ROWS}) == len(ROWS)


def test_a_valid_config_with_crons_and_an_open_admin_address_passes_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other side of the rows above: what run accepts, check accepts."""
    monkeypatch.setenv("RETENTION_ADMIN_TOKEN", "admin-SECRET")
    path = tmp_path / "retention.toml"
    path.write_text(
        '[schedule]\ndiscover_cron = "*/15 * * * *"\ndelete_cron = "* * * * mon-fri"\n'
        '[admin]\nlisten = "0.0.0.0:8080"\n' + POLICY,
        encoding="utf-8",
    )
    assert main(["check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cron '*/15 * * * *'" in out or "*/15 * * * *" in out
