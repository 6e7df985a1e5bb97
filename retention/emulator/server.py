"""The emulator's aiohttp.web application: routes, bearer auth, rate limit, faults, request log.

It serves the shapes in :mod:`retention.emulator.shapes` from an :class:`EmulatorState`: 404 on a
second delete, rename bumping ``updated_at``, ``per_page`` the client cannot choose. On top of
that it can misbehave on purpose (:class:`Fault`, :class:`RateLimit`, :class:`Arrival`,
``latency``) and it records every request it served (:class:`Served`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from retention.emulator import shapes
from retention.emulator.faults import Arrival, Fault, RateLimit
from retention.emulator.seed import EmuAgent, EmuConversation, EmulatorState

__all__ = ["DEFAULT_TOKEN", "Emulator", "Served", "serve_many"]

DEFAULT_TOKEN = "emulator-token"
API_PREFIX = "/api/v1"
MANY_PREFIX = "/t"  # serve_many: each emulator under /t/{name}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RATE_HEADERS = web.RequestKey("rate_headers", dict)


@dataclass
class Served:
    """One request the emulator received: logged on arrival, its status set when answered."""

    method: str
    path: str
    query: dict[str, str]
    status: int  # -1 while in flight; 0 when the connection was reset
    at: float  # time.monotonic() when the request arrived
    user_agent: str = ""  # who sent it (retention names its replica and lease there)


class Emulator:
    """The fake API. ``app`` is the aiohttp application; :meth:`serve` runs it on loopback."""

    def __init__(
        self,
        state: EmulatorState | None = None,
        *,
        token: str = DEFAULT_TOKEN,
        per_page: int = 20,
        latency: float = 0.0,
        time_format: str = "iso",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        keep_log: bool = True,
    ) -> None:
        self.state = state if state is not None else EmulatorState()
        self.token = token
        self.per_page = per_page
        self.latency = latency
        # Conversations' timestamps: "iso" (2023-06-25T17:23:34.000000Z) or "plain"
        # (2023-04-30 16:43:53); the real service has been seen sending both.
        self.time_format = time_format
        self.clock = clock
        self.faults: list[Fault] = []
        self.arrivals: list[Arrival] = []
        # Called with (agent, page) before a list page is served: tests delete or add here.
        self.before_list: list[Callable[[EmuAgent, int], None]] = []
        self.rate_limit: RateLimit | None = None
        self.served: list[Served] = []
        # Off for long benchmark runs: a walk of a million conversations is 10^4 requests or more.
        self.keep_log = keep_log
        self.app = self._build_app()

    # ---- inspection helpers for tests and benchmarks ----------------------------------------

    def calls(self, method: str | None = None, path: str = "*") -> list[Served]:
        """Requests served, filtered by method and a glob on the path."""
        return [
            s
            for s in self.served
            if (method is None or s.method == method) and fnmatch.fnmatchcase(s.path, path)
        ]

    def live_sessions(self, agent_id: int) -> set[str]:
        return set(self.state.agents[agent_id].conversations)

    # ---- serving -----------------------------------------------------------------------------

    @asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Listen on ``host:port`` (0 picks a free port) and yield the API base URL."""
        runner = web.AppRunner(self.app, shutdown_timeout=0.5, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        try:
            yield f"http://{host}:{bound}{API_PREFIX}/"
        finally:
            await runner.cleanup()

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        p = API_PREFIX + "/projects"
        app.router.add_get(p, self._list_agents)
        app.router.add_get(p + "/{agent}/settings", self._settings)
        app.router.add_get(p + "/{agent}/conversations", self._list_conversations)
        app.router.add_post(p + "/{agent}/conversations", self._create)
        app.router.add_put(p + "/{agent}/conversations/{session}", self._rename)
        app.router.add_delete(p + "/{agent}/conversations/{session}", self._delete)
        app.router.add_get(p + "/{agent}/conversations/{session}/messages", self._messages)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        record = Served(
            request.method,
            request.path,
            dict(request.query),
            -1,
            time.monotonic(),
            request.headers.get("User-Agent", ""),
        )
        if self.keep_log:
            self.served.append(record)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            response = await self._gate(request)
            fault = self._fault(request) if response is None else None
            if fault is not None and not fault.after:
                response = await self._spoil(request, fault)
            if response is None:
                try:
                    response = await handler(request)
                except web.HTTPNotFound:
                    response = _error(request, 404, "Not Found")
                except web.HTTPMethodNotAllowed:
                    response = _error(request, 405, "Method Not Allowed")
                except _Abort as abort:
                    response = abort.response
                if fault is not None and fault.after:  # the server acted; the answer goes wrong
                    response = await self._spoil(request, fault) or response
            record.status = response.status
            # The server's clock, on every answer as the real service sends it: tests shift it.
            response.headers["Date"] = format_datetime(self.clock().astimezone(UTC), usegmt=True)
            return response
        except BaseException:
            record.status = 0
            raise

    async def _gate(self, request: web.Request) -> web.StreamResponse | None:
        """Auth first, as the real service does, then the rate limit."""
        if request.headers.get("Authorization", "") != f"Bearer {self.token}":
            return _error(request, 401, "API Token is either missing or invalid")
        if self.rate_limit is None:
            return None
        allowed, remaining, reset_in = self.rate_limit.take(time.monotonic())
        headers = {
            "X-RateLimit-Limit": str(self.rate_limit.limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int(time.time() + reset_in)),
        }
        if allowed:
            request[RATE_HEADERS] = headers
            return None
        headers["Retry-After"] = str(max(1, math.ceil(reset_in)))
        response = _error(request, 429, "Too Many Requests")
        response.headers.update(headers)
        return response

    def _fault(self, request: web.Request) -> Fault | None:
        """The first fault matching this request, counted as used."""
        fault = next((f for f in self.faults if f.matches(request.method, request.path)), None)
        if fault is not None and fault.times > 0:
            fault.times -= 1
        return fault

    async def _spoil(self, request: web.Request, fault: Fault) -> web.StreamResponse | None:
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.reset_connection:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more to send: the peer sees a reset
        if fault.status_code is None:
            return None  # only a delay
        if fault.echo is not None:
            authorization = request.headers.get("Authorization", "")
            message = fault.echo.replace("{authorization}", authorization)
            return _error(request, fault.status_code, message)
        if fault.body is not None:
            return web.Response(
                status=fault.status_code, text=fault.body, content_type=fault.content_type
            )
        return _error(request, fault.status_code, shapes.REASONS.get(fault.status_code, "Error"))

    # ---- the API -----------------------------------------------------------------------------

    def _agent(self, request: web.Request) -> EmuAgent:
        try:
            agent = self.state.agents.get(int(request.match_info["agent"]))
        except ValueError:
            agent = None
        if agent is None:
            # The vendor renamed "Project" to "Agent" in messages; clients decide on status only.
            message = f"Agent with id {request.match_info['agent']} not found"
            raise _Abort(_error(request, 404, message))
        return agent

    async def _list_agents(self, request: web.Request) -> web.StreamResponse:
        agents = sorted(self.state.agents.values(), key=lambda a: a.id, reverse=True)
        items = [shapes.agent_json(a) for a in agents]
        return self._ok(request, _paginate(request, items, self.per_page))

    async def _settings(self, request: web.Request) -> web.StreamResponse:
        return self._ok(request, shapes.settings_json(self._agent(request)))

    async def _list_conversations(self, request: web.Request) -> web.StreamResponse:
        """A page of the list. Ordered by id and unfiltered (how discovery walks), it is a slice
        of the agent's id-ordered conversations: its cost is the page's, not the agent's. Other
        orders and filters sort and filter the whole list first, as before."""
        agent = self._agent(request)
        page = _int_param(request, "page", 1)
        self._arrive(agent, page)
        for hook in self.before_list:
            hook(agent, page)
        newest_first = request.query.get("order", "desc") != "asc"
        start, stop = (page - 1) * self.per_page, page * self.per_page
        query = request.query
        plain = query.get("userFilter", "all") == "all" and not query.get("name")
        if plain and query.get("orderBy", "id") == "id":
            total = len(agent.conversations)
            chunk = agent.conversations.by_id(start, stop, newest_first=newest_first)
        else:
            items = _filtered(agent, request)
            total, chunk = len(items), items[start:stop]
        data = shapes.page_of(
            [self._conv_json(c) for c in chunk],
            total=total,
            page=page,
            per_page=self.per_page,
            url=request.url,
        )
        return self._ok(request, data)

    def _arrive(self, agent: EmuAgent, page: int) -> None:
        for arrival in self.arrivals:
            if arrival.agent_id != agent.id or page < arrival.on_page or arrival.times == 0:
                continue
            arrival.times -= 1
            for _ in range(arrival.count):
                arrival._made += 1
                created = self.clock().timestamp() - arrival.age_s
                self.state.add_conversation(
                    agent.id,
                    arrival.name.replace("{n}", str(arrival._made)),
                    created_at=datetime.fromtimestamp(created, UTC),
                )

    async def _create(self, request: web.Request) -> web.StreamResponse:
        agent = self._agent(request)
        body = await _json_body(request)
        name = body.get("name") or "New conversation"
        if not isinstance(name, str):
            return _error(request, 400, "The name must be a string")
        conversation = self.state.add_conversation(
            agent.id, name, created_at=self.clock(), created_by=None
        )
        return self._ok(request, self._conv_json(conversation), status=201)

    async def _rename(self, request: web.Request) -> web.StreamResponse:
        conversation = self._conversation(request)
        body = await _json_body(request)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            return _error(request, 400, "The name field is required")
        conversation.name = name
        conversation.updated_at = self.clock()
        return self._ok(request, self._conv_json(conversation))

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        conversation = self._conversation(request)
        del self.state.agents[conversation.project_id].conversations[conversation.session_id]
        return self._ok(request, {"deleted": True})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        conversation = self._conversation(request)
        stamps = list(enumerate(sorted(conversation.messages), start=1))
        if request.query.get("order", "desc") != "asc":
            stamps.reverse()
        items = [shapes.message_json(conversation, n, at) for n, at in stamps]
        data = {
            "conversation": self._conv_json(conversation),
            "messages": _paginate(request, items, self.per_page),
        }
        return self._ok(request, data)

    def _conversation(self, request: web.Request) -> EmuConversation:
        agent = self._agent(request)
        conversation = agent.conversations.get(request.match_info["session"])
        if conversation is None:
            raise _Abort(_error(request, 404, "Conversation not found"))
        return conversation

    def _conv_json(self, c: EmuConversation) -> dict[str, Any]:
        return shapes.conversation_json(c, self.time_format)

    def _ok(self, request: web.Request, data: Any, *, status: int = 200) -> web.Response:
        response = web.json_response(shapes.envelope(data), status=status)
        response.headers.update(request.get(RATE_HEADERS, {}))
        return response


@asynccontextmanager
async def serve_many(
    emulators: Mapping[str, Emulator], host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[dict[str, str]]:
    """Serve several emulators, each an account of its own, on one port; yield each one's API
    base URL by name (``http://HOST:PORT/t/NAME/api/v1/``). Each application is mounted under
    ``/t/NAME`` (once only: aiohttp freezes it) and keeps its own token, state, faults, rate
    limit and request log (whose paths start with ``/t/NAME``). Names: letters, digits, _ . -
    """
    root = web.Application()
    for name, emulator in emulators.items():
        if not name or not all(c.isalnum() or c in "_.-" for c in name) or name in (".", ".."):
            raise ValueError(f"not a path segment for an emulator: {name!r}")
        root.add_subapp(f"{MANY_PREFIX}/{name}", emulator.app)
    runner = web.AppRunner(root, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield {
            name: f"http://{host}:{bound}{MANY_PREFIX}/{name}{API_PREFIX}/" for name in emulators
        }
    finally:
        await runner.cleanup()


class _Abort(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


def _error(request: web.Request, code: int, message: str) -> web.Response:
    body = shapes.error_body(str(request.url), code, message)
    return web.Response(status=code, text=json.dumps(body), content_type="application/json")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise _Abort(_error(request, 400, "The request body must be JSON")) from None
    if not isinstance(body, dict):
        raise _Abort(_error(request, 400, "The request body must be a JSON object"))
    return body


def _int_param(request: web.Request, name: str, default: int) -> int:
    try:
        return max(1, int(request.query.get(name, default)))
    except ValueError:
        raise _Abort(_error(request, 400, f"The {name} must be an integer")) from None


def _filtered(agent: EmuAgent, request: web.Request) -> list[EmuConversation]:
    """The agent's conversations the query's filters keep, in the query's order."""
    items = list(agent.conversations.values())
    user_filter = request.query.get("userFilter", "all")
    if user_filter == "anonymous":
        items = [c for c in items if c.created_by is None]
    elif user_filter == "team_member":
        items = [c for c in items if c.created_by is not None]
    if name := request.query.get("name"):
        items = [c for c in items if name.lower() in c.name.lower()]
    order_by = request.query.get("orderBy", "id")
    key: Callable[[EmuConversation], Any] = (
        (lambda c: (c.created_at, c.id)) if order_by == "created_at" else (lambda c: c.id)
    )
    items.sort(key=key, reverse=request.query.get("order", "desc") != "asc")
    return items


def _paginate(request: web.Request, items: list[Any], per_page: int) -> dict[str, Any]:
    page = _int_param(request, "page", 1)
    return shapes.paginator(items, page=page, per_page=per_page, url=request.url)
