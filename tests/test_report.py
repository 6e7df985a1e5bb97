"""`retention report`: a period's figures per account, agent and rule, from a real store on
both backends; the CLI's table, --json and --html; the admin surface's GET /report; and the
page as Chromium renders it, figure for figure against --json."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from retention import report
from retention.admin import AdminContext
from retention.breaker import Limits
from retention.cli import main
from retention.ledger import COUNTS
from retention.models import AgentRecord, AuditOutcome, AuditRecord, Origin, State
from retention.models import TrackedConversation as Tracked
from retention.policy import Hold, Policy, Rules
from retention.report import Source
from retention.store import Store
from retention.web import serve
from tests import chromium
from tests.conftest import ADMIN

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
H, M, D = timedelta(hours=1), timedelta(minutes=1), timedelta(days=1)
RULES = Rules(
    policies=(
        Policy(name="qa", agents=frozenset({532}), max_age=36 * H),
        Policy(name="long", agents=None, max_age=90 * D),
    ),
    holds=(Hold(name="legal", agents=frozenset({533})),),
)
# Deleted conversations: (due before NOW, deleted this long after due).
# d4 waited past a midnight: it is in the backlog at one day's end.
DELETED = {"d1": (3 * D, 1 * M), "d2": (2 * D, 2 * M), "d3": (2 * D, 10 * M), "d4": (2 * D, 30 * H)}


def tracked(agent: int, session: str, now: datetime, **kw: Any) -> Tracked:
    base: dict[str, Any] = {
        "agent_id": agent,
        "session_id": session,
        "remote_id": None,
        "name": f"QA-{session}",
        "created_by": None,
        "created_at": now - 40 * D,
        "updated_at": now - 40 * D,
        "origin": Origin.DISCOVERED,
        "state": State.ACTIVE,
    }
    return Tracked(**{**base, **kw})


async def seed(store: Store, now: datetime = NOW) -> None:
    await store.save_agent(
        AgentRecord(532, "Support", platform_retention_period="custom", platform_retention_days=30),
        now=now,
    )
    await store.save_agent(AgentRecord(533, "Sales", platform_retention_period="year"), now=now)
    rows = [tracked(532, s, now, due_at=now - ago, rule="qa") for s, (ago, _) in DELETED.items()]
    rows += [
        tracked(532, "o1", now, due_at=now - 2 * H, rule="qa"),  # due, overdue
        tracked(532, "o2", now, due_at=now - 10 * M, rule="qa"),  # due, not yet overdue
        tracked(532, "g1", now, due_at=now - 3 * H, rule="qa", grace_until=now + H),  # in grace
        tracked(533, "h1", now, rule="legal", state=State.HELD),
        tracked(533, "h2", now, rule="legal", state=State.HELD),
        tracked(533, "f1", now, due_at=now + D, rule="long"),  # not due
    ]
    await store.insert(rows, now=now - 5 * D)
    for session, (ago, late) in DELETED.items():
        deleted_at = now - ago + late
        await store.set_state(532, session, State.DELETED, now=deleted_at)
        await audit(store, 532, session, "qa", AuditOutcome.DELETED, deleted_at)
    for at in (now - 2 * H, now - H):  # two failed attempts: one conversation
        await audit(store, 532, "o1", "qa", AuditOutcome.FAILED, at)
    await audit(store, 533, "x1", "long", AuditOutcome.ALREADY_GONE, now - 4 * D)
    await audit(store, 532, "old", "qa", AuditOutcome.DELETED, now - 40 * D)  # before the period


async def audit(
    store: Store, agent: int, session: str, rule: str, outcome: AuditOutcome, at: datetime
) -> None:
    await store.journal.add_audit(AuditRecord(at, agent, session, session, rule, D, outcome))


async def build(store: Store, limits: Limits = Limits()) -> dict[str, Any]:
    return await report.build(
        [Source(store, RULES, limits)], now=NOW, period=30 * D, overdue_after=75 * M
    )


def rule_row(doc: dict[str, Any], agent: int, rule: str | None) -> dict[str, Any]:
    (acc,) = doc["accounts"]
    (entry,) = [a for a in acc["agents"] if a["agent_id"] == agent]
    (row,) = [r for r in entry["rules"] if r["rule"] == rule]
    return dict(row)


async def test_figures_per_agent_and_rule(store: Store) -> None:
    await seed(store)
    doc = await build(store)
    qa = rule_row(doc, 532, "qa")
    assert {k: qa[k] for k in COUNTS} == {
        "deleted": 4,  # the row 40 days ago is outside the period
        "already_gone": 0,
        "failed": 1,  # two attempts, one conversation
        "due": 3,
        "overdue": 1,  # o1; g1 waits out its grace, o2 is due for less than 75m
        "held": 0,
        "in_grace": 1,
        "blocked": 0,
    }
    # Nearest rank: p50 of 4 is the 2nd, p95 the 4th.
    assert qa["delay_seconds"] == {
        "count": 4, "p50": 120.0, "p95": 108000.0, "max": 108000.0, "early": 0,
    }  # fmt: skip
    legal = rule_row(doc, 533, "legal")
    assert (legal["held"], legal["due"]) == (2, 0)
    assert rule_row(doc, 533, "long")["already_gone"] == 1
    (acc,) = doc["accounts"]
    assert acc["totals"] == {
        "deleted": 4, "already_gone": 1, "failed": 1, "due": 3, "overdue": 1, "held": 2,
        "in_grace": 1, "blocked": 0,
    }  # fmt: skip
    assert acc["delay_seconds"]["count"] == 4
    assert [a["name"] for a in acc["agents"]] == ["Support", "Sales"]
    assert acc["agents"][0]["platform_retention"] == {"period": "custom", "days": 30}
    assert acc["breaker"] == [] and acc["audit"]["ok"] and acc["audit"]["head"]["seq"] == 8
    assert (doc["period"], doc["overdue_after"], doc["overdue_after_seconds"]) == (
        "30d",
        "1h15m",
        4500.0,
    )


async def test_platform_conflicts_name_the_rule_and_the_platform_limit(store: Store) -> None:
    await seed(store)
    (acc,) = (await build(store))["accounts"]
    found = {(c["agent_id"], c["rule"], c["kind"]) for c in acc["conflicts"]}
    # 532 keeps 30 days: the 90-day policy is cut short (qa's 36h is not). 533 keeps a year:
    # "long" fits, but the platform deletes what "legal" holds.
    assert found == {(532, "long", "policy"), (533, "legal", "hold")}
    (long_,) = [c for c in acc["conflicts"] if c["rule"] == "long"]
    assert long_["platform_max_age"] == "30d" and long_["max_age"] == "90d"
    assert "before policy 'long' (max_age 90d) would" in long_["message"]


async def test_the_breaker_blocks_what_it_would_stop(store: Store) -> None:
    await seed(store)
    doc = await build(store, Limits(max_deletions=1, max_due_fraction=1.0, floor=1000))
    (acc,) = doc["accounts"]
    assert acc["breaker"] and "max_deletions 1" in acc["breaker"][0]
    assert rule_row(doc, 532, "qa")["blocked"] == 2  # o1, o2: g1 is in grace, not takeable
    assert acc["totals"]["blocked"] == 2


async def test_deletions_per_day_and_the_backlog_follow_the_rows(store: Store) -> None:
    await seed(store)
    (acc,) = (await build(store))["accounts"]
    per_day = {(d["day"], d["rule"]): d["deleted"] for d in acc["deletions_per_day"]}
    expected: dict[tuple[str, str], int] = {}
    for ago, late in DELETED.values():
        key = ((NOW - ago + late).date().isoformat(), "qa")
        expected[key] = expected.get(key, 0) + 1
    assert per_day == expected
    backlog = acc["backlog_per_day"]
    days = [(NOW - 30 * D).date() + timedelta(days=n) for n in range(31)]
    assert [b["day"] for b in backlog] == [d.isoformat() for d in days]
    # The oracle: at each day's end (today: now), due and not yet deleted.
    spans: list[tuple[datetime, datetime | None]]
    spans = [(NOW - ago, NOW - ago + late) for ago, late in DELETED.values()]
    spans += [(NOW - 2 * H, None), (NOW - 10 * M, None), (NOW - 3 * H, None)]
    for entry, day in zip(backlog, days, strict=True):
        end = min(NOW, datetime.combine(day + D, time(), UTC))
        want = sum(1 for due, done in spans if due <= end and (done is None or done > end))
        assert entry["due"] == want, day
    assert backlog[-1]["due"] == 3 and sum(b["due"] for b in backlog) == 4


async def test_days_are_utc_days_whatever_the_databases_time_zone(
    store: Store, store_url: str
) -> None:
    """A deletion at 23:30 UTC is that UTC day's, on a PostgreSQL server set to Tokyo too."""
    from sqlalchemy import text

    if not store_url.startswith("sqlite"):
        async with store.db.begin() as conn:
            await conn.execute(
                text(
                    "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET timezone TO %L', "
                    "current_database(), 'Asia/Tokyo'); END $$"
                )
            )
        await store.db.bind.dispose()  # new connections take the database's time zone
        async with store.db.connect() as conn:
            assert (await conn.execute(text("SHOW timezone"))).scalar() == "Asia/Tokyo"
    late = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    await audit(store, 532, "late", "qa", AuditOutcome.DELETED, late)
    (acc,) = (await build(store))["accounts"]
    assert acc["deletions_per_day"] == [{"day": "2026-11-25", "rule": "qa", "deleted": 1}]


