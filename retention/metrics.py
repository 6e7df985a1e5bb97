"""Prometheus metrics (prometheus-client), in a registry of their own.

Store figures (tracked, due, overdue, held per agent) are read from the store at scrape time;
sweep results arrive through the engines' listener; API calls, 429s and the budget are read from
each account's client counters as they stand. Scraping costs no API call. Every series names its
``account`` (``default`` for a config without ``[[accounts]]``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import (
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from retention import __version__
from retention.budget import CallStats, RequestBudget
from retention.chain import Head, Verdict
from retention.clocks import ClockReading
from retention.impact import KINDS as IMPACT_KINDS
from retention.models import DEFAULT_ACCOUNT, AgentStatus, SweepReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SWEEP_KINDS = ("discover", "delete", "once", "apply")
# A counter's _created series doubles every series for no alert's use: left out.
disable_created_metrics()  # type: ignore[no-untyped-call]
# Seconds from due to deleted: a minute's lateness (one deletion interval) up to a week.
DELAY_BUCKETS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600, 7 * 24 * 3600)


@dataclass(frozen=True)
class ApiSource:
    """One account's client counters, read at scrape time."""

    stats: CallStats
    budget: RequestBudget
    clock_reading: Callable[[], ClockReading | None]
    held: Callable[[], bool] = lambda: True  # whether this process works in the account now


class _ApiCollector(Collector):
    def __init__(self, sources: Mapping[str, ApiSource], max_clock_skew: timedelta) -> None:
        self.sources = sources  # by account, filled as accounts are added
        self.max_clock_skew = max_clock_skew

    def collect(self) -> Iterator[Metric]:
        account = ["account"]
        calls = CounterMetricFamily(
            "retention_api_calls",
            "CustomGPT API calls made, by account, kind and status",
            labels=["account", "kind", "status"],
        )
        limited = CounterMetricFamily(
            "retention_api_rate_limited", "429 answers from the API", labels=account
        )
        remaining = GaugeMetricFamily(
            "retention_api_budget_remaining",
            "Requests left in the current window, as the API last reported (absent until then)",
            labels=account,
        )
        paused = GaugeMetricFamily(
            "retention_api_budget_paused_seconds",
            "Seconds until a 429 pause of the account's calls ends",
            labels=account,
        )
        per_minute = GaugeMetricFamily(
            "retention_api_requests_per_minute", "The configured request budget", labels=account
        )
        skew = GaugeMetricFamily(
            "retention_clock_skew_seconds",
            "The server's Date minus the local clock on the latest response (absent: none yet)",
            labels=account,
        )
        exceeded = GaugeMetricFamily(
            "retention_clock_skew_exceeded",
            "1 while the clocks differ by more than max_clock_skew: nothing is deleted",
            labels=account,
        )
        held = GaugeMetricFamily(
            "retention_account_held",
            "1 while this process holds the account's lease and works in it (a replica holds "
            "its share of the accounts)",
            labels=account,
        )
        for name, source in sorted(self.sources.items()):
            held.add_metric([name], 1.0 if source.held() else 0.0)
            for (kind, status), count in sorted(source.stats.calls.items()):
                calls.add_metric([name, kind, status], count)
            budget = source.budget
            limited.add_metric([name], budget.rate_limited)
            if (left := budget.remaining) is not None:  # absent until the API has said
                remaining.add_metric([name], left)
            paused.add_metric([name], budget.paused_for)
            per_minute.add_metric([name], budget.requests_per_minute)
            reading = source.clock_reading()
            if reading is not None:  # absent until a response has told the server's time
                skew.add_metric([name], reading.skew.total_seconds())
            over = reading is not None and abs(reading.skew) > self.max_clock_skew
            exceeded.add_metric([name], 1.0 if over else 0.0)
        yield from (calls, limited, remaining, paused, per_minute, skew, exceeded, held)


