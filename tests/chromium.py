"""Debian's headless Chromium for the tests, and reading a report page's figures back.

``RETENTION_TESTS_CHROMIUM`` chooses (read once, at import; the tests' own environment is
cleaned per test): unset, skip the browser tests with the reason when ``chromium`` is not on
PATH; ``require`` (CI), fail instead.

The figure helpers work on any HTML string, the page as rendered or the DOM a browser dumped:
:func:`figures_from_dom` and :func:`bars_from_dom` read what the page shows,
:func:`figures_from_doc` and :func:`bars_from_doc` say what it must show for a report document
(the key scheme of ``retention/reportpage.py``, written out again here on purpose), and
:func:`mismatches` compares the two.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
from PIL import Image

SETTING = os.environ.get("RETENTION_TESTS_CHROMIUM", "")
TIMEOUT = 45.0  # under pytest's 60 s per test, so a hung browser fails with its own message
NEAR_WHITE = 235  # a pixel with every channel at or above this counts as paper
COUNTS = ("deleted", "already_gone", "failed", "due", "overdue", "held", "in_grace", "blocked")
DELAYS = ("p50", "p95", "max")
NO_RULE = "-"
K = TypeVar("K")

# A figure as read back: a count or a text as shown (str), a delay's seconds (float, or None
# when there is none).
Figure = str | float | None
# (chart, account, day, rule or "" for the backlog) -> the bar's value
Bars = dict[tuple[str, str, str, str], int]


def chromium() -> str:
    """The browser's path; skips the test when there is none (fails if it is required)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "chromium is not installed (apt-get install chromium)"
        if SETTING == "require":
            pytest.fail(f"Chromium is required here (RETENTION_TESTS_CHROMIUM): {reason}")
        pytest.skip(reason)
    return found


def run_chromium(
    page: Path, *args: str, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on a local file with a throwaway profile and HOME."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as home:
        command = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            # Nothing leaves the machine: a page that tried to fetch would find no host.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={home}/profile",
            *args,
            page.resolve().as_uri(),
        ]
        env = {"HOME": home, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    if result.returncode != 0:
        raise AssertionError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 2400) -> None:
    run_chromium(page, f"--screenshot={png}", f"--window-size={width},{height}")
    if not png.is_file():
        raise AssertionError(f"chromium wrote no screenshot to {png}")


@dataclass(frozen=True)
class Ink:
    """What a screenshot shows, roughly: its colours, and the share of pixels not near white."""

    colours: frozenset[tuple[int, int, int]]
    share: float


def ink(png: Path) -> Ink:
    with Image.open(png) as image:
        pixels = image.convert("RGB")
    counted = cast(
        "list[tuple[int, tuple[int, int, int]]] | None", pixels.getcolors(maxcolors=1 << 24)
    )
    assert counted is not None
    inked = sum(n for n, (r, g, b) in counted if min(r, g, b) < NEAR_WHITE)
    return Ink(frozenset(c for _, c in counted), inked / (pixels.width * pixels.height))


def assert_not_blank(png: Path, *, colours: int = 50, share: float = 0.03) -> Ink:
    """A page of text, tables and charts: many distinct colours (anti-aliased text alone gives
    dozens; a blank or error page a handful), and more than ``share`` of pixels not near white.
    """
    found = ink(png)
    assert len(found.colours) > colours, f"{len(found.colours)} colours: a blank page?"
    assert found.share > share, f"{found.share:.1%} of pixels inked: a blank page?"
    return found


def dump_dom(page: Path) -> str:
    """The DOM after Chromium parsed and laid out the page, serialized."""
    return run_chromium(page, "--dump-dom").stdout


