"""The report's HTML page: a pure rendering of the ``report --json`` document, checked as text
and, in headless Chromium, as a rendered page whose figures are read back from the DOM."""

from __future__ import annotations

import copy
import re
import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from retention.reportcharts import PALETTE
from retention.reportpage import page
from tests import chromium
from tests.chromium import bars_from_dom, figures_from_doc, figures_from_dom, mismatches

HASH = "9f" * 32
HOSTILE = '<script>alert("x")</script>'


def delays(count: int, p50: float = 0.0, p95: float = 0.0, top: float = 0.0) -> dict[str, Any]:
    if not count:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    return {"count": count, "p50": p50, "p95": p95, "max": top}


def counts(**given: int) -> dict[str, int]:
    keys = ("deleted", "already_gone", "failed", "due", "overdue", "held", "in_grace", "blocked")
    return {key: given.get(key, 0) for key in keys}


def rule(name: str | None, delay: dict[str, Any] | None = None, **given: int) -> dict[str, Any]:
    return {"rule": name, **counts(**given), "delay_seconds": delay or delays(0)}


def agent(agent_id: int, name: str, *rules: dict[str, Any], platform: Any = None) -> dict[str, Any]:
    keys = ("deleted", "already_gone", "failed", "due", "overdue", "held", "in_grace", "blocked")
    totals = {key: sum(r[key] for r in rules) for key in keys}
    measured = [r["delay_seconds"] for r in rules if r["delay_seconds"]["count"]]
    delay = (
        delays(
            sum(d["count"] for d in measured),
            max(d["p50"] for d in measured),
            max(d["p95"] for d in measured),
            max(d["max"] for d in measured),
        )
        if measured
        else delays(0)
    )
    return {
        "agent_id": agent_id,
        "name": name,
        "platform_retention": platform,
        "totals": totals,
        "delay_seconds": delay,
        "rules": list(rules),
    }


def account(name: str, *agents: dict[str, Any], days: int = 30, **extra: Any) -> dict[str, Any]:
    keys = ("deleted", "already_gone", "failed", "due", "overdue", "held", "in_grace", "blocked")
    first = date(2026, 11, 29) - timedelta(days=days)
    doc: dict[str, Any] = {
        "account": name,
        "totals": {key: sum(a["totals"][key] for a in agents) for key in keys},
        "delay_seconds": delays(0),
        "agents": list(agents),
        "breaker": [],
        "conflicts": [],
        "deletions_per_day": [],
        "backlog_per_day": [
            {"day": (first + timedelta(days=n)).isoformat(), "due": 0} for n in range(1, days + 1)
        ],
        "audit": {"ok": True, "rows_checked": 0, "head": None, "problem": None},
    }
    doc.update(extra)
    return doc


def document(*accounts: dict[str, Any]) -> dict[str, Any]:
    return {
        "generated_at": "2026-11-29T06:00:00Z",
        "since": "2026-10-30T06:00:00Z",
        "until": "2026-11-29T06:00:00Z",
        "period": "30d",
        "overdue_after": "1h15m",
        "overdue_after_seconds": 4500.0,
        "accounts": list(accounts),
    }


