"""The tamper-evident audit: each account's rows form a hash chain that `audit verify` walks.

The pure walk is checked with tables and hypothesis; the store's chain on both backends
(appends, concurrent appends, two accounts, the migration that chains existing rows); and the
command on a store the demo filled, after a row is edited, deleted or inserted in SQL.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from retention import chain
from retention.chain import GENESIS, Head, Link
from retention.cli import main
from retention.models import AuditOutcome, AuditRecord, State
from retention.store import Store

from .test_migration_accounts import migrate

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def record(n: int, **kw: Any) -> AuditRecord:
    base: dict[str, Any] = {
        "at": NOW + timedelta(seconds=n, microseconds=n),
        "agent_id": 532 + n % 2,
        "session_id": f"s-{n}",
        "name": f"Chat {n} ✓",
        "rule": "qa" if n % 3 else None,
        "age": timedelta(hours=n, milliseconds=n),
        "outcome": AuditOutcome.FAILED if n % 5 == 0 else AuditOutcome.DELETED,
        "detail": None if n % 4 else f"detail {n}",
    }
    return AuditRecord(**{**base, **kw})


def links(n: int, account: str = "default") -> list[Link]:
    """A sound chain of n rows, built as the store builds it."""
    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        r = record(seq)
        fields = chain.link_fields(
            account=account,
            seq=seq,
            prev=prev,
            at=r.at,
            agent_id=r.agent_id,
            session_id=r.session_id,
            name=r.name,
            rule=r.rule,
            age_seconds=r.age.total_seconds(),
            outcome=r.outcome.value,
            detail=r.detail,
            sweep_id=seq // 3 or None,
        )
        prev = chain.digest(fields)
        out.append(Link(fields, prev, seq))
    return out


def head_of(rows: list[Link]) -> Head:
    return Head("default", rows[-1].seq, rows[-1].hash) if rows else Head("default", 0, GENESIS)


# ---- the pure walk ------------------------------------------------------------------------


def test_a_sound_chain_holds_and_names_its_head() -> None:
    rows = links(6)
    verdict = chain.walk("default", rows, recorded=head_of(rows))
    assert verdict.ok and verdict.checked == 6 and verdict.head == head_of(rows)
    assert chain.walk("default", [], recorded=head_of([])).ok


def _edited(rows: list[Link]) -> list[Link]:
    rows[2] = replace(rows[2], fields={**rows[2].fields, "rule": "other"})
    return rows


def _deleted(rows: list[Link]) -> list[Link]:
    return rows[:2] + rows[3:]


def _two_deleted(rows: list[Link]) -> list[Link]:
    return rows[:2] + rows[4:]


def _replaced(rows: list[Link]) -> list[Link]:
    """Row 3 swapped for a well-formed row (its own hash right) that was not there."""
    fields = {**rows[2].fields, "prev": "f" * 64, "name": "forged"}
    rows[2] = Link(fields, chain.digest(fields), 3)
    return rows


def _rehashed(rows: list[Link]) -> list[Link]:
    """Row 3 edited and its hash recomputed: row 4 no longer follows it."""
    fields = {**rows[2].fields, "outcome": "dry_run"}
    rows[2] = Link(fields, chain.digest(fields), 3)
    return rows


@pytest.mark.parametrize(
    ("tamper", "recorded_seq", "problem", "seq"),
    [
        (_edited, 6, "audit row #3 (id 3) was edited", 3),
        (
            _deleted,
            6,
            "audit row #3 is missing: the chain goes from #2 to #4 (a row was deleted)",
            3,
        ),
        (_two_deleted, 6, "audit row #3 to #4 is missing", 3),
        (_replaced, 6, "audit row #3 (id 3) does not follow row #2", 3),
        (_rehashed, 6, "audit row #4 (id 4) does not follow row #3", 4),
        (lambda rows: rows[:5], 6, "rows were deleted from the end", 6),
        (lambda rows: rows, 5, "audit row #6 (id 6) lies past the head the store recorded (#5)", 6),
        (lambda rows: rows, 0, "a chain the store recorded no head for", 1),
    ],
)
def test_the_walk_names_the_first_row_that_does_not_hold(
    tamper: Any, recorded_seq: int, problem: str, seq: int
) -> None:
    sound = links(6)
    recorded = Head(
        "default", recorded_seq, sound[recorded_seq - 1].hash if recorded_seq else GENESIS
    )
    verdict = chain.walk("default", tamper(list(sound)), recorded=recorded)
    assert not verdict.ok
    assert verdict.problem is not None and problem in verdict.problem
    assert verdict.seq == seq


def test_a_row_inserted_past_the_head_after_the_walk_is_named() -> None:
    rows = links(4)
    forged = links(5)[4]
    verdict = chain.walk("default", rows, recorded=head_of(rows), beyond=forged)
    assert verdict.problem is not None and "#5 (id 5) lies past the head" in verdict.problem


def test_a_pin_catches_a_chain_rewritten_from_the_pinned_row() -> None:
    rows = links(5)
    pin = Head("default", 3, rows[2].hash)
    assert chain.walk("default", rows, recorded=head_of(rows), pin=pin).ok
    rewritten = _rehashed(list(rows))[:3]  # row 3 changed and the rest dropped: self-consistent
    rewritten_head = Head("default", 3, rewritten[2].hash)
    verdict = chain.walk("default", rewritten, recorded=rewritten_head, pin=pin)
    assert verdict.problem is not None and "does not have the pinned hash" in verdict.problem
    short = chain.walk("default", rows[:2], recorded=head_of(rows[:2]), pin=pin)
    assert short.problem is not None and "#3 is missing" in short.problem


def test_pins_parse_as_audit_head_prints_them() -> None:
    head = Head("a", 12, "ab" * 32)
    assert chain.parse_pin("a", head.pin()) == head
    for bad in ("12", "x:" + "ab" * 32, "0:" + "ab" * 32, "3:abc", "3:" + "zz" * 32):
        with pytest.raises(ValueError, match="SEQ:HASH"):
            chain.parse_pin("a", bad)


FIELD_VALUES = {
    "account": st.text(min_size=1, max_size=8),
    "at": st.just("2026-01-01T00:00:00.000001Z"),
    "agent_id": st.integers(1, 2**40),
    "session_id": st.text(max_size=10),
    "name": st.text(max_size=20),
    "rule": st.none() | st.text(max_size=8),
    "age_ms": st.integers(0, 2**40),
    "outcome": st.sampled_from([o.value for o in AuditOutcome]),
    "detail": st.none() | st.text(max_size=20),
    "sweep_id": st.none() | st.integers(1, 2**31),
}


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 8),
    st.data(),
    st.sampled_from([f for f in chain.FIELDS if f in FIELD_VALUES]),
)
def test_any_change_to_any_hashed_field_of_any_row_is_found(
    n: int, data: st.DataObject, field: str
) -> None:
    rows = links(n)
    target = data.draw(st.integers(0, n - 1))
    value = data.draw(FIELD_VALUES[field].filter(lambda v: v != rows[target].fields[field]))
    rows[target] = replace(rows[target], fields={**rows[target].fields, field: value})
    verdict = chain.walk("default", rows, recorded=head_of(links(n)))
    assert not verdict.ok and verdict.seq == target + 1


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 10), st.data())
def test_any_deleted_row_is_found(n: int, data: st.DataObject) -> None:
    rows = links(n)
    gone = data.draw(st.integers(0, n - 1))
    verdict = chain.walk("default", rows[:gone] + rows[gone + 1 :], recorded=head_of(rows))
    assert not verdict.ok and verdict.seq == gone + 1


def test_the_encoding_is_the_documented_one() -> None:
    """Sorted keys, no spaces, UTF-8 as is: what README's script recomputes."""
    fields = links(1)[0].fields
    encoded = chain.canonical(fields).decode()
    assert encoded.startswith('{"account":"default","age_ms":3600001,"agent_id":533,"at":"')
    assert '"name":"Chat 1 ✓"' in encoded and ", " not in encoded
    assert json.loads(encoded) == fields


