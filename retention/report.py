"""``retention report``: a period's evidence as one document (what ``report --json`` prints and
the HTML page and the terminal table show): per account, agent and rule, deleted, failed, due,
overdue, held, in grace and blocked by the breaker; the delay from due to deleted; platform
retention settings that conflict with a policy; and the audit chain's head and verification.

No API call: everything comes from the store. Cost: a few grouped reads per account, one
streamed walk over the conversations the period touches, and one walk of the audit chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from retention import ledger
from retention.breaker import Limits, judge
from retention.chain import Verdict
from retention.ledger import COUNTS, Key, Tally
from retention.policy import Rules
from retention.store import Store
from retention.timefmt import format_duration


def default_overdue_after(delete_every: timedelta) -> timedelta:
    """Due for longer than one deletion interval and an hour: overdue."""
    return delete_every + timedelta(hours=1)


@dataclass(frozen=True)
class Source:
    """One account to report: its view of the store, the rules and breaker limits in force."""

    store: Store
    rules: Rules
    limits: Limits
    # The daemon's last walk of the account's chain, and when: served as it is (GET /report
    # walks no chain); None: the report walks it.
    verified: tuple[Verdict, datetime] | None = None


async def build(
    sources: Iterable[Source], *, now: datetime, period: timedelta, overdue_after: timedelta
) -> dict[str, Any]:
    """The report's document for each account over the ``period`` that ends ``now``."""
    since = now - period
    return {
        "generated_at": _stamp(now),
        "since": _stamp(since),
        "until": _stamp(now),
        "period": format_duration(period),
        "overdue_after": format_duration(overdue_after),
        "overdue_after_seconds": overdue_after.total_seconds(),
        "accounts": [
            await _account(s, now=now, since=since, overdue_after=overdue_after) for s in sources
        ],
    }


async def _account(
    source: Source, *, now: datetime, since: datetime, overdue_after: timedelta
) -> dict[str, Any]:
    store, rules, limits = source.store, source.rules, source.limits
    tallies = await ledger.tallies(store, since=since, now=now, overdue_after=overdue_after)
    verdict = judge(await store.due_figures(now), limits)
    for (agent_id, _rule), tally in tallies.items():
        if verdict.stops(agent_id):
            tally.counts["blocked"] = tally.unapproved
    known = await store.all_agents()
    agents, total = [], Tally()
    for agent_id in sorted({k[0] for k in tallies} | set(known)):
        mine = sorted(((k, t) for k, t in tallies.items() if k[0] == agent_id), key=_rule_order)
        agent_total = Tally()
        for _, tally in mine:
            agent_total.add(tally)
        total.add(agent_total)
        record = known.get(agent_id)
        platform = record.platform_retention() if record is not None else None
        agents.append(
            {
                "agent_id": agent_id,
                "name": record.name if record is not None else "",
                "platform_retention": platform,
                "totals": dict(agent_total.counts),
                "delay_seconds": agent_total.delay_summary(),
                "rules": [
                    {"rule": key[1], **t.counts, "delay_seconds": t.delay_summary()}
                    for key, t in mine
                ],
            }
        )
    conflicts = []
    for record in known.values():
        for conflict in rules.platform_conflicts(record.id, record.platform_max_age):
            conflicts.append(
                {
                    "agent_id": conflict.agent_id,
                    "rule": conflict.rule,
                    "kind": conflict.kind,
                    "platform_max_age": format_duration(conflict.platform_max_age),
                    "platform_max_age_seconds": conflict.platform_max_age.total_seconds(),
                    "max_age": None
                    if conflict.max_age is None
                    else format_duration(conflict.max_age),
                    "message": conflict.message(),
                }
            )
    chain, verified_at = source.verified or (await store.journal.audit.verify(), now)
    return {
        "account": store.account,
        "totals": {key: total.counts[key] for key in COUNTS},
        "delay_seconds": total.delay_summary(),
        "agents": agents,
        "breaker": verdict.reasons(),
        "conflicts": sorted(conflicts, key=lambda c: (c["agent_id"], c["rule"])),
        "deletions_per_day": await ledger.deletions_per_day(store, since=since, now=now),
        "backlog_per_day": await ledger.backlog_per_day(store, since=since, now=now),
        "audit": {
            "ok": chain.ok,
            "rows_checked": chain.checked,
            "head": {"seq": chain.head.seq, "hash": chain.head.hash},
            "problem": chain.problem,
            "verified_at": _stamp(verified_at),
        },
    }


def _rule_order(item: tuple[Key, Tally]) -> tuple[bool, str]:
    rule = item[0][1]
    return (rule is None, rule or "")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
