"""The audit trail's hash chain: a canonical encoding of a row, its hash, and the walk that
checks a chain row by row. Pure: no I/O, no database.

Each account's audit rows form one chain. Row ``seq`` (1, 2, 3, ...) stores ``prev``, the hash
of row ``seq - 1`` (64 zeros for row 1), and ``hash``: the SHA-256, in lowercase hex, of the
UTF-8 bytes of :func:`canonical`, a JSON object of the row's fields with sorted keys and no
spaces. Editing a row changes its hash; deleting one leaves a gap in ``seq``; inserting one
breaks the next row's ``prev``; the store's recorded head (``audit_heads``) shows rows cut off
the end. README.md ("Evidence for auditors") gives the same algorithm as a script.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64  # the ``prev`` of each chain's first row

# The fields a row's hash covers, as exported (``age_ms``: the age in whole milliseconds).
FIELDS = (
    "account",
    "seq",
    "prev",
    "at",
    "agent_id",
    "session_id",
    "name",
    "rule",
    "age_ms",
    "outcome",
    "detail",
    "sweep_id",
)


@dataclass(frozen=True, slots=True)
class Link:
    """One audit row as the chain sees it: the hashed fields, the stored hash, the row id."""

    fields: dict[str, Any]
    hash: str
    row_id: int | None = None

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])

    @property
    def prev(self) -> str:
        return str(self.fields["prev"])


@dataclass(frozen=True, slots=True)
class Head:
    """A chain's latest row: its sequence number and hash (0 and GENESIS while empty)."""

    account: str
    seq: int
    hash: str

    def pin(self) -> str:
        return f"{self.seq}:{self.hash}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The walk's result for one account: how many rows held, and the first problem if any."""

    account: str
    checked: int
    head: Head
    problem: str | None = None  # names the first bad row: edited, deleted or inserted
    seq: int | None = None  # the sequence number the problem is at

    @property
    def ok(self) -> bool:
        return self.problem is None