# ---- the store's chain ----------------------------------------------------------------------


async def test_appends_chain_per_account_and_verify_holds(store: Store) -> None:
    other = store.for_account("acme")
    for n in range(1, 8):
        await store.journal.add_audit(record(n), sweep_id=None)
        if n % 2:
            await other.journal.add_audit(record(n))
    mine, theirs = await store.journal.audit.verify(), await other.journal.audit.verify()
    assert (mine.ok, mine.checked, mine.head.seq) == (True, 7, 7)
    assert (theirs.ok, theirs.checked, theirs.head.seq) == (True, 4, 4)
    assert await store.journal.audit.head() == mine.head
    rows = [r async for r in store.journal.audit.rows(chain_filter())]
    assert [r["seq"] for r in rows] == list(range(1, 8))
    assert rows[0]["prev"] == GENESIS
    assert all(a["hash"] == b["prev"] for a, b in itertools.pairwise(rows))
    assert rows[0]["age_ms"] == 3600001 and rows[0]["at"] == "2026-11-26T12:00:01.000001Z"


def chain_filter(**kw: Any) -> Any:
    from retention.auditlog import AuditFilter

    return AuditFilter(**kw)


async def test_concurrent_writers_of_one_account_append_one_after_the_other(
    store_url: str,
) -> None:
    """Two store handles (two processes' worth of connections) append at once: no fork."""
    stores = [await Store.open(store_url) for _ in range(2)]
    try:
        await asyncio.gather(
            *(s.journal.add_audit(record(n)) for n in range(1, 21) for s in stores)
        )
        verdict = await stores[0].journal.audit.verify()
        assert verdict.ok and verdict.checked == 40 and verdict.head.seq == 40
    finally:
        for s in stores:
            await s.close()


