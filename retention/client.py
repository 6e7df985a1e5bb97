"""The CustomGPT API adapter: pagination, request budget, retries, and error translation.

Everything aiohttp raises becomes an :mod:`retention.errors` exception here, and every JSON body
becomes a dataclass from :mod:`retention.models` here: nothing downstream sees a dict. The
server's own text (error messages, values quoted by a parse error) is scrubbed of every secret
here, where it enters, before it can reach a log, the store, the admin surface or the CLI.

Cost in calls: listing an agent costs one call per page (``per_page`` is the server's choice),
the newest-message time one call per conversation, every other operation one call, plus any
retries. Every attempt, retried or not, is counted in :class:`~retention.budget.CallStats`.
A walk of an agent's list holds one page at a time (:meth:`CustomGPTClient.walk_conversations`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from retention import __version__, payloads
from retention.budget import CallStats, Lanes, RequestBudget, retry_after_seconds
from retention.clocks import Clock, ClockReading, utc_now
from retention.errors import (
    ApiError,
    AuthError,
    BadRequestError,
    NotFoundError,
    RateLimited,
    TransientApiError,
)
from retention.logs import Secrets
from retention.models import (
    Agent,
    AgentSettings,
    Conversation,
    ConversationPage,
    DeleteOutcome,
    Listing,
)
from retention.paging import WalkTally

logger = logging.getLogger(__name__)
T = TypeVar("T")
RATE_LIMIT_ATTEMPT_FACTOR = 4  # 429s may be retried this many times more often than failures
# What a walk hands each page to: the page's conversations not seen before in this walk.
PageSink = Callable[[tuple[Conversation, ...]], Awaitable[None]]


class CustomGPTClient:
    """One account's view of the API. The session and budget are injected by the caller."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        token: SecretStr,
        budget: RequestBudget,
        stats: CallStats | None = None,
        max_attempts: int = 5,
        max_concurrency: int = 4,
        request_timeout: timedelta = timedelta(seconds=30),
        connect_timeout: timedelta = timedelta(seconds=10),
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        clock: Clock = utc_now,
        secrets: Secrets | None = None,
    ) -> None:
        self._session = session
        self._base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._token = token
        # What the server's text must never carry on: our token, and whatever else the runtime
        # says is secret (the admin token, which this client never sends).
        self._secrets = secrets if secrets is not None else Secrets()
        self._secrets.add(token.get_secret_value())
        self.budget = budget
        self.stats = stats if stats is not None else CallStats()
        self._max_attempts = max_attempts
        # Slots in flight; an urgent call (a deletion) takes the next free one in turn with the
        # rest, so queued admin calls cannot hold deletions back (see RequestBudget.acquire).
        self._slots = Lanes(max_concurrency)
        self._clock = clock
        self._clock_reading: ClockReading | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout.total_seconds(), connect=connect_timeout.total_seconds()
        )
        # Who acts, checked and said just before each request goes out (the runtime sets it for
        # a writer): raises LeaseLost once the account's lease is not held here, so a replica
        # that lost it (paused, cut off, handing it over) sends nothing more; the text goes in
        # the User-Agent, so the server's logs show which replica, under which lease, sent it.
        self.identify: Callable[[], str] | None = None
        self.in_flight = 0  # requests sent and not yet answered
        # "Full jitter": a random wait up to initial * 2**n, capped; callers spread out.
        self._wait = wait_random_exponential(multiplier=backoff_initial, max=backoff_max)

    def __repr__(self) -> str:
        return f"CustomGPTClient(base_url={self._base_url!r})"

    @property
    def clock_reading(self) -> ClockReading | None:
        """Our clock and the server's ``Date`` on the latest response that had one, or None.

        Every response counts, errors and 429s too; the most recent one wins.
        """
        return self._clock_reading

    def idle(self) -> bool:
        """No request sent and still unanswered."""
        return self.in_flight == 0

    def latest_clock_reading(self) -> ClockReading | None:
        """:attr:`clock_reading`, as a callable (the metrics read it at scrape time)."""
        return self._clock_reading

    # ---- the calls -------------------------------------------------------------------------

    async def list_agents(self) -> list[Agent]:
        """Every agent of the account: one call per page."""
        agents: dict[int, Agent] = {}
        page = 1
        while True:
            paginator = await self._request(
                "list_agents", "GET", "projects", params={"page": page}, parse=payloads.paginator
            )
            for item in paginator["data"]:
                agent = payloads.agent(item)
                agents.setdefault(agent.id, agent)
            if not paginator["data"] or page >= int(paginator["last_page"]):
                return list(agents.values())
            page += 1

    async def iter_pages(self, agent_id: int) -> AsyncGenerator[ConversationPage, None]:
        """Pages of an agent's conversations, newest id first, until the last page.

        ``last_page`` is read again from every response, so arrivals that add a page extend the
        walk. The caller may stop early (incremental discovery does).
        """
        page = 1
        while True:
            current = await self._request(
                "list_conversations",
                "GET",
                f"projects/{agent_id}/conversations",
                params={"page": page, "order": "desc", "orderBy": "id"},
                parse=lambda data: payloads.conversation_page(agent_id, data),
            )
            yield current
            if not current.items or page >= current.last_page:
                return
            page += 1

    async def walk_conversations(
        self, agent_id: int, on_page: PageSink, *, newer_than: int | None = None
    ) -> WalkTally:
        """Walk an agent's conversations, newest first, handing each conversation to
        ``on_page`` once; returns the walk's figures. Holds one page at a time.

        ``on_page`` is awaited once per page read, with that page's conversations not seen
        before (maybe none), before the next page is asked for: what it does with a page (store
        it) is done before the walk goes on, and when it raises, the walk stops there.

        With ``newer_than`` (incremental discovery) the walk stops after the first page that
        holds an id at or below it: ids only fall from there on. Arrivals during the walk push
        items down a page; we see some twice and drop the copies (by a watermark on the ids,
        see :class:`WalkTally`). When the total grew while we walked, the new ones sit on pages
        already read, so we re-read from page 1 until we meet an id we had seen: a call or two,
        and only then.
        """
        tally = WalkTally(agent_id)
        async with aclosing(self.iter_pages(agent_id)) as pages:
            async for page in pages:
                await on_page(tally.take(page))
                if newer_than is not None and any(c.id <= newer_than for c in page.items):
                    tally.reached_end = page.page >= page.last_page
                    break
        ceiling = tally.reread() if tally.grew else None
        if ceiling is not None:
            async with aclosing(self.iter_pages(agent_id)) as pages:
                async for page in pages:
                    await on_page(tally.take(page))
                    if any(c.id <= ceiling for c in page.items):
                        break
        return tally

    async def list_conversations(self, agent_id: int, *, newer_than: int | None = None) -> Listing:
        """:meth:`walk_conversations`, kept whole: every conversation, newest first, in memory.

        For small agents, the CLI and tests; discovery streams instead.
        """
        found: list[Conversation] = []

        async def keep(page: tuple[Conversation, ...]) -> None:
            found.extend(page)

        tally = await self.walk_conversations(agent_id, keep, newer_than=newer_than)
        return Listing(
            agent_id=agent_id,
            conversations=tuple(sorted(found, key=lambda c: c.id, reverse=True)),
            pages=tally.pages,
            total=tally.total,
            complete=tally.complete,
        )

    async def create_conversation(self, agent_id: int, name: str) -> Conversation:
        return await self._request(
            "create",
            "POST",
            f"projects/{agent_id}/conversations",
            json_body={"name": name},
            parse=payloads.conversation,
        )

    async def rename_conversation(self, agent_id: int, session_id: str, name: str) -> Conversation:
        return await self._request(
            "rename",
            "PUT",
            f"projects/{agent_id}/conversations/{session_id}",
            json_body={"name": name},
            parse=payloads.conversation,
        )

    async def delete_conversation(
        self,
        agent_id: int,
        session_id: str,
        *,
        go_ahead: Callable[[], Awaitable[bool]] | None = None,
    ) -> DeleteOutcome:
        """DELETE one conversation. A 404 means it is gone, which is not an error.

        A 404 on the first attempt (or after attempts the server cannot have acted on, such as
        429s) means somebody else deleted it: ``ALREADY_GONE``. A 404 on a retry after an
        attempt that failed once the server may have acted (a 5xx, a reset, a timeout) confirms
        our own DELETE: ``DELETED_CONFIRMED_BY_404``.

        Always urgent: a due deletion keeps at least half the budget while it waits.
        ``go_ahead`` is asked right before each attempt goes out (after the wait for the budget,
        a 429 pause or a retry): when it says no, nothing is sent and the outcome is
        ``WITHDRAWN``. A deletion decided a while ago is decided once more at the last moment.
        """
        try:
            await self._request(
                "delete",
                "DELETE",
                f"projects/{agent_id}/conversations/{session_id}",
                parse=payloads.deleted,
                urgent=True,
                go_ahead=go_ahead,
            )
        except _Withdrawn:
            return DeleteOutcome.WITHDRAWN
        except NotFoundError as exc:
            if exc.after_failed_attempt:
                return DeleteOutcome.DELETED_CONFIRMED_BY_404
            return DeleteOutcome.ALREADY_GONE
        return DeleteOutcome.DELETED

    async def last_activity(
        self, agent_id: int, session_id: str, *, urgent: bool = False
    ) -> datetime | None:
        """The newest message's time, or None when the conversation has no messages. One call.

        ``urgent`` when a deletion waits on the answer: it then shares the deletions' priority.
        """
        return await self._request(
            "messages",
            "GET",
            f"projects/{agent_id}/conversations/{session_id}/messages",
            params={"page": 1, "order": "desc"},
            parse=payloads.newest_message,
            urgent=urgent,
        )

    async def conversation_info(
        self, agent_id: int, session_id: str, *, urgent: bool = False
    ) -> tuple[Conversation, datetime | None]:
        """One conversation's facts and its newest message's time: one messages call.

        The API has no call for a single conversation; the first messages page carries it.
        ``urgent`` when a deletion waits on the answer, as for :meth:`last_activity`.
        """
        return await self._request(
            "messages",
            "GET",
            f"projects/{agent_id}/conversations/{session_id}/messages",
            params={"page": 1, "order": "desc"},
            parse=payloads.conversation_with_activity,
            urgent=urgent,
        )

    async def agent_settings(self, agent_id: int) -> AgentSettings:
        return await self._request(
            "settings",
            "GET",
            f"projects/{agent_id}/settings",
            parse=lambda data: payloads.agent_settings(agent_id, data),
        )

    # ---- the machinery ---------------------------------------------------------------------

    async def _request(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        parse: Callable[[payloads.Response], T],
        params: Mapping[str, str | int] | None = None,
        json_body: Mapping[str, Any] | None = None,
        urgent: bool = False,
        go_ahead: Callable[[], Awaitable[bool]] | None = None,
    ) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientApiError),
            stop=self._stop,
            wait=self._wait_for,
            reraise=True,
        )
        acted = False  # whether an attempt failed after the server may have acted on it
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        return await self._attempt(
                            kind,
                            method,
                            path,
                            parse,
                            params,
                            json_body,
                            urgent=urgent,
                            go_ahead=go_ahead,
                        )
                    except TransientApiError as exc:
                        acted = acted or exc.may_have_acted
                        raise
                    except NotFoundError as exc:
                        exc.after_failed_attempt = exc.after_failed_attempt or acted
                        raise
        except TransientApiError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise type(exc)(
                f"gave up after {attempts} attempts: {exc.detail}",
                kind=kind,
                method=method,
                path="/" + path,
                status=exc.status,
                may_have_acted=acted,
                **({"retry_after": exc.retry_after} if isinstance(exc, RateLimited) else {}),
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _stop(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        limit = self._max_attempts
        if isinstance(error, RateLimited):
            limit *= RATE_LIMIT_ATTEMPT_FACTOR
        return state.attempt_number >= limit

    def _wait_for(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited):
            return 0.0  # the budget itself is paused; acquire() does the waiting
        return float(self._wait(state))

    async def _attempt(
        self,
        kind: str,
        method: str,
        path: str,
        parse: Callable[[payloads.Response], T],
        params: Mapping[str, str | int] | None,
        json_body: Mapping[str, Any] | None,
        *,
        urgent: bool,
        go_ahead: Callable[[], Awaitable[bool]] | None = None,
    ) -> T:
        where: dict[str, Any] = {"kind": kind, "method": method, "path": "/" + path}
        dropped = _DropWatch()
        async with self._slots.hold(urgent=urgent):
            # Take the budget only once a slot is ours, so a 429 that arrived while we queued
            # for the slot still holds us back.
            await self.budget.acquire(urgent=urgent)
            if go_ahead is not None and not await go_ahead():
                raise _Withdrawn
            sent = self._headers()
            if self.identify is not None:
                sent["User-Agent"] += f" ({self.identify()})"
            self.in_flight += 1
            try:
                async with self._session.request(
                    method,
                    self._base_url + path,
                    params=params,
                    json=json_body,
                    headers=sent,
                    timeout=self._timeout,
                    middlewares=(dropped,),
                ) as response:
                    body = await response.read()
                    status, headers = response.status, response.headers
                    received, received_mono = self._clock(), time.monotonic()
            except TimeoutError as exc:
                self.stats.record(kind, "timeout")
                # A connect timeout never reached the server; any later one may have.
                connecting = isinstance(exc, aiohttp.ConnectionTimeoutError)
                raise TransientApiError(
                    f"no answer from {self._shown(path, params)} within {self._timeout.total:g}s",
                    may_have_acted=not connecting,
                    **where,
                ) from None
            except aiohttp.ClientError as exc:
                self.stats.record(kind, "connection")
                # No connection at all: the request was never sent.
                connecting = isinstance(exc, aiohttp.ClientConnectorError)
                shown, problem = self._shown(path, params), _connection_problem(exc)
                raise TransientApiError(
                    f"connection failed to {shown} ({problem})",
                    may_have_acted=not connecting,
                    **where,
                ) from None
            finally:
                self.in_flight -= 1
        server_time = payloads.server_time(headers)
        if server_time is not None:
            self._clock_reading = ClockReading(
                local=received, server=server_time, monotonic=received_mono
            )
        self.budget.observe(headers, ok=status < 400)
        if status >= 400:
            self.stats.record(kind, str(status))
        scrub = self._secrets.scrub
        if status == 429:
            retry_after = retry_after_seconds(headers)
            paused = self.budget.pause(retry_after)
            logger.warning(
                "rate limited on %s %s: pausing all calls for %.1fs", method, path, paused
            )
            raise RateLimited(
                payloads.error_text(body, scrub=scrub),
                retry_after=retry_after,
                status=status,
                **where,
            )
        if status >= 500:
            raise TransientApiError(payloads.error_text(body, scrub=scrub), status=status, **where)
        if status in (401, 403):
            raise AuthError(payloads.error_text(body, scrub=scrub), status=status, **where)
        if status == 404:
            missing = NotFoundError(payloads.error_text(body, scrub=scrub), status=status, **where)
            # aiohttp resent the request itself after the connection dropped under the first
            # send, which the server may have acted on: the 404 may answer our own request.
            missing.after_failed_attempt = dropped.after_sending
            raise missing
        if status >= 400:
            raise BadRequestError(payloads.error_text(body, scrub=scrub), status=status, **where)
        try:
            result = parse(
                payloads.Response(
                    payloads.envelope_data(body), server_time=server_time, local_time=received
                )
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            self.stats.record(kind, "malformed")
            raise TransientApiError(
                f"malformed response body: {payloads.describe_error(exc, scrub=scrub)}",
                status=status,
                **where,
            ) from None
        self.stats.record(kind, str(status))
        return result

    def _shown(self, path: str, params: Mapping[str, str | int] | None) -> str:
        """The full URL a request went to, as an error may show it: without credentials (the
        config refuses them in ``base_url``; a client built otherwise might have some), with its
        query (page numbers, orders, filters: never a token, and scrubbed all the same)."""
        parts = urlsplit(self._base_url + path)
        host = parts.netloc.rpartition("@")[2]
        query = urlencode({key: str(value) for key, value in (params or {}).items()})
        return self._secrets.scrub(urlunsplit((parts.scheme, host, parts.path, query, "")))

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token.get_secret_value()}",
            "Accept": "application/json",
            "User-Agent": f"retention/{__version__}",
        }


def _connection_problem(exc: aiohttp.ClientError) -> str:
    """What went wrong with the connection, in words (the OS's, when it gave some)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        return f"cannot connect: {os.strerror(error.errno) if error.errno else error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection before answering"
    if isinstance(exc, aiohttp.ClientOSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__  # aiohttp's name says what (e.g. ClientPayloadError)


class _DropWatch:
    """An aiohttp client middleware that notes a connection dropped after the request was sent.

    aiohttp resends an idempotent request (a DELETE too) once when the connection drops
    (RFC 9112 section 9.3.1), inside one ``session.request``: without this, a DELETE that the
    server carried out before the drop would come back as a bare 404 on what looks like the
    first attempt.
    """

    __slots__ = ("after_sending",)

    def __init__(self) -> None:
        self.after_sending = False

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        try:
            return await handler(request)
        except aiohttp.ClientConnectorError:
            raise  # never connected: nothing was sent, and aiohttp does not resend it
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            self.after_sending = True
            raise


__all__ = ["ApiError", "CustomGPTClient"]


class _Withdrawn(Exception):
    """The caller's go-ahead said no at the last moment: nothing was sent."""
