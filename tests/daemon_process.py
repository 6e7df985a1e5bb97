"""Helpers to run `retention run` as a real process next to an in-test emulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

# Every process started here, so that a test that fails half-way leaves none running behind it
# (conftest's reaper kills what is still alive after each test).
STARTED: list[asyncio.subprocess.Process] = []


def reap() -> None:
    """SIGKILL whatever this module started that still runs."""
    for process in STARTED:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
    STARTED.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    environment = {**os.environ, **(env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "retention", *args, "--config", str(config),
        env=environment, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    STARTED.append(process)
    return process


async def wait_for(condition: Callable[[], bool], within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polls another process and a server log
            await asyncio.sleep(0.05)


async def until_up(http: aiohttp.ClientSession, admin: str) -> None:
    """Wait until a daemon's admin surface answers /healthz."""
    async with asyncio.timeout(20):
        while True:
            try:
                async with http.get(admin + "/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


async def stop(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGTERM, then everything the process wrote (stdout and stderr)."""
    if process.returncode is None:
        process.terminate()
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()