async def test_export_filters_select_rows_with_their_hashes(store: Store) -> None:
    for n in range(1, 11):
        await store.journal.add_audit(record(n))
    audit = store.journal.audit
    every = [r async for r in audit.rows(chain_filter())]
    by_rule = [r async for r in audit.rows(chain_filter(rule="qa"))]
    assert [r["seq"] for r in by_rule] == [r["seq"] for r in every if r["rule"] == "qa"]
    failed = [r async for r in audit.rows(chain_filter(outcome="failed"))]
    assert [r["seq"] for r in failed] == [5, 10]
    window = chain_filter(since=NOW + timedelta(seconds=3), until=NOW + timedelta(seconds=6))
    assert [r["seq"] async for r in audit.rows(window)] == [3, 4, 5]
    agent = [r async for r in audit.rows(chain_filter(agent_id=532))]
    assert {r["agent_id"] for r in agent} == {532} and len(agent) == 5
    for row in every:
        fields = {k: row[k] for k in chain.FIELDS}
        assert chain.digest(fields) == row["hash"], "each exported row carries its own hash"


async def test_verify_on_the_store_finds_edits_deletes_and_inserts(store: Store) -> None:
    for n in range(1, 9):
        await store.journal.add_audit(record(n))
    audit = store.journal.audit
    head = await audit.head()
    async with store.db.begin() as conn:
        await conn.execute(text("UPDATE audit SET name = 'changed' WHERE seq = 4"))
    verdict = await audit.verify()
    assert verdict.problem is not None and "audit row #4" in verdict.problem
    assert "was edited" in verdict.problem
    async with store.db.begin() as conn:
        await conn.execute(text("DELETE FROM audit WHERE seq = 4"))
    verdict = await audit.verify()
    assert verdict.problem is not None and "audit row #4 is missing" in verdict.problem
    async with store.db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit (at, account, agent_id, session_id, name, rule, age_seconds, "
                "outcome, detail, sweep_id, seq, prev_hash, hash) SELECT at, account, agent_id, "
                "'forged', name, rule, age_seconds, outcome, detail, sweep_id, 4, prev_hash, hash "
                "FROM audit WHERE seq = 5"
            )
        )
    verdict = await audit.verify()
    assert verdict.problem is not None and "audit row #4" in verdict.problem
    pinned = await audit.verify(pin=head)
    assert not pinned.ok


# ---- the migration that chains existing rows ---------------------------------------------


