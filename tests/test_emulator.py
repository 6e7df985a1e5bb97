"""The emulator is faithful to the real API's shapes, and misbehaves exactly as told."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from retention.emulator import DEFAULT_TOKEN, Emulator, Fault, RateLimit
from retention.emulator.seed import HELD_SAMPLE_SESSION, load_seed, sample_state
from retention.emulator.server import serve_many
from retention.errors import ConfigError

from .conftest import SHARED, small_state

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
SPEC = SHARED / "api" / "customgpt-openapi.json"
PAGINATOR_KEYS = {
    "current_page", "data", "first_page_url", "from", "last_page", "last_page_url",
    "next_page_url", "path", "per_page", "prev_page_url", "to", "total",
}  # fmt: skip


async def get(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any, Any]:
    async with http.get(url, **kw) as response:
        return response.status, await response.json(), response.headers


async def test_list_is_a_laravel_paginator_in_the_success_envelope(
    http: aiohttp.ClientSession, api_url: str
) -> None:
    status, body, _ = await get(http, api_url + "projects/532/conversations?page=2", headers=AUTH)
    assert status == 200 and body["status"] == "success"
    page = body["data"]
    assert set(page) == PAGINATOR_KEYS
    assert (page["current_page"], page["last_page"], page["per_page"], page["total"]) == (
        2,
        3,
        20,
        45,
    )
    assert (page["from"], page["to"]) == (21, 40)
    assert page["next_page_url"].endswith("page=3") and page["prev_page_url"].endswith("page=1")
    item = page["data"][0]
    assert isinstance(item["project_id"], int)
    assert item["created_by"] is None or isinstance(item["created_by"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000000Z", item["created_at"])
    last = (await get(http, api_url + "projects/532/conversations?page=3", headers=AUTH))[1]
    assert last["data"]["next_page_url"] is None


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": DEFAULT_TOKEN}]
)
async def test_missing_or_wrong_token_is_401_with_the_error_envelope(
    http: aiohttp.ClientSession, api_url: str, headers: dict[str, str]
) -> None:
    url = api_url + "projects/532/conversations?page=2"
    status, body, _ = await get(http, url, headers=headers)
    assert status == 401
    assert body == {
        "status": "error",
        "url": url,
        "data": {"code": 401, "message": "API Token is either missing or invalid"},
    }


async def test_unknown_agent_is_404_worded_the_new_way(
    http: aiohttp.ClientSession, api_url: str
) -> None:
    status, body, _ = await get(http, api_url + "projects/9/conversations", headers=AUTH)
    assert status == 404
    assert body["data"] == {"code": 404, "message": "Agent with id 9 not found"}


async def test_order_and_filters(http: aiohttp.ClientSession, api_url: str) -> None:
    url = api_url + "projects/532/conversations"
    asc = (await get(http, url, params={"order": "asc"}, headers=AUTH))[1]["data"]["data"]
    assert [c["id"] for c in asc] == sorted(c["id"] for c in asc)
    anon = (await get(http, url, params={"userFilter": "anonymous"}, headers=AUTH))[1]["data"]
    assert anon["total"] == 22 and all(c["created_by"] is None for c in anon["data"])
    team = (await get(http, url, params={"userFilter": "team_member"}, headers=AUTH))[1]["data"]
    assert team["total"] == 23
    named = (await get(http, url, params={"name": "chat 4"}, headers=AUTH))[1]["data"]
    assert {c["name"] for c in named["data"]} == {
        "Chat 4",
        "Chat 40",
        "Chat 41",
        "Chat 42",
        "Chat 43",
        "Chat 44",
    }


async def test_create_rename_delete_cycle(
    http: aiohttp.ClientSession, api_url: str, emulator: Emulator
) -> None:
    base = api_url + "projects/532/conversations"
    async with http.post(base, json={"name": "Fresh"}, headers=AUTH) as response:
        assert response.status == 201
        created = (await response.json())["data"]
    assert created["name"] == "Fresh" and created["project_id"] == 532
    stored = emulator.state.agents[532].conversations[created["session_id"]]
    stored.created_at = stored.updated_at = stored.created_at - timedelta(hours=2)
    async with http.put(
        f"{base}/{created['session_id']}", json={"name": "Renamed"}, headers=AUTH
    ) as response:
        renamed = (await response.json())["data"]
    assert renamed["name"] == "Renamed" and renamed["updated_at"] > renamed["created_at"]
    async with http.put(f"{base}/{created['session_id']}", json={}, headers=AUTH) as response:
        assert response.status == 400
    async with http.delete(f"{base}/{created['session_id']}", headers=AUTH) as response:
        assert (response.status, await response.json()) == (
            200,
            {"status": "success", "data": {"deleted": True}},
        )
    async with http.delete(f"{base}/{created['session_id']}", headers=AUTH) as response:
        assert response.status == 404
        assert (await response.json())["status"] == "error"


async def test_messages_use_the_twelve_hour_format(
    http: aiohttp.ClientSession, api_url: str, emulator: Emulator
) -> None:
    conversation = next(iter(emulator.state.agents[532].conversations.values()))
    conversation.messages = [
        datetime(2023, 6, 25, 17, 1, 11, tzinfo=UTC),
        datetime(2023, 6, 24, 3, 0, tzinfo=UTC),
    ]
    url = f"{api_url}projects/532/conversations/{conversation.session_id}/messages?order=desc"
    status, body, _ = await get(http, url, headers=AUTH)
    assert status == 200
    assert body["data"]["conversation"]["session_id"] == conversation.session_id
    messages = body["data"]["messages"]
    assert set(messages) == PAGINATOR_KEYS
    assert [m["created_at"] for m in messages["data"]] == [
        "25 Jun 2023 05:01:11",
        "24 Jun 2023 03:00:00",
    ]


async def test_settings_carry_the_platform_retention(
    http: aiohttp.ClientSession, api_url: str, emulator: Emulator
) -> None:
    emulator.state.agents[532].retention_period = "custom"
    emulator.state.agents[532].retention_days = 14
    data = (await get(http, api_url + "projects/532/settings", headers=AUTH))[1]["data"]
    assert data["conversation_retention_period"] == "custom"
    assert data["conversation_retention_days"] == 14


async def test_rate_limit_answers_429_with_headers(
    http: aiohttp.ClientSession, api_url: str, emulator: Emulator
) -> None:
    emulator.rate_limit = RateLimit(limit=2, window=30.0)
    url = api_url + "projects/532/settings"
    statuses = []
    for _ in range(3):
        status, body, headers = await get(http, url, headers=AUTH)
        statuses.append((status, headers["X-RateLimit-Remaining"]))
    assert statuses == [(200, "1"), (200, "0"), (429, "0")]
    assert body["data"]["code"] == 429
    assert 1 <= int(headers["Retry-After"]) <= 30
    assert int(headers["X-RateLimit-Reset"]) > datetime.now(UTC).timestamp()


async def test_faults_match_by_path_and_count_down(
    http: aiohttp.ClientSession, api_url: str, emulator: Emulator
) -> None:
    emulator.faults.append(Fault.status(503, path="*/settings", times=2))
    settings, listing = api_url + "projects/532/settings", api_url + "projects/532/conversations"
    assert (await get(http, listing, headers=AUTH))[0] == 200
    assert [(await get(http, settings, headers=AUTH))[0] for _ in range(3)] == [503, 503, 200]
    assert [s.status for s in emulator.calls("GET", "*/settings")] == [503, 503, 200]
    assert len(emulator.calls()) == 4


async def test_malformed_fault_serves_truncated_json(
    http: aiohttp.ClientSession, api_url: str, emulator: Emulator
) -> None:
    emulator.faults.append(Fault.malformed())
    async with http.get(api_url + "projects", headers=AUTH) as response:
        assert response.status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(await response.text())


def test_sample_has_several_agents_with_more_than_one_page() -> None:
    state = sample_state(now=datetime.now(UTC))
    assert len(state.agents) >= 3
    for agent in state.agents.values():
        assert len(agent.conversations) > 20
        ages = {c.created_at for c in agent.conversations.values()}
        assert max(ages) - min(ages) > timedelta(days=300)
    assert state.find(532, HELD_SAMPLE_SESSION) is not None
    again = sample_state(now=datetime.now(UTC))
    assert set(again.agents[533].conversations) == set(state.agents[533].conversations), (
        "deterministic"
    )


def test_seed_file_builds_the_described_state(tmp_path: Path) -> None:
    seed = tmp_path / "seed.toml"
    seed.write_text(
        """