def realistic() -> dict[str, Any]:
    """Two accounts over 30 days: four rules and unruled deletions, a conflict, a breaker
    reason, a broken audit chain in the second account, and one hostile agent name."""
    support = agent(
        532,
        "Support bot",
        rule("qa-chats", delays(41, 310.0, 900.5, 8100.0), deleted=41, already_gone=2, due=3),
        rule("keep-90d", delays(12, 7200.0, 9000.0, 9050.25), deleted=12, failed=1, overdue=1),
        rule(None, held=4, in_grace=2),
        platform={"period": "custom", "days": 30},
    )
    sales = agent(
        533,
        "Sales & <Leads>",
        rule("sales-30d", delays(19, 45.0, 600.0, 3600.0), deleted=19, blocked=3, due=5),
        rule("trial-7d", delays(7, 0.4, 12.0, 75.0), deleted=7, already_gone=1),
        platform={"period": "never", "days": None},
    )
    main = account("default", support, sales)
    main["delay_seconds"] = delays(79, 300.0, 8100.0, 9050.25)
    split = {"qa-chats": 41, "keep-90d": 12, "sales-30d": 19, "trial-7d": 7}
    for index, (name, total) in enumerate(split.items()):
        days = [n for n in range(30) if (n * (index + 3)) % 5 < 3][:total]
        for position, n in enumerate(days):
            share = total // len(days) + (position < total % len(days))
            if share:
                day = main["backlog_per_day"][n]["day"]
                main["deletions_per_day"].append({"day": day, "rule": name, "deleted": share})
    main["deletions_per_day"].append({"day": "2026-11-20", "rule": None, "deleted": 2})
    for n, entry in enumerate(main["backlog_per_day"]):
        entry["due"] = [0, 3, 8, 14, 6, 2][n % 6] + n // 4
    main["breaker"] = ["agent 533: 40 of 50 live conversations due; more than the 50% allowed"]
    main["conflicts"] = [
        {
            "agent_id": 532,
            "rule": "keep-90d",
            "kind": "policy",
            "platform_max_age": "30d",
            "platform_max_age_seconds": 2592000.0,
            "max_age": "90d",
            "message": "agent 532: the platform deletes conversations after 30d, before "
            "policy 'keep-90d' (max_age 90d) would",
        }
    ]
    main["audit"] = {"ok": True, "rows_checked": 81, "head": {"seq": 81, "hash": HASH}}
    main["audit"]["problem"] = None
    other = account(
        "acme",
        agent(7, HOSTILE, rule(HOSTILE, delays(1, 5.0, 5.0, 5.0), deleted=1)),
        deletions_per_day=[{"day": "2026-11-28", "rule": HOSTILE, "deleted": 1}],
        audit={
            "ok": False,
            "rows_checked": 3,
            "head": {"seq": 4, "hash": "ab" * 32},
            "problem": "row 3: hash does not match its contents",
        },
    )
    other["delay_seconds"] = delays(1, 5.0, 5.0, 5.0)
    return document(main, other)


# --- the pure renderer -------------------------------------------------------------------------


def test_every_figure_of_the_document_is_on_the_page_and_equal() -> None:
    html = page(realistic())
    assert mismatches(html, realistic()) == []
    figures = figures_from_dom(html)
    assert figures["default/532/qa-chats/deleted"] == "41"
    assert figures["default/532/-/held"] == "4"
    assert figures["default/532/total/deleted"] == "53"
    assert figures["default/532/keep-90d/delay_max"] == 9050.25
    assert figures["default/532/-/delay_p50"] is None
    assert figures["default/audit/head_seq"] == "81"
    assert figures["acme/audit/ok"] == "false"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda d: d["accounts"][0]["agents"][0]["rules"][0].update(deleted=40),
            "qa-chats/deleted",
        ),
        (lambda d: d["accounts"][0]["totals"].update(failed=9), "default/total/failed"),
        (lambda d: d["accounts"][0]["delay_seconds"].update(p95=1.5), "default/total/delay_p95"),
        (lambda d: d["accounts"][1]["audit"].update(ok=True, problem=None), "acme/audit/"),
        (lambda d: d["accounts"][0]["deletions_per_day"].pop(), "bar ('deletions'"),
        (lambda d: d["accounts"][0]["backlog_per_day"][4].update(due=99), "bar ('backlog'"),
        (lambda d: d["accounts"][0]["breaker"].clear(), "default/breaker/0"),
    ],
)
def test_the_comparison_catches_a_page_that_differs(change: Any, problem: str) -> None:
    """The helpers compare for real: a page of one document disagrees with an altered one."""
    html = page(realistic())
    altered = copy.deepcopy(realistic())
    change(altered)
    found = mismatches(html, altered)
    assert found, "an altered document must not match"
    assert any(problem in line for line in found), found


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(310.0, "5m10s"), (8100.0, "2h15m"), (9050.25, "2h30m"), (0.4, "&lt;1s"), (90000.0, "1d1h")],
)
def test_delays_are_shown_compactly_with_the_raw_seconds_kept(seconds: float, shown: str) -> None:
    doc = realistic()
    doc["accounts"][0]["delay_seconds"]["p50"] = seconds
    html = page(doc)
    cell = re.search(r'data-figure="default/total/delay_p50" data-seconds="([^"]*)">([^<]*)<', html)
    assert cell is not None
    assert (float(cell.group(1)), cell.group(2)) == (seconds, shown)


