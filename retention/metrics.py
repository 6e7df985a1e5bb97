"""Prometheus metrics (prometheus-client), in a registry of their own.

Store figures (tracked, due, overdue, held per agent) are read from the store at scrape time;
sweep results arrive through the engine's listener; API calls, 429s and the budget are read from
the client's counters as they stand. Scraping costs no API call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from retention.budget import CallStats, RequestBudget
from retention.clocks import ClockReading
from retention.models import AgentStatus, SweepReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ApiCollector(Collector):
    def __init__(
        self,
        stats: CallStats,
        budget: RequestBudget,
        clock_reading: Callable[[], ClockReading | None],
        max_clock_skew: timedelta,
    ) -> None:
        self.stats = stats
        self.budget = budget
        self.clock_reading = clock_reading
        self.max_clock_skew = max_clock_skew

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "retention_api_calls",
            "CustomGPT API calls made, by kind and status",
            labels=["kind", "status"],
        )
        for (kind, status), count in sorted(self.stats.calls.items()):
            calls.add_metric([kind, status], count)
        yield calls
        yield CounterMetricFamily(
            "retention_api_rate_limited", "429 answers from the API", value=self.budget.rate_limited
        )
        remaining = self.budget.remaining
        yield GaugeMetricFamily(
            "retention_api_budget_remaining",
            "Requests left in the current window, as the API last reported (NaN: not reported)",
            value=math.nan if remaining is None else remaining,
        )
        yield GaugeMetricFamily(
            "retention_api_budget_paused_seconds",
            "Seconds until a 429 pause of all calls ends",
            value=self.budget.paused_for,
        )
        yield GaugeMetricFamily(
            "retention_api_requests_per_minute",
            "The configured request budget",
            value=self.budget.requests_per_minute,
        )
        reading = self.clock_reading()
        skew = reading.skew.total_seconds() if reading is not None else math.nan
        yield GaugeMetricFamily(
            "retention_clock_skew_seconds",
            "The server's Date minus the local clock on the latest response (NaN: none yet)",
            value=skew,
        )
        exceeded = reading is not None and abs(reading.skew) > self.max_clock_skew
        yield GaugeMetricFamily(
            "retention_clock_skew_exceeded",
            "1 while the clocks differ by more than max_clock_skew: nothing is deleted",
            value=1.0 if exceeded else 0.0,
        )


class Metrics:
    def __init__(
        self,
        *,
        stats: CallStats,
        budget: RequestBudget,
        clock_reading: Callable[[], ClockReading | None] = lambda: None,
        max_clock_skew: timedelta = timedelta(minutes=5),
    ) -> None:
        self.registry = CollectorRegistry()
        per_agent = ["agent"]
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
            "retention_deletions", "Deletion outcomes, by rule", ["outcome", "rule"], registry=r
        )
        self.unverified = Counter(
            "retention_deletions_unverified",
            "Conversations recorded as deleted (DELETE 200) that a later listing still showed; "
            "each is audited as failed and queued again",
            registry=r,
        )
        self.sweeps = Counter(
            "retention_sweeps", "Sweeps run, by kind and result", ["kind", "result"], registry=r
        )
        self.sweep_duration = Histogram(
            "retention_sweep_duration_seconds",
            "How long sweeps take",
            ["kind"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
            registry=r,
        )
        self.breaker = Gauge(
            "retention_breaker_tripped",
            "1 while the mass-deletion breaker stops unapproved deletions in a scope "
            '("account", or an agent id), as the last deletion sweep found',
            ["scope"],
            registry=r,
        )
        self.last_success = Gauge(
            "retention_last_successful_sweep_timestamp_seconds",
            "When the last sweep that succeeded ended (Unix time)",
            ["kind"],
            registry=r,
        )
        r.register(_ApiCollector(stats, budget, clock_reading, max_clock_skew))

    def observe_sweep(self, report: SweepReport) -> None:
        result = "ok" if report.ok else "failed"
        self.sweeps.labels(report.kind, result).inc()
        if report.finished_at is not None:
            seconds = (report.finished_at - report.started_at).total_seconds()
            self.sweep_duration.labels(report.kind).observe(seconds)
            if report.ok:
                self.last_success.labels(report.kind).set(report.finished_at.timestamp())
        if report.kind in ("delete", "once"):
            self.breaker.clear()
            for scope in report.breaker_scopes:
                self.breaker.labels(scope).set(1)
        for (outcome, rule), count in report.outcomes.items():
            self.deletions.labels(outcome, rule).inc(count)
        self.unverified.inc(report.unverified)

    def set_store_figures(self, rows: list[AgentStatus]) -> None:
        for gauge in (self.tracked, self.due, self.overdue, self.held, self.grace):
            gauge.clear()
        for row in rows:
            agent = str(row.agent_id)
            self.tracked.labels(agent).set(row.tracked)
            self.due.labels(agent).set(row.due)
            self.overdue.labels(agent).set(row.overdue)
            self.held.labels(agent).set(row.held)
            self.grace.labels(agent).set(row.grace)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def overdue_after(delete_every: timedelta) -> timedelta:
    """A conversation counts as overdue once it has waited two deletion intervals."""
    return delete_every * 2
