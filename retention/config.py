"""Configuration: a TOML file, overridden key by key by env ``RETENTION_<SECTION>__<KEY>``.

Every problem becomes one ConfigError line naming the file (or env variable), the key and what
is wrong. The API token is read from env ``CUSTOMGPT_API_TOKEN`` or ``[api] token_file`` and held
as a SecretStr: no repr, log line or error message shows it.

One daemon may serve several CustomGPT accounts: each ``[[accounts]]`` entry names its token
(``token_env`` or ``token_file``) and may set its own ``base_url`` and request budget; the rest
comes from ``[api]``. Without ``[[accounts]]``, ``[api]`` is the one account, named ``default``.
Both resolve to :class:`Account` values at load (:meth:`Settings.account_list`).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictInt,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from retention.database import parse_url as parse_store_url
from retention.endpoints import DEFAULT_BASE_URL, check_base_url, is_loopback
from retention.errors import ConfigError, StoreError
from retention.models import DEFAULT_ACCOUNT, AgeFrom, Creator, Origin
from retention.policy import (
    ALL_AGENTS,
    Hold,
    Policy,
    RuleError,
    Rules,
    compile_glob,
    compile_regex,
    validate_rules,
)
from retention.timefmt import format_duration, parse_duration
from retention.validation import readable_error

CONFIG_ENV = "RETENTION_CONFIG"
TOKEN_ENV = "CUSTOMGPT_API_TOKEN"
ADMIN_TOKEN_ENV = "RETENTION_ADMIN_TOKEN"
ENV_PREFIX = "RETENTION_"
ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")  # 40: keys built on it fit
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


MAX_DURATION = timedelta(days=365 * 100)  # past this, date arithmetic overflows soon enough
MIN_INTERVAL = timedelta(seconds=1)  # schedule intervals: no busy loop


def _duration(value: object) -> object:
    shown = repr(value) if isinstance(value, str) else None
    if isinstance(value, str):
        try:
            value = parse_duration(value)
        except OverflowError:
            value = MAX_DURATION * 2
    elif isinstance(value, bool):  # pydantic would read true as one second
        raise ValueError(f"expected a duration such as '2h', got {str(value).lower()}")
    elif isinstance(value, int | float):
        raise ValueError(f"write durations with a unit, e.g. '{value}s' or '{value}m'")
    if isinstance(value, timedelta) and value > MAX_DURATION:
        shown = shown or format_duration(value)
        raise ValueError(f"duration {shown} is too long: at most 100 years")
    return value


def _interval(value: object) -> object:
    value = _duration(value)
    if isinstance(value, timedelta) and value < MIN_INTERVAL:
        raise ValueError(f"interval {format_duration(value)} is too short: at least 1s")
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Interval = Annotated[timedelta, BeforeValidator(_interval)]
# Agent ids as the API and the store hold them: positive, within 64 signed bits, never a bool.
MAX_AGENT_ID = 2**63 - 1
AgentId = Annotated[StrictInt, Field(gt=0, le=MAX_AGENT_ID)]


def is_agent_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_AGENT_ID


def to_duration(value: str | timedelta) -> timedelta:
    """The one duration parser: config keys and every TTL (CLI, admin API, Python API)."""
    result = _duration(value)
    if not isinstance(result, timedelta):
        raise ValueError(f"expected a duration such as '2h', got {value!r}")
    return result


def _duration_or_zero(value: object) -> object:
    if value in ("0", 0):
        return timedelta(0)
    return _duration(value)


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, e.g. '127.0.0.1:8080', got {value!r}")
    return host.strip("[]"), int(port)


def check_admin_listen(listen: str | None, admin_token: SecretStr | None) -> None:
    """The admin surface's address rule, the same for ``check`` and for the server at ``run``:
    beyond loopback only with an admin token, since anyone who reaches it could create and track.
    """
    if not listen:
        return
    host, _port = parse_listen(listen)
    if not is_loopback(host) and admin_token is None:
        raise ConfigError(
            f"refusing to listen on {listen} beyond loopback without an admin token: set env "
            f"{ADMIN_TOKEN_ENV} or [admin] token_file",
            key="admin.listen",
        )


_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")


def _cron(value: str | None) -> str | None:
    """A light structural check; the daemon's scheduler parses the expression in full at start."""
    if value is None:
        return None
    fields = value.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(
            f"invalid cron expression {value!r}: expected 5 fields "
            "'minute hour day month day_of_week', e.g. '*/5 * * * *'"
        )
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiSettings(_Section):
    base_url: str = DEFAULT_BASE_URL
    requests_per_minute: int = Field(60, ge=1, le=6000)
    burst: int = Field(5, ge=1, le=120)
    request_timeout: Duration = timedelta(seconds=30)
    connect_timeout: Duration = timedelta(seconds=10)
    max_concurrency: int = Field(4, ge=1, le=64)
    max_attempts: int = Field(5, ge=1, le=20)
    token_file: Path | None = None

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        check_base_url(value)
        return value if value.endswith("/") else value + "/"


