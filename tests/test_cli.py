"""The command line: exit codes, one-line errors, and the standalone emulator."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from retention import __version__
from retention.cli import main

from .conftest import REPO

EXAMPLE = str(REPO / "config.example.toml")


def test_check_accepts_the_example_and_warns_about_the_missing_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "--config", EXAMPLE]) == 0
    out, err = capsys.readouterr()
    assert f"{EXAMPLE}: ok" in out
    assert "[0] 'qa-chats': agents 532, names Test*, max_age 1h from created" in out
    assert "warning: no API token" in err


def test_check_reads_retention_config_from_env(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_CONFIG", EXAMPLE)
    monkeypatch.setenv("CUSTOMGPT_API_TOKEN", "sk-cli-SECRET")
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert "token set" in out and "warning" not in err
    assert "sk-cli-SECRET" not in out + err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[policies]]\nname = "qa"\nagents = [1]\nmax_age = "3 parsecs"\n',
            "policies[0] 'qa': max_age: invalid duration '3 parsecs'",
        ),
        ("[api]\nrequests_per_minute = 60\ncolour = 'blue'\n", "api.colour: unknown key"),
        (
            '[[policies]]\nname = "qa"\nagents = [1]\nmax_age = "99999999999w"\n',
            "policies[0] 'qa': max_age: duration '99999999999w' is too long",
        ),
    ],
)
def test_check_rejects_bad_config_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["check", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"retention: error: {path}: ")
    assert expected in lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "--agent", str(2**70), "--name", "x"],
        ["create", "--agent", "true", "--name", "x"],
        ["track", "--agent", "0", "--session", "s"],
    ],
)
def test_an_agent_id_out_of_range_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "not an agent id (a positive 64-bit integer)" in capsys.readouterr().err


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2


async def _run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "retention", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_python_m_retention_version_and_check() -> None:
    code, out, _ = await _run("--version")
    assert (code, out.strip()) == (0, f"retention {__version__}")
    code, out, _ = await _run("check", "--config", EXAMPLE)
    assert code == 0 and "ok" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def emulate_process() -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "retention", "emulate", "--port", str(port),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    banner = await asyncio.wait_for(process.stderr.readline(), timeout=20)
    assert b"emulator serving" in banner
    try:
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_emulate_serves_pages_with_the_token_and_401_without(
    emulate_process: tuple[asyncio.subprocess.Process, int],
) -> None:
    process, port = emulate_process
    url = f"http://127.0.0.1:{port}/api/v1/projects/532/conversations?page=2"
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": "Bearer emulator-token"}
        async with http.get(url, headers=headers) as response:
            body = await response.json()
            assert response.status == 200
        assert body["status"] == "success"
        assert body["data"]["current_page"] == 2 and body["data"]["last_page"] >= 2
        assert len(body["data"]["data"]) == body["data"]["per_page"] == 20
        async with http.get(url) as response:
            assert response.status == 401
            body = await response.json()
        assert body["status"] == "error" and body["data"]["code"] == 401
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=10) == 0


async def test_emulate_refuses_a_bad_seed_with_exit_2(tmp_path: Path) -> None:
    code, _, err = await _run("emulate", "--seed", str(tmp_path / "missing.toml"))
    assert code == 2
    assert f"{tmp_path / 'missing.toml'}: file not found" in err


# ---- --config before or after the command; the top-level help; Ctrl-C ----------------------


def test_config_is_accepted_before_the_command_as_after_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "--config", EXAMPLE]) == 0
    after = capsys.readouterr()
    assert main(["--config", EXAMPLE, "check"]) == 0
    before = capsys.readouterr()
    assert (before.out, before.err) == (after.out, after.err)
    # The same file in both places is no conflict.
    assert main(["--config", EXAMPLE, "check", "--config", EXAMPLE]) == 0


def test_config_before_the_command_beats_retention_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_CONFIG", str(tmp_path / "missing.toml"))
    assert main(["--config", EXAMPLE, "check"]) == 0
    assert f"{EXAMPLE}: ok" in capsys.readouterr().out


def test_two_different_configs_are_a_usage_error_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.toml"
    other.write_text((REPO / "config.example.toml").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(SystemExit) as caught:
        main(["--config", EXAMPLE, "once", "--config", str(other)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--config" in err and EXAMPLE in err and str(other) in err


def test_config_before_a_command_that_takes_none_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--config", EXAMPLE, "demo"])
    assert caught.value.code == 2
    assert "demo takes no --config" in capsys.readouterr().err


def test_the_top_level_help_lists_exit_codes_and_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for code, meaning in [
        ("0", "ok"),
        ("1", "runtime failure"),
        ("2", "bad usage or configuration"),
        ("3", "due conversations remain"),
        ("130", "interrupted"),
    ]:
        assert f"{code} {meaning}" in text, code
    for name in (
        "RETENTION_CONFIG",
        "CUSTOMGPT_API_TOKEN",
        "RETENTION_ADMIN_TOKEN",
        "RETENTION_<SECTION>__<KEY>",
        "token_env",
    ):
        assert name in text, name
    assert "--config FILE may come before or after the command" in text
    assert "completion" in text


async def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    from retention.emulator import DEFAULT_TOKEN, Emulator, Fault

    from .conftest import small_state

    emulator = Emulator(small_state())
    emulator.faults.append(Fault.hang(path="*/conversations"))
    async with emulator.serve() as url:
        path = tmp_path / "retention.toml"
        path.write_text(
            f'[api]\nbase_url = "{url}"\n[store]\nurl = "sqlite+aiosqlite:///{tmp_path}/r.db"\n'
            '[[policies]]\nname = "chats"\nagents = [532]\nmax_age = "1h"\n',
            encoding="utf-8",
        )
        env = {"CUSTOMGPT_API_TOKEN": DEFAULT_TOKEN, "PATH": "/usr/bin:/bin"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "retention", "once", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            for _ in range(300):  # the sweep's first call is in flight, held by the emulator
                if emulator.calls("GET", "*/conversations"):
                    break
                await asyncio.sleep(0.05)
            assert emulator.calls("GET", "*/conversations"), "the command never reached the API"
            process.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(process.communicate(), timeout=30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 130, err.decode()
    assert "retention: interrupted" in err.decode()
    assert "Traceback" not in err.decode()