async def test_a_deletion_before_its_due_time_is_counted_as_early(store: Store) -> None:
    """Never expected; never hidden: a negative delay, counted as early."""
    await store.insert([tracked(532, "e1", NOW, due_at=NOW - H, rule="qa")], now=NOW - D)
    await store.set_state(532, "e1", State.DELETED, now=NOW - 2 * H)
    (acc,) = (await build(store))["accounts"]
    assert acc["delay_seconds"]["early"] == 1 and acc["delay_seconds"]["max"] == -3600.0


async def test_a_broken_chain_shows_in_the_report(store: Store) -> None:
    from sqlalchemy import text

    await seed(store)
    async with store.db.begin() as conn:
        await conn.execute(text("DELETE FROM audit WHERE seq = 3"))
    (acc,) = (await build(store))["accounts"]
    assert acc["audit"]["ok"] is False and "audit row #3 is missing" in acc["audit"]["problem"]


# ---- the command and the admin surface ------------------------------------------------------


@pytest.fixture
async def seeded_config(tmp_path: Path) -> str:
    """A config whose store the scenario filled (times shifted to now: the CLI's clock)."""
    db = tmp_path / "retention.db"
    config = tmp_path / "retention.toml"
    config.write_text(
        '[api]\nbase_url = "http://127.0.0.1:9/api/v1/"\n\n[store]\n'
        f'url = "sqlite+aiosqlite:///{db}"\n\n[schedule]\ndelete_every = "1m"\n\n'
        '[[policies]]\nname = "qa"\nagents = [532]\nname_regex = "^QA-"\nmax_age = "36h"\n\n'
        '[[policies]]\nname = "long"\nagents = "*"\nmax_age = "90d"\n\n'
        '[[holds]]\nname = "legal"\nagents = [533]\n',
        encoding="utf-8",
    )
    store = await Store.open(f"sqlite+aiosqlite:///{db}")
    try:
        await seed(store, now=datetime.now(UTC) - M)
    finally:
        await store.close()
    return str(config)


