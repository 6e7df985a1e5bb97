"""The monitoring in deploy/ stays true: the alert rules pass promtool's checks and their unit
tests, and every metric the rules and the Grafana dashboard query is one that a running daemon
exposes, with the labels they select on.

``RETENTION_TESTS_PROMTOOL`` chooses (read once, at import; the tests' own environment is
cleaned per test): unset, the promtool tests skip when ``promtool`` is not on the PATH;
``require`` (CI), they fail instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from retention.emulator import DEFAULT_TOKEN, Emulator, RateLimit

from .conftest import REPO
from .daemon_process import free_port, start, stop, until_up

PROMTOOL_SETTING = os.environ.get("RETENTION_TESTS_PROMTOOL", "")
RULES = REPO / "deploy" / "prometheus" / "retention-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "retention-alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "retention-dashboard.json"
# Prometheus's own series, never in retention's scrape.
PROMETHEUS_OWN = {"up"}
# Per process, not per account: one config file, one build.
PROCESS_WIDE = {
    "up",
    "retention_reloads_total",
    "retention_last_successful_reload_timestamp_seconds",
    "retention_build_info",
    "process_start_time_seconds",
}
SEVERITIES = {"critical", "warning"}


# ---- reading PromQL -------------------------------------------------------------------------


class Matcher(NamedTuple):
    label: str
    op: str
    value: str


class Selector(NamedTuple):
    name: str
    matchers: tuple[Matcher, ...]


_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])                      # a range or subquery: [5m], [$__rate_interval]
  | (?P<number>\d[\w.]*(?:[eE][+-]\d+)?)       # 0.95, 1e3, and durations: 5m, 1h30m
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<space>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE,
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip


def _tokens(expr: str) -> list[tuple[str, str]]:
    found = [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(expr)]
    return [(kind, text) for kind, text in found if kind != "space"]


def _unquote(text: str) -> str:
    if text.startswith('"'):
        value: str = json.loads(text)
        return value
    return text[1:-1]


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression: each metric name with its label matchers.

    Names followed by ``(`` are functions; aggregation operators, keywords and the label lists
    of ``by``, ``without``, ``on``, ``ignoring`` and ``group_*`` are skipped. A selector without
    a metric name (``{__name__=...}``) is refused rather than passed over.
    """
    tokens = _tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "other" and text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        if kind != "name" or text.lower() in _KEYWORDS or text in _AGGREGATIONS:
            i += 1
            continue
        if text in _GROUPING:
            i += 1
            if following == "(":  # skip the label list, up to its ")"
                while tokens[i][1] != ")":
                    i += 1
                i += 1
            continue
        if following == "(":  # a function
            i += 1
            continue
        matchers: list[Matcher] = []
        i += 1
        if following == "{":
            i += 1
            while tokens[i][1] != "}":
                label_kind, label = tokens[i]
                op = ""
                i += 1
                while tokens[i][0] == "other" and tokens[i][1] in "=!~":
                    op += tokens[i][1]
                    i += 1
                value_kind, value = tokens[i]
                if (
                    label_kind != "name"
                    or value_kind != "string"
                    or op not in {"=", "!=", "=~", "!~"}
                ):
                    raise ValueError(f"cannot read the matchers of {text} in {expr!r}")
                matchers.append(Matcher(label, op, _unquote(value)))
                i += 1
                if tokens[i][1] == ",":
                    i += 1
            i += 1
        found.append(Selector(text, tuple(matchers)))
    return found


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            "sum by (account) (rate(retention_api_rate_limited_total[10m])) * 60 > 1",
            [Selector("retention_api_rate_limited_total", ())],
        ),
        (
            "retention_breaker_tripped == 1 and ignoring (scope) retention_account_held == 1",
            [Selector("retention_breaker_tripped", ()), Selector("retention_account_held", ())],
        ),
        (
            "histogram_quantile(0.95, sum by (account, le) "
            '(rate(retention_x_bucket{account=~"$account"}[$__rate_interval])))',
            [Selector("retention_x_bucket", (Matcher("account", "=~", "$account"),))],
        ),
        ('absent(up{job="retention"})', [Selector("up", (Matcher("job", "=", "retention"),))]),
        (
            'retention_x_total{rule="a}b, c", kind!~"x|y",} offset 5m '
            "/ on (a) group_left retention_y",
            [
                Selector(
                    "retention_x_total",
                    (Matcher("rule", "=", "a}b, c"), Matcher("kind", "!~", "x|y")),
                ),
                Selector("retention_y", ()),
            ],
        ),
        ("time() - 1e3 * 1h30m", []),
        (
            "count without (instance) (retention_build_info) or vector(0)",
            [Selector("retention_build_info", ())],
        ),
    ],
)
def test_the_promql_reader_finds_every_selector_and_nothing_else(
    expr: str, expected: list[Selector]
) -> None:
    assert selectors(expr) == expected


