"""The report page's two inline SVG charts: deletions per day by rule, and the due backlog.

Pure string building. Each bar carries ``data-chart``, ``data-account``, ``data-day``,
``data-value`` (and ``data-rule`` for deletions; ``-`` when no rule) so a test can read the
values back out of a rendered page. Series differ by colour (Okabe-Ito, safe for colour
blindness) and by a pattern, so a greyscale print still tells them apart; the legend names them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

NO_RULE = "-"
# Okabe & Ito, "Color Universal Design" (https://jfly.uni-koeln.de/color/), black left out.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")
# Marks drawn over the colour, clipped to the bar by arithmetic: SVG <pattern> fills would do
# it in one line, but Chromium prints them as bitmaps (a 3 MB PDF for one report). 5 marks and
# 8 colours (coprime) give 40 distinct series.
MARKS = ("", "diagonal", "dots", "horizontal", "cross")
_SPACING = 5.0
_INK = 'fill="none" stroke="#000" stroke-opacity="0.6" stroke-width="1.3" stroke-linecap="round"'
BACKLOG_COLOUR = "#0072B2"

_WIDTH, _LEFT, _RIGHT, _TOP, _PLOT_HEIGHT = 760, 52, 12, 14, 200
_LEGEND_COLUMN, _LEGEND_ROW = 185, 20


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def rule_label(rule: str | None) -> str:
    return "(no rule)" if rule is None else rule


def deletions_chart(
    entries: Sequence[Mapping[str, Any]], days: Sequence[str], *, account: str, prefix: str
) -> str:
    """Stacked bars per day, one series per rule; a paragraph when nothing was deleted."""
    entries = [e for e in entries if int(e["deleted"]) > 0]
    if not entries:
        return '<p class="empty">No deletions in this period.</p>'
    days = sorted(set(days) | {str(e["day"]) for e in entries})
    rules = sorted({e["rule"] for e in entries}, key=lambda r: (r is None, r or ""))
    style = {rule: i for i, rule in enumerate(rules)}
    per_day: dict[str, int] = {}
    for entry in entries:
        per_day[str(entry["day"])] = per_day.get(str(entry["day"]), 0) + int(entry["deleted"])
    total = sum(per_day.values())
    busiest = max(per_day, key=lambda d: (per_day[d], d))
    label = (
        f"Deletions per day by rule, {days[0]} to {days[-1]}: {total} in total, "
        f"{len(rules)} rule(s), most on {busiest} ({per_day[busiest]})"
    )
    frame = _Frame(days, top=max(per_day.values()))
    bars: list[str] = []
    stacked: dict[str, int] = {}
    for rule in rules:  # series in legend order, bottom up
        for entry in (e for e in entries if e["rule"] == rule):
            day, value = str(entry["day"]), int(entry["deleted"])
            below = stacked.get(day, 0)
            stacked[day] = below + value
            y, height = frame.y(below + value), frame.y(below) - frame.y(below + value)
            bars.append(
                f"<g><title>{_e(day)}, {_e(rule_label(rule))}: {value}</title>"
                f'<rect class="bar" data-chart="deletions" data-account="{_e(account)}" '
                f'data-day="{_e(day)}" data-rule="{_e(NO_RULE if rule is None else rule)}" '
                f'data-value="{value}" '
                + _swatch(style[rule], frame.x(day), y, frame.bar, height)
                + "</g>"
            )
    legend, legend_height = _legend(rules, top=frame.bottom + 48)
    return _svg(
        prefix,
        label,
        frame.axes("Deletions") + "".join(bars) + legend,
        height=frame.bottom + 48 + legend_height,
    )


def backlog_chart(entries: Sequence[Mapping[str, Any]], *, account: str, prefix: str) -> str:
    """Bars per day of the conversations due and not yet deleted; a paragraph when all zero."""
    days = [str(e["day"]) for e in entries]
    if not any(int(e["due"]) > 0 for e in entries):
        return '<p class="empty">Nothing was due and waiting on any day of this period.</p>'
    values = {str(e["day"]): int(e["due"]) for e in entries}
    busiest = max(values, key=lambda d: (values[d], d))
    label = (
        f"Due backlog per day, {days[0]} to {days[-1]}: highest {values[busiest]} on {busiest}, "
        f"{values[days[-1]]} on the last day"
    )
    frame = _Frame(days, top=max(values.values()))
    bars = [
        f'<rect class="bar" data-chart="backlog" data-account="{_e(account)}" '
        f'data-day="{_e(day)}" data-value="{value}" x="{frame.x(day):.2f}" '
        f'y="{frame.y(value):.2f}" width="{frame.bar:.2f}" '
        f'height="{frame.y(0) - frame.y(value):.2f}" fill="{BACKLOG_COLOUR}">'
        f"<title>{_e(day)}: {value} due</title></rect>"
        for day, value in values.items()
        if value > 0
    ]
    return _svg(
        prefix,
        label,
        frame.axes("Conversations due") + "".join(bars),
        height=frame.bottom + 48,
    )


class _Frame:
    """The plot area: one band per day, a y scale with round ticks, and the axes drawn."""

    def __init__(self, days: Sequence[str], *, top: int) -> None:
        self.days = list(days)
        self.step = _tick_step(top)
        self.top = max(self.step, math.ceil(top / self.step) * self.step)
        self.band = (_WIDTH - _LEFT - _RIGHT) / len(self.days)
        self.bar = self.band * 0.72
        self.bottom = _TOP + _PLOT_HEIGHT
        self._index = {day: i for i, day in enumerate(self.days)}

    def x(self, day: str) -> float:
        return _LEFT + self._index[day] * self.band + (self.band - self.bar) / 2

    def y(self, value: float) -> float:
        return self.bottom - value / self.top * _PLOT_HEIGHT

    def axes(self, y_title: str) -> str:
        parts = []
        for tick in range(0, self.top + 1, self.step):
            y = self.y(tick)
            parts.append(
                f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y:.2f}" '
                f'y2="{y:.2f}"/><text class="tick" x="{_LEFT - 6}" y="{y + 4:.2f}" '
                f'text-anchor="end">{tick}</text>'
            )
        every = math.ceil(len(self.days) / 10)
        for i, day in enumerate(self.days):
            if i % every == 0:
                x = _LEFT + (i + 0.5) * self.band
                parts.append(
                    f'<text class="tick" x="{x:.2f}" y="{self.bottom + 16}" '
                    f'text-anchor="middle">{_e(day[5:])}</text>'
                )
        middle = (_LEFT + _WIDTH - _RIGHT) / 2
        parts.append(
            f'<line class="axis" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{self.bottom}" '
            f'y2="{self.bottom}"/><line class="axis" x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" '
            f'y2="{self.bottom}"/><text class="axis-title" x="{middle:.2f}" '
            f'y="{self.bottom + 36}" text-anchor="middle">Day (UTC, month-day)</text>'
            f'<text class="axis-title" transform="translate(14 {_TOP + _PLOT_HEIGHT / 2}) '
            f'rotate(-90)" text-anchor="middle">{_e(y_title)}</text>'
        )
        return "".join(parts)


def _tick_step(top: int) -> int:
    """A round step (1, 2, 5 times a power of ten) giving at most about five ticks."""
    raw = max(top, 1) / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step: float = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return max(1, math.ceil(step))


def _swatch(index: int, x: float, y: float, width: float, height: float) -> str:
    """The rest of an opened ``<rect``: geometry and colour, then the series' marks over it."""
    colour, marks = PALETTE[index % len(PALETTE)], MARKS[index % len(MARKS)]
    rect = f'x="{x:.2f}" y="{y:.2f}" width="{width:.2f}" height="{height:.2f}" fill="{colour}"/>'
    path = _marks(marks, x, y, width, height)
    return rect + (f'<path class="marks" d="{path}" {_INK}/>' if path else "")