def test_a_delay_without_deletions_shows_a_dash_and_no_seconds() -> None:
    html = page(realistic())
    assert 'data-figure="default/532/-/delay_max" data-seconds="">\u2014<' in html


def test_hostile_names_are_escaped_and_the_page_fetches_nothing() -> None:
    html = page(realistic())
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "Sales &amp; &lt;Leads&gt;" in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", html, re.IGNORECASE)
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "@font-face" not in html
    assert "url(" not in html
    # Read back through the parser, the hostile name is the figure key it was.
    assert figures_from_dom(html)[f"acme/7/{HOSTILE}/deleted"] == "1"
    assert bars_from_dom(html)["deletions", "acme", "2026-11-28", HOSTILE] == 1


def test_the_page_is_accessible_by_its_markup() -> None:
    html = page(realistic())
    assert html.startswith("<!DOCTYPE html>")
    assert '<html lang="en">' in html
    assert "<title>Retention report, 2026-10-30 to 2026-11-29</title>" in html
    assert not re.search(r"<th(?=[\s>])(?![^>]*\bscope=)", html), "every header cell has a scope"
    svgs = re.findall(r"<svg[^>]*>\s*<title>[^<]+</title>", html)
    # Two charts for the first account; the second had no backlog, so one.
    assert len(svgs) == html.count("<svg") == 3
    assert all('role="img"' in s and 'aria-label="' in s for s in svgs)
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "ids are unique across accounts"


def test_the_header_names_the_time_the_period_and_the_overdue_threshold() -> None:
    html = page(realistic())
    header = html[html.index("<header>") : html.index("</header>")]
    assert "2026-11-29 06:00 UTC" in header and "2026-10-30 06:00 UTC" in header
    assert '(<span data-figure="report/period">30d</span>)' in header
    assert 'data-seconds="4500.0">1h15m</span>' in header


def test_print_css_asks_for_a4_unbroken_tables_and_no_dark_backgrounds() -> None:
    html = page(realistic())
    assert "@page { size: A4;" in html
    assert "break-inside: avoid" in html
    backgrounds = re.findall(r"background(?:-color)?:\s*(#[0-9a-fA-F]{3,6})", html)
    assert backgrounds
    for colour in backgrounds:
        digits = colour[1:] if len(colour) == 7 else "".join(c * 2 for c in colour[1:])
        channels = [int(digits[i : i + 2], 16) for i in (0, 2, 4)]
        assert min(channels) >= 0xE0, f"dark background {colour}"


def test_each_agent_shows_its_name_and_the_platforms_own_retention() -> None:
    doc = realistic()
    doc["accounts"][1]["agents"][0]["platform_retention"] = {"period": "year", "days": None}
    html = page(doc)
    assert "platform: deletes after 30 days</small>" in html
    assert "platform: keeps forever</small>" in html
    assert "platform: deletes after a year</small>" in html
    doc["accounts"][1]["agents"][0].update(platform_retention=None, name="")
    html = page(doc)
    assert "platform: not reported</small>" in html
    assert '<span class="muted">(name unknown)</span> <span class="muted">#7</span>' in html


def test_a_broken_audit_chain_is_shown_in_red_with_its_problem() -> None:
    html = page(realistic())
    assert re.search(
        r'class="bad" data-figure="acme/audit/ok" data-value="false">[^<]*NOT VERIFIED', html
    )
    assert (
        '<span class="bad" data-figure="acme/audit/problem">row 3: hash does not match its '
        "contents</span>" in html
    )
    assert 'class="ok" data-figure="default/audit/ok" data-value="true">verified ok' in html
    assert f'<code data-figure="default/audit/head_hash">{HASH}</code>' in html


def test_counts_that_mean_trouble_are_marked_only_when_not_zero() -> None:
    html = page(realistic())
    assert 'class="num alert" data-figure="default/532/keep-90d/failed">1<' in html
    assert 'class="num" data-figure="default/532/qa-chats/failed">0<' in html
    assert 'class="alert" data-figure="default/total/blocked">3<' in html


