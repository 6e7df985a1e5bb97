"""Configuration: the example file, env overrides, and errors that name file, rule and key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from retention.config import CONFIG_ENV, TOKEN_ENV, config_path, load_config
from retention.errors import ConfigError
from retention.models import AgeFrom

from .conftest import REPO

EXAMPLE = REPO / "config.example.toml"
MINIMAL = """
[api]
base_url = "http://127.0.0.1:8765/api/v1/"
requests_per_minute = 60

[[policies]]
name = "qa-chats"
agents = [532]
name_matches = ["Test*"]
max_age = "1h"
"""


def write(tmp_path: Path, text: str, name: str = "retention.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message, "one line"
    return message


def test_example_file_loads_with_every_design_key() -> None:
    settings = load_config(EXAMPLE)
    assert settings.api.base_url == "https://app.customgpt.ai/api/v1/"
    assert settings.api.requests_per_minute == 60
    assert settings.store.url == f"sqlite+aiosqlite:///{REPO / 'retention.db'}"  # beside it
    assert settings.schedule.discover_every == timedelta(minutes=15)
    assert settings.schedule.delete_every == timedelta(minutes=1)
    assert settings.schedule.reconcile_every == timedelta(hours=24)
    assert settings.safety.dry_run is False
    assert settings.admin.listen == "127.0.0.1:8080"
    rules = settings.rules()
    policies, holds = rules.policies, rules.holds
    assert [p.name for p in policies] == ["qa-chats", "qa-tickets", "idle-anonymous"]
    assert policies[0].agents == frozenset({532}) and policies[0].max_age == timedelta(hours=1)
    assert policies[2].age_from is AgeFrom.LAST_ACTIVITY
    assert [h.name for h in holds] == ["legal"]
    assert "8ff8078b-3e88-4ad1-8e3f-9a37324964af" in holds[0].session_ids
    assert settings.token is None


def test_env_beats_file_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_API__REQUESTS_PER_MINUTE", "90")
    monkeypatch.setenv("RETENTION_SAFETY__DRY_RUN", "true")
    monkeypatch.setenv("RETENTION_SCHEDULE__DELETE_EVERY", "30s")
    settings = load_config(write(tmp_path, MINIMAL))
    assert settings.api.requests_per_minute == 90
    assert settings.api.base_url == "http://127.0.0.1:8765/api/v1/", "the file's other keys stay"
    assert settings.safety.dry_run is True
    assert settings.schedule.delete_every == timedelta(seconds=30)
    assert [p.name for p in settings.policies] == ["qa-chats"]


def test_unknown_key_is_named_with_the_known_ones(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL.replace("requests_per_minute", "requests_per_min")))
    assert message.startswith(f"{tmp_path / 'retention.toml'}: api.requests_per_min: unknown key")
    assert "requests_per_minute" in message


def test_unknown_section_is_named(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + "\n[schedul]\ndelete_every = '1m'\n"))
    assert "schedul: unknown key" in message


def test_misspelt_policy_key_names_the_policy(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL.replace("max_age", "max_agee")))
    assert "policies[0] 'qa-chats': max_agee: unknown key" in message


def test_bad_duration_names_file_policy_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"1h"', '"3 parsecs"'))
    message = error_of(path)
    assert message.startswith(f"{path}: policies[0] 'qa-chats': max_age: invalid duration")
    assert "'3 parsecs'" in message


def test_duration_without_unit_is_explained(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL.replace('max_age = "1h"', "max_age = 3600")))
    assert "max_age: write durations with a unit" in message


def test_bad_env_value_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_API__REQUESTS_PER_MINUTE", "lots")
    message = error_of(write(tmp_path, MINIMAL))
    assert message.startswith("env RETENTION_API__REQUESTS_PER_MINUTE: api.requests_per_minute:")


def test_broad_policy_needs_confirmation(tmp_path: Path) -> None:
    text = '[[policies]]\nname = "all"\nagents = "*"\nmax_age = "10m"\n'
    assert "policies[0] 'all': confirm_broad:" in error_of(write(tmp_path, text))
    load_config(write(tmp_path, text + "confirm_broad = true\n"))


EVERYWHERE = '[[policies]]\nname = "all"\nagents = "*"\n'


@pytest.mark.parametrize(
    "lines",
    [
        'max_age = "10m"',
        'max_age = "1h"',  # exactly an hour: the old check missed it
        'max_age = "1d"',  # a day or less is broad
        'name_matches = ["*"]\nmax_age = "2h"',
        'name_matches = ["Test*", "*"]\nmax_age = "2h"',  # any glob letting every name by
        'name_regex = ""\nmax_age = "2h"',
        'name_regex = ".*"\nmax_age = "2h"',
        'name_regex = "x*"\nmax_age = "2h"',  # matches the empty string: searches succeed
        'name_regex = "."\nmax_age = "2h"',  # any one character: every real name
        'name_regex = "\\\\S"\nmax_age = "2h"',
        'name_regex = "[[:print:]]"\nmax_age = "2h"',
        'name_matches = ["?*"]\nmax_age = "2h"',
        'name_regex = "(?s).*"\nname_matches = ["**"]\nmax_age = "2h"',
        'origins = ["created", "registered", "discovered"]\nmax_age = "2h"',
        'user_type = "any"\nmax_age = "2h"',
    ],
)
def test_every_broad_form_needs_confirmation(tmp_path: Path, lines: str) -> None:
    text = EVERYWHERE + lines + "\n"
    message = error_of(write(tmp_path, text))
    assert "policies[0] 'all': confirm_broad: applies to every conversation" in message
    assert "1 day or less" in message
    load_config(write(tmp_path, text + "confirm_broad = true\n"))


@pytest.mark.parametrize(
    "lines",
    [
        'max_age = "1d1s"',  # slower than a day
        'agents = [532]\nmax_age = "10m"',
        'name_matches = ["Test*"]\nmax_age = "10m"',
        'name_matches = ["?*x"]\nmax_age = "10m"',
        'name_regex = "^QA-\\\\d+"\nmax_age = "10m"',
        'name_regex = "^$"\nmax_age = "10m"',
        'origins = ["created", "registered"]\nmax_age = "10m"',
        'user_type = "anonymous"\nmax_age = "10m"',
    ],
)
def test_narrowed_or_slow_policies_are_not_broad(tmp_path: Path, lines: str) -> None:
    text = EVERYWHERE.replace('agents = "*"\n', "") + lines + "\n"
    if "agents =" not in lines:
        text = text.replace('name = "all"\n', 'name = "all"\nagents = "*"\n')
    load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("regex", "problem"),
    [
        ("(a)\\\\1", "invalid escape sequence"),  # a backreference
        ("(?=x)y", "invalid perl operator"),  # lookahead
        ("(unclosed", "missing )"),
    ],
)
def test_a_regex_re2_cannot_run_is_refused_by_name(
    tmp_path: Path, regex: str, problem: str
) -> None:
    message = error_of(write(tmp_path, MINIMAL + f'name_regex = "{regex}"\n'))
    assert message.startswith(f"{tmp_path / 'retention.toml'}: policies[0] 'qa-chats': name_regex:")
    assert problem in message and "RE2" in message


def test_a_catastrophic_regex_matches_in_linear_time(tmp_path: Path) -> None:
    # With a backtracking engine this search takes longer than the test's timeout.
    text = MINIMAL.replace('name_matches = ["Test*"]', 'name_regex = "^(a+)+$"')
    [policy] = load_config(write(tmp_path, text)).rules().policies
    assert not policy.accepts_name("a" * 100_000 + "!")
    assert policy.accepts_name("a" * 100_000)


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        # Overflowed timedelta: a traceback before; now one line.
        ('max_age = "99999999999w"', "max_age: duration '99999999999w' is too long"),
        # Passed check before, then crashed every sweep.
        ('max_age = "100000000w"', "max_age: duration '100000000w' is too long"),
        ('max_age = "5300w"', "max_age: duration '5300w' is too long: at most 100 years"),
        (
            'max_age = "1h"\n[schedule]\ndelete_every = "0.2s"',
            "schedule.delete_every: interval 0s is too short: at least 1s",
        ),
        (
            'max_age = "1h"\n[schedule]\ndiscover_every = "500000w"',
            "schedule.discover_every: duration",
        ),
        ("max_age = true", "max_age: expected a duration such as '2h', got true"),
        ("agents = [true]", 'agents: must be "*" or a list of agent ids'),
        (f"agents = [{2**63}]", 'agents: must be "*" or a list of agent ids'),
        ("agents = [0]", 'agents: must be "*" or a list of agent ids'),
    ],
)
def test_durations_and_ids_are_bounded(tmp_path: Path, replacement: str, expected: str) -> None:
    text = (
        MINIMAL.replace('max_age = "1h"', replacement)
        if "max_age" in replacement
        else (MINIMAL.replace("agents = [532]", replacement))
    )
    message = error_of(write(tmp_path, text))
    assert expected in message, message


def test_duplicate_policy_names_are_rejected(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[policies]]\nname = "QA-chats"\nagents = "*"\nmax_age = "2d"\n'
    assert "policies[1] 'QA-chats': name: duplicate of policies[0] 'qa-chats'" in error_of(
        write(tmp_path, text)
    )


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('name_regex = "(unclosed"', "policies[0] 'qa-chats': name_regex: invalid regex"),
        ('name_matches = ["Test["]', "policies[0] 'qa-chats': name_matches: invalid glob"),
        ("agents = []", "policies[0] 'qa-chats': agents: an empty list matches no agent"),
        ('age_from = "birthday"', "policies[0] 'qa-chats': age_from:"),
        ('user_type = "robot"', "policies[0] 'qa-chats': user_type: Input should be 'any', "),
        ('agents = "all"', "policies[0] 'qa-chats': agents: must be \"*\" or a list of agent"),
    ],
)
def test_invalid_matchers_name_the_policy(tmp_path: Path, snippet: str, expected: str) -> None:
    key = snippet.split(" ")[0]
    lines = [line for line in MINIMAL.splitlines() if not line.startswith(key)]
    assert expected in error_of(write(tmp_path, "\n".join([*lines, snippet])))


def test_hold_errors_name_the_hold(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[holds]]\nname = "legal"\nname_regex = "["\n'
    assert "holds[0] 'legal': name_regex: invalid regex" in error_of(write(tmp_path, text))


def test_bad_cron_is_explained(tmp_path: Path) -> None:
    text = MINIMAL + '\n[schedule]\ndelete_cron = "every minute"\n'
    assert "schedule.delete_cron: invalid cron expression" in error_of(write(tmp_path, text))


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[api\n")
    assert error_of(path).startswith(f"{path}: not valid TOML")


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert error_of(missing) == (
        f"{missing}: file not found; `retention init {missing}` writes a safe starter config there"
    )


def test_config_path_falls_back_to_env() -> None:
    assert config_path("a.toml", {CONFIG_ENV: "b.toml"}) == Path("a.toml")
    assert config_path(None, {CONFIG_ENV: "b.toml"}) == Path("b.toml")
    with pytest.raises(ConfigError, match="pass --config FILE or set RETENTION_CONFIG"):
        config_path(None, {})


SECRET = "sk-config-SECRET-987654321"


def test_token_from_env_is_hidden_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, SECRET)
    settings = load_config(write(tmp_path, MINIMAL))
    assert settings.token is not None and settings.token.get_secret_value() == SECRET
    for text in (
        repr(settings),
        str(settings),
        str(settings.describe()),
        settings.model_dump_json(),
    ):
        assert SECRET not in text
    assert settings.describe()["api"]["token"] == "set"


def test_token_from_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(SECRET + "\n", encoding="utf-8")
    settings = load_config(write(tmp_path, MINIMAL.replace("[api]", '[api]\ntoken_file = "token"')))
    assert settings.token is not None and settings.token.get_secret_value() == SECRET


def test_env_token_beats_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    text = MINIMAL.replace("[api]", '[api]\ntoken_file = "missing"')
    settings = load_config(write(tmp_path, text))
    assert settings.token is not None and settings.token.get_secret_value() == "from-env"


def test_unreadable_token_file_is_named(tmp_path: Path) -> None:
    text = MINIMAL.replace("[api]", '[api]\ntoken_file = "missing"')
    assert "api.token_file: cannot read token file" in error_of(write(tmp_path, text))


def test_token_in_the_config_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL.replace("[api]", f'[api]\ntoken = "{SECRET}"')))
    assert "api.token: the token never goes in the config file" in message
    assert SECRET not in message


def test_admin_token_from_env_or_file_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "admin").write_text("from-file\n", encoding="utf-8")
    text = MINIMAL + '\n[admin]\ntoken_file = "admin"\n'
    settings = load_config(write(tmp_path, text))
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "from-file"
    monkeypatch.setenv("RETENTION_ADMIN_TOKEN", "from-env")
    settings = load_config(write(tmp_path, text))
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "from-env"
    assert settings.describe()["admin"]["token"] == "set"
    assert "from-env" not in repr(settings) + str(settings.describe())


def test_admin_token_in_the_file_is_refused(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[admin]\ntoken = "x"\n'))
    assert "admin.token: the token never goes in the config file" in message


@pytest.mark.parametrize("listen", ["8080", "localhost:", ":8080", "host:99999"])
def test_bad_listen_address_is_explained(tmp_path: Path, listen: str) -> None:
    message = error_of(write(tmp_path, MINIMAL + f'\n[admin]\nlisten = "{listen}"\n'))
    assert "admin.listen: expected host:port" in message


def test_empty_listen_turns_the_admin_surface_off(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, MINIMAL + '\n[admin]\nlisten = ""\n'))
    assert settings.admin.listen is None


def test_policy_change_grace_takes_zero_or_a_duration(tmp_path: Path) -> None:
    zero = load_config(write(tmp_path, MINIMAL + '\n[safety]\npolicy_change_grace = "0"\n'))
    assert zero.safety.policy_change_grace == timedelta(0)
    ten = load_config(write(tmp_path, MINIMAL + '\n[safety]\npolicy_change_grace = "10m"\n'))
    assert ten.safety.policy_change_grace == timedelta(minutes=10)