def _marks(kind: str, x: float, y: float, width: float, height: float) -> str:
    """Path data for one kind of mark inside a rectangle, on a grid shared by all bars."""
    right, bottom, step = x + width, y + height, _SPACING
    parts: list[str] = []
    if kind in ("diagonal", "cross"):  # "/": x + y constant
        for n in range(math.ceil((x + y) / step), math.floor((right + bottom) / step) + 1):
            c = n * step
            start, end = max(x, c - bottom), min(right, c - y)
            if end - start > 0.2:
                parts.append(f"M{start:.2f},{c - start:.2f}L{end:.2f},{c - end:.2f}")
    if kind == "cross":  # "\": x - y constant
        for n in range(math.ceil((x - bottom) / step), math.floor((right - y) / step) + 1):
            c = n * step
            start, end = max(x, c + y), min(right, c + bottom)
            if end - start > 0.2:
                parts.append(f"M{start:.2f},{start - c:.2f}L{end:.2f},{end - c:.2f}")
    if kind == "horizontal":
        for n in range(math.floor(y / step) + 1, math.ceil(bottom / step)):
            parts.append(f"M{x:.2f},{n * step:.2f}H{right:.2f}")
    if kind == "dots":
        for row in range(math.ceil(y / step - 0.5), math.floor(bottom / step - 0.5) + 1):
            for col in range(math.ceil(x / step - 0.5), math.floor(right / step - 0.5) + 1):
                cx, cy = (col + 0.5) * step, (row + 0.5) * step
                if x + 1 <= cx <= right - 1 and y + 1 <= cy <= bottom - 1:
                    parts.append(f"M{cx - 1:.2f},{cy:.2f}h2")
    return "".join(parts)


def _legend(rules: Sequence[str | None], *, top: float) -> tuple[str, int]:
    columns = (_WIDTH - _LEFT) // _LEGEND_COLUMN
    parts = []
    for i, rule in enumerate(rules):
        x = _LEFT + (i % columns) * _LEGEND_COLUMN
        y = top + (i // columns) * _LEGEND_ROW
        name = rule_label(rule)
        shown = name if len(name) <= 24 else name[:23] + "\u2026"
        parts.append(
            f'<g class="legend-item"><title>{_e(name)}</title><rect class="swatch" '
            + _swatch(i, x, y, 14, 14)
            + f'<text x="{x + 20}" y="{y + 11:.2f}">{_e(shown)}</text></g>'
        )
    rows = math.ceil(len(rules) / columns)
    return f'<g class="legend">{"".join(parts)}</g>', rows * _LEGEND_ROW


def _svg(prefix: str, label: str, body: str, *, height: float) -> str:
    return (
        f'<svg role="img" aria-label="{_e(label)}" '
        f'id="{prefix}" viewBox="0 0 {_WIDTH} {height:.0f}" width="100%" '
        f'preserveAspectRatio="xMidYMin meet"><title>{_e(label)}</title>'
        f"{body}</svg>"
    )