def test_the_stacked_bars_of_a_day_sum_to_its_deletions_and_each_rule_has_a_legend() -> None:
    doc = realistic()
    html = page(doc)
    bars = bars_from_dom(html)
    per_day: dict[str, int] = {}
    for entry in doc["accounts"][0]["deletions_per_day"]:
        per_day[entry["day"]] = per_day.get(entry["day"], 0) + entry["deleted"]
    shown: dict[str, int] = {}
    for (chart, name, day, _), value in bars.items():
        if chart == "deletions" and name == "default":
            shown[day] = shown.get(day, 0) + value
    assert shown == per_day
    legend = re.findall(r'<g class="legend-item"><title>([^<]*)</title>', html)
    assert legend[:5] == ["keep-90d", "qa-chats", "sales-30d", "trial-7d", "(no rule)"]
    fills = re.findall(
        r'<g class="legend-item"><title>[^<]*</title><rect [^>]*fill="([^"]+)"', html
    )
    assert len(set(fills[:5])) == 5


@pytest.mark.parametrize(
    ("doc", "shown", "absent"),
    [
        (document(), "No accounts in this report.", "<svg"),
        (document(account("default")), "No deletions in this period.", "<svg"),
        (document(account("default")), "Nothing was due and waiting", "data-chart"),
        (document(account("default")), "No agent has figures in this period.", "<table"),
        (document(account("default")), "The breaker held nothing back.", "/breaker/"),
        (document(account("default")), "No conflicts with the platform.", "/conflicts/"),
        (document(account("default")), "no audit records yet", "/audit/head_seq"),
        (document(account("default", days=0)), "Nothing was due and waiting", "<svg"),
    ],
)
def test_empty_states_read_sensibly(doc: dict[str, Any], shown: str, absent: str) -> None:
    html = page(doc)
    assert shown in html
    assert absent not in html
    assert mismatches(html, doc) == []


def test_a_backlog_without_deletions_still_draws_its_chart() -> None:
    doc = document(account("default"))
    doc["accounts"][0]["backlog_per_day"][-1]["due"] = 7
    html = page(doc)
    assert "No deletions in this period." in html
    assert bars_from_dom(html) == {("backlog", "default", "2026-11-29", ""): 7}


# --- in Chromium -------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "outcome"), [("", "skip"), ("require", "fail")])
def test_a_missing_chromium_skips_unless_it_is_required(
    monkeypatch: pytest.MonkeyPatch, setting: str, outcome: str
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(chromium, "SETTING", setting)
    expected = pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception
    with pytest.raises(expected, match="chromium is not installed"):
        chromium.chromium()


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    chromium.chromium()  # skip (or fail, when required) before writing anything
    doc = realistic()
    path = tmp_path / "report.html"
    path.write_text(page(doc), encoding="utf-8")
    return path, doc


def test_chromium_renders_the_page_with_every_figure_equal_to_the_document(
    rendered: tuple[Path, dict[str, Any]],
) -> None:
    path, doc = rendered
    dom = chromium.dump_dom(path)
    assert "<svg" in dom and "</html>" in dom
    assert mismatches(dom, doc) == []
    assert len(figures_from_dom(dom)) == len(figures_from_doc(doc)) > 100


def test_chromium_screenshot_is_not_blank_and_shows_the_charts(
    rendered: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = rendered
    png = tmp_path / "report.png"
    chromium.screenshot(path, png, width=1280, height=2400)
    with Image.open(png) as image:
        assert image.size == (1280, 2400)
    found = chromium.assert_not_blank(png, colours=50, share=0.03)
    # The bars are drawn: the first four rules' colours fill them (marks drawn over the rest).
    for hex_colour in PALETTE[:4]:
        rgb = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
        assert rgb in found.colours, f"chart colour {hex_colour} not drawn"


def test_the_blankness_check_fails_on_a_blank_page(tmp_path: Path) -> None:
    chromium.chromium()
    blank = tmp_path / "blank.html"
    blank.write_text('<!DOCTYPE html><html lang="en"><title>x</title><p>.</p></html>')
    png = tmp_path / "blank.png"
    chromium.screenshot(blank, png, width=640, height=480)
    with pytest.raises(AssertionError, match="a blank page"):
        chromium.assert_not_blank(png)


def test_chromium_prints_the_page_to_a4_pdf(
    rendered: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = rendered
    pdf = tmp_path / "report.pdf"
    chromium.print_pdf(path, pdf)
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    boxes = re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", data)
    assert boxes, "no page in the PDF"
    for width, height in boxes:  # A4: 595 x 842 points
        assert abs(float(width) - 595.3) < 1.5 and abs(float(height) - 841.9) < 1.5
