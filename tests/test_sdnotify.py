"""systemd's notify protocol: what the daemon says on $NOTIFY_SOCKET, and that saying it never
fails the daemon. Real AF_UNIX datagram sockets, a path and an abstract one; no mocks."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from retention.daemon import Cadence, Daemon
from retention.sdnotify import Notifier

from .conftest import EngineFactory


class Listener:
    """A datagram socket standing for systemd's notify socket; ``address`` as $NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.received: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return [text for _at, text in self.received]
            self.received.append((time.monotonic(), data.decode()))

    def lines(self, line: str) -> list[float]:
        """When each message holding ``line`` arrived."""
        self.drain()
        return [at for at, text in self.received if line in text.splitlines()]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    listening = Listener(str(tmp_path / "notify"))
    yield listening
    listening.sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    listening = Listener(f"@retention-test-{uuid.uuid4().hex}")
    yield listening
    listening.sock.close()


def test_ready_and_status_go_out_as_one_datagram(listener: Listener) -> None:
    notifier = Notifier(listener.address)
    assert notifier.ready("running: discovery every 15m,\nline two")
    assert listener.drain() == ["READY=1\nSTATUS=running: discovery every 15m, line two"]


def test_an_abstract_socket_is_reached_by_its_at_sign_name(abstract_listener: Listener) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": abstract_listener.address})
    assert notifier.enabled and notifier.notify("WATCHDOG=1")
    assert abstract_listener.drain() == ["WATCHDOG=1"]


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.stopping() is False
    assert notifier.watchdog_interval is None


def test_a_socket_nobody_listens_on_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = Notifier(str(tmp_path / "nobody"))
    with caplog.at_level(logging.WARNING, logger="retention.sdnotify"):
        assert gone.ready() is False
    assert "could not notify the service manager (READY=1)" in caplog.text


def test_an_address_that_is_no_socket_name_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="retention.sdnotify"):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "relative/path"})
    assert not notifier.enabled and "ignoring NOTIFY_SOCKET" in caplog.text


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_the_watchdog_pings_at_half_its_timeout_when_it_is_this_process(
    env: dict[str, str], interval: float | None
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert notifier.watchdog_interval == interval


def test_stopping_is_said_once(listener: Listener) -> None:
    notifier = Notifier(listener.address)
    assert notifier.stopping("stopping")
    assert not notifier.stopping("stopping again")
    assert listener.drain() == ["STOPPING=1\nSTATUS=stopping"]


async def test_keep_alive_pings_until_cancelled(listener: Listener) -> None:
    notifier = Notifier(listener.address, watchdog_usec=200_000)  # a ping every 0.1 s
    pinging = asyncio.create_task(notifier.keep_alive())
    await asyncio.sleep(0.55)
    pinging.cancel()
    await asyncio.gather(pinging, return_exceptions=True)
    count = len(listener.lines("WATCHDOG=1"))
    assert 4 <= count <= 7, count
    await asyncio.sleep(0.25)
    assert len(listener.lines("WATCHDOG=1")) == count, "no ping after it was cancelled"


async def test_keep_alive_without_a_watchdog_returns_at_once() -> None:
    await asyncio.wait_for(Notifier(None, watchdog_usec=1_000_000).keep_alive(), timeout=1)
    await asyncio.wait_for(Notifier("/run/systemd/notify").keep_alive(), timeout=1)


async def test_the_daemon_says_ready_pings_and_says_stopping_when_asked_to_stop(
    listener: Listener, make_engine: EngineFactory
) -> None:
    notifier = Notifier(listener.address, watchdog_usec=200_000)
    every = Cadence(timedelta(seconds=0.2))
    daemon = Daemon(make_engine(), discover=every, delete=every, notifier=notifier)
    running = asyncio.create_task(daemon.run())
    async with asyncio.timeout(10):
        while not listener.lines("READY=1"):  # noqa: ASYNC110 - polls a socket
            await asyncio.sleep(0.02)
    ready = listener.drain()[0]
    assert ready.startswith("READY=1\nSTATUS=running: discovery every "), ready
    await asyncio.sleep(0.35)
    assert len(listener.lines("WATCHDOG=1")) >= 2, "pinged from the loop while it runs"
    assert not listener.lines("STOPPING=1")
    daemon.request_stop()
    assert await asyncio.wait_for(running, timeout=10) == 0
    (stopping,) = listener.lines("STOPPING=1")
    assert stopping > listener.lines("READY=1")[0]
    pings = len(listener.lines("WATCHDOG=1"))
    await asyncio.sleep(0.25)
    assert len(listener.lines("WATCHDOG=1")) == pings, "the pings end with the daemon"


async def test_the_daemon_says_stopping_when_its_run_ends_on_its_own(
    listener: Listener, make_engine: EngineFactory
) -> None:
    every = Cadence(timedelta(seconds=0.2))
    daemon = Daemon(
        make_engine(), discover=every, delete=every, notifier=Notifier(listener.address)
    )
    assert await daemon.run(run_for=0.3) == 0
    said = listener.drain()
    assert [m.splitlines()[0] for m in said] == ["READY=1", "STOPPING=1"]


async def test_a_daemon_without_a_notifier_sends_nothing(
    listener: Listener, make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the runtime hands the daemon systemd's socket: a daemon built elsewhere (a test, the
    demo) says nothing, whatever the environment holds."""
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    every = Cadence(timedelta(seconds=0.2))
    assert await Daemon(make_engine(), discover=every, delete=every).run(run_for=0.2) == 0
    assert listener.drain() == []