def test_the_promql_reader_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="without a metric name"):
        selectors('{__name__="retention_x"}')
    with pytest.raises(ValueError, match="cannot read the matchers"):
        selectors("retention_x{kind}")


# ---- the files ------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    assert [g["name"] for g in groups] == ["retention"]
    rules: list[dict[str, Any]] = groups[0]["rules"]
    return rules


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel but rows, also those inside collapsed rows."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries(board: dict[str, Any]) -> dict[str, str]:
    """Each panel query's PromQL, by "panel title / refId"."""
    return {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in panels(board)
        for target in panel["targets"]
    }


def account_variable_source(board: dict[str, Any]) -> tuple[str, str]:
    """The metric and label of the $account variable's label_values() query."""
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "account"]
    found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
    assert found, variable["definition"]
    return found.group(1), found.group(2)


def rule_selectors() -> dict[str, list[Selector]]:
    return {rule["alert"]: selectors(rule["expr"]) for rule in alert_rules()}


def test_every_alert_has_a_for_a_severity_and_says_what_to_do() -> None:
    rules = alert_rules()
    assert len(rules) >= 6
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names), "alert names are unique"
    queried = rule_selectors()
    for rule in rules:
        assert "record" not in rule, rule
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["alert"].startswith("Retention"), rule["alert"]
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        assert summary and len(description) > 100, rule["alert"]
        assert queried[rule["alert"]], f"{rule['alert']} queries no metric"


def test_the_alerts_cover_what_the_operator_needs() -> None:
    """The issue's list: overdue for an hour, stale sweeps, 429 storms, breaker, reloads, the
    audit chain; each on the metric and with the threshold the README documents."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    used = {name: {s.name for s in found} for name, found in rule_selectors().items()}
    overdue = rules["RetentionConversationsOverdue"]
    assert used["RetentionConversationsOverdue"] == {"retention_conversations_overdue"}
    assert overdue["expr"].endswith("> 0") and overdue["for"] == "1h"
    assert "time()" in rules["RetentionDeleteSweepsStale"]["expr"]
    assert used["RetentionDeleteSweepsStale"] == {
        "retention_last_successful_sweep_timestamp_seconds"
    }
    assert used["RetentionRateLimitStorm"] == {"retention_api_rate_limited_total"}
    assert "rate(" in rules["RetentionRateLimitStorm"]["expr"]
    assert "retention_breaker_tripped" in used["RetentionBreakerTripped"]
    assert used["RetentionReloadRejected"] == {"retention_reloads_total"}
    # On the replica that works in the account only (a stale verdict elsewhere is no alert).
    assert used["RetentionAuditChainBroken"] == {
        "retention_audit_chain_valid",
        "retention_account_held",
    }
    assert rules["RetentionAuditChainBroken"]["labels"]["severity"] == "critical"
    assert used["RetentionTargetDown"] == {"up"}


def test_the_unverified_chain_alert_waits_for_three_of_the_daemons_walks() -> None:
    from retention.auditwatch import EVERY  # the daemon's own cadence of audit chain walks

    rules = {rule["alert"]: rule for rule in alert_rules()}
    expr = rules["RetentionAuditChainUnverified"]["expr"]
    assert expr.endswith(f"> {3 * EVERY.total_seconds():.0f}"), expr


def test_every_alert_has_unit_tests_that_fire_it_and_that_keep_it_quiet() -> None:
    suite = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert suite["rule_files"] == [RULES.name]
    fired: dict[str, list[dict[str, str]]] = {}
    quiet: set[str] = set()
    for group in suite["tests"]:
        for case in group["alert_rule_test"]:
            expected = case.get("exp_alerts") or []
            if expected:
                fired.setdefault(case["alertname"], []).extend(a["exp_labels"] for a in expected)
            else:
                quiet.add(case["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert set(fired) == names, "each alert fires in a test, and no test names a lost alert"
    assert quiet == names, "each alert stays quiet in a test"
    for name, found in rule_selectors().items():
        if not {s.name for s in found} <= PROCESS_WIDE:
            for labels in fired[name]:
                assert "account" in labels, f"{name} must keep the account label: {labels}"
        for labels in fired[name]:
            assert labels["severity"] in SEVERITIES


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not on the PATH (Debian package prometheus; .ci/run installs it)"
        if PROMTOOL_SETTING == "require":
            pytest.fail(f"{reason}, and RETENTION_TESTS_PROMTOOL=require")
        pytest.skip(reason)
    return found


def run(*argv: str | Path, cwd: Path | None = None) -> tuple[int, str]:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=50, check=False
    )
    return done.returncode, done.stdout + done.stderr


def test_promtool_checks_the_rules(promtool: str) -> None:
    code, output = run(promtool, "check", "rules", RULES)
    assert code == 0, output
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_the_rules_pass_their_promtool_unit_tests(promtool: str) -> None:
    code, output = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert code == 0, output
    assert "SUCCESS" in output


def test_promtool_rejects_a_broken_rule_file(promtool: str, tmp_path: Path) -> None:
    """The checks above can fail: a rule without a valid expression does not pass."""
    broken = tmp_path / "broken.yml"
    text = RULES.read_text(encoding="utf-8").replace("> 0", "> > 0", 1)
    broken.write_text(text, encoding="utf-8")
    code, output = run(promtool, "check", "rules", broken)
    assert code != 0 and "parse error" in output, output


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each query, as recording rules, with Grafana's variables filled in."""
    queries = dashboard_queries(dashboard())
    records = [
        {
            "record": f"dashboard:query_{n}",
            "expr": expr.replace("$__rate_interval", "5m").replace("$account", ".*"),
        }
        for n, expr in enumerate(queries.values())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}), encoding="utf-8"
    )
    code, output = run(promtool, "check", "rules", path)
    assert code == 0, output
    assert f"SUCCESS: {len(records)} rules found" in output