class StoreSettings(_Section):
    url: str = "sqlite+aiosqlite:///retention.db"
    # One writer per store: a writer's lease lapses this long after its last heartbeat (every
    # third of it), and a standby takes over then.
    lease_ttl: Interval = timedelta(seconds=30)
    # Accounts the store still holds rows of but no longer works in: writers start only when
    # every account with live conversations in the store is configured or retired here.
    retired_accounts: list[str] = []

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            parsed = parse_store_url(value)  # what opening the store reads
        except StoreError as exc:
            raise ValueError(str(exc)) from None
        if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
            raise ValueError(
                "an in-memory store forgets every TTL and deletion in progress at exit: name a "
                "file, e.g. 'sqlite+aiosqlite:////var/lib/retention/retention.db'"
            )
        return value


class ScheduleSettings(_Section):
    discover_every: Interval = timedelta(minutes=15)
    discover_cron: Annotated[str | None, BeforeValidator(_cron)] = None
    delete_every: Interval = timedelta(minutes=1)
    delete_cron: Annotated[str | None, BeforeValidator(_cron)] = None
    reconcile_every: Interval = timedelta(hours=24)
    watch_config: bool = True  # reload policies and holds when the config file changes


class SafetySettings(_Section):
    dry_run: bool = False
    # Deletions a rules change newly causes (a hold gone, a due time moved sooner) wait this long:
    # time to notice and revert a bad or half-written edit before it costs data.
    policy_change_grace: Annotated[timedelta, BeforeValidator(_duration_or_zero)] = timedelta(
        hours=1
    )
    # A deletion resting on a name, an updated_at or a newest message read longer ago than this
    # reads them again first (one messages call, or a walk of the agent where that is cheaper).
    facts_max_age: Duration = timedelta(minutes=10)
    # Delete nothing while the local clock and the server's Date differ by more than this.
    max_clock_skew: Duration = timedelta(minutes=5)
    # The mass-deletion breaker: a sweep deletes nothing unapproved in the account when more
    # than max_deletions are due, nor in an agent when more than max_due_fraction of its live
    # conversations are due under policies (once at least breaker_floor are).
    max_deletions: int = Field(1000, ge=1, le=10_000_000)
    max_due_fraction: float = Field(0.5, gt=0, le=1)
    breaker_floor: int = Field(20, ge=1, le=10_000_000)


class AdminSettings(_Section):
    listen: str | None = "127.0.0.1:8080"
    token_file: Path | None = None
    ready_after_failing: Duration = timedelta(minutes=15)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parse_listen(value)
        return value


