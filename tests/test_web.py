"""The admin HTTP surface, in-process: health, readiness, metrics, tracking and validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from retention import __version__
from retention.admin import AdminContext
from retention.client import CustomGPTClient
from retention.emulator import Emulator
from retention.engine import Engine
from retention.errors import ConfigError
from retention.lease import LeaseKeeper, lease_scope
from retention.metrics import Metrics
from retention.policy import Policy, Rules
from retention.store import Store
from retention.web import serve

from .conftest import ADMIN, TEST_CHATS, ClientFactory, EngineFactory

AUTH = {"Authorization": f"Bearer {ADMIN}"}


Call = Callable[..., Any]


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_healthz_and_readyz(
    http: aiohttp.ClientSession, admin: str, context: AdminContext
) -> None:
    assert await call(http, "GET", admin + "/healthz") == (200, {"status": "ok"})
    status, body = await call(http, "GET", admin + "/readyz")
    assert status == 200 and body["status"] == "ready"
    assert context.health is not None
    context.health.failing_since["discover"] = datetime.now(UTC) - timedelta(minutes=5)
    assert (await call(http, "GET", admin + "/readyz"))[0] == 200, "failing, but not for long"
    context.health.failing_since["discover"] = datetime.now(UTC) - timedelta(minutes=20)
    # Deletions succeeding meanwhile do not hide a discovery that keeps failing.
    context.health.last_success_at["delete"] = datetime.now(UTC)
    status, body = await call(http, "GET", admin + "/readyz")
    assert status == 503 and body["problems"][0].startswith("discover sweeps have been failing")
    assert list(body["last_success_by_job"]) == ["delete"]


async def test_a_skewed_clock_fails_readiness_and_shows_in_metrics(
    http: aiohttp.ClientSession, make_client: ClientFactory, store: Store, context: AdminContext
) -> None:
    def ahead() -> datetime:
        return datetime.now(UTC) + timedelta(days=1)

    client = make_client(clock=ahead)
    engine = Engine(client, store, Rules((TEST_CHATS,), ()), clock=ahead)
    await engine.sweep()
    skewed = replace(
        context,
        engines={engine.account: engine},
        metrics=Metrics(
            stats=client.stats, budget=client.budget, clock_reading=lambda: client.clock_reading
        ),
    )
    async with serve(skewed, "127.0.0.1:0") as url:
        status, body = await call(http, "GET", url + "/readyz")
        assert status == 503
        assert body["problems"][0].startswith("deleting nothing: the local clock (")
        assert "1d ahead of the server's Date" in body["problems"][0]
        _, text = await call(http, "GET", url + "/metrics")
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["retention_clock_skew_exceeded"] == 1
    assert samples["retention_clock_skew_seconds"] == pytest.approx(-86400, abs=5)


async def test_metrics_parse_and_show_every_series(
    http: aiohttp.ClientSession, admin: str, engine: Engine, emulator: Emulator
) -> None:
    now = datetime.now(UTC)
    emulator.state.add_conversation(532, "Test old", created_at=now - timedelta(hours=2))
    await engine.sweep()
    status, text = await call(http, "GET", admin + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "retention_conversations_tracked",
        "retention_conversations_due",
        "retention_conversations_overdue",
        "retention_conversations_held",
        "retention_deletions",
        "retention_api_calls",
        "retention_api_rate_limited",
        "retention_sweep_duration_seconds",
        "retention_last_successful_sweep_timestamp_seconds",
        "retention_api_budget_remaining",
        "retention_clock_skew_seconds",
        "retention_clock_skew_exceeded",
    ):
        assert name in families, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert (
        samples[("retention_conversations_tracked", (("account", "default"), ("agent", "532")))]
        == 45
    )
    default = ("account", "default")
    deleted = (default, ("outcome", "deleted"), ("rule", "test-chats"))
    assert samples[("retention_deletions_total", deleted)] == 1
    calls = (default, ("kind", "delete"), ("status", "200"))
    assert samples[("retention_api_calls_total", calls)] == 1
    skew = samples[("retention_clock_skew_seconds", (default,))]
    assert abs(skew) < 5, "the emulator's clock is ours"
    assert samples[("retention_clock_skew_exceeded", (default,))] == 0
    assert samples[("retention_sweep_duration_seconds_count", (default, ("kind", "once")))] == 1


async def test_create_with_ttl_creates_on_the_api_and_tracks(
    http: aiohttp.ClientSession, admin: str, emulator: Emulator, store: Store
) -> None:
    body = {"agent_id": 532, "name": "Chat from the app", "ttl": "2h"}
    status, record = await call(http, "POST", admin + "/v1/conversations", json=body, headers=AUTH)
    assert status == 201
    assert record["session_id"] in emulator.live_sessions(532)
    assert (record["rule"], record["origin"], record["ttl_seconds"]) == ("ttl", "created", 7200)
    due = datetime.fromisoformat(record["due_at"])
    assert timedelta(hours=1, minutes=59) < due - datetime.now(UTC) <= timedelta(hours=2)
    stored = await store.get(532, record["session_id"])
    assert stored is not None and stored.ttl == timedelta(hours=2)


async def test_track_registers_an_existing_conversation(
    http: aiohttp.ClientSession, admin: str, emulator: Emulator
) -> None:
    session_id = next(iter(emulator.state.agents[532].conversations))
    body = {"agent_id": 532, "session_id": session_id, "ttl": "30m"}
    status, record = await call(http, "POST", admin + "/v1/tracked", json=body, headers=AUTH)
    assert status == 201 and record["origin"] == "registered" and record["rule"] == "ttl"
    body["session_id"] = "00000000-0000-4000-8000-000000000000"
    status, error = await call(http, "POST", admin + "/v1/tracked", json=body, headers=AUTH)
    assert status == 404 and "not found" in error["error"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"name": "x", "ttl": "2h"}, "agent_id", "agent_id: Field required"),
        (
            {"agent_id": "five", "name": "x"},
            "agent_id",
            "agent_id: Input should be a valid integer",
        ),
        ({"agent_id": 532, "name": "x", "ttl": "2 parsecs"}, "ttl", "ttl: invalid duration"),
        ({"agent_id": 532, "name": "x", "ttl": "0s"}, "ttl", "ttl: duration '0s' must be greater"),
        ({"agent_id": True, "name": "x"}, "agent_id", "agent_id: Input should be a valid integer"),
        ({"agent_id": 2**70, "name": "x"}, "agent_id", "agent_id: Input should be less than"),
        ({"agent_id": 0, "name": "x"}, "agent_id", "agent_id: Input should be greater than 0"),
        (
            {"agent_id": 532, "name": "x", "ttl": "99999999999w"},
            "ttl",
            "ttl: duration '99999999999w' is too long: at most 100 years",
        ),
        (
            {"agent_id": 532, "name": "x", "ttl": "5300w"},
            "ttl",
            "ttl: duration '5300w' is too long",
        ),
        ({"agent_id": 532, "name": "x", "ttl": 3600}, "ttl", "ttl: write durations with a unit"),
        # pydantic alone would read these as 0s and 1s: a conversation deleted at once.
        ({"agent_id": 532, "name": "x", "ttl": False}, "ttl", "ttl: expected a duration"),
        ({"agent_id": 532, "name": "x", "ttl": True}, "ttl", "ttl: expected a duration"),
        ({"agent_id": 532, "name": ""}, "name", "name: must not be empty or only spaces"),
        ({"agent_id": 532, "name": " "}, "name", "name: must not be empty or only spaces"),
        ({"agent_id": 532, "name": "x" * 256}, "name", "name: at most 255 characters"),
        ({"agent_id": 532, "name": "x", "colour": "red"}, "colour", "colour: unknown field"),
    ],
)
async def test_bad_bodies_get_400_naming_the_field_and_write_nothing(
    http: aiohttp.ClientSession,
    admin: str,
    emulator: Emulator,
    store: Store,
    body: dict[str, Any],
    field: str,
    message: str,
) -> None:
    status, error = await call(http, "POST", admin + "/v1/conversations", json=body, headers=AUTH)
    assert status == 400
    assert error["field"] == field and error["error"].startswith(message)
    assert emulator.calls("POST") == []
    assert await store.conversations() == []


async def test_non_json_body_is_400(http: aiohttp.ClientSession, admin: str) -> None:
    status, error = await call(http, "POST", admin + "/v1/conversations", data="{", headers=AUTH)
    assert status == 400 and error["error"] == "the body must be JSON"


async def test_changes_need_the_admin_token(
    http: aiohttp.ClientSession, admin: str, emulator: Emulator
) -> None:
    body = {"agent_id": 532, "name": "x"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
        status, _ = await call(
            http, "POST", admin + "/v1/conversations", json=body, headers=headers
        )
        assert status == 401
    assert (await call(http, "GET", admin + "/v1/plan"))[0] == 401
    assert emulator.calls("POST") == []


@pytest.mark.parametrize("token", [True, False])
async def test_unknown_routes_and_methods_are_404_and_405_before_auth(
    http: aiohttp.ClientSession, context: AdminContext, token: bool
) -> None:
    if not token:
        context.admin_token = None
    async with serve(context, "127.0.0.1:0") as url:
        assert (await call(http, "GET", url + "/v1/nothing-here"))[0] == 404
        assert (await call(http, "POST", url + "/v1/nothing-here"))[0] == 404
        assert (await call(http, "POST", url + "/v1/plan"))[0] == 405
        assert (await call(http, "GET", url + "/v1/conversations"))[0] == 405
        assert (await call(http, "OPTIONS", url + "/v1/plan"))[0] == 405


async def test_without_an_admin_token_changes_are_off(
    http: aiohttp.ClientSession, context: AdminContext
) -> None:
    context.admin_token = None
    async with serve(context, "127.0.0.1:0") as url:
        status, error = await call(http, "POST", url + "/v1/tracked", json={"agent_id": 1})
        assert status == 403 and "RETENTION_ADMIN_TOKEN" in error["error"]
        assert (await call(http, "GET", url + "/v1/plan"))[0] == 200


async def test_refuses_to_listen_beyond_loopback_without_a_token(context: AdminContext) -> None:
    context.admin_token = None
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0:0"):
        async with serve(context, "0.0.0.0:0"):
            pass


async def test_why_view_shows_facts_rule_due_time_and_audit(
    http: aiohttp.ClientSession, admin: str, engine: Engine, emulator: Emulator
) -> None:
    now = datetime.now(UTC)
    old = emulator.state.add_conversation(532, "Test old", created_at=now - timedelta(hours=2))
    kept = emulator.state.add_conversation(532, "Kept", created_at=now - timedelta(hours=2))
    await engine.sweep()
    status, why = await call(
        http, "GET", f"{admin}/v1/conversations/532/{old.session_id}", headers=AUTH
    )
    assert status == 200
    assert (why["state"], why["rule"], why["name"]) == ("deleted", "test-chats", "Test old")
    assert [a["outcome"] for a in why["audit"]] == ["deleted"]
    status, why = await call(
        http, "GET", f"{admin}/v1/conversations/532/{kept.session_id}", headers=AUTH
    )
    assert why["rule"] is None and why["reason"] == "no policy matches: kept" and why["audit"] == []
    # The trace `retention explain` prints: every rule in order, and why it passed it by.
    assert why["trace"]["decision"] == "no_match"
    assert [(t["kind"], t["name"], t["verdict"]) for t in why["trace"]["steps"]] == [
        ("policy", "test-chats", "passed")
    ]
    assert why["trace"]["steps"][0]["why"] == "name 'Kept' matches none of 'Test*'"
    status, _ = await call(http, "GET", f"{admin}/v1/conversations/532/nope", headers=AUTH)
    assert status == 404


@pytest.mark.parametrize("agent", [str(2**70), "99999999999999999999999", "0", "-1", "²", "x"])
async def test_why_view_refuses_an_agent_id_out_of_range(
    http: aiohttp.ClientSession, admin: str, agent: str
) -> None:
    status, error = await call(
        http, "GET", f"{admin}/v1/conversations/{agent}/some-session", headers=AUTH
    )
    assert status == 400 and error["field"] == "agent"


async def test_plan_endpoint_reads_the_store_without_api_calls(
    http: aiohttp.ClientSession, admin: str, engine: Engine, emulator: Emulator
) -> None:
    now = datetime.now(UTC)
    due = emulator.state.add_conversation(532, "Test due", created_at=now - timedelta(hours=2))
    await engine.plan()  # discovery, so the store knows it
    served = len(emulator.served)
    status, plan = await call(http, "GET", admin + "/v1/plan", headers=AUTH)
    assert status == 200
    assert [item["session_id"] for item in plan["due"]] == [due.session_id]
    assert len(emulator.served) == served


async def test_the_breaker_shows_in_readyz_and_metrics_and_approve_releases_it(
    http: aiohttp.ClientSession,
    admin: str,
    emulator: Emulator,
    make_engine: EngineFactory,
    context: AdminContext,
) -> None:
    everything = Policy(name="all", agents=frozenset({532}), max_age=timedelta(seconds=1))
    engine = make_engine((everything,))
    engine.listeners.append(context.metrics.observe_sweep)
    context.engines = {engine.account: engine}
    report = await engine.sweep("delete")
    assert report.deleted == 0
    status, body = await call(http, "GET", admin + "/readyz")
    assert status == 200, "an operator must decide; the daemon is not broken"
    assert body["breaker"][0].startswith("agent 532: 45 of 45 live")
    _, text = await call(http, "GET", admin + "/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("retention_breaker_tripped", (("account", "default"), ("scope", "532")))] == 1
    assert (await call(http, "POST", admin + "/v1/approve", json={}))[0] == 401
    status, body = await call(
        http, "POST", admin + "/v1/approve", json={"agent_id": 532}, headers=AUTH
    )
    assert (status, body) == (200, {"approved": 45, "agent_id": 532, "account": "default"})
    assert (await engine.sweep("delete")).deleted == 45
    assert (await call(http, "GET", admin + "/readyz"))[1]["breaker"] == []


@pytest.mark.sqlite_only
async def test_a_store_removed_under_the_admin_surface_fails_readiness_and_writes_nothing(
    http: aiohttp.ClientSession, admin: str, store: Store, emulator: Emulator
) -> None:
    assert store.db.path is not None
    for suffix in ("", "-wal", "-shm"):
        store.db.path.with_name(store.db.path.name + suffix).unlink(missing_ok=True)
    status, body = await call(http, "GET", admin + "/readyz")
    assert status == 503
    assert any("the store is lost" in p and "was removed" in p for p in body["problems"])
    create = {"agent_id": 532, "name": "Short-lived", "ttl": "2h"}
    status, error = await call(http, "POST", admin + "/v1/conversations", json=create, headers=AUTH)
    assert status == 503 and "was removed" in error["error"]
    assert not emulator.calls("POST")


# ---- several accounts on one store ----------------------------------------------------------

ACME_CHATS = Policy(
    name="acme-chats", agents=frozenset({532}), name_matches=("Acme*",), max_age=timedelta(hours=1)
)


@pytest.fixture
def acme(client: CustomGPTClient, store: Store, context: AdminContext) -> Engine:
    """A second account, "acme", on the same database (its own view) and, for this web-level
    test, the same emulator and client; the admin context serves both, default first."""
    engine = Engine(client, store.for_account("acme"), Rules((ACME_CHATS,), ()))
    engine.listeners.append(context.metrics.observe_sweep)
    context.metrics.add_account(
        "acme", stats=client.stats, budget=client.budget, clock_reading=lambda: None
    )
    context.engines = {**context.engines, "acme": engine}
    return engine


async def test_with_two_accounts_readyz_names_them(
    http: aiohttp.ClientSession, admin: str, acme: Engine
) -> None:
    status, body = await call(http, "GET", admin + "/readyz")
    assert status == 200 and body["accounts"] == ["default", "acme"]
    assert body["problems"] == [] and body["breaker"] == []
    assert (await call(http, "GET", admin + "/metrics"))[0] == 200


async def test_plan_shows_every_account_or_the_one_asked_for(
    http: aiohttp.ClientSession, admin: str, engine: Engine, acme: Engine, emulator: Emulator
) -> None:
    now = datetime.now(UTC)
    ours = emulator.state.add_conversation(532, "Test due", created_at=now - timedelta(hours=2))
    theirs = emulator.state.add_conversation(532, "Acme due", created_at=now - timedelta(hours=2))
    await engine.plan()  # discovery in each account
    await acme.plan()
    status, plan = await call(http, "GET", admin + "/v1/plan?account=acme", headers=AUTH)
    assert status == 200
    assert [(i["account"], i["session_id"], i["rule"]) for i in plan["due"]] == [
        ("acme", theirs.session_id, "acme-chats")
    ]
    assert (plan["count"], plan["accounts"], list(plan["reports"])) == (1, ["acme"], ["acme"])
    status, plan = await call(http, "GET", admin + "/v1/plan", headers=AUTH)
    assert status == 200 and plan["accounts"] == ["default", "acme"]
    assert [(i["account"], i["session_id"]) for i in plan["due"]] == [
        ("default", ours.session_id),
        ("acme", theirs.session_id),
    ]
    assert plan["count"] == 2
    assert {name: r["count"] for name, r in plan["reports"].items()} == {"default": 1, "acme": 1}
    assert plan["breaker"] == [] and plan["held_back"] is None and plan["dry_run"] is False
    status, error = await call(http, "GET", admin + "/v1/plan?account=nope", headers=AUTH)
    assert status == 404 and error["field"] == "account"
    assert "'nope'" in error["error"] and "default, acme" in error["error"]


async def test_create_writes_into_the_named_account_only(
    http: aiohttp.ClientSession, admin: str, acme: Engine, emulator: Emulator, store: Store
) -> None:
    body = {"agent_id": 532, "name": "Acme's chat", "ttl": "2h", "account": "acme"}
    status, record = await call(http, "POST", admin + "/v1/conversations", json=body, headers=AUTH)
    assert status == 201 and record["account"] == "acme"
    session_id = record["session_id"]
    assert session_id in emulator.live_sessions(532)
    assert await store.get(532, session_id) is None, "the default account does not see it"
    stored = await store.for_account("acme").get(532, session_id)
    assert stored is not None and stored.ttl == timedelta(hours=2)
    status, why = await call(
        http, "GET", f"{admin}/v1/accounts/acme/conversations/532/{session_id}", headers=AUTH
    )
    assert status == 200 and (why["account"], why["origin"]) == ("acme", "created")
    status, error = await call(
        http, "GET", f"{admin}/v1/conversations/532/{session_id}", headers=AUTH
    )
    assert status == 404 and "in account 'default'" in error["error"], "the default's view"


@pytest.mark.parametrize("path", ["/v1/conversations", "/v1/tracked", "/v1/approve"])
async def test_with_two_accounts_a_change_must_name_a_known_one(
    http: aiohttp.ClientSession,
    admin: str,
    acme: Engine,
    emulator: Emulator,
    store: Store,
    path: str,
) -> None:
    session_id = next(iter(emulator.state.agents[532].conversations))
    bodies: dict[str, dict[str, Any]] = {
        "/v1/conversations": {"agent_id": 532, "name": "x", "ttl": "2h"},
        "/v1/tracked": {"agent_id": 532, "session_id": session_id, "ttl": "2h"},
        "/v1/approve": {"agent_id": 532},
    }
    body = bodies[path]
    status, error = await call(http, "POST", admin + path, json=body, headers=AUTH)
    assert status == 400 and error["field"] == "account"
    assert "several accounts" in error["error"] and "default, acme" in error["error"]
    status, error = await call(
        http, "POST", admin + path, json={**body, "account": "nope"}, headers=AUTH
    )
    assert status == 404 and error["field"] == "account"
    assert "no account 'nope'" in error["error"] and "default, acme" in error["error"]
    status, error = await call(
        http, "POST", admin + path, json={**body, "account": 7}, headers=AUTH
    )
    assert status == 400 and error["field"] == "account"
    assert emulator.calls("POST") == [] and emulator.calls("GET") == []
    assert await store.conversations() == []
    assert await store.for_account("acme").conversations() == []


async def test_track_and_approve_act_in_the_named_account(
    http: aiohttp.ClientSession,
    admin: str,
    engine: Engine,
    acme: Engine,
    emulator: Emulator,
    store: Store,
    context: AdminContext,
) -> None:
    session_id = next(iter(emulator.state.agents[532].conversations))
    body = {"agent_id": 532, "session_id": session_id, "ttl": "30m", "account": "acme"}
    status, record = await call(http, "POST", admin + "/v1/tracked", json=body, headers=AUTH)
    assert status == 201 and (record["account"], record["origin"]) == ("acme", "registered")
    assert await store.get(532, session_id) is None
    # The breaker trips in acme only: everything there is due; the default account keeps all.
    everything = Policy(name="all", agents=frozenset({532}), max_age=timedelta(seconds=1))
    acme_all = Engine(acme.context.api, acme.store, Rules((everything,), ()))
    context.engines = {"default": engine, "acme": acme_all}
    await engine.plan()
    await acme_all.plan()
    status, ready = await call(http, "GET", admin + "/readyz")
    # 44 of 45: the one tracked with its own TTL is not due yet.
    assert status == 200 and ready["breaker"][0].startswith("acme: agent 532: 44 of 45 live")
    assert all(line.startswith("acme: ") for line in ready["breaker"])
    approve = {"agent_id": 532, "account": "acme"}
    status, body = await call(http, "POST", admin + "/v1/approve", json=approve, headers=AUTH)
    assert (status, body) == (200, {"approved": 44, "agent_id": 532, "account": "acme"})
    assert (await call(http, "GET", admin + "/readyz"))[1]["breaker"] == []


async def test_the_plain_why_view_needs_a_default_account_among_several(
    http: aiohttp.ClientSession,
    engine: Engine,
    acme: Engine,
    emulator: Emulator,
    store: Store,
    context: AdminContext,
) -> None:
    old = emulator.state.add_conversation(
        532, "Acme old", created_at=datetime.now(UTC) - timedelta(hours=2)
    )
    beta = Engine(acme.context.api, store.for_account("beta"), Rules((), ()))
    await acme.plan()
    await engine.plan()
    context.engines = {"acme": acme, "beta": beta}
    async with serve(context, "127.0.0.1:0") as url:
        where = f"conversations/532/{old.session_id}"
        status, error = await call(http, "GET", f"{url}/v1/{where}", headers=AUTH)
        assert status == 400 and "/v1/accounts/{account}/conversations" in error["error"]
        assert "acme, beta" in error["error"]
        status, why = await call(http, "GET", f"{url}/v1/accounts/acme/{where}", headers=AUTH)
        assert status == 200 and (why["account"], why["rule"]) == ("acme", "acme-chats")
        status, error = await call(http, "GET", f"{url}/v1/accounts/beta/{where}", headers=AUTH)
        assert status == 404 and "in account 'beta'" in error["error"], "beta never saw it"
        status, error = await call(http, "GET", f"{url}/v1/accounts/gone/{where}", headers=AUTH)
        assert status == 404 and "no account 'gone'" in error["error"]
    context.engines = {"default": engine, "acme": acme}
    async with serve(context, "127.0.0.1:0") as url:
        status, why = await call(http, "GET", f"{url}/v1/{where}", headers=AUTH)
        assert status == 200 and (why["account"], why["rule"]) == ("default", None)


async def test_a_skewed_clock_in_one_account_is_named_in_readyz(
    http: aiohttp.ClientSession,
    make_client: ClientFactory,
    store: Store,
    engine: Engine,
    context: AdminContext,
) -> None:
    def ahead() -> datetime:
        return datetime.now(UTC) + timedelta(days=1)

    client = make_client(clock=ahead)
    skewed = Engine(client, store.for_account("acme"), Rules((ACME_CHATS,), ()), clock=ahead)
    await skewed.sweep()
    context.engines = {"default": engine, "acme": skewed}
    async with serve(context, "127.0.0.1:0") as url:
        status, body = await call(http, "GET", url + "/readyz")
    assert status == 503 and body["accounts"] == ["default", "acme"]
    assert [p.split(" (")[0] for p in body["problems"]] == [
        "acme: deleting nothing: the local clock"
    ]


def test_an_engine_must_sit_under_its_own_account(context: AdminContext, store: Store) -> None:
    with pytest.raises(ValueError, match="works in account 'default'"):
        replace(context, engines={"acme": context.engine})
    with pytest.raises(ValueError, match="at least one"):
        replace(context, engines={})


async def test_a_replica_answers_reads_for_an_account_it_does_not_hold_and_changes_nothing(
    http: aiohttp.ClientSession, admin: str, acme: Engine, emulator: Emulator, store: Store
) -> None:
    """acme's lease is another replica's: the plan and the why-view answer from the store; a
    create, a track or an approval there is refused (409) and sends and writes nothing."""
    acme.context.lease = LeaseKeeper(store.for_account("acme"), scope=lease_scope("acme"))
    status, plan = await call(http, "GET", admin + "/v1/plan?account=acme", headers=AUTH)
    assert status == 200 and plan["accounts"] == ["acme"]
    session_id = next(iter(emulator.state.agents[532].conversations))
    for path, body in (
        ("/v1/conversations", {"agent_id": 532, "name": "x", "ttl": "2h", "account": "acme"}),
        ("/v1/tracked", {"agent_id": 532, "session_id": session_id, "account": "acme"}),
        ("/v1/approve", {"account": "acme"}),
    ):
        status, error = await call(http, "POST", admin + path, json=body, headers=AUTH)
        assert status == 409 and "does not hold account 'acme'" in error["error"], path
    assert not emulator.calls("POST") and not emulator.calls("GET", "*/messages")
    assert await store.for_account("acme").conversations() == []


async def test_metrics_an_slo_can_stand_on(
    http: aiohttp.ClientSession, admin: str, engine: Engine, emulator: Emulator
) -> None:
    """Build and process figures; sweep results at zero before the first failure; the delay
    from due to deleted; reload results; no _created series; no budget figure before the API
    has sent one."""
    now = datetime.now(UTC)
    emulator.state.add_conversation(532, "Test old", created_at=now - timedelta(hours=2))
    await engine.sweep()
    _status, text = await call(http, "GET", admin + "/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    names = {name for name, _ in samples}
    default = ("account", "default")
    build = next(labels for name, labels in samples if name == "retention_build_info")
    assert dict(build)["version"] == __version__
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total"} <= names
    assert not [n for n in names if n.endswith("_created")], "no _created series"
    for kind in ("discover", "delete", "once"):
        failed = (default, ("kind", kind), ("result", "failed"))
        assert samples[("retention_sweeps_total", failed)] == 0, "a series before any failure"
    delay = samples[("retention_deletion_delay_seconds_count", (default,))]
    assert delay == 1, "the one deletion's lateness"
    buckets = {
        dict(labels)["le"]: v
        for (n, labels), v in samples.items()
        if n.endswith("delay_seconds_bucket")
    }
    assert (buckets["1800.0"], buckets["10800.0"]) == (0, 1), "due an hour ago"
    assert samples[("retention_reloads_total", (("result", "rejected"),))] == 0
    assert "retention_api_budget_remaining" not in names, "absent until the API reports one"


async def test_the_last_reload_is_served_with_what_it_changed(
    context: AdminContext, http: aiohttp.ClientSession
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with serve(context, "127.0.0.1:0") as url:
        async with http.get(f"{url}/v1/reloads/last", headers=auth) as response:
            assert response.status == 200 and await response.json() == {"reload": None}
        last = {"at": "2026-11-26T12:00:00Z", "trigger": "SIGHUP", "totals": {"newly_held": 1}}
        context.last_reload = lambda: last
        async with http.get(f"{url}/v1/reloads/last", headers=auth) as response:
            assert (await response.json())["reload"] == last
        async with http.get(f"{url}/v1/reloads/last") as response:
            assert response.status == 401, "a /v1 read: the admin token when one is set"