def test_the_dashboard_parses_and_every_panel_queries() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["account"]["multi"] and variables["account"]["includeAll"]
    assert account_variable_source(board)[1] == "account"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids), "panel ids are unique"
    shown = list(panels(board))
    assert len(shown) >= 10
    for panel in shown:
        title = panel["title"]
        assert panel["targets"], f"{title}: no query"
        assert panel["datasource"]["uid"] == "${datasource}", title
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], title
            assert target["datasource"]["uid"] == "${datasource}", title
            assert selectors(target["expr"]), f"{title}: queries no metric"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title
    used = {s.name for expr in dashboard_queries(board).values() for s in selectors(expr)}
    for wanted in (
        "retention_deletions_total",
        "retention_deletion_delay_seconds_bucket",
        "retention_conversations_overdue",
        "retention_conversations_in_grace",
        "retention_sweeps_total",
        "retention_api_calls_total",
        "retention_api_rate_limited_total",
        "retention_api_budget_remaining",
        "retention_breaker_tripped",
        "retention_reloads_total",
        "retention_audit_chain_length",
        "retention_audit_chain_valid",
        "retention_account_held",
    ):
        assert wanted in used, f"the dashboard shows {wanted}"


# ---- against a real scrape ------------------------------------------------------------------

CONFIG = """
[api]
base_url = "{url}"
requests_per_minute = 6000
[store]
url = "sqlite+aiosqlite:///{db}"
[schedule]
discover_every = "1h"
delete_every = "1s"
[safety]
breaker_floor = 2
[admin]
listen = "127.0.0.1:{admin_port}"
[[policies]]
name = "test-chats"
agents = [532, 600]
name_matches = ["Test*"]
max_age = "1h"
"""


def scrape_problems(
    where: str, found: list[Selector], samples: list[Sample], *, dashboard: bool = False
) -> list[str]:
    """What a query selects that the scrape lacks: a sample name (histograms and counters by
    their exposed names: _bucket, _sum, _count, _total), a label, or a label's value."""
    problems = []
    for selector in found:
        if selector.name in PROMETHEUS_OWN:
            continue
        mine = [s for s in samples if s.name == selector.name]
        if not mine:
            problems.append(f"{where}: {selector.name} is not in the scrape")
            continue
        for matcher in selector.matchers:
            if matcher.op == "=":
                hit = any(s.labels.get(matcher.label) == matcher.value for s in mine)
            else:
                hit = any(matcher.label in s.labels for s in mine)
            if not hit:
                problems.append(f"{where}: no {selector.name} sample has {matcher}")
        per_account = all("account" in s.labels for s in mine)
        if (
            dashboard
            and per_account
            and Matcher("account", "=~", "$account") not in selector.matchers
        ):
            problems.append(f'{where}: {selector.name} is not filtered by account=~"$account"')
    return problems


