"""What the admin surface serves: each account's engine by name, the request bodies, and the
error answer. :mod:`retention.web` routes requests to these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from retention.chain import Verdict
from retention.config import AgentId, Duration
from retention.daemon import Health
from retention.engine import Engine
from retention.metrics import Metrics
from retention.store import Store
from retention.tracking import name_problem


def fail(status: int, message: str, *, field: str | None = None, **kw: Any) -> web.Response:
    """An error answer: ``{"error": message, "field": field}``."""
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, **kw)


AccountName = Annotated[str, Field(min_length=1, max_length=40)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: AgentId
    ttl: Duration | None = None  # the config's duration type: "2h", "30d", "1d12h"
    account: AccountName | None = None


def _conversation_name(name: str) -> str:
    """The rule ``retention create --name`` applies too (:func:`name_problem`)."""
    if (problem := name_problem(name)) is not None:
        raise ValueError(problem)
    return name


class CreateBody(Body):
    name: Annotated[str, AfterValidator(_conversation_name)]


class TrackBody(Body):
    session_id: str = Field(min_length=8, max_length=64, pattern=r"^[0-9A-Za-z-]+$")


@dataclass
class AdminContext:
    """What the handlers serve: each account's engine (its store view, client and rules) by
    name, in the config's order, and what the accounts share."""

    engines: dict[str, Engine]
    store: Store  # any account's view of the one database: its revision and identity
    metrics: Metrics
    health: Health | None
    admin_token: SecretStr | None
    ready_after_failing: timedelta
    overdue_after: timedelta
    # /report's default: due for longer than one deletion interval and an hour
    report_overdue_after: timedelta = timedelta(minutes=75)
    # Each account's last walk of its audit chain by the daemon, and when (GET /report).
    chain_verdicts: dict[str, tuple[Verdict, datetime]] = field(default_factory=dict)
    # The last accepted reload and what it did (GET /v1/reloads/last); None before one.
    last_reload: Callable[[], dict[str, Any] | None] = lambda: None

    def __post_init__(self) -> None:
        if not self.engines:
            raise ValueError("the admin surface needs at least one account's engine")
        for name, engine in self.engines.items():
            if engine.account != name:  # a change asked of one account must not land in another
                raise ValueError(f"the engine under {name!r} works in account {engine.account!r}")

    @property
    def engine(self) -> Engine:
        """The first account's engine (the only one, with one account)."""
        return next(iter(self.engines.values()))

    @property
    def accounts(self) -> list[str]:
        return list(self.engines)

    @property
    def several(self) -> bool:
        return len(self.engines) > 1

    def clock(self) -> datetime:
        return self.engine.clock()

    def labelled(self, account: str, line: str) -> str:
        """``line``, prefixed with its account when there are several."""
        return f"{account}: {line}" if self.several else line

    def choose(self, account: str | None) -> Engine | web.Response:
        """The named account's engine, or the only one; an error answer otherwise."""
        if account is None:
            if not self.several:
                return self.engine
            return fail(
                400,
                f'several accounts: name one with "account" (one of: {self.names()})',
                field="account",
            )
        engine = self.engines.get(account)
        if engine is None:
            return fail(404, f"no account {account!r} (accounts: {self.names()})", field="account")
        return engine

    def store_of(self, engine: Engine) -> Store:
        """The engine's own store view (its account's), as the concrete :class:`Store`."""
        store = engine.store
        return store if isinstance(store, Store) else self.store.for_account(engine.account)

    def names(self) -> str:
        return ", ".join(self.engines)


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent_id: AgentId | None = None
    account: AccountName | None = None