per_page = 7
[[agents]]
id = 77
name = "Seeded"
retention_period = "custom"
retention_days = 30
[[agents.conversations]]
name = "Test {n}"
count = 3
age = "2d"
updated = "1h"
created_by = 5
messages = ["1d", "2h"]
[[agents.conversations]]
name = "Kept"
age = "10m"
session_id = "8ff8078b-3e88-4ad1-8e3f-9a37324964af"
""",
        encoding="utf-8",
    )
    now = datetime(2026, 11, 26, tzinfo=UTC)
    state, per_page = load_seed(seed, now=now)
    assert per_page == 7
    agent = state.agents[77]
    assert agent.retention_period == "custom" and agent.retention_days == 30
    conversations = list(agent.conversations.values())
    assert [c.name for c in conversations] == ["Test 1", "Test 2", "Test 3", "Kept"]
    assert conversations[0].created_at == now - timedelta(days=2)
    assert conversations[0].updated_at == now - timedelta(hours=1)
    assert conversations[0].messages == [now - timedelta(days=1), now - timedelta(hours=2)]
    assert conversations[0].created_by == 5 and conversations[3].created_by is None
    assert conversations[3].session_id == "8ff8078b-3e88-4ad1-8e3f-9a37324964af"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[agents]]\nid = 1\n[[agents.conversations]]\nname = 'x'\n",
            "agents[0].conversations[0]: missing key 'age'",
        ),
        (
            "[[agents]]\nid = 1\n[[agents.conversations]]\nname = 'x'\nage = 'old'\n",
            "agents[0].conversations[0]: invalid duration 'old'",
        ),
        ("per_page = 0\n", "per_page must be a positive integer"),
        ("[[agents\n", "cannot read seed"),
    ],
)
def test_bad_seed_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    seed = tmp_path / "seed.toml"
    seed.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_seed(seed, now=datetime.now(UTC))
    assert str(caught.value).startswith(f"{seed}: ")
    assert message in str(caught.value)


@pytest.mark.skipif(not SPEC.exists(), reason="the vendor's OpenAPI file is not beside the repo")
async def test_shapes_agree_with_the_vendor_spec(http: aiohttp.ClientSession, api_url: str) -> None:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    schemas = spec["components"]["schemas"]
    listing = spec["paths"]["/api/v1/projects/{projectId}/conversations"]["get"]
    page_schema = listing["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(page_schema["properties"]["data"]["properties"]) == PAGINATOR_KEYS
    body = (await get(http, api_url + "projects/532/conversations", headers=AUTH))[1]
    assert set(body["data"]["data"][0]) <= set(schemas["Conversation"]["properties"])
    error = spec["components"]["responses"]["ApiTokenValidationErrorResponse"]
    error_schema = error["content"]["application/json"]["schema"]
    unauthorized = (await get(http, api_url + "projects/532/conversations"))[1]
    assert set(unauthorized) == set(error_schema["properties"])
    assert set(unauthorized["data"]) == set(error_schema["properties"]["data"]["properties"])
    for path in (
        "/conversations",
        "/conversations/{sessionId}",
        "/conversations/{sessionId}/messages",
        "/settings",
    ):
        assert "/api/v1/projects/{projectId}" + path in spec["paths"]


async def test_one_port_serves_several_emulators_each_on_its_own_token(
    http: aiohttp.ClientSession,
) -> None:
    acme = Emulator(small_state(conversations=3), token="acme-token")
    globex = Emulator(small_state(conversations=5), token="globex-token")
    async with serve_many({"acme": acme, "globex": globex}) as urls:
        assert urls["acme"].endswith("/t/acme/api/v1/") and urls["globex"].endswith(
            "/t/globex/api/v1/"
        )
        assert urls["acme"].split("/t/")[0] == urls["globex"].split("/t/")[0]  # one port
        for name, emulator, other in (("acme", acme, globex), ("globex", globex, acme)):
            url = urls[name] + "projects/532/conversations"
            mine = {"Authorization": f"Bearer {emulator.token}"}
            theirs = {"Authorization": f"Bearer {other.token}"}
            status, body, _ = await get(http, url, headers=mine)
            assert status == 200
            names = {c["name"] for c in body["data"]["data"]}
            assert names == {c.name for c in emulator.state.agents[532].conversations.values()}
            assert (await get(http, url, headers=theirs))[0] == 401
    assert [(s.method, s.path, s.status) for s in acme.served] == [
        ("GET", "/t/acme/api/v1/projects/532/conversations", 200),
        ("GET", "/t/acme/api/v1/projects/532/conversations", 401),
    ]
    assert len(globex.served) == 2