def everything_queried(board: dict[str, Any]) -> dict[str, tuple[list[Selector], bool]]:
    """Every query of the rules and the dashboard: its selectors, and whether it is the
    dashboard's."""
    queries = {f"alert {name}": (found, False) for name, found in rule_selectors().items()}
    for where, expr in dashboard_queries(board).items():
        queries[f"panel {where}"] = (selectors(expr), True)
    metric, label = account_variable_source(board)
    queries["the $account variable"] = ([Selector(metric, (Matcher(label, "=~", ".*"),))], False)
    return queries


def test_the_scrape_check_reports_what_a_scrape_lacks() -> None:
    """The check below can fail: a wrong name, label value or unfiltered panel is named."""
    samples = [
        Sample("retention_reloads_total", {"result": "rejected"}, 0.0),
        Sample("retention_sweeps_total", {"account": "a", "kind": "delete"}, 1.0),
    ]
    assert (
        scrape_problems("x", selectors('retention_reloads_total{result="rejected"}'), samples) == []
    )
    assert scrape_problems("x", selectors("retention_reloads"), samples) == [
        "x: retention_reloads is not in the scrape"
    ]
    assert scrape_problems("x", selectors('retention_reloads_total{result="failed"}'), samples) == [
        "x: no retention_reloads_total sample has Matcher(label='result', op='=', value='failed')"
    ]
    assert scrape_problems("x", selectors("retention_sweeps_total"), samples, dashboard=True) == [
        'x: retention_sweeps_total is not filtered by account=~"$account"'
    ]
    assert scrape_problems("x", selectors("up == 0"), samples) == []


async def _scrape(http: aiohttp.ClientSession, admin: str) -> list[Sample]:
    async with http.get(admin + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


async def test_every_metric_the_rules_and_the_dashboard_query_is_in_a_real_scrape(
    emulator: Emulator, tmp_path: Path
) -> None:
    """`retention run` against the emulator, after a sweep that deleted a conversation and
    another in which the breaker held an agent's back: /metrics has every series the alert
    rules and the dashboard select, with the labels and values they select on."""
    now = datetime.now(UTC)
    emulator.state.add_conversation(532, "Test old", created_at=now - timedelta(hours=2))
    emulator.state.add_agent(600, "Bulk bot", created_at=now - timedelta(days=10))
    for n in range(3):  # every one of agent 600's conversations due: over max_due_fraction
        emulator.state.add_conversation(600, f"Test {n}", created_at=now - timedelta(hours=3))
    emulator.rate_limit = RateLimit(limit=100_000)  # the budget headers: budget_remaining
    board = dashboard()
    queried = everything_queried(board)
    admin_port = free_port()
    async with emulator.serve() as url:
        config = tmp_path / "retention.toml"
        config.write_text(
            CONFIG.format(url=url, db=tmp_path / "r.db", admin_port=admin_port), encoding="utf-8"
        )
        process = await start(config, "run", env={"CUSTOMGPT_API_TOKEN": DEFAULT_TOKEN})
        admin = f"http://127.0.0.1:{admin_port}"
        try:
            async with aiohttp.ClientSession() as http:
                await until_up(http, admin)
                # Until everything is there, or long enough for it to be: some series start
                # with the first sweep of their kind, the audit chain's with its verification.
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 20
                while True:
                    samples = await _scrape(http, admin)
                    problems = [
                        problem
                        for where, (found, on_dashboard) in queried.items()
                        for problem in scrape_problems(
                            where, found, samples, dashboard=on_dashboard
                        )
                    ]
                    deleted = sum(
                        s.value
                        for s in samples
                        if s.name == "retention_deletions_total"
                        and s.labels["outcome"] == "deleted"
                    )
                    if (deleted and not problems) or loop.time() > deadline:
                        break
                    await asyncio.sleep(0.25)
        finally:
            code, output = await stop(process)
    assert code == 0, output[-3000:]
    assert deleted >= 1, "a sweep deleted something"
    assert len(emulator.calls("DELETE")) >= 1
    assert problems == [], "\n".join(problems)
    by_name: dict[str, list[Sample]] = {}
    for sample in samples:
        by_name.setdefault(sample.name, []).append(sample)
    for name in {s.name for found, _ in queried.values() for s in found} - PROMETHEUS_OWN:
        per_account = all("account" in s.labels for s in by_name[name])
        assert per_account == (name not in PROCESS_WIDE), f"{name}: account label"