def print_pdf(page: Path, pdf: Path) -> None:
    run_chromium(page, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    if not pdf.is_file():
        raise AssertionError(f"chromium wrote no PDF to {pdf}")


class _Reader(HTMLParser):
    """Collects the elements with ``data-figure`` (their text too) and the chart bars."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.figures: dict[str, Figure] = {}
        self.bars: Bars = {}
        self._open: tuple[str, dict[str, str | None], list[str]] | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if "data-chart" in found:
            key = (
                found["data-chart"] or "",
                found.get("data-account") or "",
                found.get("data-day") or "",
                found.get("data-rule") or "",
            )
            if key in self.bars:
                raise AssertionError(f"two bars for {key}")
            self.bars[key] = int(found["data-value"] or "")
        if self._open is not None:
            self._depth += tag not in self.VOID
        elif "data-figure" in found:
            self._open, self._depth = (found["data-figure"] or "", found, []), 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[2].append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open is None or tag in self.VOID:
            return
        self._depth -= 1
        if self._depth == 0:
            key, attrs, text = self._open
            self._open = None
            if key in self.figures:
                raise AssertionError(f"figure {key!r} appears twice")
            self.figures[key] = _value(attrs, "".join(text).strip())


def _value(attrs: Mapping[str, str | None], text: str) -> Figure:
    if "data-seconds" in attrs:
        seconds = attrs["data-seconds"]
        if not text:
            raise AssertionError("a delay cell shows nothing")
        return float(seconds) if seconds else None
    value = attrs.get("data-value")
    return value if value is not None else text


def figures_from_dom(dom: str) -> dict[str, Figure]:
    """Every ``data-figure`` of a page: its ``data-seconds``, else ``data-value``, else text."""
    reader = _Reader()
    reader.feed(dom)
    reader.close()
    return reader.figures


def bars_from_dom(dom: str) -> Bars:
    """Every chart bar of a page, by (chart, account, day, rule); the rule is "" for backlog."""
    reader = _Reader()
    reader.feed(dom)
    reader.close()
    return reader.bars


def _delay_figures(key: str, delays: Mapping[str, Any]) -> dict[str, Figure]:
    out: dict[str, Figure] = {
        f"{key}/delay_{k}": None if delays[k] is None else float(delays[k]) for k in DELAYS
    }
    out[f"{key}/delay_count"] = str(delays["count"])
    return out


def figures_from_doc(doc: Mapping[str, Any]) -> dict[str, Figure]:
    """What :func:`figures_from_dom` must find on the page of this report document."""
    out: dict[str, Figure] = {
        "report/generated_at": doc["generated_at"],
        "report/since": doc["since"],
        "report/until": doc["until"],
        "report/period": doc["period"],
        "report/overdue_after": float(doc["overdue_after_seconds"]),
    }
    for account in doc["accounts"]:
        name = account["account"]
        out.update({f"{name}/total/{k}": str(account["totals"][k]) for k in COUNTS})
        out.update(_delay_figures(f"{name}/total", account["delay_seconds"]))
        out[f"{name}/total/delay_early"] = str(account["delay_seconds"].get("early", 0))
        for agent in account["agents"]:
            prefix = f"{name}/{agent['agent_id']}"
            out.update({f"{prefix}/total/{k}": str(agent["totals"][k]) for k in COUNTS})
            out.update(_delay_figures(f"{prefix}/total", agent["delay_seconds"]))
            for rule in agent["rules"]:
                key = f"{prefix}/{NO_RULE if rule['rule'] is None else rule['rule']}"
                out.update({f"{key}/{k}": str(rule[k]) for k in COUNTS})
                out.update(_delay_figures(key, rule["delay_seconds"]))
        out.update({f"{name}/breaker/{i}": r for i, r in enumerate(account["breaker"])})
        out.update(
            {f"{name}/conflicts/{i}": c["message"] for i, c in enumerate(account["conflicts"])}
        )
        audit = account["audit"]
        out[f"{name}/audit/ok"] = "true" if audit["ok"] else "false"
        out[f"{name}/audit/rows_checked"] = str(audit["rows_checked"])
        if audit["head"] is not None:
            out[f"{name}/audit/head_seq"] = str(audit["head"]["seq"])
            out[f"{name}/audit/head_hash"] = audit["head"]["hash"]
        if not audit["ok"]:
            out[f"{name}/audit/problem"] = audit["problem"]
    return out


def bars_from_doc(doc: Mapping[str, Any]) -> Bars:
    """The bars the charts must draw: every non-zero entry, by (chart, account, day, rule)."""
    out: Bars = {}
    for account in doc["accounts"]:
        name = account["account"]
        for entry in account["deletions_per_day"]:
            if entry["deleted"]:
                rule = NO_RULE if entry["rule"] is None else entry["rule"]
                out["deletions", name, entry["day"], rule] = entry["deleted"]
        for entry in account["backlog_per_day"]:
            if entry["due"]:
                out["backlog", name, entry["day"], ""] = entry["due"]
    return out


def mismatches(dom: str, doc: Mapping[str, Any]) -> list[str]:
    """How the page's figures and bars differ from the document's; empty when they agree."""
    return _diff("figure", figures_from_dom(dom), figures_from_doc(doc)) + _diff(
        "bar", bars_from_dom(dom), bars_from_doc(doc)
    )


def _diff(kind: str, shown: Mapping[K, object], expected: Mapping[K, object]) -> list[str]:
    problems = []
    for key in sorted(set(shown) | set(expected), key=str):
        if key not in shown:
            problems.append(f"{kind} {key!r} missing from the page")
        elif key not in expected:
            problems.append(f"{kind} {key!r} on the page but not in the document")
        elif shown[key] != expected[key]:
            problems.append(f"{kind} {key!r}: page {shown[key]!r}, document {expected[key]!r}")
    return problems
