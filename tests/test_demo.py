"""The embedded demo runs without token or network and explains what it did."""

from __future__ import annotations

import asyncio
import os
import sys


async def test_demo_deletes_with_rules_and_explains_what_it_kept() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUSTOMGPT_API_TOKEN"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "retention", "demo", "--seconds", "6",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=55)
    text = out.decode()
    assert process.returncode == 0, err.decode()[-2000:]
    assert "Deleted:" in text
    for rule in ("test-chats", "qa-tickets", "idle-anonymous"):
        assert rule in text
    assert "Kept, and why" in text
    for reason in ("held by 'legal'", "no policy matches", "not yet due under"):
        assert reason in text
    assert "sweep delete ok" in err.decode()