def test_report_json_table_and_html_agree(
    seeded_config: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["report", "--config", seeded_config, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (acc,) = doc["accounts"]
    assert acc["totals"]["deleted"] == 4 and acc["totals"]["held"] == 2
    assert doc["overdue_after"] == "1h1m"  # delete_every and an hour
    assert main(["report", "--config", seeded_config]) == 0
    table = capsys.readouterr().out
    assert "account default" in table and "qa" in table and "audit chain: 8 rows verified" in table
    assert "platform conflict: agent 532" in table
    page = tmp_path / "report.html"
    assert main(["report", "--config", seeded_config, "--html", str(page)]) == 0
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert 'data-figure="default/532/qa/deleted"' in html
    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "victim.txt")
    assert main(["report", "--config", seeded_config, "--html", str(link)]) == 2
    assert "is not a regular file" in capsys.readouterr().err and link.is_symlink()
    assert main(["report", "--config", seeded_config, "--html", "-"]) == 0
    assert capsys.readouterr().out.startswith("<!DOCTYPE html>")
    assert main(["report", "--config", seeded_config, "--since", "soon"]) == 2
    assert "--since" in capsys.readouterr().err


async def test_the_admin_surface_serves_the_report_behind_its_token(
    admin: str, store: Store, http: aiohttp.ClientSession
) -> None:
    await store.journal.add_audit(AuditRecord(NOW, 532, "s", "QA-1", "qa", D, AuditOutcome.DELETED))
    async with http.get(f"{admin}/report") as response:
        assert response.status == 401, "the admin token is set: the report needs it"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with http.get(f"{admin}/report", headers=auth) as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert 'data-figure="default/audit/head_seq"' in await response.text()
    async with http.get(f"{admin}/report?format=json&since=400d", headers=auth) as response:
        doc = await response.json()
    assert doc["period"] == "400d" and doc["accounts"][0]["audit"]["head"]["seq"] == 1
    async with http.get(f"{admin}/report?since=nonsense", headers=auth) as response:
        assert response.status == 400
    async with http.get(f"{admin}/report?account=nobody", headers=auth) as response:
        assert response.status == 404


async def test_the_report_page_serves_the_daemons_last_walk_of_the_chain(
    context: AdminContext, store: Store, http: aiohttp.ClientSession
) -> None:
    """A request walks no chain (a million rows is seconds of CPU): the daemon's hourly walk
    is what it shows, and when it was made."""
    from retention.chain import Head, Verdict

    await store.journal.add_audit(AuditRecord(NOW, 532, "s", "QA-1", "qa", D, AuditOutcome.DELETED))
    walked = Verdict("default", 99, Head("default", 99, "ab" * 32), "audit row #7 was edited", 7)
    context.chain_verdicts["default"] = (walked, NOW)
    context.admin_token = None
    async with (
        serve(context, "127.0.0.1:0") as url,
        http.get(f"{url}/report?format=json") as response,
    ):
        doc = await response.json()
    chain = doc["accounts"][0]["audit"]
    assert chain == {
        "ok": False,
        "rows_checked": 99,
        "head": {"seq": 99, "hash": "ab" * 32},
        "problem": "audit row #7 was edited",
        "verified_at": "2026-11-26T12:00:00Z",
    }


async def test_without_an_admin_token_the_report_is_open_on_loopback(
    context: AdminContext, http: aiohttp.ClientSession
) -> None:
    context.admin_token = None
    async with serve(context, "127.0.0.1:0") as url, http.get(f"{url}/report") as response:
        assert response.status == 200


def test_chromium_shows_the_figures_report_json_gives(
    seeded_config: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The page the CLI writes, as Chromium renders it, against the CLI's own --json: every
    figure and chart bar (the header's times differ between the two runs: left out)."""
    chromium.chromium()  # skips without the browser, unless CI requires it
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    assert main(["report", "--config", seeded_config, "--html", str(page)]) == 0
    capsys.readouterr()
    assert main(["report", "--config", seeded_config, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    chromium.screenshot(page, png)
    chromium.assert_not_blank(png)
    problems = chromium.mismatches(chromium.dump_dom(page), doc)
    moving = ("'report/generated_at'", "'report/since'", "'report/until'")
    assert [p for p in problems if not p.startswith(tuple(f"figure {m}" for m in moving))] == []
    figures = chromium.figures_from_dom(chromium.dump_dom(page))
    assert figures["default/532/qa/deleted"] == "4" and figures["default/total/held"] == "2"
