"""The retention report as one self-contained HTML page, for the screen and for print to PDF.

:func:`page` renders the document ``retention report --json`` prints, and nothing else, so the
page's figures are the JSON's. No scripts, no fetches: CSS and SVG are inline. Each figure
carries ``data-figure`` (its key, listed below), delays a ``data-seconds`` (the raw number, empty
when there is none) and status values a ``data-value``, so tests can read the figures back::

    report/generated_at | since | until | period | overdue_after     the header
    ACCOUNT/total/KEY                    an account's totals (KEY: the eight counts)
    ACCOUNT/total/delay_p50 | p95 | max | count
    ACCOUNT/AGENT/total/KEY | delay_*    an agent's totals (AGENT: its id)
    ACCOUNT/AGENT/RULE/KEY | delay_*     RULE: the rule's name, ``-`` when none
    ACCOUNT/breaker/N, ACCOUNT/conflicts/N                            the messages, in order
    ACCOUNT/audit/ok | rows_checked | head_seq | head_hash | problem
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from html import escape
from typing import Any

from retention.reportcharts import NO_RULE, backlog_chart, deletions_chart, rule_label
from retention.timefmt import format_duration

# The eight counts, in the JSON's order; a column's label is its key ("in_grace": "In grace").
COUNTS = ("deleted", "already_gone", "failed", "due", "overdue", "held", "in_grace", "blocked")
DELAYS = ("p50", "p95", "max")
# Counts that mean trouble when not zero: shown in bold red, so a greyscale print shows them too.
ALERTS = frozenset({"failed", "overdue", "blocked"})

CSS = """
:root { color: #1a1a1a; background: #fff; font: 15px/1.45 system-ui, -apple-system, "Segoe UI",
  Roboto, "Helvetica Neue", Arial, sans-serif; }
