"""The JSON the emulator serves: envelope, paginator, error body, records and timestamp formats.

Plain functions from state to dicts (no aiohttp.web): the server wraps them in responses. They
follow DESIGN.md section 1, including the three timestamp formats the real service mixes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from retention.emulator.seed import EmuAgent, EmuConversation

if TYPE_CHECKING:
    from yarl import URL  # aiohttp's request.url

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def envelope(data: Any) -> dict[str, Any]:
    """A success body: ``{"status": "success", "data": ...}``."""
    return {"status": "success", "data": data}


def error_body(url: str, code: int, message: str) -> dict[str, Any]:
    """An error body, as the real service sends it: the request URL, the code and a message."""
    return {"status": "error", "url": url, "data": {"code": code, "message": message}}


def paginator(items: list[Any], *, page: int, per_page: int, url: URL) -> dict[str, Any]:
    """A Laravel paginator over ``items``; its links keep ``url``'s query, with ``page`` set."""
    chunk = items[(page - 1) * per_page : page * per_page]
    return page_of(chunk, total=len(items), page=page, per_page=per_page, url=url)


def page_of(chunk: list[Any], *, total: int, page: int, per_page: int, url: URL) -> dict[str, Any]:
    """The paginator of one page, ``chunk``, out of ``total`` items: the server cuts the page
    from its list and serialises that page alone."""
    last_page = max(1, math.ceil(total / per_page))
    base = url.with_query(None)

    def link(n: int) -> str:
        return str(base.update_query({**url.query, "page": str(n)}))

    first = (page - 1) * per_page + 1
    return {
        "current_page": page,
        "data": chunk,
        "first_page_url": link(1),
        "from": first if chunk else None,
        "last_page": last_page,
        "last_page_url": link(last_page),
        "next_page_url": link(page + 1) if page < last_page else None,
        "path": str(base),
        "per_page": per_page,
        "prev_page_url": link(page - 1) if page > 1 else None,
        "to": first + len(chunk) - 1 if chunk else None,
        "total": total,
    }


def iso_z(moment: datetime) -> str:
    """``2023-06-25T17:23:34.000000Z``: conversations' timestamps (whole seconds, as served)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def plain(moment: datetime) -> str:
    """``2023-04-30 16:43:53``: agents' timestamps (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def twelve_hour(moment: datetime) -> str:
    """``25 Jun 2023 05:01:11``: message lists' timestamps, 12-hour clock without AM/PM."""
    return moment.astimezone(UTC).strftime("%d %b %Y %I:%M:%S")


def agent_json(a: EmuAgent) -> dict[str, Any]:
    return {
        "id": a.id,
        "project_name": a.name,
        "is_chat_active": True,
        "type": "SITEMAP",
        "created_at": plain(a.created_at),
        "updated_at": plain(a.created_at),
        "deleted_at": None,
    }


def settings_json(a: EmuAgent) -> dict[str, Any]:
    return {
        "chatbot_avatar": None,
        "default_prompt": "Ask me anything",
        "response_source": "own_content",
        "conversation_retention_period": a.retention_period,
        "conversation_retention_days": a.retention_days,
    }


def conversation_json(c: EmuConversation, time_format: str) -> dict[str, Any]:
    """``time_format`` "plain" stamps it like an agent; anything else, ISO with a Z."""
    stamp = plain if time_format == "plain" else iso_z
    return {
        "id": c.id,
        "name": c.name,
        "project_id": c.project_id,
        "created_by": c.created_by,
        "session_id": c.session_id,
        "created_at": stamp(c.created_at),
        "updated_at": stamp(c.updated_at),
        "deleted_at": None,
    }


def message_json(c: EmuConversation, n: int, at: datetime) -> dict[str, Any]:
    # No content worth keeping: the daemon reads only the time. Ids are unique per conversation.
    return {
        "id": c.id * 1000 + n,
        "user_id": c.created_by,
        "user_query": f"question {n}",
        "openai_response": f"answer {n}",
        "created_at": twelve_hour(at),
        "updated_at": twelve_hour(at),
        "conversation_id": c.id,
        "citations": [],
    }
