"""Verified gone: a conversation recorded as deleted that a later listing still shows is a failed
deletion. It is audited ("still present after DELETE 200"), counted, and queued again.

Only a walk that began after the deletion finished is evidence: offset pages are read over
time, and a page read before the DELETE lists what the DELETE then removed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from retention.client import CustomGPTClient
from retention.discovery import UNVERIFIED
from retention.emulator import Emulator, Fault
from retention.emulator.seed import EmuAgent, EmuConversation
from retention.engine import Engine
from retention.metrics import Metrics
from retention.models import AuditOutcome, State
from retention.policy import Policy, Rules
from retention.store import Store
from retention.sweep import EngineOptions

from .conftest import small_state

AGENT = 532
LIST_PATH = f"/api/v1/projects/{AGENT}/conversations"
RULES = Rules(
    (
        Policy(
            name="temp",
            agents=frozenset({AGENT}),
            name_matches=("Temp*",),
            max_age=timedelta(hours=1),
        ),
    ),
    (),
)
ALWAYS_RECONCILE = EngineOptions(reconcile_every=timedelta(0))  # every walk reads every page


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(small_state(conversations=45))  # three pages of 20


def due_one(emulator: Emulator) -> EmuConversation:
    """The newest conversation, so on page 1, and due under the temp policy."""
    return emulator.state.add_conversation(
        AGENT, "Temp old", created_at=datetime.now(UTC) - timedelta(hours=2)
    )


def alive(emulator: Emulator) -> set[str]:
    return emulator.live_sessions(AGENT)


async def test_a_delete_200_that_did_not_take_is_audited_counted_and_queued_again(
    emulator: Emulator, client: CustomGPTClient, store: Store
) -> None:
    target = due_one(emulator)
    engine = Engine(client, store, RULES)
    metrics = Metrics(stats=client.stats, budget=client.budget)
    engine.listeners.append(metrics.observe_sweep)
    path = f"*/conversations/{target.session_id}"
    emulator.faults.append(Fault.ok_without_acting(path=path, method="DELETE"))

    first = await engine.sweep()
    assert first.deleted == 1 and target.session_id in alive(emulator), "200, but it stays"
    recorded = await store.get(AGENT, target.session_id)
    assert recorded is not None and recorded.state is State.DELETED

    listed = await engine.sweep(delete=False)  # a walk begun after the DELETE lists it

    assert (listed.unverified, listed.failed) == (1, 1)
    assert listed.outcomes == {("failed", "temp"): 1}
    assert "unverified=1" in listed.summary()
    queued = await store.get(AGENT, target.session_id)
    assert queued is not None and queued.state is State.ACTIVE, "queued again"
    assert queued.finished_at is None and queued.last_error == UNVERIFIED
    assert queued.rule == "temp" and queued.due_at is not None, "decided afresh: due"
    trail = await store.journal.audit_trail(AGENT, target.session_id)
    assert [a.outcome for a in trail] == [AuditOutcome.DELETED, AuditOutcome.FAILED]
    assert trail[1].detail is not None and trail[1].detail.startswith(UNVERIFIED)
    assert trail[1].rule == "temp"

    again = await engine.sweep(discover=False)  # the fault is spent: this DELETE takes

    assert again.deleted == 1 and target.session_id not in alive(emulator)
    assert len(emulator.calls("DELETE", path)) == 2
    final = await store.get(AGENT, target.session_id)
    assert final is not None and final.state is State.DELETED
    scraped = metrics.render().decode()
    assert 'retention_deletions_unverified_total{account="default"} 1.0' in scraped
    assert (
        'retention_deletions_total{account="default",outcome="failed",rule="temp"} 1.0' in scraped
    )
    assert (
        'retention_deletions_total{account="default",outcome="deleted",rule="temp"} 2.0' in scraped
    )
    [*_, last] = await store.journal.last_sweeps(3)
    assert last.failed == 0


async def test_a_walk_begun_before_the_delete_finished_is_no_evidence(
    emulator: Emulator, client: CustomGPTClient, store: Store
) -> None:
    """One engine walks the agent while another (a second process, say) deletes a conversation
    the walk has already read on page 1: the walk lists it, but that proves nothing."""
    target = due_one(emulator)
    walker = Engine(client, store, RULES, options=ALWAYS_RECONCILE)
    deleter = Engine(client, store, RULES)
    await walker.sweep(delete=False)
    deletion: asyncio.Task[object] | None = None

    def delete_after_page_two(agent: EmuAgent, page: int) -> None:
        nonlocal deletion
        if page == 2 and deletion is None:
            # Page 3 waits a second; meanwhile the other engine deletes what page 1 listed.
            emulator.faults.append(Fault.delay(1.0, path=LIST_PATH, method="GET"))
            deletion = asyncio.get_running_loop().create_task(deleter.sweep(discover=False))

    emulator.before_list.append(delete_after_page_two)
    report = await walker.sweep()
    assert deletion is not None
    await deletion

    assert target.session_id not in alive(emulator)
    stored = await store.get(AGENT, target.session_id)
    assert stored is not None and stored.state is State.DELETED
    assert stored.finished_at is not None and stored.finished_at > report.started_at
    assert (report.unverified, report.failed, report.already_gone) == (0, 0, 0)
    trail = await store.journal.audit_trail(AGENT, target.session_id)
    assert [a.outcome for a in trail] == [AuditOutcome.DELETED]
    assert len(emulator.calls("DELETE")) == 1, "not queued again, so not sent again"


async def test_a_conversation_gone_elsewhere_and_listed_again_is_tracked_without_a_failure(
    emulator: Emulator, client: CustomGPTClient, store: Store
) -> None:
    """``gone`` is not ours to verify: listed again, it is tracked anew, and nothing failed."""
    engine = Engine(client, store, RULES, options=ALWAYS_RECONCILE)
    await engine.sweep(delete=False)
    conversations = emulator.state.agents[AGENT].conversations
    session_id = next(iter(conversations))
    removed = conversations.pop(session_id)
    await engine.sweep(delete=False)
    gone = await store.get(AGENT, session_id)
    assert gone is not None and gone.state is State.GONE

    conversations[session_id] = removed  # a walk had skipped it, or it was restored
    report = await engine.sweep(delete=False)

    back = await store.get(AGENT, session_id)
    assert back is not None and back.state is State.ACTIVE and back.finished_at is None
    assert (report.unverified, report.failed) == (0, 0)
    assert await store.journal.audit_trail(AGENT, session_id) == []
