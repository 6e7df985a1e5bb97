"""Secrets never leave the boundary: the server's text is scrubbed of both tokens where it enters
(the client's error translation), and the log handler masks everything a record prints.

The emulator echoes the request's Authorization header (and, in places, the admin token) in its
error bodies; then no token may appear in logs, stdout, stderr, the SQLite file or its WAL, the
why-view or ``/metrics``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from retention import logs
from retention.emulator import Emulator, Fault
from retention.emulator.seed import EmuConversation
from retention.engine import Engine
from retention.errors import ApiError
from retention.logs import Secrets
from retention.models import AuditOutcome
from retention.policy import Policy, Rules
from retention.store import Store

from .conftest import ClientFactory, small_state
from .daemon_process import free_port, start, stop, until_up, wait_for
from .postgres import query_now

API_TOKEN = "tok-API-7f3c9e1b5d-SECRET"
ADMIN_TOKEN = "adm-ADMIN-4b8e2a6c0f-SECRET"
TOKENS = (API_TOKEN, ADMIN_TOKEN)
AGENT = 532
LIST_PATH = f"/api/v1/projects/{AGENT}/conversations"
PAGINATOR = {"current_page": 1, "last_page": 1, "per_page": 20, "total": 0, "data": []}
TEST_CHATS = Policy(
    name="test-chats",
    agents=frozenset({AGENT}),
    name_matches=("Test*",),
    max_age=timedelta(hours=1),
)


def leaks(text: str) -> list[str]:
    """The tokens found in ``text``, and any 8-character piece of one (a token cut short)."""
    found = [t for t in TOKENS if t in text]
    for token in TOKENS:
        found += [token[i : i + 8] for i in range(len(token) - 7) if token[i : i + 8] in text]
    return found


def byte_leaks(data: bytes) -> list[str]:
    return [t for t in TOKENS if t.encode() in data]


@pytest.fixture
def emulator() -> Emulator:
    emulator = Emulator(small_state(conversations=3))
    emulator.token = API_TOKEN
    return emulator


def add_due(emulator: Emulator, name: str) -> EmuConversation:
    return emulator.state.add_conversation(
        AGENT, name, created_at=datetime.now(UTC) - timedelta(hours=2)
    )


def on(conversation: EmuConversation) -> str:
    return f"*/conversations/{conversation.session_id}"


# ---- the Secrets holder and the log handler ---------------------------------------------------


def test_secrets_mask_every_form_and_show_no_value() -> None:
    secrets = Secrets([API_TOKEN, 'adm"in/t+k', None, ""])
    text = (
        f'a {API_TOKEN} b adm%22in%2Ft%2Bk c adm\\"in/t+k d adm"in/t+k '
        "e Authorization: Bearer tok-API-7f3 f"
    )
    cleaned = secrets.scrub(text)
    assert cleaned == "a *** b *** c *** d *** e Authorization: Bearer *** f"
    assert "tok" not in repr(secrets) and "adm" not in repr(secrets)
    assert not Secrets([None, ""]) and secrets


class _Shows:
    def __str__(self) -> str:
        return f"an object that prints {API_TOKEN}"


@pytest.fixture
def captured() -> Iterator[Any]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def configure(fmt: str) -> io.StringIO:
        stream = io.StringIO()
        logs.configure(level="DEBUG", fmt=fmt, stream=stream, secrets=Secrets(TOKENS))
        return stream

    yield configure
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _log_everything() -> None:
    log = logging.getLogger("retention.test_secrets")
    log.warning("the token %s in an argument", API_TOKEN)
    try:
        raise RuntimeError(f"the server said: Bearer {API_TOKEN} and {ADMIN_TOKEN}")
    except RuntimeError:
        log.exception("a failure with a traceback")
    log.warning(
        "extra fields",
        extra={"detail": f"x {ADMIN_TOKEN}", "nested": {"k": [API_TOKEN]}, "obj": _Shows()},
    )
    log.handle(
        logging.makeLogRecord(
            {
                "name": "retention.test_secrets",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "a stack",
                "stack_info": f'Stack:\n  File "x.py", line 1\n    {API_TOKEN}',
            }
        )
    )


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_the_log_handler_masks_message_traceback_stack_and_extra_fields(
    captured: Any, fmt: str
) -> None:
    stream = captured(fmt)
    _log_everything()
    output = stream.getvalue()
    assert leaks(output) == []
    assert "RuntimeError: the server said: Bearer ***" in output, "the traceback is printed"
    assert "a stack" in output and "***" in output
    if fmt == "json":
        entries = [json.loads(line) for line in output.splitlines()]
        assert "Traceback" in entries[1]["exception"]
        assert entries[2]["detail"] == "x ***"
        assert entries[2]["nested"] == {"k": ["***"]}
        assert entries[2]["obj"] == "an object that prints ***"
        assert entries[3]["stack"].endswith("***")


# ---- the client: the server's text is scrubbed where it enters ---------------------------------


async def _error_of(call: Any) -> ApiError:
    with pytest.raises(ApiError) as raised:
        await call
    return raised.value


async def test_every_error_the_client_raises_is_scrubbed_of_both_tokens(
    emulator: Emulator, make_client: ClientFactory
) -> None:
    client = make_client(token=API_TOKEN, secrets=Secrets([ADMIN_TOKEN]))
    target = add_due(emulator, "Test echo")
    admin_echo = f"admin token {ADMIN_TOKEN} and {{authorization}}"
    # A long preamble, so that cutting the message to length would fall inside the token.
    long_echo = "x" * 185 + " {authorization}"
    emulator.faults += [
        Fault.echo_token(500, path=on(target), method="DELETE", times=-1),
        Fault.echo_token(403, path="*/settings"),
        Fault.echo_token(400, path=f"{on(target)}/messages", message=admin_echo),
        Fault.echo_token(502, path="/api/v1/projects", message=long_echo, times=-1),
        Fault(
            path=LIST_PATH,
            status_code=200,
            body=json.dumps({"status": "success", "data": {**PAGINATOR, "total": API_TOKEN}}),
            times=-1,
        ),
    ]
    errors = [
        await _error_of(client.delete_conversation(AGENT, target.session_id)),
        await _error_of(client.agent_settings(AGENT)),
        await _error_of(client.last_activity(AGENT, target.session_id)),
        await _error_of(client.list_agents()),
        await _error_of(client.list_conversations(AGENT)),
    ]
    texts = [t for e in errors for t in (str(e), repr(e), e.detail)]
    assert [leaks(t) for t in texts] == [[]] * len(texts)
    assert "Authorization: Bearer ***" in errors[0].detail
    assert "admin token ***" in errors[2].detail
    assert errors[3].detail.startswith("gave up after 3 attempts: xxx")
    assert "malformed response body" in errors[4].detail and "***" in errors[4].detail

    # A 404 carries the server's text too.
    emulator.faults[:] = [Fault.echo_token(404, path=f"{on(target)}/messages")]
    missing = await _error_of(client.conversation_info(AGENT, target.session_id))
    assert leaks(str(missing)) == [] and "Bearer ***" in str(missing)


async def test_no_token_reaches_the_audit_or_last_error_in_the_store(
    emulator: Emulator, make_client: ClientFactory, store: Store, store_url: str, tmp_path: Path
) -> None:
    """The reproduction from the issue: every DELETE fails with a body echoing the token, and
    each failure is written to ``audit.detail`` and ``conversations.last_error``."""
    targets = [add_due(emulator, f"Test {n}") for n in range(8)]
    emulator.faults.append(
        Fault.echo_token(500, path="*/conversations/*", method="DELETE", times=-1)
    )
    client = make_client(token=API_TOKEN, secrets=Secrets([ADMIN_TOKEN]))
    report = await Engine(client, store, Rules((TEST_CHATS,), ())).sweep()
    assert report.failed == len(targets)

    details = [
        r[0] for r in query_now(store_url, "SELECT detail FROM audit WHERE outcome = 'failed'")
    ]
    errors = [r[0] for r in query_now(store_url, "SELECT last_error FROM conversations")]
    stored = [str(t) for t in details + errors if t]
    assert len(stored) == 2 * len(targets)
    assert sum(leaks(t) != [] for t in stored) == 0
    assert all("Authorization: Bearer ***" in t for t in stored), stored[:2]
    trail = await store.journal.audit_trail(AGENT, targets[0].session_id)
    assert [a.outcome for a in trail] == [AuditOutcome.FAILED]
    if store.db.path is not None:  # SQLite: the bytes of the file, its WAL and its index
        assert wal_of(tmp_path / "retention.db").exists(), "the WAL is there to be read"
        assert store_leaks(tmp_path, "retention.db") == {}


# ---- real processes: `retention once` and `retention run` --------------------------------------

CONFIG = """
[api]
base_url = "{url}"
requests_per_minute = 6000
max_attempts = 2
[store]
url = "sqlite+aiosqlite:///{db}"
[schedule]
discover_every = "1s"
delete_every = "1s"
[admin]
listen = "127.0.0.1:{admin_port}"
[[policies]]
name = "test-chats"
agents = [532]
name_matches = ["Test*"]
max_age = "1h"
"""
ENV = {"CUSTOMGPT_API_TOKEN": API_TOKEN, "RETENTION_ADMIN_TOKEN": ADMIN_TOKEN}


def echoing_faults(failing: EmuConversation, refused: EmuConversation) -> list[Fault]:
    """A DELETE that fails (500) and one refused (403), a settings call and a listing that
    fail: each answer repeats the Authorization header; the failing DELETE (whose text is
    stored) and the settings call (whose text is logged) repeat the admin token too, which
    only the runtime can have told the client."""
    admin_echo = f"settings unavailable for {ADMIN_TOKEN}: {{authorization}}"
    stored_echo = f"Request failed for Authorization: {{authorization}} (admin {ADMIN_TOKEN})"
    return [
        Fault.echo_token(500, path=on(failing), method="DELETE", message=stored_echo, times=-1),
        Fault.echo_token(403, path=on(refused), method="DELETE", times=-1),
        Fault.echo_token(503, path="*/settings", message=admin_echo, times=-1),
        Fault.echo_token(502, path=LIST_PATH, method="GET", times=1),
    ]


def wal_of(database: Path) -> Path:
    return database.with_name(database.name + "-wal")


def store_leaks(tmp_path: Path, name: str = "r.db") -> dict[str, list[str]]:
    """Tokens in the bytes of the database file and of its -wal and -shm files."""
    files = sorted(tmp_path.glob(name + "*"))
    assert files, "the store exists"
    return {f.name: found for f in files if (found := byte_leaks(f.read_bytes()))}


def write_config(tmp_path: Path, url: str, admin_port: int = 0) -> Path:
    config = tmp_path / "retention.toml"
    text = CONFIG.format(url=url, db=tmp_path / "r.db", admin_port=admin_port or free_port())
    config.write_text(text, encoding="utf-8")
    return config


async def test_retention_once_shows_no_token_in_its_output_or_its_store(
    emulator: Emulator, tmp_path: Path
) -> None:
    failing = add_due(emulator, "Test failing")
    refused = add_due(emulator, "Test refused")
    emulator.faults += echoing_faults(failing, refused)
    async with emulator.serve() as url:
        config = write_config(tmp_path, url)
        process = await start(config, "once", env=ENV)
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    stdout, stderr = out.decode(), err.decode()
    assert process.returncode == 1, stderr[-3000:]
    assert leaks(stdout) == [] and leaks(stderr) == []
    # The server's words did arrive, masked: in the log and on the CLI's last line.
    assert "Authorization: Bearer ***" in stderr
    failed_line = stderr.strip().splitlines()[-1]
    assert failed_line.startswith("retention: failed: ") and "-> 403" in failed_line
    assert "Bearer ***" in failed_line
    assert store_leaks(tmp_path) == {}
    with sqlite3.connect(tmp_path / "r.db") as db:
        rows = db.execute("SELECT last_error FROM conversations WHERE last_error IS NOT NULL")
        assert any("Bearer *** (admin ***)" in r[0] for r in rows)


async def test_retention_run_shows_no_token_anywhere(emulator: Emulator, tmp_path: Path) -> None:
    failing = add_due(emulator, "Test failing")
    refused = add_due(emulator, "Test refused")
    emulator.faults += echoing_faults(failing, refused)
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    seen: dict[str, Any] = {}
    async with emulator.serve() as url:
        process = await start(write_config(tmp_path, url, admin_port), "run", env=ENV)
        try:
            async with aiohttp.ClientSession() as http:
                await until_up(http, admin)

                async def why(conversation: EmuConversation) -> dict[str, Any]:
                    path = f"{admin}/v1/conversations/{AGENT}/{conversation.session_id}"
                    async with http.get(path, headers=auth) as response:
                        body: dict[str, Any] = await response.json()
                        seen[f"raw {conversation.name}"] = json.dumps(body)
                        return body

                async def both_failed() -> bool:
                    views = [await why(c) for c in (failing, refused)]
                    return all(v.get("audit") for v in views)

                async with asyncio.timeout(30):
                    while not await both_failed():  # noqa: ASYNC110 - polls another process
                        await asyncio.sleep(0.2)
                async with http.get(admin + "/metrics") as response:
                    seen["metrics"] = await response.text()
                # The daemon is running: its WAL holds the latest writes.
                await wait_for(lambda: (tmp_path / "r.db-wal").exists())
                seen["live store"] = store_leaks(tmp_path)
        finally:
            code, output = await stop(process)
    assert code == 0, output[-3000:]
    views = [json.loads(seen[f"raw {c.name}"]) for c in (failing, refused)]
    for view in views:
        assert view["audit"][0]["outcome"] == "failed"
        assert "Bearer ***" in json.dumps(view)
    assert "(admin ***)" in views[0]["last_error"]
    for name, text in seen.items():
        if isinstance(text, str):
            assert leaks(text) == [], name
    assert seen["live store"] == {}
    assert store_leaks(tmp_path) == {}
    assert leaks(output) == []
    entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any("exception" in e and "Bearer ***" in e["exception"] for e in entries), (
        "the refused DELETE failed a sweep, logged with its traceback"
    )
    assert any("settings unavailable for ***" in e["message"] for e in entries)
