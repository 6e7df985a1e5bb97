"""How a rules change reads and writes the store: every live row's facts and decision, in
batches, and the new decisions back, as few statements as the database allows.

A rules change touches every live row, a million on a big store, so this is where a row costs
least. Two things matter on SQLite, whose driver runs in a thread beside the event loop:

- Rows are read and converted positionally: no ORM row, no per-column processor call for a
  NULL.
- The driver gives the interpreter's lock back for each ``sqlite3_step`` and must win it back
  after: an ``executemany`` of 2,000 UPDATEs needs 2,000 handovers, and each waits up to the
  interpreter's switch interval (5 ms) while the event loop's thread is busy deciding the next
  batch. Measured, 100k such UPDATEs took 1.1 s with that thread idle and 270 s with it busy.
  So a batch is read as one JSON text, built by one ``SELECT json_group_array(...)``, and
  written by one ``UPDATE ... FROM (VALUES ...)`` of up to 2,000 rows: a single step each, so
  the write runs beside the deciding at full speed. The write goes to the driver directly, in
  the caller's transaction (one trip to its thread, where SQLAlchemy's cursor handling takes
  several). Its rows are padded to 250 or 2,000 with rows that match nothing: SQLite keeps each
  distinct statement prepared per connection, and one of 2,000 rows takes 2 MB, so a length
  per batch size would grow the memory by megabytes per batch.

:class:`retention.store.Store` owns the connection handling; these take an open connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler

from retention.models import LIVE_STATES, AgeFrom, ConversationFacts, Origin, State, creator_of
from retention.redecision import DecisionRow, StoredDecision
from retention.schema import UTCDateTime, conversations

# The columns that hold a decision, in the order :class:`StoredDecision` has them after state.
DECISION = (
    "due_at",
    "rule",
    "reason",
    "provisional",
    "dry_run",
    "age_from",
    "grace_until",
    "approved_at",
    "dry_run_noted_at",
)

# The row counts of a SQLite write statement (a group is cut into these, the last one padded):
# 2,000 rows of 12 values stay inside SQLite's 32,766 parameters.
SQLITE_ROWS = (250, 2000)
# A padding row: no row has id -1 or an empty state.
_PAD = (None,) * 9 + ("", -1, "")
# JSON functions are built into SQLite from 3.38, and UPDATE ... FROM is there from 3.33: an
# older SQLite takes the portable statements.
SQLITE_JSON = sqlite3.sqlite_version_info >= (3, 38)
_c = conversations.c
# What a rules change reads of a row: the id (to page on), the facts, the stored decision.
DECISION_ROW = (
    _c.id, _c.agent_id, _c.session_id, _c.name, _c.created_at, _c.updated_at, _c.origin,
    _c.remote_id, _c.created_by, _c.last_activity_at, _c.ttl_seconds, _c.ttl_from,
    _c.state, _c.due_at, _c.rule, _c.reason, _c.provisional, _c.dry_run, _c.age_from,
    _c.grace_until, _c.approved_at, _c.dry_run_noted_at,
)  # fmt: skip
_ORIGINS = {o.value: o for o in Origin}
_STATES = {s.value: s for s in State}
_CLOCKS = {a.value: a for a in AgeFrom}


async def read_batch(
    conn: AsyncConnection, account: str, after: int, size: int, *, portable: bool = False
) -> list[DecisionRow]:
    """Up to ``size`` live rows (active, held, deleting) of ``account`` with ids above
    ``after``, in id order.

    Sent as the driver's own SQL: the rows come back as plain values, and only the times that
    are set are converted. On SQLite (unless ``portable``) the batch comes back as one JSON
    text, built inside one ``sqlite3_step``: the read runs beside the event loop's thread
    instead of taking turns with it row by row.
    """
    dialect = conn.dialect
    sqlite = dialect.name == "sqlite" and SQLITE_JSON and not portable
    compiled = _read_query(dialect, sqlite)
    state = compiled.construct_expanded_state({"account": account, "after": after, "size": size})
    if state.positiontup is not None:
        result = await conn.exec_driver_sql(state.statement, state.positional_parameters)
    else:
        result = await conn.exec_driver_sql(state.statement, dict(state.parameters))
    parse = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None) or _same
    if sqlite:
        # An aggregate's order is SQLite's own; the caller pages on the last id, so sort.
        rows: Sequence[Sequence[Any]] = sorted(json.loads(result.scalar_one() or "[]"))
    else:
        rows = result.all()
    return [_decision_row(r, parse) for r in rows]


@cache
def _read_query(dialect: Dialect, as_json: bool) -> SQLCompiler:
    """The batch query, compiled once per dialect. The account and state tests are wrapped so
    that no index on them serves it: SQLite would read every live row through (state, ...) or
    (account, ...) and sort them, per batch; the id range of the primary key makes each batch
    cost its own size. ``as_json``: SQLite's JSON functions fold the batch into one array of
    arrays (in an order of SQLite's choosing: :func:`read_batch` sorts it)."""
    query = (
        select(*DECISION_ROW)
        .where(
            _c.id > bindparam("after"),
            # Wrapped too: SQLite would read the account's rows through (account, agent, state)
            # and sort them all, per batch (quadratic on a store of a million).
            func.coalesce(_c.account, "") == bindparam("account"),
            func.coalesce(_c.state, "").in_(LIVE_STATES),
        )
        .order_by(_c.id)
        .limit(bindparam("size"))
    )
    if as_json:
        batch = query.subquery()
        query = select(func.json_group_array(func.json_array(*batch.c)))
    return query.compile(dialect=dialect)


def _same(value: Any) -> Any:
    return value


def _decision_row(r: Sequence[Any], parse: Callable[[Any], Any]) -> DecisionRow:
    """A row of :data:`DECISION_ROW`, its times as the database gave them (``parse`` reads one)."""
    (key, agent_id, session_id, name, created_at, updated_at, origin, remote_id, created_by,
     last_activity_at, ttl, ttl_from, state, due_at, rule, reason, provisional, dry_run,
     age_from, grace_until, approved_at, noted) = r  # fmt: skip
    kind = _ORIGINS[origin]
    facts = ConversationFacts(
        agent_id=agent_id,
        session_id=session_id,
        name=name,
        created_at=parse(created_at),
        updated_at=parse(updated_at),
        origin=kind,
        creator=creator_of(kind, remote_id, created_by),
        last_activity_at=None if last_activity_at is None else parse(last_activity_at),
        ttl=None if ttl is None else timedelta(seconds=ttl),
        ttl_from=None if ttl_from is None else parse(ttl_from),
    )
    stored = StoredDecision(
        _STATES[state],
        None if due_at is None else parse(due_at),
        rule,
        reason,
        bool(provisional),
        bool(dry_run),
        _CLOCKS[age_from] if age_from else None,
        None if grace_until is None else parse(grace_until),
        None if approved_at is None else parse(approved_at),
        None if noted is None else parse(noted),
    )
    return DecisionRow(facts, stored, key)


async def write(
    conn: AsyncConnection,
    changes: Sequence[tuple[DecisionRow, StoredDecision]],
    *,
    portable: bool = False,
) -> None:
    """Write new decisions (``(row as read, decision to store)`` pairs), and nothing else.

    A row is written only while its state is still the one the decision was made from: a row
    a deletion moved on meanwhile (to deleting, deleted, or back) is left alone. The state is
    set only on rows whose state changes: in the SET list it costs its indexes and the counts
    trigger on every row, even unchanged, and most decisions of a rules change only move the
    due time.
    """
    moved = [(b, a) for b, a in changes if a.state is not b.stored.state]
    stayed = [(b, a) for b, a in changes if a.state is b.stored.state]
    dialect = conn.dialect
    when = UTCDateTime().dialect_impl(dialect).bind_processor(dialect) or _same
    for group, with_state in ((stayed, False), (moved, True)):
        if not group:
            continue
        if dialect.name == "sqlite" and SQLITE_JSON and not portable:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None, "a connection in use has its driver's connection"
            small, large = SQLITE_ROWS
            for start in range(0, len(group), large):
                chunk = [_values(change, when) for change in group[start : start + large]]
                rows = small if len(chunk) <= small else large
                chunk += [_PAD] * (rows - len(chunk))
                values = [value for row in chunk for value in row]
                await driver.execute(_sqlite_update(rows, with_state), values)
        else:
            columns = (*DECISION, "state") if with_state else DECISION
            statement = (
                update(conversations)
                .where(_c.id == bindparam("k_id"), _c.state == bindparam("k_state"))
                .values({name: bindparam(f"v_{name}") for name in columns})
            )
            await conn.execute(statement, [_named(change) for change in group])


# The values of one change, in the order of :func:`_sqlite_update`'s VALUES rows.
VALUES = (*DECISION, "state", "k_id", "k_state")


def _values(
    change: tuple[DecisionRow, StoredDecision], when: Callable[[Any], Any]
) -> tuple[Any, ...]:
    row, d = change
    return (
        None if d.due_at is None else when(d.due_at), d.rule, d.reason, d.provisional,
        d.dry_run, None if d.age_from is None else d.age_from.value,
        None if d.grace_until is None else when(d.grace_until),
        None if d.approved_at is None else when(d.approved_at),
        None if d.dry_run_noted_at is None else when(d.dry_run_noted_at),
        d.state.value, row.key, row.stored.state.value,
    )  # fmt: skip


def _named(change: tuple[DecisionRow, StoredDecision]) -> dict[str, Any]:
    """One change as the named parameters of the portable UPDATE (times bound by its types)."""
    return dict(zip(NAMED, _values(change, _same), strict=True))


NAMED = (*(f"v_{name}" for name in (*DECISION, "state")), "k_id", "k_state")


@cache
def _sqlite_update(rows: int, with_state: bool) -> str:
    """One UPDATE of ``rows`` rows by primary key, each only while in the state decided from.
    SQLite names a VALUES list's columns column1, column2, ... in :data:`VALUES` order."""
    columns = (*DECISION, "state") if with_state else DECISION
    assignments = ", ".join(f"{name} = v.column{VALUES.index(name) + 1}" for name in columns)
    row = "(" + ", ".join("?" * len(VALUES)) + ")"
    key, state = VALUES.index("k_id") + 1, VALUES.index("k_state") + 1
    return (
        f"UPDATE conversations SET {assignments} "
        f"FROM (VALUES {', '.join([row] * rows)}) AS v "
        f"WHERE conversations.id = v.column{key} AND conversations.state = v.column{state}"
    )
