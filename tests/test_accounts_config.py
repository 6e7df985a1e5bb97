"""Several accounts in one config: [[accounts]], what they inherit from [api], their tokens, and
policies and holds limited to some of them. Real files in tmp_path, real env variables."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from retention.config import TOKEN_ENV, Account, Settings, load_config
from retention.errors import ConfigError
from retention.models import DEFAULT_ACCOUNT

from .conftest import REPO

SECRET = "sk-accounts-SECRET-5551234"
OTHER_SECRET = "sk-accounts-OTHER-SECRET-777"
API = """
[api]
base_url = "http://127.0.0.1:8765/api/v1/"
requests_per_minute = 90
burst = 7
request_timeout = "20s"
connect_timeout = "4s"
max_concurrency = 3
max_attempts = 6
"""
TWO = (
    API
    + """
[[accounts]]
name = "acme"
token_env = "ACME_TOKEN"

[[accounts]]
name = "globex"
token_file = "globex.token"
base_url = "http://127.0.0.1:9999/api/v1"
requests_per_minute = 120
burst = 10
"""
)
POLICY = '\n[[policies]]\nname = "qa"\nagents = [532]\nmax_age = "1h"\n'


def write(folder: Path, text: str, name: str = "retention.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def token_file(folder: Path, value: str = OTHER_SECRET, name: str = "globex.token") -> Path:
    path = folder / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "\n" not in str(caught.value), "one line"
    return caught.value


def secret(account: Account) -> str | None:
    return account.token.get_secret_value() if account.token is not None else None


# ---- one account, as before ----------------------------------------------------------------


def test_without_accounts_the_api_section_is_the_one_account_named_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    settings = load_config(write(tmp_path, API + POLICY))
    [account] = settings.account_list()
    assert account == Account(
        name=DEFAULT_ACCOUNT,
        base_url="http://127.0.0.1:8765/api/v1/",
        requests_per_minute=90,
        burst=7,
        request_timeout=timedelta(seconds=20),
        connect_timeout=timedelta(seconds=4),
        max_concurrency=3,
        max_attempts=6,
        token=account.token,
        token_source=f"env {TOKEN_ENV}",
    )
    assert secret(account) == SECRET
    assert settings.token is account.token
    assert settings.account(None) is account and settings.account("default") is account
    assert settings.accounts == [] and settings.warnings == ()


@pytest.mark.parametrize(
    ("env", "file", "source", "token"),
    [
        (None, None, "not set", None),
        (SECRET, None, f"env {TOKEN_ENV}", SECRET),
        (None, "api.token", "file {folder}/api.token", OTHER_SECRET),
        (SECRET, "api.token", f"env {TOKEN_ENV}", SECRET),  # env beats the file, as before
    ],
)
def test_the_default_accounts_token_comes_from_env_or_api_token_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: str | None,
    file: str | None,
    source: str,
    token: str | None,
) -> None:
    if env is not None:
        monkeypatch.setenv(TOKEN_ENV, env)
    text = API
    if file is not None:
        token_file(tmp_path, name=file)
        text = API.replace("[api]", f'[api]\ntoken_file = "{file}"')
    account = load_config(write(tmp_path, text)).account(None)
    assert account.token_source == source.format(folder=tmp_path)
    assert secret(account) == token


# ---- several accounts ------------------------------------------------------------------------


def test_two_accounts_inherit_api_values_and_override_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_TOKEN", SECRET)
    monkeypatch.setenv(TOKEN_ENV, "not-used-with-accounts")
    token_file(tmp_path)
    settings = load_config(write(tmp_path, TWO + POLICY))
    acme, globex = settings.account_list()
    shared: dict[str, Any] = {
        "request_timeout": timedelta(seconds=20),
        "connect_timeout": timedelta(seconds=4),
        "max_concurrency": 3,
        "max_attempts": 6,
    }
    assert acme == Account(
        name="acme",
        base_url="http://127.0.0.1:8765/api/v1/",
        requests_per_minute=90,
        burst=7,
        token=acme.token,
        token_source="env ACME_TOKEN",
        **shared,
    )
    assert globex == Account(
        name="globex",
        base_url="http://127.0.0.1:9999/api/v1/",  # the slash added, as in [api]
        requests_per_minute=120,
        burst=10,
        token=globex.token,
        token_source=f"file {tmp_path / 'globex.token'}",
        **shared,
    )
    assert secret(acme) == SECRET and secret(globex) == OTHER_SECRET
    assert settings.account("globex") is globex
    assert settings.token is None, "several accounts, none named default"
    assert settings.warnings == ()


def test_env_overrides_of_api_reach_the_accounts_that_inherit_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_API__REQUESTS_PER_MINUTE", "60")
    token_file(tmp_path)
    acme, globex = load_config(write(tmp_path, TWO)).account_list()
    assert acme.requests_per_minute == 60 and globex.requests_per_minute == 120


def test_an_account_may_read_the_usual_token_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    text = API + '\n[[accounts]]\nname = "default"\ntoken_env = "CUSTOMGPT_API_TOKEN"\n'
    settings = load_config(write(tmp_path, text))
    assert settings.account(None).token_source == f"env {TOKEN_ENV}"
    assert settings.token is not None and settings.token.get_secret_value() == SECRET


def test_settings_token_is_the_default_accounts_among_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A_TOKEN", "a-token")
    monkeypatch.setenv("D_TOKEN", "d-token")
    text = (
        '[[accounts]]\nname = "a"\ntoken_env = "A_TOKEN"\n'
        '[[accounts]]\nname = "default"\ntoken_env = "D_TOKEN"\n'
    )
    settings = load_config(write(tmp_path, text))
    assert settings.token is not None and settings.token.get_secret_value() == "d-token"
    only = load_config(write(tmp_path, '[[accounts]]\nname = "a"\ntoken_env = "A_TOKEN"\n'))
    assert only.token is not None and only.token.get_secret_value() == "a-token"


def test_a_token_variable_that_is_not_set_is_a_warning_not_an_error(tmp_path: Path) -> None:
    token_file(tmp_path)
    settings = load_config(write(tmp_path, TWO))
    acme = settings.account("acme")
    assert acme.token is None and acme.token_source == "env ACME_TOKEN"
    assert settings.warnings == (
        "account 'acme': env ACME_TOKEN is not set (plan, once and run need the token)",
    )


def test_an_account_without_a_token_key_is_a_warning(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, '[[accounts]]\nname = "acme"\n'))
    assert settings.account(None).token is None
    assert settings.account(None).token_source == "not set"
    assert [w for w in settings.warnings if "account 'acme': no token" in w]


def test_a_token_file_others_can_read_is_warned_about_by_its_key(tmp_path: Path) -> None:
    token_file(tmp_path).chmod(0o644)
    settings = load_config(write(tmp_path, TWO.replace('token_env = "ACME_TOKEN"', "")))
    assert any(
        "accounts[1].token_file: token file" in w and "can be read by its group and others" in w
        for w in settings.warnings
    ), settings.warnings


def test_settings_account_by_name_or_the_only_one(tmp_path: Path) -> None:
    token_file(tmp_path)
    path = write(tmp_path, TWO)
    settings = load_config(path)
    with pytest.raises(ConfigError) as several:
        settings.account(None)
    assert str(several.value) == (
        f"{path}: several accounts: name one with --account (one of: acme, globex)"
    )
    with pytest.raises(ConfigError) as unknown:
        settings.account("initech")
    assert str(unknown.value) == f"{path}: no account 'initech' (accounts: acme, globex)"
    single = load_config(write(tmp_path, API))
    with pytest.raises(ConfigError, match=r"no account 'acme' \(accounts: default\)"):
        single.account("acme")


# ---- errors, each naming its key -------------------------------------------------------------

ACME = '[[accounts]]\nname = "acme"\n'
ERRORS = [
    # (id, config text, key, problem starts with)
    ("name-missing", '[[accounts]]\ntoken_env = "X"\n', "accounts[0].name", "required key"),
    ("name-uppercase", '[[accounts]]\nname = "Acme"\n', "accounts[0].name", "must be a lowercase"),
    ("name-leading-dash", '[[accounts]]\nname = "-a"\n', "accounts[0].name", "must be a lowercase"),
    ("name-too-long", f'[[accounts]]\nname = "{"a" * 41}"\n', "accounts[0].name", "must be a"),
    ("name-empty", '[[accounts]]\nname = ""\n', "accounts[0].name", "must be a lowercase"),
    ("name-newline", '[[accounts]]\nname = "a\\n"\n', "accounts[0].name", "must be a lowercase"),
    (
        "token-env-newline",
        ACME + 'token_env = "A\\n"\n',
        "accounts[0].token_env",
        "must be the name of an env variable",
    ),
    ("duplicate", ACME + ACME, "accounts[1].name", "duplicate of accounts[0] 'acme'"),
    ("unknown-key", ACME + "colour = 1\n", "accounts[0].colour", "unknown key (known keys: name"),
    (
        "token-env-not-a-name",
        ACME + 'token_env = "1234|abcdef"\n',
        "accounts[0].token_env",
        "must be the name of an env variable",
    ),
    (
        "both-token-keys",
        ACME + 'token_env = "ACME_TOKEN"\ntoken_file = "t"\n',
        "accounts[0].token_file",
        "give token_env or token_file, not both",
    ),
    (
        "inline-token",
        ACME + 'token = "sk-inline-SECRET"\n',
        "accounts[0].token",
        "the token never goes in the config file",
    ),
    (
        "missing-token-file",
        ACME + 'token_file = "missing"\n',
        "accounts[0].token_file",
        "cannot read token file",
    ),
    ("bad-base-url", ACME + 'base_url = "ftp://x"\n', "accounts[0].base_url", "must be an https"),
    ("zero-budget", ACME + "requests_per_minute = 0\n", "accounts[0].requests_per_minute", "Input"),
    ("huge-burst", ACME + "burst = 1000\n", "accounts[0].burst", "Input should be less"),
    ("not-a-list", '[accounts]\nname = "acme"\n', "accounts", "must be a list of tables"),
    ("not-tables", "accounts = [5]\n", "accounts[0]", "Input should be a valid dictionary"),
    (
        "api-token-file-too",
        '[api]\ntoken_file = "t"\n' + ACME,
        "api.token_file",
        "with [[accounts]], each account names its token: token_env or token_file",
    ),
    (
        "second-account",
        ACME + '[[accounts]]\nname = "b"\nburst = "lots"\n',
        "accounts[1].burst",
        "Input should be a valid integer",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "problem"), [row[1:] for row in ERRORS], ids=[row[0] for row in ERRORS]
)
def test_account_errors_name_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    error = error_of(path)
    assert (error.source, error.key) == (str(path), key)
    assert error.problem.startswith(problem), error.problem
    assert str(error).startswith(f"{path}: {key}: {problem}")
    assert "SECRET" not in str(error) and "abcdef" not in str(error)


def test_a_token_variable_with_line_breaks_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_TOKEN", "two\nlines")
    error = error_of(write(tmp_path, ACME + 'token_env = "ACME_TOKEN"\n'))
    assert error.source == "env ACME_TOKEN"
    assert error.problem.startswith("must hold exactly one line")


def test_api_token_file_from_env_with_accounts_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_API__TOKEN_FILE", "t")
    error = error_of(write(tmp_path, ACME))
    assert (error.source, error.key) == ("env RETENTION_API__TOKEN_FILE", "api.token_file")


# ---- policies and holds limited to accounts ------------------------------------------------


def rules_text(policy_accounts: str | None, hold_accounts: str | None) -> str:
    text = '[[policies]]\nname = "qa"\nagents = [532]\nmax_age = "1h"\n'
    if policy_accounts is not None:
        text += f"accounts = {policy_accounts}\n"
    text += '[[policies]]\nname = "idle"\nagents = [533]\nmax_age = "30d"\n'
    text += '[[holds]]\nname = "legal"\nname_matches = ["LEGAL*"]\n'
    if hold_accounts is not None:
        text += f"accounts = {hold_accounts}\n"
    return text


@pytest.mark.parametrize(
    ("accounts", "policy", "hold", "where"),
    [
        (TWO, '["initech"]', None, "policies[0] 'qa': accounts: unknown account 'initech' "),
        (TWO, '["acme", "globx"]', None, "policies[0] 'qa': accounts: unknown account 'globx' "),
        (TWO, None, '["initech"]', "holds[0] 'legal': accounts: unknown account 'initech' "),
        (API, '["acme"]', None, "policies[0] 'qa': accounts: unknown account 'acme' "),
        (TWO, "[]", None, "policies[0] 'qa': accounts: an empty list matches no account; "),
        (TWO, None, "[]", "holds[0] 'legal': accounts: an empty list matches no account; "),
        (TWO, '"acme"', None, "policies[0] 'qa': accounts: must be a list of account names"),
        (TWO, "[1]", None, "policies[0] 'qa': accounts: must be a list of account names"),
    ],
)
def test_rules_name_only_accounts_that_exist(
    tmp_path: Path, accounts: str, policy: str | None, hold: str | None, where: str
) -> None:
    token_file(tmp_path)
    path = write(tmp_path, accounts + rules_text(policy, hold))
    message = str(error_of(path))
    assert message.startswith(f"{path}: {where}"), message
    if "unknown" in where:
        names = "acme, globex" if accounts == TWO else "default"
        assert message.endswith(f"(accounts: {names})")


def test_without_accounts_rules_may_name_the_default_account(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, API + rules_text('["default"]', '["default"]')))
    assert settings.rules().for_account("default") == settings.rules()


def test_each_account_gets_the_rules_that_name_it_or_none(tmp_path: Path) -> None:
    token_file(tmp_path)
    settings = load_config(write(tmp_path, TWO + rules_text('["globex"]', '["acme"]')))
    rules = settings.rules()
    assert rules.policies[0].accounts == frozenset({"globex"})
    assert rules.policies[1].accounts is None and rules.holds[0].accounts == frozenset({"acme"})
    acme, globex = rules.for_account("acme"), rules.for_account("globex")
    assert [p.name for p in acme.policies] == ["idle"]
    assert [h.name for h in acme.holds] == ["legal"]
    assert [p.name for p in globex.policies] == ["qa", "idle"] and globex.holds == ()
    assert acme.fingerprint(dry_run=False) != globex.fingerprint(dry_run=False)


def test_moving_a_rule_to_another_account_changes_the_fingerprint(tmp_path: Path) -> None:
    token_file(tmp_path)
    prints = {
        load_config(write(tmp_path, TWO + rules_text(accounts, None)))
        .rules()
        .fingerprint(dry_run=False)
        for accounts in (None, '["acme"]', '["globex"]', '["acme", "globex"]')
    }
    assert len(prints) == 4


# ---- the token is never shown ----------------------------------------------------------------


def test_no_repr_str_or_description_shows_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_TOKEN", SECRET)
    token_file(tmp_path)
    settings = load_config(write(tmp_path, TWO + POLICY))
    assert all(a.token is not None for a in settings.account_list())
    shown = [
        repr(settings),
        str(settings),
        str(settings.describe()),
        settings.model_dump_json(),
        repr(settings.account_list()),
        *(str(a) for a in settings.account_list()),
        repr(settings.rules()),
    ]
    for text in shown:
        assert SECRET not in text and OTHER_SECRET not in text
    described = settings.describe()["accounts"]
    assert described == [
        {
            "name": "acme",
            "base_url": "http://127.0.0.1:8765/api/v1/",
            "requests_per_minute": 90,
            "burst": 7,
            "token": "set",
            "token_source": "env ACME_TOKEN",
        },
        {
            "name": "globex",
            "base_url": "http://127.0.0.1:9999/api/v1/",
            "requests_per_minute": 120,
            "burst": 10,
            "token": "set",
            "token_source": f"file {tmp_path / 'globex.token'}",
        },
    ]


def test_the_default_account_is_described_too(tmp_path: Path) -> None:
    described = load_config(write(tmp_path, API)).describe()
    assert described["accounts"] == [
        {
            "name": "default",
            "base_url": "http://127.0.0.1:8765/api/v1/",
            "requests_per_minute": 90,
            "burst": 7,
            "token": "not set",
            "token_source": "not set",
        }
    ]
    assert described["api"]["token"] == "not set"


# ---- the example file ------------------------------------------------------------------------


def test_the_examples_commented_accounts_are_valid_once_uncommented(tmp_path: Path) -> None:
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    before, block = text.split("# [[accounts]]", 1)
    block, after = block.split("[store]", 1)
    block = re.sub(r"^# ", "", "# [[accounts]]" + block, flags=re.M)
    after = re.sub(r"^# (accounts = )", r"\1", after, flags=re.M)
    secret_file = token_file(tmp_path, name="globex-customgpt-token")
    block = block.replace("/run/secrets/globex-customgpt-token", str(secret_file))
    path = write(tmp_path, before + block + "[store]" + after)
    settings: Settings = load_config(path)
    acme, globex = settings.account_list()
    assert (acme.name, acme.requests_per_minute, acme.token_source) == (
        "acme",
        60,
        "env ACME_CUSTOMGPT_TOKEN",
    )
    assert (globex.name, globex.requests_per_minute) == ("globex", 120)
    assert secret(globex) == OTHER_SECRET
    rules = settings.rules()
    assert [p.name for p in rules.for_account("globex").policies] == ["qa-chats", "qa-tickets"]
    assert [h.name for h in rules.for_account("globex").holds] == ["legal"]
    assert len(rules.for_account("acme").policies) == 3


def test_one_account_under_two_names_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("A_TOKEN", "same-token")
    monkeypatch.setenv("B_TOKEN", "same-token")
    config = tmp_path / "retention.toml"
    config.write_text(
        '[[accounts]]\nname = "acme"\ntoken_env = "A_TOKEN"\n'
        '[[accounts]]\nname = "acme-eu"\ntoken_env = "B_TOKEN"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    assert raised.value.key == "accounts[1]"
    assert "'acme' and 'acme-eu' use the same token" in str(raised.value)
    assert "same-token" not in str(raised.value)


def test_the_effective_configuration_writes_durations_as_people_do(tmp_path: Path) -> None:
    config = tmp_path / "retention.toml"
    config.write_text('[schedule]\ndiscover_every = "15m"\n', encoding="utf-8")
    described = load_config(config).describe()
    assert described["schedule"]["discover_every"] == "15m"
    assert described["safety"]["policy_change_grace"] == "1h"
    assert "PT" not in repr(described)