class LogSettings(_Section):
    format: Literal["auto", "json", "text"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AccountSpec(_Section):
    """One ``[[accounts]]`` entry as written. Unset keys take ``[api]``'s values at load."""

    name: str
    token_env: str | None = None  # the NAME of the env variable that holds the token
    token_file: Path | None = None
    base_url: str | None = None
    requests_per_minute: int | None = Field(None, ge=1, le=6000)
    burst: int | None = Field(None, ge=1, le=120)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not ACCOUNT_NAME.fullmatch(value):
            raise ValueError(
                "must be a lowercase identifier: a-z, 0-9 and _ . - (starting with a letter or "
                f"digit), at most 40 characters, got {value!r}"
            )
        return value

    @field_validator("token_env")
    @classmethod
    def _check_token_env(cls, value: str | None) -> str | None:
        # The value is not echoed: a token pasted here by mistake must not reach a log.
        if value is not None and not ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the name of an env variable that holds the token (letters, digits and "
                '_, not starting with a digit, e.g. "ACME_CUSTOMGPT_TOKEN"), not the token itself'
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_base_url(value)
        return value if value.endswith("/") else value + "/"


@dataclass(frozen=True, kw_only=True)
class Account:
    """One CustomGPT account the daemon serves, resolved at load: its own values where its
    ``[[accounts]]`` entry sets them, ``[api]``'s otherwise. The token shows in no repr."""

    name: str
    base_url: str
    requests_per_minute: int
    burst: int
    request_timeout: timedelta
    connect_timeout: timedelta
    max_concurrency: int
    max_attempts: int
    token: SecretStr | None = field(default=None, repr=False)
    # Where the token is read from, for people: "env ACME_TOKEN", "file /run/secrets/acme" or
    # "not set" (``token`` is None when that variable is unset).
    token_source: str = "not set"


def _account_names(value: object) -> object:
    """A non-empty list of account names, or None (every account)."""
    if value is None:
        return None
    if isinstance(value, list) and not value:
        raise ValueError("an empty list matches no account; leave accounts out for every account")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f'must be a list of account names, e.g. ["acme"], got {value!r}')


AccountNames = Annotated[list[str] | None, BeforeValidator(_account_names)]


def _account_set(accounts: list[str] | None) -> frozenset[str] | None:
    return None if accounts is None else frozenset(accounts)


def _agents(value: object) -> object:
    """``"*"``, one agent id, or a non-empty list of ids; anything else is explained."""
    if value == ALL_AGENTS:
        return value
    if is_agent_id(value):
        return [value]
    if isinstance(value, list) and not value:
        raise ValueError(f'an empty list matches no agent; use "{ALL_AGENTS}" for every agent')
    if isinstance(value, list) and all(is_agent_id(v) for v in value):
        return value
    raise ValueError(
        f'must be "{ALL_AGENTS}" or a list of agent ids (positive 64-bit integers), got {value!r}'
    )


Agents = Annotated[Literal["*"] | list[int], BeforeValidator(_agents)]


class _RuleSpec(_Section):
    name: str = Field(min_length=1)
    name_matches: list[str] = []
    name_regex: str | None = None
    accounts: AccountNames = None  # None: every account

    @field_validator("name_matches")
    @classmethod
    def _check_globs(cls, value: list[str]) -> list[str]:
        for glob in value:
            compile_glob(glob)
        return value

    @field_validator("name_regex")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            compile_regex(value)
        return value


def _agent_set(agents: Literal["*"] | list[int]) -> frozenset[int] | None:
    return None if isinstance(agents, str) else frozenset(agents)


class PolicySpec(_RuleSpec):
    agents: Agents
    max_age: Duration
    age_from: AgeFrom = AgeFrom.CREATED
    user_type: Literal["any", "anonymous", "team_member"] = "any"
    origins: list[Origin] | None = None
    confirm_broad: bool = False
    dry_run: bool = False

    def to_policy(self) -> Policy:
        return Policy(
            name=self.name,
            agents=_agent_set(self.agents),
            name_matches=tuple(self.name_matches),
            name_regex=self.name_regex,
            max_age=self.max_age,
            age_from=self.age_from,
            user_type=None if self.user_type == "any" else Creator(self.user_type),
            origins=frozenset(self.origins) if self.origins is not None else None,
            confirm_broad=self.confirm_broad,
            dry_run=self.dry_run,
            accounts=_account_set(self.accounts),
        )


class HoldSpec(_RuleSpec):
    agents: Agents = "*"
    session_ids: list[str] = []

    def to_hold(self) -> Hold:
        return Hold(
            name=self.name,
            agents=_agent_set(self.agents),
            name_matches=tuple(self.name_matches),
            name_regex=self.name_regex,
            session_ids=frozenset(self.session_ids),
            accounts=_account_set(self.accounts),
        )


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_config`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    api: ApiSettings = ApiSettings()
    store: StoreSettings = StoreSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    safety: SafetySettings = SafetySettings()
    admin: AdminSettings = AdminSettings()
    log: LogSettings = LogSettings()
    accounts: list[AccountSpec] = []
    policies: list[PolicySpec] = []
    holds: list[HoldSpec] = []

    _accounts: tuple[Account, ...] = PrivateAttr(default=())
    _token: SecretStr | None = PrivateAttr(default=None)
    _admin_token: SecretStr | None = PrivateAttr(default=None)
    _source: str = PrivateAttr(default="")
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init kwargs; env must beat it, so env comes first.
        return env_settings, init_settings

    @property
    def token(self) -> SecretStr | None:
        """The token of the account named ``default``, else of the only account, else None."""
        return self._token

    def account_list(self) -> tuple[Account, ...]:
        """Every account, in file order; without ``[[accounts]]``, the one named ``default``."""
        return self._accounts

    def account(self, name: str | None = None) -> Account:
        """The account named ``name``; with None, the only account. ConfigError otherwise."""
        names = ", ".join(a.name for a in self._accounts)
        source = self._source or None
        if name is None:
            if len(self._accounts) == 1:
                return self._accounts[0]
            if not self._accounts:
                raise ConfigError("no account: build the settings with load_config", source=source)
            raise ConfigError(
                f"several accounts: name one with --account (one of: {names})", source=source
            )
        for account in self._accounts:
            if account.name == name:
                return account
        raise ConfigError(f"no account {name!r} (accounts: {names})", source=source)

    @property
    def admin_token(self) -> SecretStr | None:
        return self._admin_token

    @property
    def source(self) -> str:
        return self._source

    @property
    def warnings(self) -> tuple[str, ...]:
        """Problems worth saying that do not stop a start (a token file others can read)."""
        return self._warnings

    def rules(self) -> Rules:
        """The policies and holds as the pure policy module wants them."""
        return Rules(
            tuple(p.to_policy() for p in self.policies),
            tuple(h.to_hold() for h in self.holds),
        )

    def describe(self) -> dict[str, Any]:
        """The effective configuration for a log line: the token shown only as set or not."""
        data = self.model_dump(mode="json", exclude={"policies", "holds", "accounts"})
        # Durations as people write them in the file ("15m"), not ISO 8601 ("PT15M").
        python = self.model_dump(exclude={"policies", "holds", "accounts"})
        for section, values in python.items():
            for key, value in values.items():
                if isinstance(value, timedelta):
                    data[section][key] = format_duration(value)
        data["api"]["token"] = "set" if self._token is not None else "not set"
        data["accounts"] = [
            {
                "name": a.name,
                "base_url": a.base_url,
                "requests_per_minute": a.requests_per_minute,
                "burst": a.burst,
                "token": "set" if a.token is not None else "not set",
                "token_source": a.token_source,
            }
            for a in self._accounts
        ]
        data["admin"]["token"] = "set" if self._admin_token is not None else "not set"
        data["policies"] = [p.name for p in self.policies]
        data["holds"] = [h.name for h in self.holds]
        return data


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """The config file to use: ``--config`` first, then env RETENTION_CONFIG."""
    chosen = explicit if explicit is not None else environ.get(CONFIG_ENV)
    if not chosen:
        raise ConfigError(
            f"no config file: pass --config FILE or set {CONFIG_ENV} "
            "(`retention init FILE` writes a safe starter config)"
        )
    return Path(chosen)


def load_config(path: Path, *, content: bytes | None = None, from_env: bool = False) -> Settings:
    """Read, validate and return the configuration, or raise one readable ConfigError.

    ``content`` is the file's bytes when the caller has read them already (live reload reads
    the file until it has settled, then parses exactly what it read). Env variables
    (``RETENTION_<SECTION>__<KEY>``, ``CUSTOMGPT_API_TOKEN``) come from os.environ.
    ``from_env``: env RETENTION_CONFIG named the file (as in the container image), which a
    missing file's message then says, with where to mount one.
    """
    env = os.environ
    source = str(path)
    try:
        data = path.read_bytes() if content is None else content
    except FileNotFoundError:
        raise ConfigError(_not_found(path, from_env=from_env), source=source) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a config file", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=source) from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line}; save it as UTF-8",
            source=source,
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    for section, env_name in (("api", TOKEN_ENV), ("admin", ADMIN_TOKEN_ENV)):
        if isinstance(raw.get(section), dict) and "token" in raw[section]:
            raise ConfigError(
                f"the token never goes in the config file: set env {env_name} or name a file "
                f"with [{section}] token_file",
                source=source,
                key=f"{section}.token",
            )
    _refuse_inline_account_tokens(raw, source)
    settings = _validate(raw, source, env)
    store_url = store_url_beside(settings.store.url, path.parent)
    if store_url != settings.store.url:
        settings = settings.model_copy(
            update={"store": settings.store.model_copy(update={"url": store_url})}
        )
    _check_accounts(settings, source, env)
    names = [a.name for a in settings.accounts] or [DEFAULT_ACCOUNT]
    try:
        rules = settings.rules()
        validate_rules(rules.policies, rules.holds, accounts=names)
    except RuleError as exc:
        raise ConfigError(str(exc), source=source) from None
    settings._source = source
    warnings: list[str] = []
    settings._accounts = _resolve_accounts(settings, path.parent, source, env, warnings)
    settings._token = _main_token(settings._accounts)
    settings._admin_token = _read_token(
        env.get(ADMIN_TOKEN_ENV),
        settings.admin.token_file,
        path.parent,
        source,
        key="admin.token_file",
        env_name=ADMIN_TOKEN_ENV,
        warnings=warnings,
    )
    settings._warnings = tuple(warnings)
    return settings


def _refuse_inline_account_tokens(raw: dict[str, Any], source: str) -> None:
    entries = raw.get("accounts")
    if isinstance(entries, dict):  # [accounts] where [[accounts]] was meant
        raise ConfigError(
            "must be a list of tables: write [[accounts]] above each account's keys",
            source=source,
            key="accounts",
        )
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict) and "token" in entry:
            raise ConfigError(
                "the token never goes in the config file: name the env variable that holds it "
                "with token_env, or a file with token_file",
                source=source,
                key=f"accounts[{index}].token",
            )


def _check_accounts(settings: Settings, source: str, env: Mapping[str, str]) -> None:
    """What one ``[[accounts]]`` entry cannot check about itself."""
    if not settings.accounts:
        return
    if settings.api.token_file is not None:
        env_name = f"{ENV_PREFIX}API__TOKEN_FILE"
        raise ConfigError(
            "with [[accounts]], each account names its token: token_env or token_file",
            source=f"env {env_name}" if env_name in env else source,
            key="api.token_file",
        )
    seen: dict[str, int] = {}
    for index, spec in enumerate(settings.accounts):
        if spec.name in seen:
            first = seen[spec.name]
            raise ConfigError(
                f"duplicate of accounts[{first}] {spec.name!r}",
                source=source,
                key=f"accounts[{index}].name",
            )
        seen[spec.name] = index
        if spec.token_env is not None and spec.token_file is not None:
            raise ConfigError(
                "give token_env or token_file, not both: the token comes from one place",
                source=source,
                key=f"accounts[{index}].token_file",
            )


def _resolve_accounts(
    settings: Settings, base: Path, source: str, env: Mapping[str, str], warnings: list[str]
) -> tuple[Account, ...]:
    """Every account with ``[api]``'s values where it sets none, and its token read."""
    api = settings.api
    if not settings.accounts:
        token = _read_token(
            env.get(TOKEN_ENV),
            api.token_file,
            base,
            source,
            key="api.token_file",
            env_name=TOKEN_ENV,
            warnings=warnings,
        )
        if (env.get(TOKEN_ENV) or "").strip():
            where = f"env {TOKEN_ENV}"
        elif api.token_file is not None:
            where = f"file {_token_path(api.token_file, base)}"
        else:
            where = "not set"
        return (_account(api, AccountSpec(name=DEFAULT_ACCOUNT), token, where),)
    accounts = []
    for index, spec in enumerate(settings.accounts):
        if spec.token_env is not None:
            token = _read_token(
                env.get(spec.token_env),
                None,
                base,
                source,
                key=f"accounts[{index}].token_env",
                env_name=spec.token_env,
                warnings=warnings,
            )
            where = f"env {spec.token_env}"
            if token is None:
                warnings.append(
                    f"account {spec.name!r}: env {spec.token_env} is not set "
                    "(plan, once and run need the token)"
                )
        elif spec.token_file is not None:
            token = _read_token(
                None,
                spec.token_file,
                base,
                source,
                key=f"accounts[{index}].token_file",
                env_name="",
                warnings=warnings,
            )
            where = f"file {_token_path(spec.token_file, base)}"
        else:
            token, where = None, "not set"
            warnings.append(
                f"account {spec.name!r}: no token: set token_env or token_file "
                "(plan, once and run need the token)"
            )
        accounts.append(_account(api, spec, token, where))
    _refuse_one_account_twice(accounts, source)
    return tuple(accounts)


def _refuse_one_account_twice(accounts: list[Account], source: str) -> None:
    """Two entries with one token at one base URL are one CustomGPT account under two names:
    a hold that names one of them would not protect what the other deletes."""
    seen: dict[tuple[str, str], str] = {}
    for index, account in enumerate(accounts):
        if account.token is None:
            continue
        key = (account.base_url, account.token.get_secret_value())
        if key in seen:
            raise ConfigError(
                f"accounts {seen[key]!r} and {account.name!r} use the same token at the same "
                "base_url: one CustomGPT account under two names (a hold naming one would not "
                "protect the other); keep one entry",
                source=source,
                key=f"accounts[{index}]",
            )
        seen[key] = account.name


def _account(api: ApiSettings, spec: AccountSpec, token: SecretStr | None, where: str) -> Account:
    """The account's own base_url and budget where it sets them; the rest is [api]'s."""
    return Account(
        name=spec.name,
        base_url=spec.base_url if spec.base_url is not None else api.base_url,
        requests_per_minute=(
            spec.requests_per_minute
            if spec.requests_per_minute is not None
            else api.requests_per_minute
        ),
        burst=spec.burst if spec.burst is not None else api.burst,
        request_timeout=api.request_timeout,
        connect_timeout=api.connect_timeout,
        max_concurrency=api.max_concurrency,
        max_attempts=api.max_attempts,
        token=token,
        token_source=where,
    )


def _main_token(accounts: tuple[Account, ...]) -> SecretStr | None:
    """``Settings.token``: the account named default's, else the only account's, else None."""
    for account in accounts:
        if account.name == DEFAULT_ACCOUNT:
            return account.token
    return accounts[0].token if len(accounts) == 1 else None


def _not_found(path: Path, *, from_env: bool) -> str:
    if not from_env:
        return f"file not found; `retention init {path}` writes a safe starter config there"
    return (
        f"file not found (env {CONFIG_ENV} names it): mount your config file at this path, e.g. "
        f"`docker run -v $PWD/retention.toml:{path}:ro ...` or a Kubernetes ConfigMap, or pass "
        "--config FILE; `retention init FILE` writes a safe starter config"
    )


def store_url_beside(url: str, folder: Path) -> str:
    """A relative SQLite path (in the file or in env) is relative to the config file's folder,
    as ``token_file`` is: the store does not follow the working directory. ``~`` is expanded."""
    parsed = parse_store_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    if database.startswith("file:"):  # an SQLite URI filename: left as it is
        return url
    file = Path(database).expanduser()
    if not file.is_absolute():
        file = folder.absolute() / file
    if str(file) == database:
        return url
    return parsed.set(database=os.path.normpath(file)).render_as_string(hide_password=False)


def _validate(raw: dict[str, Any], source: str, env: Mapping[str, str]) -> Settings:
    for name, spec in Settings.model_fields.items():
        # An env key of a section would replace a section that is not a table, unseen.
        section = isinstance(spec.annotation, type) and issubclass(spec.annotation, BaseModel)
        if section and name in raw and not isinstance(raw[name], dict):
            raise ConfigError(
                f"must be a table: write [{name}] and its keys below it", source=source, key=name
            )
    try:
        return Settings(**raw)
    except ValidationError as exc:
        error = readable_error(
            exc, raw, source=source, env=env, env_prefix=ENV_PREFIX, model=Settings
        )
        raise _indexed(error) from None


def _indexed(error: ConfigError) -> ConfigError:
    """``accounts.1.name`` -> ``accounts[1].name``, as the accounts' other errors name keys."""
    found = re.fullmatch(r"accounts\.(\d+)(\..+)?", error.key or "")
    if found is None:
        return error
    key = f"accounts[{found[1]}]{found[2] or ''}"
    return ConfigError(error.problem, source=error.source, key=key)


def _read_token(
    from_env: str | None,
    token_file: Path | None,
    base: Path,
    source: str,
    *,
    key: str,
    env_name: str,
    warnings: list[str],
) -> SecretStr | None:
    """The token from env, else from its file: exactly one non-empty line, nothing else.

    A file that group or others may read is allowed, with a warning in ``warnings``.
    """
    value = (from_env or "").strip()
    if value:
        if not _one_line(value):
            raise ConfigError(
                "must hold exactly one line, the token (it has line breaks or control characters)",
                source=f"env {env_name}",
            )
        return SecretStr(value)
    if token_file is None:
        return None
    file = _token_path(token_file, base)
    try:
        data = file.read_bytes()
        mode = file.stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"cannot read token file {str(file)!r}: {exc.strerror}", source=source, key=key
        ) from None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(
            f"token file {str(file)!r} is not UTF-8 text", source=source, key=key
        ) from None
    if not text:
        raise ConfigError(f"token file {str(file)!r} is empty", source=source, key=key)
    if not _one_line(text):
        lines = len(text.splitlines())
        found = f"it has {lines} lines" if lines > 1 else "it has control characters"
        raise ConfigError(
            f"token file {str(file)!r} must hold exactly one line, the token; {found}",
            source=source,
            key=key,
        )
    readers = [
        who for who, bit in (("its group", stat.S_IRGRP), ("others", stat.S_IROTH)) if mode & bit
    ]
    if readers:
        warnings.append(
            f"{source}: {key}: token file {str(file)!r} can be read by {' and '.join(readers)} "
            f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it"
        )
    return SecretStr(text)


def _token_path(token_file: Path, base: Path) -> Path:
    """A token file named relative to the config file's folder, or absolute."""
    return token_file if token_file.is_absolute() else base / token_file


def _one_line(token: str) -> bool:
    """No line break or other control character: the token goes into an HTTP header."""
    return all(c.isprintable() for c in token)
