"""A fake of the CustomGPT conversation API (aiohttp.web) for tests, the demo and benchmarks.

Faithful to DESIGN.md section 1: the ``{"status", "data"}`` envelope, Laravel paginators whose
``per_page`` the client cannot choose, the real error bodies, bearer auth, the three timestamp
formats, integer ``project_id`` and ``created_by``, 404 on a second delete, and rename bumping
``updated_at``. Modules: ``server`` (the application, :class:`Emulator`), ``shapes`` (the JSON it
serves), ``seed`` (its state, seed files, the built-in sample and :func:`big_state`, one agent
of a million conversations for benchmarks) and ``faults`` (misbehaviour on request). Tests,
benchmarks, the demo and ``retention emulate`` use it; the daemon does not.
"""

from __future__ import annotations

from retention.emulator.faults import Arrival, Fault, RateLimit
from retention.emulator.seed import (
    HELD_SAMPLE_SESSION,
    Conversations,
    EmuAgent,
    EmuConversation,
    EmulatorState,
    big_state,
    load_seed,
    sample_state,
)
from retention.emulator.server import DEFAULT_TOKEN, Emulator, Served

__all__ = [
    "DEFAULT_TOKEN",
    "HELD_SAMPLE_SESSION",
    "Arrival",
    "Conversations",
    "EmuAgent",
    "EmuConversation",
    "Emulator",
    "EmulatorState",
    "Fault",
    "RateLimit",
    "Served",
    "big_state",
    "load_seed",
    "sample_state",
]
