"""The API's JSON bodies, turned into the dataclasses of :mod:`retention.models`.

Every function takes a :class:`Response` (the success envelope's ``data`` and the server's
clock) and raises KeyError, TypeError or ValueError on anything malformed; the client turns
those into a retried TransientApiError.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from retention.models import Agent, AgentSettings, Conversation, ConversationPage
from retention.timefmt import parse_http_date, parse_timestamp

MAX_TEXT = 200  # the most of the server's own text an error carries


class Response:
    """A success envelope's ``data`` and the two clocks at the time of the response.

    ``server_time`` is the response's ``Date`` (None when it had none); ``local_time`` is our
    clock when it arrived. Both resolve the message lists' 12-hour times.
    """

    __slots__ = ("data", "local_time", "server_time")

    def __init__(self, data: Any, *, server_time: datetime | None, local_time: datetime) -> None:
        self.data = data
        self.server_time = server_time
        self.local_time = local_time

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def envelope_data(body: bytes) -> Any:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"not JSON ({len(body)} bytes)") from None
    if not isinstance(payload, dict) or payload.get("status") != "success" or "data" not in payload:
        raise ValueError("not a success envelope")
    return payload["data"]


def server_time(headers: Mapping[str, str]) -> datetime | None:
    """The server's clock from the ``Date`` header; None when absent or unreadable."""
    return parse_http_date(headers.get("Date"))


def error_text(body: bytes, *, scrub: Callable[[str], str]) -> str:
    """The message of the API's error envelope; we decide on status codes, never on this text.

    The server's text may echo a token: ``scrub`` masks it before the text is cut to length, so
    that a cut cannot leave half a token behind.
    """
    try:
        payload = json.loads(body)
        message = payload["data"]["message"]
        if isinstance(message, str) and message:
            return scrub(message)[:MAX_TEXT]
    except (ValueError, TypeError, KeyError):
        pass
    return "no error message (body is not the API's JSON error envelope)"


def describe_error(exc: Exception, *, scrub: Callable[[str], str]) -> str:
    """What was wrong with a malformed body; a parse error may quote the server's values."""
    if isinstance(exc, KeyError):
        return scrub(f"missing field {exc.args[0]!r}")[:MAX_TEXT]
    return scrub(str(exc) or type(exc).__name__)[:MAX_TEXT]


def paginator(response: Response) -> dict[str, Any]:
    data = response.data
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError("expected a paginator with a 'data' list")
    for key in ("current_page", "last_page", "per_page", "total"):
        int(data[key])
    return data


def conversation_page(agent_id: int, response: Response) -> ConversationPage:
    data = paginator(response)
    return ConversationPage(
        agent_id=agent_id,
        page=int(data["current_page"]),
        last_page=int(data["last_page"]),
        per_page=int(data["per_page"]),
        total=int(data["total"]),
        items=tuple(parse_conversation(item) for item in data["data"]),
    )


def conversation(response: Response) -> Conversation:
    return parse_conversation(response.data)


def parse_conversation(item: Any) -> Conversation:
    if not isinstance(item, dict):
        raise TypeError("a conversation must be an object")
    created_by = item.get("created_by")
    return Conversation(
        id=int(item["id"]),
        session_id=str(item["session_id"]),
        agent_id=int(item["project_id"]),  # an int in real responses, a string in the spec
        name=str(item.get("name") or ""),
        created_by=int(created_by) if created_by not in (None, "") else None,
        created_at=parse_timestamp(str(item["created_at"])),
        updated_at=parse_timestamp(str(item.get("updated_at") or item["created_at"])),
    )


def agent(item: Any) -> Agent:
    return Agent(id=int(item["id"]), name=str(item.get("project_name") or ""))


def deleted(response: Response) -> bool:
    data = response.data
    if not isinstance(data, dict) or data.get("deleted") is not True:
        raise ValueError("expected {'deleted': true}")
    return True


def newest_message(response: Response) -> datetime | None:
    messages = response["messages"]["data"]
    if not isinstance(messages, list):
        raise TypeError("messages.data must be a list")
    stamps = [
        parse_timestamp(
            str(m["created_at"]),
            server_time=response.server_time,
            local_time=response.local_time,
        )
        for m in messages
    ]
    return max(stamps, default=None)


def conversation_with_activity(response: Response) -> tuple[Conversation, datetime | None]:
    return parse_conversation(response["conversation"]), newest_message(response)


def agent_settings(agent_id: int, response: Response) -> AgentSettings:
    data = response.data
    if not isinstance(data, dict):
        raise TypeError("settings must be an object")
    period = data.get("conversation_retention_period")
    days = data.get("conversation_retention_days")
    return AgentSettings(
        agent_id=agent_id,
        retention_period=str(period) if period is not None else None,
        retention_days=int(days) if days not in (None, "") else None,
    )
