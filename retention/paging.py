"""Offset pages walked while the list changes: which items are new, and whether the walk is whole.

Pure bookkeeping, no I/O: :class:`WalkTally` is what a streamed walk of an agent's conversation
list keeps between pages (a few integers), and the client feeds it every page it reads. The
rules it applies follow DESIGN.md section 1 (offset pagination shifts under arrivals and
deletions).
"""

from __future__ import annotations

from dataclasses import dataclass

from retention.models import Conversation, ConversationPage


@dataclass(slots=True)
class WalkTally:
    """A streamed walk over one agent's list, newest id first: its figures, never its items.

    It holds a few integers whatever the agent's size. Every page read goes through
    :meth:`take`, which counts it and returns the conversations on it not taken before:

    - Arrivals during the walk push items down, so a page may repeat the end of the one before.
      Ids only fall down the list, so a repeat is an id at or above the lowest this pass has met
      (the watermark): no set of seen ids is kept. An id above the watermark that was never
      taken can only be one that moved up past the pages being read (a skip), and only a total
      that shrank between two pages moves items up: such a walk is incomplete anyway.
    - When the total grew during the walk, the new conversations sit on pages already read,
      above every id taken. :meth:`reread` starts a second pass from page 1 that takes only ids
      above that ceiling, with a watermark of its own.

    ``complete`` (as :class:`~retention.models.Listing` has it) is judged from the figures
    alone: the walk reached the last page, the total never shrank between two pages, and it took
    at least as many distinct conversations as the last total.
    """

    agent_id: int
    pages: int = 0
    listed: int = 0  # distinct conversations taken
    total: int = 0  # the paginator's total on the last page read
    first_total: int | None = None
    shrank: bool = False
    reached_end: bool = True  # an incremental walk that stopped early says otherwise
    newest: int | None = None  # the highest id taken: the next incremental walk's cursor
    _ceiling: int | None = None  # during a re-read: ids at or below it were taken before
    _low: int | None = None  # the lowest id this pass has met: ids at or above it are repeats

    def take(self, page: ConversationPage) -> tuple[Conversation, ...]:
        """Count one page; return its conversations this walk has not taken yet."""
        self.pages += 1
        if self.first_total is None:
            self.first_total = page.total
        elif page.total < self.total:
            self.shrank = True
        self.total = page.total
        ceiling, low = self._ceiling, self._low
        above = [c for c in page.items if ceiling is None or c.id > ceiling]
        fresh = tuple(c for c in above if low is None or c.id < low)
        if above:
            lowest = min(c.id for c in above)
            self._low = lowest if low is None else min(low, lowest)
        if fresh:
            self.listed += len(fresh)
            top = max(c.id for c in fresh)
            self.newest = top if self.newest is None else max(self.newest, top)
        return fresh

    @property
    def grew(self) -> bool:
        """Whether the total on the last page read is above the first page's."""
        return self.first_total is not None and self.total > self.first_total

    def reread(self) -> int | None:
        """Begin the second pass; returns its ceiling (a page holding an id at or below it
        ends the pass), or None when nothing was taken and there is nothing to re-read for."""
        self._ceiling, self._low = self.newest, None
        return self._ceiling

    @property
    def complete(self) -> bool:
        return self.reached_end and not self.shrank and self.listed >= self.total