class Metrics:
    def __init__(
        self,
        *,
        stats: CallStats | None = None,
        budget: RequestBudget | None = None,
        clock_reading: Callable[[], ClockReading | None] = lambda: None,
        max_clock_skew: timedelta = timedelta(minutes=5),
    ) -> None:
        """Metrics for the accounts added with :meth:`add_account`; ``stats`` and ``budget``
        given here are the ``default`` account's."""
        self.registry = CollectorRegistry()
        per_agent = ["account", "agent"]
        r = self.registry
        self.tracked = Gauge(
            "retention_conversations_tracked", "Live conversations tracked", per_agent, registry=r
        )
        self.due = Gauge(
            "retention_conversations_due", "Conversations due for deletion", per_agent, registry=r
        )
        self.overdue = Gauge(
            "retention_conversations_overdue",
            "Conversations due for longer than two deletion intervals",
            per_agent,
            registry=r,
        )
        self.held = Gauge(
            "retention_conversations_held", "Conversations a hold keeps", per_agent, registry=r
        )
        self.grace = Gauge(
            "retention_conversations_in_grace",
            "Due conversations waiting out a policy change's grace",
            per_agent,
            registry=r,
        )
        self.deletions = Counter(
            "retention_deletions",
            "Deletion outcomes, by account and rule",
            ["account", "outcome", "rule"],
            registry=r,
        )
        self.unverified = Counter(
            "retention_deletions_unverified",
            "Conversations recorded as deleted (DELETE 200) that a later listing still showed; "
            "each is audited as failed and queued again",
            ["account"],
            registry=r,
        )
        self.sweeps = Counter(
            "retention_sweeps",
            "Sweeps run, by account, kind and result",
            ["account", "kind", "result"],
            registry=r,
        )
        self.sweep_duration = Histogram(
            "retention_sweep_duration_seconds",
            "How long sweeps take",
            ["account", "kind"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
            registry=r,
        )
        self.breaker = Gauge(
            "retention_breaker_tripped",
            "1 while the mass-deletion breaker stops unapproved deletions in a scope "
            '("account", or an agent id), as the last deletion sweep found',
            ["account", "scope"],
            registry=r,
        )
        self.last_success = Gauge(
            "retention_last_successful_sweep_timestamp_seconds",
            "When the last sweep that succeeded ended (Unix time)",
            ["account", "kind"],
            registry=r,
        )
        self.delay = Histogram(
            "retention_deletion_delay_seconds",
            "How long after its due time each conversation was deleted",
            ["account"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "retention_reloads",
            "Config reloads, by result (ok, rejected: the rules in force stayed)",
            ["result"],
            registry=r,
        )
        for result in ("ok", "rejected"):
            self.reloads.labels(result)
        self.reload_changes = Counter(
            "retention_reload_changes",
            "What accepted reloads did to the conversations the store knows, by change "
            "(newly_due_now, newly_held, no_longer_held, ...; `retention diff` names them)",
            ["account", "change"],
            registry=r,
        )
        self.last_reload = Gauge(
            "retention_last_successful_reload_timestamp_seconds",
            "When the rules in force were last put in force, at start or by a reload (Unix time)",
            registry=r,
        )
        self.chain_length = Gauge(
            "retention_audit_chain_length",
            "Rows in the account's audit hash chain (its head's sequence number)",
            ["account"],
            registry=r,
        )
        self.chain_valid = Gauge(
            "retention_audit_chain_valid",
            "1 when the daemon's last walk of the audit chain found every row intact, 0 when "
            "it found one edited, deleted or inserted (absent until the first walk)",
            ["account"],
            registry=r,
        )
        self.chain_verified = Gauge(
            "retention_audit_last_verified_timestamp_seconds",
            "When the daemon last walked the account's audit chain (Unix time)",
            ["account"],
            registry=r,
        )
        Info("retention_build", "The running retention's version", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        # process_* (CPU, memory, open files, start time) and python_info, as exporters have.
        if PROCESS_COLLECTOR is not None:
            ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._sources: dict[str, ApiSource] = {}
        r.register(_ApiCollector(self._sources, max_clock_skew))
        if stats is not None and budget is not None:
            self.add_account(
                DEFAULT_ACCOUNT, stats=stats, budget=budget, clock_reading=clock_reading
            )

    def add_account(
        self,
        name: str,
        *,
        stats: CallStats,
        budget: RequestBudget,
        clock_reading: Callable[[], ClockReading | None] = lambda: None,
        held: Callable[[], bool] | None = None,
    ) -> None:
        """Report this account's API calls, budget, clock and, for a replica, whether it
        holds the account now. Its sweep results start at zero, so an alert on failed sweeps
        has a series before the first failure."""
        self._sources[name] = ApiSource(stats, budget, clock_reading, held or (lambda: True))
        for kind in SWEEP_KINDS:
            for result in ("ok", "failed"):
                self.sweeps.labels(name, kind, result)
        self.unverified.labels(name)
        self.chain_length.labels(name)
        for change in IMPACT_KINDS:
            self.reload_changes.labels(name, change)

    def observe_reload(self, ok: bool, at: datetime) -> None:
        """A reload's result; an accepted one is the time the rules in force date from."""
        self.reloads.labels("ok" if ok else "rejected").inc()
        if ok:
            self.last_reload.set(at.timestamp())

    def observe_sweep(self, report: SweepReport) -> None:
        account, result = report.account, "ok" if report.ok else "failed"
        self.sweeps.labels(account, report.kind, result).inc()
        if report.finished_at is not None:
            seconds = (report.finished_at - report.started_at).total_seconds()
            self.sweep_duration.labels(account, report.kind).observe(seconds)
            if report.ok:
                self.last_success.labels(account, report.kind).set(report.finished_at.timestamp())
        if report.kind in ("delete", "once"):
            for labels in [k for k in _label_sets(self.breaker) if k[0] == account]:
                self.breaker.remove(*labels)
            for scope in report.breaker_scopes:
                self.breaker.labels(account, scope).set(1)
        for (outcome, rule), count in report.outcomes.items():
            self.deletions.labels(account, outcome, rule).inc(count)
        for seconds in report.delays:
            self.delay.labels(account).observe(seconds)
        self.unverified.labels(account).inc(report.unverified)

    def set_store_figures(self, rows: Mapping[str, list[AgentStatus]]) -> None:
        """The store's figures, by account: each account's rows per agent."""
        for gauge in (self.tracked, self.due, self.overdue, self.held, self.grace):
            gauge.clear()
        for account, figures in rows.items():
            for row in figures:
                agent = str(row.agent_id)
                self.tracked.labels(account, agent).set(row.tracked)
                self.due.labels(account, agent).set(row.due)
                self.overdue.labels(account, agent).set(row.overdue)
                self.held.labels(account, agent).set(row.held)
                self.grace.labels(account, agent).set(row.grace)

    def observe_reload_impact(self, last: Mapping[str, Any] | None) -> None:
        """An accepted reload's changes per account (ConfigWatcher.last)."""
        for account in (last or {}).get("accounts", []):
            for change, count in account["totals"].items():
                if count:
                    self.reload_changes.labels(account["account"], change).inc(count)

    def observe_chain(self, verdict: Verdict, at: datetime) -> None:
        """A walk of one account's audit chain (:mod:`retention.auditwatch`)."""
        self.chain_valid.labels(verdict.account).set(1 if verdict.ok else 0)
        self.chain_verified.labels(verdict.account).set(at.timestamp())

    def set_chain_heads(self, heads: Iterable[Head]) -> None:
        """Each account's chain head, read at scrape time (one small row per account)."""
        for head in heads:
            self.chain_length.labels(head.account).set(head.seq)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _label_sets(gauge: Gauge) -> list[tuple[str, ...]]:
    """The label values a gauge has series for."""
    return [
        tuple(sample.labels[name] for name in ("account", "scope"))
        for metric in gauge.collect()
        for sample in metric.samples
    ]


def overdue_after(delete_every: timedelta) -> timedelta:
    """A conversation counts as overdue once it has waited two deletion intervals."""
    return delete_every * 2
