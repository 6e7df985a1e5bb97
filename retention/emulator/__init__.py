"""A fake of the CustomGPT conversation API (aiohttp.web) for tests, the demo and benchmarks.

Faithful to DESIGN.md section 1: the ``{"status", "data"}`` envelope, Laravel paginators whose
``per_page`` the client cannot choose, the real error bodies, bearer auth, the three timestamp
formats, integer ``project_id`` and ``created_by``, 404 on a second delete, and rename bumping
``updated_at``. Modules: ``server`` (the application, :class:`Emulator`), ``shapes`` (the JSON it
serves), ``seed`` (its state, seed files and the built-in sample) and ``faults`` (misbehaviour
on request). Tests, benchmarks, the demo and ``retention emulate`` use it; the daemon does not.
"""

from __future__ import annotations

from retention.emulator.faults import Arrival, Fault, RateLimit
from retention.emulator.seed import (
    HELD_SAMPLE_SESSION,
    EmuAgent,
    EmuConversation,
    EmulatorState,
    load_seed,
    sample_state,
)
from retention.emulator.server import DEFAULT_TOKEN, Emulator, Served

__all__ = [
    "DEFAULT_TOKEN",
    "HELD_SAMPLE_SESSION",
    "Arrival",
    "EmuAgent",
    "EmuConversation",
    "Emulator",
    "EmulatorState",
    "Fault",
    "RateLimit",
    "Served",
    "load_seed",
    "sample_state",
]
