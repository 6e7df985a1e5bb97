"""Replicas sharing accounts through leases in one store (retention.replicas): the fair share,
the rebalancing when one joins or leaves, a paused one losing what others took, and the
handover that waits for requests in flight. On both backends; the real processes are in
tests/test_replicas_chaos.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from retention.errors import LeaseLost
from retention.lease import LeaseKeeper, lease_scope
from retention.replicas import Replicas, Slot, fair_share
from retention.store import Store

from .postgres import Cluster

TTL = timedelta(seconds=30)
ACCOUNTS = [f"a{n}" for n in range(6)]


class Clocks:
    """One wall clock for every replica, and a monotonic clock per replica (a pause is one
    replica's monotonic clock jumping while it did nothing)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    def wall(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


class Replica:
    def __init__(self, store: Store, name: str, clocks: Clocks) -> None:
        self.mono = 0.0
        self.in_flight: Counter[str] = Counter()
        slots = [
            Slot(
                account,
                LeaseKeeper(
                    store.for_account(account),
                    scope=lease_scope(account),
                    ttl=TTL,
                    holder=name,
                    clock=clocks.wall,
                    monotonic=lambda: self.mono,
                ),
                idle=lambda account=account: self.in_flight[account] == 0,  # type: ignore[misc]
            )
            for account in ACCOUNTS
        ]
        self.replicas = Replicas(
            store, slots, holder=name, ttl=TTL, clock=clocks.wall, monotonic=lambda: self.mono
        )

    def held(self) -> set[str]:
        return set(self.replicas.held())


async def rounds(clocks: Clocks, replicas: list[Replica], n: int = 3) -> None:
    """``n`` rounds of every replica, a third of the lease time apart."""
    for _ in range(n):
        for replica in replicas:
            await replica.replicas.balance()
        clocks.advance(TTL / 3)
        for replica in replicas:
            replica.mono += (TTL / 3).total_seconds()


def assert_split(replicas: list[Replica], share: int) -> None:
    held = [r.held() for r in replicas]
    assert all(len(h) == share for h in held), held
    everything = [a for h in held for a in h]
    assert sorted(everything) == sorted(ACCOUNTS), "every account held, each by one replica"


@pytest.mark.parametrize(("accounts", "replicas", "share"), [(6, 3, 2), (6, 4, 2), (5, 2, 3)])
def test_fair_share(accounts: int, replicas: int, share: int) -> None:
    assert fair_share(accounts, replicas) == share


async def test_replicas_split_the_accounts_and_rebalance_when_one_joins_or_leaves(
    store: Store,
) -> None:
    clocks = Clocks()
    one, two = Replica(store, "r1", clocks), Replica(store, "r2", clocks)
    await rounds(clocks, [one])
    assert one.held() == set(ACCOUNTS), "alone, a replica holds every account"

    await rounds(clocks, [one, two])
    assert_split([one, two], 3)

    three = Replica(store, "r3", clocks)
    await rounds(clocks, [one, two, three])
    assert_split([one, two, three], 2)

    # A clean stop gives its accounts back at once; the others take them in the next round.
    await three.replicas.leave()
    assert three.held() == set()
    assert await store.live_replicas(now=clocks.now, within=TTL) == ["r1", "r2"]
    await rounds(clocks, [one, two], n=1)
    assert_split([one, two], 3)


async def test_a_replica_that_dies_is_replaced_within_a_lease_period(store: Store) -> None:
    clocks = Clocks()
    replicas = [Replica(store, f"r{n}", clocks) for n in range(3)]
    await rounds(clocks, replicas)
    dead = replicas.pop(0)
    orphaned = dead.held()
    # It stops beating and renewing (SIGKILL): its leases lapse after the lease time, and its
    # row stops counting; the others take its accounts within a lease period and a round.
    await rounds(clocks, replicas, n=4)
    assert_split(replicas, 3)
    assert orphaned <= replicas[0].held() | replicas[1].held()


async def test_a_paused_replica_holds_nothing_when_it_resumes_after_a_takeover(
    store: Store,
) -> None:
    clocks = Clocks()
    paused, other = Replica(store, "r1", clocks), Replica(store, "r2", clocks)
    await rounds(clocks, [paused, other])
    its = paused.held()
    # Paused (SIGSTOP) for two lease periods: its monotonic clock jumps when it resumes, the
    # other took everything meanwhile.
    for _ in range(6):
        await other.replicas.balance()
        clocks.advance(TTL / 3)
        other.mono += (TTL / 3).total_seconds()
    paused.mono += 2 * TTL.total_seconds()
    assert other.held() == set(ACCOUNTS)
    assert paused.held() == set(), "past its lease on its own clock: nothing held, nothing sent"
    for slot in paused.replicas.slots:
        if slot.account in its:
            with pytest.raises(Exception, match="not held"):
                slot.keeper.describe()  # what the client calls before every request
    await rounds(clocks, [paused, other])
    assert_split([paused, other], 3)


async def test_a_handover_waits_for_the_requests_in_flight(store: Store) -> None:
    clocks = Clocks()
    giving, taking = Replica(store, "r1", clocks), Replica(store, "r2", clocks)
    await rounds(clocks, [giving], n=1)
    slot = next(s for s in giving.replicas.slots if s.account == "a0")
    giving.in_flight["a0"] = 1  # a request of a0's is out
    handing = asyncio.create_task(giving.replicas.hand_over(slot))
    await asyncio.sleep(0.2)
    assert not handing.done(), "the lease is not given back while a request is unanswered"
    assert not slot.keeper.valid(), "but nothing new goes out under it"
    assert not await taking.replicas.slots[0].keeper.try_take(), "nobody else has it yet"
    giving.in_flight["a0"] = 0
    await asyncio.wait_for(handing, 5)
    assert await taking.replicas.slots[0].keeper.try_take()
    lease = await store.lease(lease_scope("a0"))
    assert lease is not None and lease.holder == "r2" and lease.token == 2


def test_the_metrics_say_which_accounts_this_replica_holds() -> None:
    from retention.budget import CallStats, RequestBudget
    from retention.metrics import Metrics

    metrics = Metrics()
    metrics.add_account("a0", stats=CallStats(), budget=RequestBudget(60), held=lambda: True)
    metrics.add_account("a1", stats=CallStats(), budget=RequestBudget(60), held=lambda: False)
    scraped = metrics.render().decode()
    assert 'retention_account_held{account="a0"} 1.0' in scraped
    assert 'retention_account_held{account="a1"} 0.0' in scraped


@pytest.mark.postgresql
async def test_a_replica_whose_clock_runs_ahead_cannot_take_a_lease_early(
    postgres: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lease times are the database server's: a replica on a machine whose clock runs an hour
    ahead sees the other's lease as the server does, in force, and takes nothing."""
    url = await postgres.new_database()
    store = await Store.open(url)
    try:
        holder = LeaseKeeper(store, scope=lease_scope("a0"), ttl=TTL, holder="r1")
        assert await holder.try_take()
        ahead = datetime.now(UTC) + timedelta(hours=1)
        monkeypatch.setattr("retention.clocks.utc_now", lambda: ahead)
        monkeypatch.setattr("retention.store.utc_now", lambda: ahead)
        monkeypatch.setattr("retention.lease.utc_now", lambda: ahead)
        skewed = LeaseKeeper(store, scope=lease_scope("a0"), ttl=TTL, holder="r2")
        assert not await skewed.try_take(), "in force on the server's clock"
        lease = await store.lease(lease_scope("a0"))
        assert lease is not None and lease.holder == "r1"
        assert abs(lease.expires_at - (datetime.now(UTC) + TTL)) < timedelta(seconds=5)
    finally:
        await store.close()
        await postgres.drop(url)


async def test_no_request_goes_out_closer_to_the_lapse_than_the_request_timeout(
    store: Store,
) -> None:
    clocks = Clocks()
    mono = [0.0]
    keeper = LeaseKeeper(
        store,
        scope=lease_scope("a0"),
        ttl=TTL,
        holder="r1",
        margin=timedelta(seconds=10),
        clock=clocks.wall,
        monotonic=lambda: mono[0],
    )
    assert await keeper.try_take()
    assert "lease account:a0#1" in keeper.describe()
    mono[0] = 19.0  # 11 s of the 30 left: a request of up to 10 s ends in time
    keeper.describe()
    mono[0] = 21.0  # 9 s left: one sent now could outlive the lease
    with pytest.raises(LeaseLost, match="lapses before a request sent now would end"):
        keeper.describe()
    assert keeper.valid(), "still held: intents already fenced finish; nothing new is sent"


@pytest.mark.postgresql
async def test_balancing_outlives_a_lost_database_and_says_so(postgres: Cluster) -> None:
    url = await postgres.new_database()
    store = await Store.open(url)
    failing: dict[str, datetime] = {}
    keeper = LeaseKeeper(store, scope=lease_scope("a0"), ttl=timedelta(seconds=3), holder="r1")
    replicas = Replicas(
        store,
        [Slot("a0", keeper, idle=lambda: True)],
        holder="r1",
        ttl=timedelta(seconds=3),
        request_timeout=timedelta(seconds=1),
        failing_since=failing,
    )
    running = asyncio.create_task(replicas.run())
    try:
        async with asyncio.timeout(10):
            while replicas.held() != ["a0"]:  # noqa: ASYNC110 - another task's work
                await asyncio.sleep(0.05)
        await postgres.drop(url)  # the database is gone under the replica
        async with asyncio.timeout(10):
            while "balance" not in failing:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert not running.done(), "the balancing goes on, to take its share once it can"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await store.close()