body { max-width: 1180px; margin: 0 auto; padding: 16px 24px 40px; }
h1 { font-size: 1.6rem; margin: 0 0 6px; } h2 { font-size: 1.3rem; margin: 28px 0 8px;
  border-bottom: 2px solid #1a1a1a; } h3 { font-size: 1.05rem; margin: 18px 0 6px; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; margin: 0; }
dl.meta dt, dl.strip dt { color: #555; } dl.meta dd { margin: 0; }
dl.strip { display: flex; flex-wrap: wrap; gap: 8px; margin: 8px 0; }
dl.strip div { border: 1px solid #bbb; border-radius: 4px; padding: 4px 10px; min-width: 84px; }
dl.strip dt { font-size: 0.8rem; } dl.strip dd { margin: 0; font-size: 1.25rem; font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: 0.85rem; margin: 6px 0; }
th, td { border: 1px solid #bbb; padding: 3px 6px; text-align: left; vertical-align: top; }
thead th { background: #f0f0f0; } tbody th, td.name { overflow-wrap: anywhere; }
th[scope="rowgroup"] { min-width: 9em; } tbody th[scope="row"] { min-width: 6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total th, tr.total td { font-weight: 600; border-top: 2px solid #555; }
.alert, .bad { color: #b00020; font-weight: 700; } .ok { color: #176b2c; font-weight: 700; }
.muted, .empty { color: #555; font-style: italic; }
code { font-size: 0.85em; word-break: break-all; }
figure { margin: 10px 0 18px; }
svg .grid { stroke: #ddd; } svg .axis { stroke: #333; } svg text { font-size: 11px; fill: #222; }
svg .axis-title { font-size: 12px; font-weight: 600; }
svg .bar { stroke: #fff; stroke-width: 0.5; } svg .swatch { stroke: #333; stroke-width: 0.6; }
@page { size: A4; margin: 12mm; }
@media print {
  :root { font-size: 10pt; } body { max-width: none; padding: 0; }
  * { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
  section.account + section.account { break-before: page; }
  table, figure, dl.strip, .audit, tr { break-inside: avoid; page-break-inside: avoid; }
  thead { display: table-header-group; } h2, h3 { break-after: avoid; page-break-after: avoid; }
  table { font-size: 8pt; } nav { display: none; }
}
"""


def page(doc: Mapping[str, Any]) -> str:
    """The whole page for one report document (the output of ``retention report --json``)."""
    accounts: Sequence[Mapping[str, Any]] = doc["accounts"]
    title = f"Retention report, {doc['since'][:10]} to {doc['until'][:10]}"
    nav = ""
    if len(accounts) > 1:
        links = "".join(
            f'<li><a href="#account-{i}">{_e(a["account"])}</a></li>'
            for i, a in enumerate(accounts)
        )
        nav = f'<nav aria-label="Accounts"><ul>{links}</ul></nav>'
    body = "".join(_account(i, a) for i, a in enumerate(accounts)) or (
        '<p class="empty">No accounts in this report.</p>'
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1>{_header(doc)}</header>{nav}<main>{body}</main>"
        f"</body></html>\n"
    )


def _header(doc: Mapping[str, Any]) -> str:
    seconds = _seconds(doc["overdue_after_seconds"])
    overdue = (
        f'<span data-figure="report/overdue_after" data-seconds="{seconds}">'
        f"{_e(doc['overdue_after'])}</span>"
    )
    rows = (
        ("Generated at", _moment("report/generated_at", doc["generated_at"])),
        (
            "Period",
            f"{_moment('report/since', doc['since'])} to {_moment('report/until', doc['until'])} "
            f'(<span data-figure="report/period">{_e(doc["period"])}</span>)',
        ),
        ("Overdue after", f"{overdue} past due"),
    )
    return '<dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _account(index: int, account: Mapping[str, Any]) -> str:
    name = str(account["account"])
    strip = "".join(
        f"<div><dt>{_label(key)}</dt><dd{_css(key, account['totals'][key])} "
        f'data-figure="{_e(name)}/total/{key}">{_e(account["totals"][key])}</dd></div>'
        for key in COUNTS
    )
    delays = account["delay_seconds"]
    strip += "".join(
        f'<div><dt>Delay {key}</dt><dd data-figure="{_e(name)}/total/delay_{key}" '
        f'data-seconds="{_seconds(delays[key])}">{_delay(delays[key])}</dd></div>'
        for key in DELAYS
    )
    strip += (
        f'<div><dt>Delays measured</dt><dd data-figure="{_e(name)}/total/delay_count">'
        f"{_e(delays['count'])}</dd></div>"
    )
    early = int(delays.get("early", 0))  # deleted before due: never expected, always shown
    marked = ' class="alert"' if early else ""
    strip += (
        f"<div{marked}><dt>Deleted before due</dt>"
        f'<dd data-figure="{_e(name)}/total/delay_early">{early}</dd></div>'
    )
    days = [str(d["day"]) for d in account["backlog_per_day"]]
    return (
        f'<section class="account" id="account-{index}" aria-labelledby="account-{index}-h">'
        f'<h2 id="account-{index}-h">Account {_e(name)}</h2>'
        f'<dl class="strip" aria-label="Totals">{strip}</dl>'
        f"<h3>By agent and rule</h3>{_table(name, account['agents'])}"
        "<h3>Deletions per day, by rule</h3><figure>"
        + deletions_chart(
            account["deletions_per_day"], days, account=name, prefix=f"a{index}-deletions"
        )
        + "</figure><h3>Due backlog: conversations due and not yet deleted, per day</h3><figure>"
        + backlog_chart(account["backlog_per_day"], account=name, prefix=f"a{index}-backlog")
        + f"</figure>{_breaker(name, account['breaker'])}"
        f"{_conflicts(name, account['conflicts'])}{_audit(name, account['audit'])}</section>"
    )


def _table(account: str, agents: Sequence[Mapping[str, Any]]) -> str:
    if not agents:
        return '<p class="empty">No agent has figures in this period.</p>'
    head = (
        '<thead><tr><th scope="col" rowspan="2">Agent</th><th scope="col" rowspan="2">Rule</th>'
        f'<th scope="colgroup" colspan="{len(COUNTS)}">Conversations</th>'
        '<th scope="colgroup" colspan="4">Delay from due to deleted</th></tr><tr>'
        + "".join(f'<th scope="col">{_label(key)}</th>' for key in COUNTS)
        + "".join(f'<th scope="col">{key}</th>' for key in DELAYS)
        + '<th scope="col">Count</th></tr></thead>'
    )
    groups = []
    for agent in agents:
        prefix = f"{account}/{agent['agent_id']}"
        lead = (
            f'<th scope="rowgroup" rowspan="{len(agent["rules"]) + 1}">{_name(agent["name"])} '
            f'<span class="muted">#{_e(agent["agent_id"])}</span><br>'
            f"<small>platform: {_platform(agent['platform_retention'])}</small></th>"
        )
        rows = []
        for rule in agent["rules"]:
            name = rule["rule"]
            key = f"{prefix}/{NO_RULE if name is None else name}"
            shown = _e(rule_label(name))
            shown = f'<span class="muted">{shown}</span>' if name is None else shown
            rows.append(_row(key, rule, rule["delay_seconds"], label=shown, lead=lead))
            lead = ""
        totals, delays = agent["totals"], agent["delay_seconds"]
        rows.append(
            _row(f"{prefix}/total", totals, delays, label="All rules", lead=lead, total=True)
        )
        groups.append(f"<tbody>{''.join(rows)}</tbody>")
    return f"<table>{head}{''.join(groups)}</table>"


def _row(
    key: str,
    counts: Mapping[str, Any],
    delays: Mapping[str, Any],
    *,
    label: str,
    lead: str,
    total: bool = False,
) -> str:
    """One row: ``lead`` (the agent's cell, on its first row), the rule, its figures."""
    cells = "".join(
        f'<td{_css(k, counts[k], "num")} data-figure="{_e(key)}/{k}">{_e(counts[k])}</td>'
        for k in COUNTS
    )
    cells += "".join(
        f'<td class="num" data-figure="{_e(key)}/delay_{k}" data-seconds="{_seconds(delays[k])}">'
        f"{_delay(delays[k])}</td>"
        for k in DELAYS
    )
    cells += f'<td class="num" data-figure="{_e(key)}/delay_count">{_e(delays["count"])}</td>'
    opening = '<tr class="total">' if total else "<tr>"
    return f'{opening}{lead}<th scope="row">{label}</th>{cells}</tr>'


def _breaker(account: str, reasons: Sequence[str]) -> str:
    if not reasons:
        return '<h3>Breaker</h3><p class="muted">The breaker held nothing back.</p>'
    items = "".join(
        f'<li data-figure="{_e(account)}/breaker/{i}">{_e(r)}</li>' for i, r in enumerate(reasons)
    )
    return f'<h3>Breaker</h3><ul class="bad">{items}</ul>'


def _conflicts(account: str, conflicts: Sequence[Mapping[str, Any]]) -> str:
    if not conflicts:
        return '<h3>Platform retention</h3><p class="muted">No conflicts with the platform.</p>'
    rows = "".join(
        f'<tr><th scope="row">{_e(c["agent_id"])}</th>'
        f'<td class="name">{_e(rule_label(c["rule"]))}</td>'
        + "".join(f"<td>{_text(c[k])}</td>" for k in ("kind", "platform_max_age", "max_age"))
        + f'<td data-figure="{_e(account)}/conflicts/{i}">{_e(c["message"])}</td></tr>'
        for i, c in enumerate(conflicts)
    )
    return (
        "<h3>Platform retention conflicts</h3><table><thead><tr>"
        + "".join(
            f'<th scope="col">{h}</th>'
            for h in ("Agent", "Rule", "Kind", "Platform deletes after", "Max age", "Detail")
        )
        + f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _audit(account: str, audit: Mapping[str, Any]) -> str:
    key = f"{_e(account)}/audit"
    if audit["ok"]:
        verdict = (
            f'<strong class="ok" data-figure="{key}/ok" data-value="true">verified ok</strong>'
        )
    else:
        verdict = (
            f'<strong class="bad" data-figure="{key}/ok" data-value="false">\u2717 NOT VERIFIED'
            f'</strong>: <span class="bad" data-figure="{key}/problem">'
            f"{_e(audit['problem'])}</span>"
        )
    head = audit["head"]
    where = (
        f'head seq <span data-figure="{key}/head_seq">{_e(head["seq"])}</span>, hash '
        f'<code data-figure="{key}/head_hash">{_e(head["hash"])}</code>'
        if head is not None
        else '<span class="muted">no audit records yet</span>'
    )
    return (
        f'<h3>Audit chain</h3><p class="audit">{verdict}; '
        f'<span data-figure="{key}/rows_checked">{_e(audit["rows_checked"])}</span> rows checked; '
        f"{where}</p>"
    )


def _css(key: str, value: Any, base: str = "") -> str:
    """The class attribute of a count: ``alert`` too when it means trouble and is not zero."""
    names = " ".join(n for n in (base, "alert" if key in ALERTS and value else "") if n)
    return f' class="{names}"' if names else ""


def _platform(retention: Mapping[str, Any] | None) -> str:
    if retention is None:
        return "not reported"
    period = retention["period"]
    if period == "custom":
        return f"deletes after {_e(retention['days'])} days"
    return {"year": "deletes after a year", "never": "keeps forever"}.get(period, _e(period))


def _delay(seconds: float | None) -> str:
    if seconds is None:
        return "\u2014"
    if 0 < seconds < 1:
        return "&lt;1s"
    return _e(format_duration(timedelta(seconds=seconds)))


def _seconds(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _moment(key: str, text: str) -> str:
    """A timestamp for people, its ISO form kept in ``datetime`` and ``data-value``."""
    try:
        shown = datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        shown = text
    return (
        f'<time data-figure="{key}" data-value="{_e(text)}" datetime="{_e(text)}">'
        f"{_e(shown)}</time>"
    )


def _label(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _name(name: str) -> str:
    """An agent's name; the store may not know it (an agent only the ledger remembers)."""
    return _e(name) if name else '<span class="muted">(name unknown)</span>'


def _text(value: object) -> str:
    return "\u2014" if value is None else _e(value)


def _e(value: object) -> str:
    return escape(str(value), quote=True)
