"""Plan files: ``retention plan --out FILE`` writes one, ``retention apply FILE`` deletes by it.

A plan names what it was made under (the rules' fingerprint, the account, the store's id) and
when, and lists the due set. Applying it deletes only conversations it lists that are still due
and unheld under the same rules; a plan made under other rules, on another store, or too long
ago is stale and deletes nothing. Pure: the commands read and write the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from retention.models import PlanItem
from retention.timefmt import format_duration

FORMAT = "retention-plan/1"


class StalePlan(ValueError):
    """The plan cannot be applied as it stands; the message says why."""


@dataclass(frozen=True, slots=True)
class Plan:
    created_at: datetime
    account: str
    store_id: str
    rules_fingerprint: str
    due: tuple[tuple[int, str], ...]  # (agent_id, session_id)


def dumps(
    items: list[PlanItem], *, now: datetime, account: str, store_id: str, fingerprint: str
) -> str:
    body: dict[str, Any] = {
        "format": FORMAT,
        "created_at": now.isoformat(),
        "account": account,
        "store_id": store_id,
        "rules_fingerprint": fingerprint,
        "due": [
            {
                "agent_id": item.agent_id,
                "session_id": item.session_id,
                "name": item.name,
                "rule": item.rule,
                "due_at": item.due_at.isoformat(),
            }
            for item in items
        ],
    }
    return json.dumps(body, indent=2) + "\n"


def loads(text: str) -> Plan:
    """Parse a plan file; ValueError naming the field when it is not one."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not a plan file (not JSON: {exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"not a plan file (format is not {FORMAT!r})")
    try:
        due = tuple((int(d["agent_id"]), str(d["session_id"])) for d in raw["due"])
        return Plan(
            created_at=datetime.fromisoformat(raw["created_at"]),
            account=str(raw["account"]),
            store_id=str(raw["store_id"]),
            rules_fingerprint=str(raw["rules_fingerprint"]),
            due=due,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a plan file (field {exc} missing or malformed)") from None


def check(
    plan: Plan,
    *,
    now: datetime,
    account: str,
    store_id: str,
    fingerprint: str,
    max_age: timedelta,
) -> None:
    """Raise StalePlan unless the plan was made here, under these rules, recently enough."""
    if plan.rules_fingerprint != fingerprint:
        raise StalePlan("plan is stale: it was made under other rules (or another dry-run)")
    if plan.store_id != store_id or plan.account != account:
        raise StalePlan("plan is stale: it was made on another store or account")
    age = now - plan.created_at
    if age > max_age:
        raise StalePlan(
            f"plan is stale: made {format_duration(age)} ago, more than --max-age "
            f"{format_duration(max_age)}"
        )
    if age < -timedelta(minutes=5):
        raise StalePlan("plan is stale: it says it was made in the future")
