"""Sweeps end to end: the emulator over loopback, a real SQLite store, the engine between."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from retention.emulator import Arrival, Emulator, Fault
from retention.emulator.seed import EmuConversation
from retention.errors import AuthError
from retention.models import AgeFrom, AuditOutcome, Creator, Origin, State, TrackedConversation
from retention.policy import Hold, Policy
from retention.store import Store

from .conftest import ClientFactory, EngineFactory

H = timedelta(hours=1)
D = timedelta(days=1)
TEST_CHATS = Policy(name="test-chats", agents=frozenset({532}), name_matches=("Test*",), max_age=H)


def add(emulator: Emulator, name: str, age: timedelta, **kw: object) -> EmuConversation:
    now = datetime.now(UTC)
    return emulator.state.add_conversation(532, name, created_at=now - age, **kw)  # type: ignore[arg-type]


def alive(emulator: Emulator) -> set[str]:
    return emulator.live_sessions(532)


async def test_expiry_by_created_deletes_only_matched_expired(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    old = add(emulator, "Test old", 2 * H)
    young = add(emulator, "Test young", 10 * timedelta(minutes=1))
    other = add(emulator, "Customer", 30 * D)
    report = await make_engine((TEST_CHATS,)).sweep()
    assert old.session_id not in alive(emulator)
    assert {young.session_id, other.session_id} <= alive(emulator)
    assert (report.deleted, report.failed) == (1, 0)
    trail = await store.journal.audit_trail(532, old.session_id)
    assert [(a.outcome, a.rule, a.name) for a in trail] == [
        (AuditOutcome.DELETED, "test-chats", "Test old")
    ]
    assert trail[0].age >= 2 * H
    assert len(emulator.calls("DELETE")) == 1


async def test_expiry_by_updated(emulator: Emulator, make_engine: EngineFactory) -> None:
    now = datetime.now(UTC)
    renamed_long_ago = add(emulator, "Ticket A", 10 * D, updated_at=now - 3 * D)
    renamed_lately = add(emulator, "Ticket B", 10 * D, updated_at=now - 2 * H)
    policy = Policy(
        name="renamed",
        agents=frozenset({532}),
        name_matches=("Ticket*",),
        max_age=D,
        age_from=AgeFrom.UPDATED,
    )
    await make_engine((policy,)).sweep()
    assert renamed_long_ago.session_id not in alive(emulator)
    assert renamed_lately.session_id in alive(emulator)


async def test_expiry_by_last_activity_reads_messages_only_for_candidates(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    now = datetime.now(UTC)
    busy = add(emulator, "Idle? busy", 40 * D, messages=[now - 40 * D, now - D])
    idle = add(emulator, "Idle? idle", 40 * D, messages=[now - 35 * D])
    silent = add(emulator, "Idle? silent", 40 * D)
    young = add(emulator, "Idle? young", 5 * D, messages=[now - 4 * D])
    policy = Policy(
        name="idle",
        agents=frozenset({532}),
        name_matches=("Idle*",),
        max_age=30 * D,
        age_from=AgeFrom.LAST_ACTIVITY,
    )
    report = await make_engine((policy,)).sweep()
    assert busy.session_id in alive(emulator), "a recent message pushes the due time forward"
    assert idle.session_id not in alive(emulator)
    assert silent.session_id not in alive(emulator), "no messages: the clock is created_at"
    assert young.session_id in alive(emulator)
    # Only the three whose cheap bound had passed cost a messages call; the young one did not.
    assert len(emulator.calls("GET", "*/messages")) == 3
    assert (report.deleted, report.postponed) == (2, 1)
    stored = await store.get(532, busy.session_id)
    assert stored is not None and stored.due_at is not None
    assert stored.due_at > now + 28 * D and stored.state is State.ACTIVE


async def test_name_globs_holds_and_first_match_order(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    held = add(emulator, "TEST legal", 2 * H)
    first = add(emulator, "test QA-1", 2 * H)
    anonymous = add(emulator, "Walk-in", 3 * H)
    team = add(emulator, "Walk-in", 3 * H, created_by=17)
    policies = (
        TEST_CHATS,
        Policy(name="qa", agents=None, name_regex=r"QA-\d", max_age=10 * D),
        Policy(name="anon", agents=frozenset({532}), user_type=Creator.ANONYMOUS, max_age=2 * H),
    )
    holds = (Hold(name="legal", agents=None, name_matches=("*legal*",)),)
    await make_engine(policies, holds).sweep()
    assert held.session_id in alive(emulator)
    assert first.session_id not in alive(emulator), "the first matching policy decides"
    assert anonymous.session_id not in alive(emulator)
    assert team.session_id in alive(emulator)
    stored = await store.get(532, held.session_id)
    assert stored is not None and (stored.state, stored.rule) == (State.HELD, "legal")
    deleted_first = await store.journal.audit_trail(532, first.session_id)
    assert deleted_first[0].rule == "test-chats"


async def test_per_conversation_ttl_beats_policies_and_holds_beat_it(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    now = datetime.now(UTC)
    short = add(emulator, "Customer short", 10 * timedelta(minutes=1))
    long = add(emulator, "Test long", 5 * H)
    held = add(emulator, "LEGAL ttl", 5 * H)
    for conversation, ttl in (
        (short, timedelta(seconds=1)),
        (long, 10 * D),
        (held, timedelta(seconds=1)),
    ):
        await store.insert(
            [
                TrackedConversation(
                    agent_id=532,
                    session_id=conversation.session_id,
                    remote_id=None,
                    name=conversation.name,
                    created_by=None,
                    created_at=conversation.created_at,
                    updated_at=conversation.updated_at,
                    origin=Origin.REGISTERED,
                    state=State.ACTIVE,
                    ttl=ttl,
                    ttl_from=now - timedelta(seconds=5),
                )
            ],
            now=now,
        )
    holds = (Hold(name="legal", agents=None, name_matches=("LEGAL*",)),)
    await make_engine((TEST_CHATS,), holds).sweep()
    assert short.session_id not in alive(emulator), "its own TTL expired; no policy matches it"
    assert long.session_id in alive(emulator), "its TTL of 10d beats the 1h policy"
    assert held.session_id in alive(emulator)
    assert [a.rule for a in await store.journal.audit_trail(532, short.session_id)] == ["ttl"]


async def test_second_sweep_with_nothing_new_lists_each_agent_once(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    emulator.per_page = 10
    add(emulator, "Test old", 2 * H)
    engine = make_engine((TEST_CHATS,))
    await engine.sweep()
    first = len(emulator.calls("GET", "*/conversations"))
    assert first >= 5, "the first sync walks every page"
    report = await engine.sweep()
    assert len(emulator.calls("GET", "*/conversations")) - first == 1
    assert report.api_calls == {"list_conversations": 1}
    assert report.deleted == 0


async def test_new_conversations_are_found_incrementally(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    engine = make_engine((TEST_CHATS,))
    await engine.sweep()
    later = add(emulator, "Test later", 3 * H)
    report = await engine.sweep()
    assert later.session_id not in alive(emulator)
    assert report.new == 1 and report.pages == 1


async def test_arrivals_during_listing_are_not_missed_even_due_ones_on_page_one(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    emulator.per_page = 10
    # While page 2 is read, three conversations that are already due land on page 1.
    emulator.arrivals.append(Arrival(532, count=3, on_page=2, name="Test arrived {n}", age_s=7200))
    report = await make_engine((TEST_CHATS,)).sweep()
    arrived = [
        c
        for c in emulator.state.agents[532].conversations.values()
        if c.name.startswith("Test arrived")
    ]
    assert arrived == [], "all three were found in the same sweep and deleted"
    assert report.deleted == 3 and report.new == 48


async def test_dry_run_deletes_nothing_and_audits_once(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    old = add(emulator, "Test old", 2 * H)
    engine = make_engine((TEST_CHATS,), dry_run=True)
    report = await engine.sweep()
    assert old.session_id in alive(emulator)
    assert emulator.calls("DELETE") == []
    assert report.would_delete == 1 and report.deleted == 0
    await engine.sweep()
    trail = await store.journal.audit_trail(532, old.session_id)
    assert [(a.outcome, a.rule) for a in trail] == [(AuditOutcome.DRY_RUN, "test-chats")]
    stored = await store.get(532, old.session_id)
    assert stored is not None and stored.state is State.ACTIVE
    # Leaving dry-run: the same conversation is deleted by the next sweep.
    await make_engine((TEST_CHATS,)).sweep()
    assert old.session_id not in alive(emulator)


async def test_policy_level_dry_run(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    old = add(emulator, "Test old", 2 * H)
    await make_engine((replace(TEST_CHATS, dry_run=True),)).sweep()
    assert old.session_id in alive(emulator)
    assert [a.outcome for a in await store.journal.audit_trail(532, old.session_id)] == [
        AuditOutcome.DRY_RUN
    ]


async def test_conversation_deleted_elsewhere_is_marked_gone_at_reconcile(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    engine = make_engine((TEST_CHATS,), reconcile_every=timedelta(seconds=0))
    await engine.sweep()
    victim = next(iter(emulator.state.agents[532].conversations))
    del emulator.state.agents[532].conversations[victim]
    report = await engine.sweep()
    stored = await store.get(532, victim)
    assert stored is not None and stored.state is State.GONE
    assert report.gone == 1


async def test_an_incomplete_reconcile_marks_nothing_gone(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    emulator.per_page = 10
    engine = make_engine((TEST_CHATS,), reconcile_every=timedelta(seconds=0))
    await engine.sweep()

    def delete_newest(agent: object, page: int) -> None:
        if page == 2:
            conversations = emulator.state.agents[532].conversations
            del conversations[next(reversed(conversations))]

    emulator.before_list.append(delete_newest)
    report = await engine.sweep()
    assert report.gone == 0, "items shifted under the walk: absence proves nothing"
    assert all(c.state is not State.GONE for c in await store.conversations(532))


async def test_no_delete_is_sent_while_an_agent_is_being_walked(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    emulator.per_page = 5
    for n in range(12):
        add(emulator, f"Test {n}", 2 * H)
    await make_engine((TEST_CHATS,)).sweep()
    lists = [s.at for s in emulator.calls("GET", "*/conversations")]
    deletes = [s.at for s in emulator.calls("DELETE")]
    assert len(deletes) == 12
    assert max(lists) < min(deletes)


async def test_crash_between_intent_and_outcome_is_resolved_by_the_next_sweep(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    sent = add(emulator, "Test sent", 2 * H)
    unsent = add(emulator, "Test unsent", 2 * H)
    engine = make_engine((TEST_CHATS,), dry_run=True)
    await engine.sweep()  # learn them; delete nothing
    # As if a crash struck after the intent was recorded: one DELETE had reached the API.
    for conversation in (sent, unsent):
        await store.set_state(532, conversation.session_id, State.DELETING, now=datetime.now(UTC))
    del emulator.state.agents[532].conversations[sent.session_id]
    report = await make_engine((TEST_CHATS,)).sweep()
    assert (report.deleted, report.already_gone) == (1, 1)
    assert (await store.get(532, sent.session_id)).state is State.GONE  # type: ignore[union-attr]
    assert (await store.get(532, unsent.session_id)).state is State.DELETED  # type: ignore[union-attr]
    assert await store.conversations(states=(State.DELETING,)) == []


async def test_a_hold_added_after_intent_stops_the_retry(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    old = add(emulator, "Test hold me", 2 * H)
    await make_engine((TEST_CHATS,), dry_run=True).sweep()
    await store.set_state(532, old.session_id, State.DELETING, now=datetime.now(UTC))
    holds = (Hold(name="late", agents=None, session_ids=frozenset({old.session_id})),)
    await make_engine((TEST_CHATS,), holds).sweep()
    assert old.session_id in alive(emulator)
    assert (await store.get(532, old.session_id)).state is State.HELD  # type: ignore[union-attr]


async def test_failed_delete_is_counted_audited_and_retried_later(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    old = add(emulator, "Test flaky", 2 * H)
    emulator.faults.append(Fault.status(503, method="DELETE", times=3))
    engine = make_engine((TEST_CHATS,), retry_backoff=timedelta(0))
    report = await engine.sweep()
    assert report.failed == 1 and old.session_id in alive(emulator)
    stored = await store.get(532, old.session_id)
    assert stored is not None and stored.state is State.ACTIVE and stored.last_error
    report = await engine.sweep()
    assert report.deleted == 1 and old.session_id not in alive(emulator)
    outcomes = [a.outcome for a in await store.journal.audit_trail(532, old.session_id)]
    assert outcomes == [AuditOutcome.FAILED, AuditOutcome.DELETED]


async def test_auth_failure_stops_the_sweep(
    emulator: Emulator, make_client: ClientFactory, store: Store
) -> None:
    from retention.engine import Engine
    from retention.policy import Rules

    engine = Engine(make_client(token="revoked"), store, Rules((TEST_CHATS,), ()))
    with pytest.raises(AuthError):
        await engine.sweep()
    sweeps = await store.journal.last_sweeps()
    assert sweeps[0].ok is False and "AuthError" in (sweeps[0].error or "")


async def test_rule_changes_re_evaluate_what_is_stored(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    chat = add(emulator, "Test later", 30 * timedelta(minutes=1))
    await make_engine((TEST_CHATS,)).sweep()
    assert chat.session_id in alive(emulator)
    stricter = replace(TEST_CHATS, max_age=10 * timedelta(minutes=1))
    report = await make_engine((stricter,)).sweep()
    assert report.deleted == 1 and chat.session_id not in alive(emulator)


async def test_plan_lists_exactly_the_due_and_deletes_nothing(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    now = datetime.now(UTC)
    due = add(emulator, "Test due", 2 * H)
    add(emulator, "Test young", 10 * timedelta(minutes=1))
    busy = add(emulator, "Idle busy", 40 * D, messages=[now - H])
    idle = add(emulator, "Idle idle", 40 * D, messages=[now - 31 * D])
    policies = (
        TEST_CHATS,
        Policy(
            name="idle",
            agents=frozenset({532}),
            name_matches=("Idle*",),
            max_age=30 * D,
            age_from=AgeFrom.LAST_ACTIVITY,
        ),
    )
    items, _report = await make_engine(policies).plan()
    assert {(i.session_id, i.rule) for i in items} == {
        (due.session_id, "test-chats"),
        (idle.session_id, "idle"),
    }
    assert busy.session_id not in {i.session_id for i in items}
    assert {s.method for s in emulator.served} == {"GET"}


async def test_policy_change_grace_holds_back_newly_caused_deletions(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    chat = add(emulator, "Chat about refunds", 3 * H)
    grace = timedelta(seconds=1.5)
    await make_engine((TEST_CHATS,), policy_change_grace=grace).sweep()
    widened = replace(TEST_CHATS, name_matches=("Test*", "Chat*"))
    engine = make_engine((widened,), policy_change_grace=grace)
    report = await engine.sweep()
    assert chat.session_id in alive(emulator), "the edit made it due, but the grace holds it"
    assert report.deleted == 0
    items, _ = await engine.plan(discover=False)
    assert [(i.session_id, i.grace_until is not None) for i in items] == [(chat.session_id, True)]
    [row] = await store.journal.status(datetime.now(UTC), overdue_after=timedelta(minutes=2))
    assert row.grace == 1
    await asyncio.sleep(1.6)
    report = await engine.sweep()
    assert chat.session_id not in alive(emulator) and report.deleted == 1


async def test_reverting_an_edit_within_the_grace_costs_nothing(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    chat = add(emulator, "Chat about refunds", 3 * H)
    grace = timedelta(minutes=10)
    await make_engine((TEST_CHATS,), policy_change_grace=grace).sweep()
    widened = replace(TEST_CHATS, name_matches=("*",))
    await make_engine((widened,), policy_change_grace=grace).sweep()
    await make_engine((TEST_CHATS,), policy_change_grace=grace).sweep()
    assert chat.session_id in alive(emulator)
    assert emulator.calls("DELETE") == []


async def test_an_unrelated_edit_or_a_redecision_keeps_a_running_grace(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    chat = add(emulator, "Chat about refunds", 3 * H)
    grace = timedelta(minutes=10)
    await make_engine((TEST_CHATS,), policy_change_grace=grace).sweep()
    widened = replace(TEST_CHATS, name_matches=("Test*", "Chat*"))
    await make_engine((widened,), policy_change_grace=grace).sweep()
    waiting = await store.get(532, chat.session_id)
    assert waiting is not None and waiting.grace_until is not None
    # A hold that matches nothing changes the fingerprint, not this conversation's due time.
    unrelated = Hold(name="nothing", name_matches=("No such name*",))
    await make_engine((widened,), (unrelated,), policy_change_grace=grace).sweep()
    # As does the fingerprint reset of an upgrade (migration 0004): everything is re-decided.
    await store.set_meta("rules_fingerprint", "reset by 0004")
    await make_engine((widened,), (unrelated,), policy_change_grace=grace).sweep()
    kept = await store.get(532, chat.session_id)
    assert kept is not None and kept.grace_until == waiting.grace_until
    assert chat.session_id in alive(emulator) and emulator.calls("DELETE") == []


async def test_stored_decisions_carry_the_policy_flags_after_a_rules_change(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    chat = add(emulator, "Test idle", 10 * H)
    await make_engine((replace(TEST_CHATS, max_age=100 * H),)).sweep()
    stored = await store.get(532, chat.session_id)
    assert stored is not None and (stored.dry_run, stored.age_from) == (False, AgeFrom.CREATED)
    idle = replace(TEST_CHATS, max_age=100 * H, dry_run=True, age_from=AgeFrom.LAST_ACTIVITY)
    await make_engine((idle,)).apply_rules()
    stored = await store.get(532, chat.session_id)
    assert stored is not None and (stored.dry_run, stored.age_from) == (
        True,
        AgeFrom.LAST_ACTIVITY,
    )


async def test_without_a_grace_an_edit_deletes_at_once_and_says_nothing_of_grace(
    emulator: Emulator, make_engine: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    chat = add(emulator, "Chat about refunds", 3 * H)
    await make_engine((TEST_CHATS,)).sweep()
    widened = replace(TEST_CHATS, name_matches=("Test*", "Chat*"))
    report = await make_engine((widened,), policy_change_grace=timedelta(0)).sweep()
    assert report.deleted == 1 and chat.session_id not in alive(emulator)
    assert "grace" not in caplog.text


async def test_the_first_rules_a_store_sees_get_no_grace(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    old = add(emulator, "Test old", 2 * H)
    await make_engine((TEST_CHATS,), policy_change_grace=timedelta(hours=1)).sweep()
    assert old.session_id not in alive(emulator)


async def test_a_refused_delete_backs_off_instead_of_spending_the_budget(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    old = add(emulator, "Test refused", 2 * H)
    emulator.faults.append(Fault.status(503, method="DELETE", times=-1))
    engine = make_engine((TEST_CHATS,), retry_backoff=timedelta(seconds=0.5))
    await engine.sweep()
    first = len(emulator.calls("DELETE"))
    assert first == 3, "one DELETE call, retried by the client within max_attempts"
    stored = await store.get(532, old.session_id)
    assert stored is not None and stored.retry_at is not None and stored.attempts == 1
    await engine.sweep()
    assert len(emulator.calls("DELETE")) == first, "no new attempt before retry_at"
    items, _ = await engine.plan(discover=False)
    assert [i.retry_at is not None for i in items] == [True]
    await asyncio.sleep(0.6)
    emulator.faults.clear()
    report = await engine.sweep()
    assert report.deleted == 1 and old.session_id not in alive(emulator)


@pytest.mark.parametrize(
    ("attempts", "seconds"), [(1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600), (30, 3600)]
)
def test_retry_delay_doubles_up_to_an_hour(attempts: int, seconds: int) -> None:
    from retention.deletion import retry_delay

    assert retry_delay(timedelta(minutes=1), attempts) == timedelta(seconds=seconds)


async def test_a_rename_seen_while_deletion_waited_for_the_walk_is_respected(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    from retention.deletion import delete_due
    from retention.discovery import discover_agent
    from retention.models import SweepReport

    chat = add(emulator, "Test soon renamed", 2 * H)
    await make_engine((TEST_CHATS,), dry_run=True).sweep()  # tracked and due; nothing deleted
    engine = make_engine((TEST_CHATS,))
    await engine.apply_rules()  # leaving dry-run, as a sweep would first
    report = SweepReport(kind="test", started_at=datetime.now(UTC))
    async with engine.context.gate(532).walk():
        # The deletion reads the due set, then waits for the walk to release the agent.
        deleting = asyncio.create_task(delete_due(engine.context, report))
        await asyncio.sleep(0.2)
        assert report.due == 1 and not deleting.done()
        chat.name = "Customer (renamed)"
        await discover_agent(engine.context, 532, report, full=True)
    await deleting
    assert chat.session_id in alive(emulator), "decided on the renamed facts, not the stale ones"
    assert emulator.calls("DELETE") == []


async def test_noted_dry_run_conversations_do_not_crowd_out_real_deletions(
    emulator: Emulator, make_engine: EngineFactory
) -> None:
    for n in range(4):
        add(emulator, f"Test quiet {n}", 5 * H)
    real = add(emulator, "Ticket real", 2 * H)
    quiet = replace(TEST_CHATS, dry_run=True)
    tickets = Policy(name="tickets", agents=frozenset({532}), name_matches=("Ticket*",), max_age=H)
    await make_engine((quiet,)).sweep()  # notes the four, deletes nothing
    report = await make_engine((quiet, tickets), delete_batch=2).sweep()
    assert real.session_id not in alive(emulator), "the noted four are not selected again"
    assert report.deleted == 1


async def test_turning_a_policys_dry_run_off_deletes_what_it_noted(
    emulator: Emulator, make_engine: EngineFactory, store: Store
) -> None:
    old = add(emulator, "Test old", 2 * H)
    await make_engine((replace(TEST_CHATS, dry_run=True),)).sweep()
    assert old.session_id in alive(emulator)
    await make_engine((TEST_CHATS,)).sweep()
    assert old.session_id not in alive(emulator)
    outcomes = [a.outcome for a in await store.journal.audit_trail(532, old.session_id)]
    assert outcomes == [AuditOutcome.DRY_RUN, AuditOutcome.DELETED]


async def test_agents_found_through_a_wildcard_policy_keep_their_names(
    make_engine: EngineFactory, store: Store
) -> None:
    everywhere = Policy(name="all-tests", agents=None, name_matches=("Test*",), max_age=H)
    report = await make_engine((everywhere,)).sweep()
    assert report.api_calls["list_agents"] == 1
    agent = await store.agent(532)
    assert agent is not None and agent.name == "Support bot"
