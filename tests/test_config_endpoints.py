"""Only safe endpoints: https (plain http on loopback only), no link-local or metadata address,
no credentials in the URL, and a token file of exactly one line that others cannot read."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from retention.cli import main
from retention.config import TOKEN_ENV, load_config
from retention.emulator import DEFAULT_TOKEN, Emulator
from retention.errors import ConfigError

from .conftest import served_config, small_state

PASSWORD = "hunter2-SECRET"
TOKEN = "sk-token-SECRET"


def config_with(tmp_path: Path, api_lines: str) -> Path:
    path = tmp_path / "retention.toml"
    path.write_text(f"[api]\n{api_lines}\n", encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message, "one line"
    return message


@pytest.mark.parametrize(
    "url",
    [
        "https://app.customgpt.ai/api/v1/",
        "https://app.customgpt.ai/api/v1",  # the slash is added
        "https://app.customgpt.ai:8443/api/v1/",
        "https://10.1.2.3/api/v1/",  # a private address is fine over https (a proxy)
        "https://[2001:db8::1]/api/v1/",
        "http://127.0.0.1:8765/api/v1/",  # the emulator
        "http://127.9.9.9/api/v1/",  # all of 127.0.0.0/8 is loopback
        "http://localhost:8765/api/v1/",
        "http://LOCALHOST./api/v1/",
        "http://[::1]:8765/api/v1/",
    ],
)
def test_https_anywhere_and_plain_http_on_loopback_are_accepted(tmp_path: Path, url: str) -> None:
    settings = load_config(config_with(tmp_path, f'base_url = "{url}"'))
    assert settings.api.base_url.rstrip("/") == url.rstrip("/")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://app.customgpt.ai/api/v1/", "plain http would send the API token in clear"),
        ("http://10.1.2.3/api/v1/", "plain http would send the API token in clear"),
        ("http://[2001:db8::1]/api/v1/", "plain http would send the API token in clear"),
        ("http://169.254.169.254/latest/", "169.254.169.254 is a cloud metadata address"),
        ("https://169.254.169.254/", "169.254.169.254 is a cloud metadata address"),
        ("https://169.254.10.20/api/v1/", "169.254.10.20 is a link-local address"),
        ("https://2852039166/", "2852039166 is a link-local address"),  # 169.254.169.254
        ("https://0xa9fea9fe/", "0xa9fea9fe is a link-local address"),
        ("https://[fe80::1]/api/v1/", "fe80::1 is a link-local address"),
        ("https://[::ffff:169.254.1.1]/", "is a link-local address"),
        ("https://[fd00:ec2::254]/", "fd00:ec2::254 is a cloud metadata address"),
        ("http://metadata.google.internal/", "metadata.google.internal is a cloud metadata"),
        ("https://Metadata.Google.Internal./v1/", "metadata.google.internal is a cloud metadata"),
        ("https://0.0.0.0/api/v1/", "0.0.0.0 is not an address to send requests to"),
        ("ftp://app.customgpt.ai/api/v1/", "must be an https URL such as"),
        ("app.customgpt.ai/api/v1/", "must be an https URL such as"),
        ("https://", "must be an https URL such as"),
        ("https:///api/v1/", "must be an https URL such as"),
        ("https://app customgpt.ai/", "spaces or control characters"),
        ("https://app.customgpt.ai:99999/", "not a valid URL"),
        ("https://app.customgpt.ai:0/", "port 0"),
        ("https://app.customgpt.ai/api/v1/?debug=1", "must not have a query or a fragment"),
        ("https://app.customgpt.ai/api/v1/#x", "must not have a query or a fragment"),
        ("https://app_custom gpt/", "spaces or control characters"),
        ("https://exa!mple.com/", "invalid host 'exa!mple.com'"),
    ],
)
def test_unsafe_or_malformed_base_urls_are_refused(tmp_path: Path, url: str, expected: str) -> None:
    message = error_of(config_with(tmp_path, f'base_url = "{url}"'))
    assert message.startswith(f"{tmp_path / 'retention.toml'}: api.base_url: ")
    assert expected in message


@pytest.mark.parametrize(
    "url",
    [
        f"https://admin:{PASSWORD}@app.customgpt.ai/api/v1/",
        f"https://{PASSWORD}@app.customgpt.ai/api/v1/",
        f"http://user:{PASSWORD}@127.0.0.1:8765/api/v1/",
    ],
)
def test_credentials_in_the_url_are_refused_without_echoing_them(tmp_path: Path, url: str) -> None:
    message = error_of(config_with(tmp_path, f'base_url = "{url}"'))
    assert "api.base_url: credentials in the URL (user:password@) are refused" in message
    assert PASSWORD not in message


def test_a_base_url_from_env_is_held_to_the_same_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_API__BASE_URL", "http://app.customgpt.ai/api/v1/")
    message = error_of(config_with(tmp_path, "requests_per_minute = 60"))
    assert message.startswith("env RETENTION_API__BASE_URL: api.base_url: plain http")


def test_once_with_credentials_in_the_url_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    path = config_with(tmp_path, f'base_url = "https://u:{PASSWORD}@127.0.0.1:9/api/v1/"')
    assert main(["once", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "api.base_url: credentials in the URL" in err and PASSWORD not in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            f"{TOKEN}\nsecond line\n".encode(),
            "must hold exactly one line, the token; it has 2 lines",
        ),
        (f"{TOKEN}\r\n{TOKEN}".encode(), "must hold exactly one line, the token; it has 2 lines"),
        (f"{TOKEN}\x00tail".encode(), "must hold exactly one line, the token; it has control"),
        (f"{TOKEN}\ttail".encode(), "must hold exactly one line, the token; it has control"),
        (b"", "is empty"),
        (b" \n\n  \n", "is empty"),
        (b"\xff\xfe" + TOKEN.encode(), "is not UTF-8 text"),
    ],
)
def test_a_token_file_must_hold_exactly_one_line(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    file = tmp_path / "token"
    file.write_bytes(content)
    file.chmod(0o600)
    message = error_of(config_with(tmp_path, 'token_file = "token"'))
    assert f"api.token_file: token file {str(file)!r} {expected}" in message
    assert TOKEN not in message


@pytest.mark.parametrize("content", [f"{TOKEN}\n", f"  {TOKEN}  \n\n", TOKEN])
def test_one_line_with_surrounding_blanks_is_a_token(tmp_path: Path, content: str) -> None:
    file = tmp_path / "token"
    file.write_text(content, encoding="utf-8")
    file.chmod(0o600)
    settings = load_config(config_with(tmp_path, 'token_file = "token"'))
    assert settings.token is not None and settings.token.get_secret_value() == TOKEN
    assert settings.warnings == ()


def test_a_token_file_that_is_a_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "token").mkdir()
    message = error_of(config_with(tmp_path, 'token_file = "token"'))
    assert "api.token_file: cannot read token file" in message and "token" in message


def test_an_admin_token_file_follows_the_same_rule(tmp_path: Path) -> None:
    (tmp_path / "admin").write_text("one\ntwo\n", encoding="utf-8")
    path = tmp_path / "retention.toml"
    path.write_text('[admin]\ntoken_file = "admin"\n', encoding="utf-8")
    assert "admin.token_file: token file" in error_of(path)


def test_a_token_in_env_with_a_line_break_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, f"{TOKEN}\nsecond")
    message = error_of(config_with(tmp_path, "requests_per_minute = 60"))
    assert message.startswith(f"env {TOKEN_ENV}: must hold exactly one line")
    assert TOKEN not in message


@pytest.mark.parametrize(
    ("mode", "readers"),
    [(0o640, "its group"), (0o604, "others"), (0o644, "its group and others")],
)
def test_a_token_file_others_can_read_is_warned_about_at_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int, readers: str
) -> None:
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n", encoding="utf-8")
    file.chmod(mode)
    path = config_with(tmp_path, 'token_file = "token"')
    assert main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == (
        f"retention: warning: {path}: api.token_file: token file {str(file)!r} can be read by "
        f"{readers} (mode {mode:04o}): chmod 600 it\n"
    )
    assert TOKEN not in out + err


def test_a_private_token_file_gets_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n", encoding="utf-8")
    file.chmod(0o600)
    assert main(["check", "--config", str(config_with(tmp_path, 'token_file = "token"'))]) == 0
    assert capsys.readouterr().err == ""


async def test_a_token_file_others_can_read_is_logged_at_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "token").write_text(DEFAULT_TOKEN + "\n", encoding="utf-8")
    (tmp_path / "token").chmod(0o644)
    template = '[api]\nbase_url = "{url}"\ntoken_file = "token"\n[store]\nurl = "sqlite+aiosqlite:///{db}"\n'
    async with served_config(Emulator(small_state()), tmp_path, template) as path:
        with caplog.at_level(logging.WARNING, logger="retention.runtime"):
            assert await asyncio.to_thread(main, ["once", "--config", str(path)]) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "retention.runtime"]
    assert any("token file" in m and "can be read by its group and others" in m for m in warned)
