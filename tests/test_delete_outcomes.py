"""The audit says what happened: a DELETE that took on the server but failed on the way back,
then met a 404 on its retry, is our deletion ("confirmed by 404"), not "already gone".

"Already gone" is kept for a 404 on the first attempt, or after attempts the server cannot have
acted on (a 429): somebody else deleted the conversation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from retention.client import CustomGPTClient
from retention.deletion import CONFIRMED_BY_404
from retention.emulator import Emulator, Fault
from retention.emulator.seed import EmuConversation
from retention.engine import Engine
from retention.errors import TransientApiError
from retention.metrics import Metrics
from retention.models import AuditOutcome, DeleteOutcome, State
from retention.policy import Policy, Rules
from retention.store import Store

from .conftest import ClientFactory, small_state

AGENT = 532
TEMP = Policy(
    name="temp", agents=frozenset({AGENT}), name_matches=("Temp*",), max_age=timedelta(hours=1)
)


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(small_state(conversations=3))


def due_one(emulator: Emulator) -> EmuConversation:
    return emulator.state.add_conversation(
        AGENT, "Temp old", created_at=datetime.now(UTC) - timedelta(hours=2)
    )


def delete_path(conversation: EmuConversation) -> str:
    return f"*/conversations/{conversation.session_id}"


def engine_on(client: CustomGPTClient, store: Store) -> Engine:
    return Engine(client, store, Rules((TEMP,), ()))


def failed_after_acting(kind: str, path: str) -> Fault:
    """The server deletes, then the answer is lost: a 500, a reset, or no answer in time."""
    if kind == "500":
        return Fault.status(500, path=path, method="DELETE", after=True)
    if kind == "reset":
        return Fault.reset(path=path, method="DELETE", after=True)
    return Fault.hang(path=path, method="DELETE", after=True)


@pytest.mark.parametrize("kind", ["500", "reset", "timeout"])
async def test_a_404_on_the_retry_after_the_server_acted_is_audited_as_deleted(
    emulator: Emulator, make_client: ClientFactory, store: Store, kind: str
) -> None:
    target = due_one(emulator)
    client = make_client(request_timeout=timedelta(seconds=0.5))
    engine = engine_on(client, store)
    metrics = Metrics(stats=client.stats, budget=client.budget)
    engine.listeners.append(metrics.observe_sweep)
    emulator.faults.append(failed_after_acting(kind, delete_path(target)))

    report = await engine.sweep()

    deletes = emulator.calls("DELETE", delete_path(target))
    assert len(deletes) == 2, "the first attempt acted and failed; the retry met a 404"
    assert deletes[1].status == 404
    assert (report.deleted, report.already_gone, report.failed) == (1, 0, 0)
    assert report.outcomes == {("deleted", "temp"): 1}
    stored = await store.get(AGENT, target.session_id)
    assert stored is not None and stored.state is State.DELETED
    [audit] = await store.journal.audit_trail(AGENT, target.session_id)
    assert audit.outcome is AuditOutcome.DELETED
    assert audit.detail is not None and audit.detail.startswith(CONFIRMED_BY_404)
    assert "confirmed by 404" in audit.detail
    [sweep] = await store.journal.last_sweeps(1)
    assert (sweep.deleted, sweep.already_gone) == (1, 0)
    scraped = metrics.render().decode()
    assert (
        'retention_deletions_total{account="default",outcome="deleted",rule="temp"} 1.0' in scraped
    )
    assert "already_gone" not in scraped


async def test_a_404_on_the_first_attempt_is_already_gone(
    emulator: Emulator, client: CustomGPTClient, store: Store
) -> None:
    target = due_one(emulator)
    engine = engine_on(client, store)
    await engine.sweep(delete=False)
    del emulator.state.agents[AGENT].conversations[target.session_id]  # somebody else's delete

    report = await engine.sweep(discover=False)

    assert (report.deleted, report.already_gone) == (0, 1)
    [audit] = await store.journal.audit_trail(AGENT, target.session_id)
    assert audit.outcome is AuditOutcome.ALREADY_GONE
    assert "confirmed" not in (audit.detail or "")
    stored = await store.get(AGENT, target.session_id)
    assert stored is not None and stored.state is State.GONE


async def test_a_failure_before_the_server_acted_then_success_is_a_plain_deletion(
    emulator: Emulator, client: CustomGPTClient, store: Store
) -> None:
    target = due_one(emulator)
    emulator.faults.append(Fault.status(500, path=delete_path(target), method="DELETE"))

    report = await engine_on(client, store).sweep()

    assert [c.status for c in emulator.calls("DELETE", delete_path(target))] == [500, 200]
    assert (report.deleted, report.already_gone) == (1, 0)
    [audit] = await store.journal.audit_trail(AGENT, target.session_id)
    assert audit.outcome is AuditOutcome.DELETED
    assert "confirmed" not in (audit.detail or "")


async def test_the_client_tells_a_confirming_404_from_somebody_elses_delete(
    emulator: Emulator, client: CustomGPTClient
) -> None:
    acted = due_one(emulator)
    emulator.faults.append(Fault.status(503, path=delete_path(acted), method="DELETE", after=True))
    outcome = await client.delete_conversation(AGENT, acted.session_id)
    assert outcome is DeleteOutcome.DELETED_CONFIRMED_BY_404

    # A 429 is refused before anything is done: a 404 after it is somebody else's deletion.
    other = due_one(emulator)
    del emulator.state.agents[AGENT].conversations[other.session_id]
    emulator.faults.append(Fault.status(429, path=delete_path(other), method="DELETE"))
    outcome = await client.delete_conversation(AGENT, other.session_id)
    assert outcome is DeleteOutcome.ALREADY_GONE
    assert [c.status for c in emulator.calls("DELETE", delete_path(other))] == [429, 404]


async def test_a_refused_connection_cannot_have_acted(make_client: ClientFactory) -> None:
    """Nothing listens on the port: the request was never sent, whatever came after."""
    client = make_client(base_url="http://127.0.0.1:9/api/v1/", max_attempts=1)
    with pytest.raises(TransientApiError) as raised:
        await client.delete_conversation(AGENT, "8ff8078b-3e88-4ad1-8e3f-9a37324964af")
    assert raised.value.may_have_acted is False