async def test_the_migration_chains_existing_rows_the_same_way_every_time(store: Store) -> None:
    other = store.for_account("acme")
    for n in range(1, 13):
        await (other if n % 4 == 0 else store).journal.add_audit(record(n), sweep_id=n)
    before = {
        name: [r async for r in store.for_account(name).journal.audit.rows(chain_filter())]
        for name in ("default", "acme")
    }
    await migrate(store, "0011", down=True)
    await migrate(store, "head")
    for name in ("default", "acme"):
        audit = store.for_account(name).journal.audit
        assert [r async for r in audit.rows(chain_filter())] == before[name]
        assert (await audit.verify()).ok
    assert (await store.journal.audit.head()).seq == 9
    await store.journal.add_audit(record(13))  # appending goes on from the rebuilt head
    verdict = await store.journal.audit.verify()
    assert verdict.ok and verdict.head.seq == 10


# ---- the command, on a store the demo filled --------------------------------------------


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo") / "kept"
    run = subprocess.run(
        [sys.executable, "-m", "retention", "demo", "--seconds", "5", "--keep", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "verified" in run.stdout
    return folder


@pytest.fixture
def demo_copy(demo_folder: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The demo's config and store, copied so each test tampers with its own."""
    config = (demo_folder / "retention.toml").read_text(encoding="utf-8")
    (tmp_path / "retention.toml").write_text(
        config.replace(str(demo_folder), str(tmp_path)), encoding="utf-8"
    )
    for item in demo_folder.iterdir():  # with any -wal file: the demo has finished
        if item.is_file() and item.suffix != ".toml":
            (tmp_path / item.name).write_bytes(item.read_bytes())
    yield str(tmp_path / "retention.toml"), tmp_path / "retention.db"


def sql(db: Path, statements: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.executescript(statements)


def verify(config: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["audit", "verify", "--config", config, *extra])
    return code, capsys.readouterr().out


def test_verify_passes_after_a_demo_run(
    demo_copy: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = demo_copy
    code, out = verify(config, capsys)
    assert code == 0 and out.startswith("account default: ok, ")
    main(["audit", "head", "--config", config])
    seq, _, digest = capsys.readouterr().out.split()[1].partition(":")
    assert f"head {seq}:{digest}" in out and int(seq) > 5
    code, out = verify(config, capsys, "--pin", f"{seq}:{digest}")
    assert code == 0


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        ("UPDATE audit SET rule = 'kept-forever' WHERE seq = 3", "audit row #3 (id 3) was edited"),
        ("UPDATE audit SET age_seconds = age_seconds + 60 WHERE seq = 4", "#4 (id 4) was edited"),
        ("DELETE FROM audit WHERE seq = 2", "audit row #2 is missing"),
        ("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)", "deleted from the end"),
        (
            "INSERT INTO audit (at, account, agent_id, session_id, name, rule, age_seconds, "
            "outcome, detail, sweep_id, seq, prev_hash, hash) SELECT at, account, agent_id, "
            "'inserted', name, rule, age_seconds, outcome, detail, sweep_id, seq + 1, hash, hash "
            "FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
            "lies past the head the store recorded",
        ),
        # The end cut off and the head set back to match: the chain holds together, but the
        # conversations those rows recorded are still recorded deleted.
        (
            "DELETE FROM audit WHERE seq > 10; "
            "UPDATE audit_heads SET seq = 10, hash = (SELECT hash FROM audit WHERE seq = 10)",
            "is recorded deleted",
        ),
        ("DELETE FROM audit; DELETE FROM audit_heads", "is recorded deleted"),
        ("UPDATE audit SET at = 'garbage' WHERE seq = 5", "audit row #5 (id 5) cannot be read"),
        ("UPDATE audit SET age_seconds = 'abc' WHERE seq = 6", "audit row #6 (id 6) cannot be"),
    ],
)
def test_verify_fails_naming_the_row_after_an_edit_a_delete_or_an_insert(
    demo_copy: tuple[str, Path], capsys: pytest.CaptureFixture[str], statement: str, named: str
) -> None:
    config, db = demo_copy
    sql(db, statement)
    code, out = verify(config, capsys)
    assert code == 1
    assert out.startswith("account default: BROKEN: ") and named in out
    code, out = verify(config, capsys, "--json")
    document = json.loads(out)
    assert code == 1 and document["ok"] is False
    assert named in document["accounts"][0]["problem"]


def test_an_export_that_fails_leaves_no_file_under_its_name(
    demo_copy: tuple[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, db = demo_copy
    sql(db, "UPDATE audit SET at = 'garbage' WHERE seq = 7")
    out = tmp_path / "broken.jsonl"
    assert main(["audit", "export", "--config", config, "--out", str(out)]) == 1
    assert "audit row #7 (id 7) cannot be read" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_export_streams_every_row_as_json_lines_and_csv(
    demo_copy: tuple[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, _ = demo_copy
    assert main(["audit", "export", "--config", config]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    out = tmp_path / "audit.csv"
    assert main(["audit", "export", "--config", config, "--format", "csv", "--out", str(out)]) == 0
    text_rows = out.read_text(encoding="utf-8").splitlines()
    assert text_rows[0] == ",".join((*chain.FIELDS, "hash")) and len(text_rows) == len(lines) + 1
    assert out.stat().st_mode & 0o777 == 0o600, "conversation names: the owner's only"
    assert main(["audit", "export", "--config", config, "--out", str(out)]) == 2
    assert "exists; an export never overwrites a file" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    assert main(["audit", "export", "--config", config, "--since", "nonsense"]) == 2
    assert "--since" in capsys.readouterr().err


def readme_script() -> str:
    """The verification script README.md gives auditors (the block after its marker)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    after = readme.split("<!-- verify-script -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_script_checks_an_export_without_the_tool(
    demo_copy: tuple[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config, _ = demo_copy
    script = tmp_path / "check_audit.py"
    script.write_text(readme_script(), encoding="utf-8")
    export = tmp_path / "audit.jsonl"
    assert main(["audit", "export", "--config", config, "--out", str(export)]) == 0
    main(["audit", "head", "--config", config])
    head = capsys.readouterr().out
    isolated = [sys.executable, "-I", str(script), str(export)]  # -I: not even our package
    run = subprocess.run(isolated, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == head, run.stderr
    lines = export.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[4])
    lines[4] = json.dumps({**row, "rule": "something else"})
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = subprocess.run(isolated, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "line 5: row #5 does not match its hash" in run.stderr
    del lines[4]
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = subprocess.run(isolated, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "line 5: row #6 does not follow row #4" in run.stderr


# ---- the daemon's own walks ----------------------------------------------------------------


async def test_the_daemon_walks_held_chains_and_reports_a_broken_one(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    from retention.auditwatch import Watched, watch
    from retention.chain import Verdict
    from retention.metrics import Metrics

    for n in range(1, 6):
        await store.journal.add_audit(record(n))
    other = store.for_account("elsewhere")  # held by another process: never walked here
    await other.journal.add_audit(record(1))
    metrics = Metrics()
    verdicts: list[Verdict] = []

    def seen(verdict: Verdict) -> None:
        verdicts.append(verdict)
        metrics.observe_chain(verdict, NOW)

    chains = [Watched(store), Watched(other, held=lambda: False)]
    every, tick = timedelta(seconds=0.2), timedelta(seconds=0.05)
    task = asyncio.create_task(watch(chains, seen, every=every, tick=tick))
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if verdicts:
                break
        assert verdicts and verdicts[0].ok and verdicts[0].checked == 5
        assert b'retention_audit_chain_valid{account="default"} 1.0' in metrics.render()
        async with store.db.begin() as conn:
            await conn.execute(text("UPDATE audit SET outcome = 'dry_run' WHERE seq = 2"))
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not verdicts[-1].ok:
                break
    finally:
        task.cancel()
    assert verdicts[-1].seq == 2 and {v.account for v in verdicts} == {"default"}
    assert b'retention_audit_chain_valid{account="default"} 0.0' in metrics.render()
    broken = [r for r in caplog.records if getattr(r, "event", None) == "audit_chain"]
    assert broken and "audit row #2" in broken[0].getMessage()


# ---- never a deletion recorded without its audit row --------------------------------------


@pytest.fixture
def temp_chats() -> Any:
    from retention.policy import Policy

    return Policy(name="temp", agents=frozenset({532}), name_matches=("Temp*",), max_age=H)


H = timedelta(hours=1)


def add_due(emulator: Any, count: int) -> list[str]:
    now = datetime.now(UTC)
    made = [
        emulator.state.add_conversation(532, f"Temp {n}", created_at=now - 2 * H)
        for n in range(count)
    ]
    return [c.session_id for c in made]


async def test_a_chain_without_its_head_deletes_nothing_and_says_why(
    emulator: Any, make_engine: Any, store: Store, temp_chats: Any
) -> None:
    engine = make_engine((temp_chats,), ())
    add_due(emulator, 1)
    first = await engine.sweep()
    assert first.deleted == 1 and (await store.journal.audit.verify()).ok
    async with store.db.begin() as conn:
        await conn.execute(text("DELETE FROM audit_heads"))
    sessions = add_due(emulator, 3)
    report = await engine.sweep()
    assert len(emulator.calls("DELETE")) == 1, "no DELETE that could not be audited"
    assert report.deleted == 0 and report.held_back is not None
    assert "no recorded head" in report.held_back
    for session in sessions:
        stored = await store.get(532, session)
        assert stored is not None and stored.state is State.ACTIVE


async def test_an_audit_row_that_cannot_be_written_leaves_the_deletion_to_the_next_sweep(
    emulator: Any, make_engine: Any, store_url: str, store: Store, temp_chats: Any
) -> None:
    """The state and the audit row are one transaction: when the row cannot be written the
    conversation stays `deleting`, no further DELETE goes out, and the next sweep resolves it
    (its DELETE meets a 404) and audits it."""
    engine = make_engine((temp_chats,), (), delete_concurrency=1)
    sessions = add_due(emulator, 3)
    sqlite = store_url.startswith("sqlite")
    failing = (
        [
            "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit "
            "BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
        ]
        if sqlite
        else [
            "CREATE FUNCTION audit_refuses() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'audit refused'; END $$",
            "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit "
            "FOR EACH ROW EXECUTE FUNCTION audit_refuses()",
        ]
    )
    async with store.db.begin() as conn:
        for statement in failing:
            await conn.execute(text(statement))
    with pytest.raises(Exception, match="audit refused"):
        await engine.sweep()
    assert len(emulator.calls("DELETE")) == 1, "the first failure stops the batch"
    states = {s: (await store.get(532, s)) for s in sessions}
    assert sorted(str(c.state) for c in states.values() if c) == ["active", "active", "deleting"]
    async with store.db.begin() as conn:
        await conn.execute(text("DROP TRIGGER audit_refuses" + ("" if sqlite else " ON audit")))
    report = await engine.sweep()
    assert report.failed == 0
    trail = await store.journal.audit_trail(532)
    assert sorted(r.session_id for r in trail) == sorted(sessions), "each audited once"
    for session in sessions:
        stored = await store.get(532, session)
        assert stored is not None and stored.state in (State.DELETED, State.GONE)
    assert (await store.journal.audit.verify()).ok


async def test_the_migration_waits_for_every_writer_to_stop(store: Store) -> None:
    """A writer of the previous version would write unchained audit rows (refused by the new
    columns) after deleting: while any lease is held, migration 0012 refuses, naming it."""
    from retention.errors import ConfigError

    await store.journal.add_audit(record(1))
    await migrate(store, "0011", down=True)
    held = await store.take_lease(
        "account:default", "old-version pid=7", now=datetime.now(UTC), ttl=timedelta(minutes=5)
    )
    assert held is not None
    with pytest.raises(ConfigError, match="account:default is held by old-version pid=7"):
        await migrate(store, "head")
    assert await store.revision() == "0011", "nothing changed"
    async with store.db.begin() as conn:  # the old writer stopped: its lease lapsed
        await conn.execute(text("UPDATE leases SET expires_at = '2000-01-01 00:00:00'"))
    await migrate(store, "head")
    assert await store.revision() == "0012" and (await store.journal.audit.verify()).ok