def stamp(at: datetime) -> str:
    """A time as the chain encodes it: UTC, microseconds, ``Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def age_ms(age_seconds: float) -> int:
    return round(age_seconds * 1000)


def canonical(fields: dict[str, Any]) -> bytes:
    """The bytes a row's hash is taken over: exactly :data:`FIELDS`, as sorted compact JSON."""
    chosen = {name: fields[name] for name in FIELDS}
    return json.dumps(chosen, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


def link_fields(
    *,
    account: str,
    seq: int,
    prev: str,
    at: datetime,
    agent_id: int,
    session_id: str,
    name: str,
    rule: str | None,
    age_seconds: float,
    outcome: str,
    detail: str | None,
    sweep_id: int | None,
) -> dict[str, Any]:
    """A row's hashed fields in their canonical types."""
    return {
        "account": account,
        "seq": seq,
        "prev": prev,
        "at": stamp(at),
        "agent_id": agent_id,
        "session_id": session_id,
        "name": name,
        "rule": rule,
        "age_ms": age_ms(age_seconds),
        "outcome": outcome,
        "detail": detail,
        "sweep_id": sweep_id,
    }


def row_fields(row: Mapping[Any, Any], *, seq: int, prev: str) -> dict[str, Any]:
    """The hashed fields of an audit row as stored (its columns by name: ``age_seconds``, ...)."""
    return link_fields(
        account=row["account"],
        seq=seq,
        prev=prev,
        at=row["at"],
        agent_id=row["agent_id"],
        session_id=row["session_id"],
        name=row["name"],
        rule=row["rule"],
        age_seconds=row["age_seconds"],
        outcome=row["outcome"],
        detail=row["detail"],
        sweep_id=row["sweep_id"],
    )


class Walker:
    """Checks one account's chain row by row, in ``seq`` order, holding only the last row.

    ``recorded`` is the head the store keeps beside the rows, read before them: the rows fed
    are those up to it. ``pin`` is a head the operator kept elsewhere. :meth:`step` returns a
    failing :class:`Verdict` at the first row that does not hold; :meth:`end` the result.
    """

    def __init__(self, account: str, *, recorded: Head, pin: Head | None = None) -> None:
        self.account, self.recorded, self.pin = account, recorded, pin
        self.expected_seq, self.expected_prev, self.checked = 1, GENESIS, 0
        self.last = Head(account, 0, GENESIS)

    def _fail(self, problem: str, seq: int) -> Verdict:
        return Verdict(self.account, self.checked, self.last, problem, seq)

    def step(self, link: Link) -> Verdict | None:
        where = _where(link)
        if link.seq < self.expected_seq:
            return self._fail(
                f"{where} repeats sequence number {link.seq}: a row was inserted", link.seq
            )
        if link.seq > self.expected_seq:
            first = self.expected_seq
            missing = f"#{first}" if link.seq == first + 1 else f"#{first} to #{link.seq - 1}"
            return self._fail(
                f"audit row {missing} is missing: the chain goes from #{first - 1} to "
                f"#{link.seq} (a row was deleted)",
                first,
            )
        if digest(link.fields) != link.hash:
            return self._fail(f"{where} was edited: its fields no longer give its hash", link.seq)
        if link.prev != self.expected_prev:
            return self._fail(
                f"{where} does not follow row #{link.seq - 1}: its previous hash differs "
                "(a row was inserted or replaced before it)",
                link.seq,
            )
        if link.seq > self.recorded.seq:
            return self._fail(_past_head(where, self.recorded), link.seq)
        if self.pin is not None and link.seq == self.pin.seq and link.hash != self.pin.hash:
            return self._fail(f"{where} does not have the pinned hash {self.pin.hash}", link.seq)
        self.checked += 1
        self.last = Head(self.account, link.seq, link.hash)
        self.expected_seq, self.expected_prev = link.seq + 1, link.hash
        return None

    def end(self, beyond: Link | None = None) -> Verdict:
        """The verdict once every row up to the recorded head was fed. ``beyond`` is the first
        row past the head the store records once the walk is done (rows appended meanwhile lie
        under it): only an insert puts one there."""
        recorded, last = self.recorded, self.last
        if (recorded.seq, recorded.hash) != (last.seq, last.hash):
            if recorded.seq > last.seq:
                return self._fail(
                    f"audit row #{last.seq + 1} is missing: the chain ends at #{last.seq} but "
                    f"the store recorded #{recorded.seq} as its head (rows were deleted from "
                    "the end)",
                    last.seq + 1,
                )
            return self._fail(
                f"audit row #{last.seq} does not match the head the store recorded "
                f"(#{recorded.seq} {recorded.hash[:12]}...): edited",
                last.seq,
            )
        if beyond is not None:
            return self._fail(_past_head(_where(beyond), recorded), beyond.seq)
        if self.pin is not None and self.pin.seq > last.seq:
            return self._fail(
                f"audit row #{self.pin.seq} is missing: the chain ends at #{last.seq} but it was "
                "pinned (rows were deleted from the end)",
                self.pin.seq,
            )
        return Verdict(self.account, self.checked, last)


def walk(
    account: str,
    links: Iterable[Link],
    *,
    recorded: Head,
    beyond: Link | None = None,
    pin: Head | None = None,
) -> Verdict:
    """:class:`Walker` over rows at hand."""
    walker = Walker(account, recorded=recorded, pin=pin)
    for link in links:
        if (failed := walker.step(link)) is not None:
            return failed
    return walker.end(beyond)


def _where(link: Link) -> str:
    return f"audit row #{link.seq}" + (f" (id {link.row_id})" if link.row_id else "")


def _past_head(where: str, recorded: Head) -> str:
    if recorded.seq == 0:
        return f"{where} is in a chain the store recorded no head for: a row was inserted"
    return f"{where} lies past the head the store recorded (#{recorded.seq}): a row was inserted"


def parse_pin(account: str, text: str) -> Head:
    """``SEQ:HASH`` as ``audit head`` prints it. Raises ValueError saying what is expected."""
    seq, _, value = text.strip().partition(":")
    value = value.strip().lower()
    if not (seq.isdigit() and int(seq) > 0 and len(value) == 64) or any(
        c not in "0123456789abcdef" for c in value
    ):
        raise ValueError(f"invalid pin {text!r}: use SEQ:HASH as `retention audit head` prints it")
    return Head(account, int(seq), value)
