"""The daemon's admin HTTP surface (aiohttp.web): health, metrics, tracking and the "why" view,
for every account the daemon serves.

    GET  /healthz                             the process is alive
    GET  /readyz                              store reachable and migrated, sweeps not failing
    GET  /metrics                             Prometheus text (every account's figures)
    GET  /v1/plan[?account=NAME]              the due set, from the store (no API call)
    GET  /report[?account=&since=&format=json] the report page of ``retention report --html``
    GET  /v1/reloads/last                     the last accepted reload and what it changed
    GET  /v1/conversations/{agent}/{session}  facts, decision, audit rows (the only account,
                                              or the ``default`` one)
    GET  /v1/accounts/{account}/conversations/{agent}/{session}   the same, in that account
    POST /v1/conversations                    create and track: {"agent_id", "name", "ttl"}
    POST /v1/tracked                          track: {"agent_id", "session_id", "ttl"}
    POST /v1/approve                          approve what is due now: {"agent_id"} or {}

Accounts: every answer about conversations names its ``"account"``. The POST bodies take an
optional ``"account"``: it may be left out only when the daemon serves one account (400 naming
the accounts otherwise, so a change never lands in an account by default); an unknown name is a
404 naming the known ones. ``/readyz`` lists ``"accounts"`` and reports every account's clock
and breaker, each line prefixed ``NAME: `` when there are several.

``/v1/plan`` keeps the shape of ``plan --json`` whatever the number of accounts, so a script
written for one account reads several unchanged: ``due`` holds every account's items (in the
config's order, each naming its ``account``), ``count`` their total, ``breaker`` and
``held_back`` every account's reasons (prefixed ``NAME: `` when there are several; ``held_back``
joined with ``"; "``, or null), ``api_calls`` the sum by kind, and ``dry_run`` is true only when
every account runs dry. ``accounts`` names the accounts shown, and ``reports`` gives each one's
own ``count``, ``dry_run``, ``breaker``, ``held_back`` and ``api_calls`` unprefixed, for a
script that acts per account. ``?account=NAME`` shows that account only.

Changing endpoints always need ``Authorization: Bearer <admin token>``; without an admin token
configured they are off. When one is configured, the /v1 read endpoints need it too. The server
refuses to listen beyond loopback without one. One middleware enforces this for every /v1 route;
the handlers find what they need under the application key :data:`CONTEXT`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from retention import render, tracking
from retention.admin import AdminContext, ApproveBody, Body, CreateBody, TrackBody, fail
from retention.config import check_admin_listen, is_agent_id, parse_listen, to_duration
from retention.engine import Engine
from retention.errors import ApiError, AuthError, ConfigError, LeaseLost, NotFoundError, StoreError
from retention.metrics import CONTENT_TYPE
from retention.models import DEFAULT_ACCOUNT, TrackedConversation
from retention.report import Source, build
from retention.reportpage import page
from retention.schema import REVISION
from retention.trace import trace
from retention.validation import first_error, problem_text

logger = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
B = TypeVar("B", bound="Body")
M = TypeVar("M", bound=BaseModel)


CONTEXT = web.AppKey("context", AdminContext)
WHY = "/conversations/{agent}/{session}"


def build_app(ctx: AdminContext) -> web.Application:
    app = web.Application(middlewares=[_errors, _admin_auth, _store_intact])
    app[CONTEXT] = ctx
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/v1/plan", _plan)
    app.router.add_get("/v1/reloads/last", _last_reload)
    app.router.add_get("/report", _report)
    app.router.add_get("/v1" + WHY, _why)
    app.router.add_get("/v1/accounts/{account}" + WHY, _why)
    app.router.add_post("/v1/conversations", _create)
    app.router.add_post("/v1/tracked", _track)
    app.router.add_post("/v1/approve", _approve)
    return app


@asynccontextmanager
async def serve(ctx: AdminContext, listen: str) -> AsyncIterator[str]:
    """Listen on ``host:port`` (port 0 picks one) and yield the base URL."""
    check_admin_listen(listen, ctx.admin_token)  # the rule `retention check` applies too
    host, port = parse_listen(listen)
    runner = web.AppRunner(build_app(ctx), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {listen}: {exc.strerror}", key="admin.listen"
        ) from None
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    logger.info("admin surface listening on http://%s:%d", shown, bound)
    try:
        yield f"http://{shown}:{bound}"
    finally:
        await runner.cleanup()


def _authorised(ctx: AdminContext, request: web.Request) -> bool:
    if ctx.admin_token is None:
        return False
    header = request.headers.get("Authorization", "")
    expected = f"Bearer {ctx.admin_token.get_secret_value()}"
    return hmac.compare_digest(header.encode(), expected.encode())


@web.middleware
async def _admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """/v1: changes need the admin token (and are off without one); reads (and /report) need
    it when set."""
    guarded = request.path.startswith("/v1/") or request.path == "/report"
    if not guarded or request.match_info.http_exception is not None:
        return await handler(request)  # not /v1, or no such route or method: 404 and 405 first
    ctx = request.app[CONTEXT]
    changing = request.method not in ("GET", "HEAD")
    if changing and ctx.admin_token is None:
        return fail(403, "changes over HTTP are off: set RETENTION_ADMIN_TOKEN to allow them")
    if (changing or ctx.admin_token is not None) and not _authorised(ctx, request):
        return fail(401, "missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return fail(exc.status, exc.reason)
    except StoreError as exc:
        logger.error("admin %s %s: %s", request.method, request.path, exc)
        return fail(503, "the store is not available")


@web.middleware
async def _store_intact(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Nothing is written into a store whose file was removed or replaced under the daemon: it
    would go into a file nobody reads again."""
    if request.method not in ("GET", "HEAD"):
        lost = await request.app[CONTEXT].store.journal.check_identity()
        if lost is not None:
            return fail(503, f"the store is lost, nothing written: {lost}")
    return await handler(request)


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    problems = []
    try:
        revision = await ctx.store.revision()
        if revision != REVISION:
            problems.append(f"store schema at {revision}, not {REVISION}")
    except StoreError:
        problems.append("the store is not reachable")
    try:
        if (lost := await ctx.store.journal.check_identity()) is not None:
            problems.append(f"the store is lost, deleting nothing: {lost}")
    except StoreError:
        pass  # said above
    health = ctx.health
    now = ctx.clock()
    for kind, since in sorted((health.failing_since if health else {}).items()):
        failing = now - since
        if failing > ctx.ready_after_failing:
            seconds = int(failing.total_seconds())
            problems.append(f"{kind} sweeps have been failing for {seconds}s")
    breaker: list[str] = []
    for name, engine in ctx.engines.items():
        at = engine.clock()
        if (skew := engine.context.clock_skew_problem(at)) is not None:
            problems.append(ctx.labelled(name, f"deleting nothing: {skew}"))
        # Not a readiness problem: the daemon works as designed; an operator must decide.
        reasons = (await engine.breaker_verdict(at)).reasons()
        breaker.extend(ctx.labelled(name, reason) for reason in reasons)
    body: dict[str, Any] = {
        "status": "ready" if not problems else "not ready",
        "problems": problems,
        "breaker": breaker,
        "accounts": ctx.accounts,
    }
    if health is not None:
        successes = health.last_success_at
        body["last_success_at"] = max(successes.values()).isoformat() if successes else None
        body["last_success_by_job"] = {k: v.isoformat() for k, v in sorted(successes.items())}
    return web.json_response(body, status=200 if not problems else 503)


async def _metrics(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    figures = {
        name: await ctx.store_of(engine).journal.status(
            engine.clock(), overdue_after=ctx.overdue_after
        )
        for name, engine in ctx.engines.items()
    }
    ctx.metrics.set_store_figures(figures)
    ctx.metrics.set_chain_heads(
        [await ctx.store_of(engine).journal.audit.head() for engine in ctx.engines.values()]
    )
    return web.Response(body=ctx.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def _plan(request: web.Request) -> web.StreamResponse:
    """Every account's plan, or ``?account=NAME``'s (the module's docstring: the shape)."""
    ctx = request.app[CONTEXT]
    asked = request.query.getall("account", [])
    if len(asked) > 1:
        return fail(400, "name one account, or none for all", field="account")
    if asked:
        chosen = ctx.choose(asked[0])
        if isinstance(chosen, web.Response):
            return chosen
        engines = [chosen]
    else:
        engines = list(ctx.engines.values())
    now = ctx.clock()
    plans = [await engine.plan(discover=False, confirm=False) for engine in engines]
    return web.json_response(render.plans_json(plans, now=now))


async def _last_reload(request: web.Request) -> web.StreamResponse:
    """The last accepted reload, when, why, and what it did per account (``retention diff``'s
    counts and examples): ``{"reload": null}`` before the first."""
    return web.json_response({"reload": request.app[CONTEXT].last_reload()})


async def _report(request: web.Request) -> web.StreamResponse:
    """The report page of ``retention report --html`` (``?format=json``: its document), for
    every account or ``?account=NAME``, over ``?since=`` (default 30d), overdue after
    ``?overdue_after=`` (default one deletion interval and an hour). No API call."""
    ctx = request.app[CONTEXT]
    engines: list[Engine] = list(ctx.engines.values())
    if "account" in request.query:
        chosen = ctx.choose(request.query["account"])
        if isinstance(chosen, web.Response):
            return chosen
        engines = [chosen]
    try:
        period = to_duration(request.query.get("since", "30d"))
        overdue = request.query.get("overdue_after")
        overdue_after = ctx.report_overdue_after if overdue is None else to_duration(overdue)
    except ValueError as exc:
        return fail(400, str(exc), field="since/overdue_after")
    sources = [  # the chains as the daemon last walked them: a request walks none
        Source(ctx.store_of(e), e.rules, e.options.breaker, ctx.chain_verdicts.get(e.account))
        for e in engines
    ]
    doc = await build(sources, now=ctx.clock(), period=period, overdue_after=overdue_after)
    if request.query.get("format") == "json":
        return web.json_response(doc)
    return web.Response(text=page(doc), content_type="text/html", charset="utf-8")


async def _why(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    if (account := request.match_info.get("account")) is not None:
        chosen = ctx.choose(account)
        if isinstance(chosen, web.Response):
            return chosen
        engine = chosen
    elif not ctx.several:
        engine = ctx.engine
    elif DEFAULT_ACCOUNT in ctx.engines:
        engine = ctx.engines[DEFAULT_ACCOUNT]
    else:
        return fail(
            400,
            f"several accounts and none is {DEFAULT_ACCOUNT!r}: use "
            f"/v1/accounts/{{account}}{WHY} (accounts: {ctx.names()})",
            field="account",
        )
    text = request.match_info["agent"]
    agent_id = int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None
    if not is_agent_id(agent_id):
        return fail(400, "agent must be a positive 64-bit integer", field="agent")
    session_id = request.match_info["session"]
    store = ctx.store_of(engine)
    record = await store.get(agent_id, session_id)
    if record is None:
        where = f" in account {engine.account!r}" if ctx.several else ""
        return fail(404, f"conversation {session_id} of agent {agent_id} is not tracked{where}")
    trail = await store.journal.audit_trail(agent_id, session_id)
    body = _named(engine, render.record_json(record, now=engine.clock()))
    body["audit"] = [render.audit_json(a) for a in trail]
    # Every hold, the own TTL and every policy as `retention explain` weighs them, on the facts
    # the store holds, under the rules in force now.
    body["trace"] = trace(record.facts(), engine.rules, engine.clock()).as_json(engine.clock())
    return web.json_response(body)


def _named(engine: Engine, body: dict[str, Any]) -> dict[str, Any]:
    """``body``, naming the account it is about first."""
    return {"account": engine.account, **body}


async def _create(request: web.Request) -> web.StreamResponse:
    async def act(engine: Engine, body: CreateBody) -> TrackedConversation:
        return await tracking.create(
            engine.context, agent_id=body.agent_id, name=body.name, ttl=body.ttl
        )

    return await _record_change(request, CreateBody, act)


async def _track(request: web.Request) -> web.StreamResponse:
    async def act(engine: Engine, body: TrackBody) -> TrackedConversation:
        return await tracking.track(
            engine.context,
            agent_id=body.agent_id,
            session_id=body.session_id,
            ttl=body.ttl,
        )

    return await _record_change(request, TrackBody, act)


async def _approve(request: web.Request) -> web.StreamResponse:
    """Approve exactly what is due now (of one agent, or all) in one account past the
    mass-deletion breaker."""
    ctx = request.app[CONTEXT]
    body = await _parse(request, ApproveBody)
    if isinstance(body, web.Response):
        return body
    engine = ctx.choose(body.account)
    if isinstance(engine, web.Response):
        return engine
    lease = engine.context.lease
    if lease is not None and not lease.valid():
        return _not_held(engine)  # a change in an account is its holder's to make
    approved = await ctx.store_of(engine).approve(engine.clock(), agent_id=body.agent_id)
    logger.warning(
        "approved %d due conversations in %s of account %s past the breaker (admin API)",
        approved,
        f"agent {body.agent_id}" if body.agent_id is not None else "every agent",
        engine.account,
    )
    return web.json_response(
        {"approved": approved, "agent_id": body.agent_id, "account": engine.account}
    )


async def _record_change(
    request: web.Request,
    model: type[B],
    act: Callable[[Engine, B], Awaitable[TrackedConversation]],
) -> web.StreamResponse:
    """Validate the body and choose the account (nothing is written when either is wrong),
    act through that account's engine, answer 201 with the record."""
    body = await _parse(request, model)
    if isinstance(body, web.Response):
        return body
    engine = request.app[CONTEXT].choose(body.account)
    if isinstance(engine, web.Response):
        return engine
    lease = engine.context.lease
    if lease is not None and not lease.valid():
        return _not_held(engine)
    try:
        record = await act(engine, body)
    except ApiError as exc:
        return _api_failure(exc, body.agent_id)
    except LeaseLost:
        return _not_held(engine)
    return web.json_response(
        _named(engine, render.record_json(record, now=engine.clock())), status=201
    )


def _not_held(engine: Engine) -> web.Response:
    """409: another replica holds the account now; it creates, tracks and approves there (no
    forwarding)."""
    return fail(
        409,
        f"this replica does not hold account {engine.account!r} now: another replica does; "
        "create, track and approve through that one's admin surface",
        field="account",
    )


async def _parse(request: web.Request, model: type[M]) -> M | web.Response:
    try:
        raw = await request.json()
    except ValueError:
        return fail(400, "the body must be JSON")
    if not isinstance(raw, dict):
        return fail(400, "the body must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = first_error(exc)
        field = ".".join(str(p) for p in error["loc"]) or None
        message = problem_text(
            error, unknown="unknown field", missing="Field required", echo_input=False
        )
        return fail(400, f"{field}: {message}" if field else message, field=field)


def _api_failure(exc: ApiError, agent_id: int) -> web.Response:
    if isinstance(exc, NotFoundError):
        return fail(404, f"not found on CustomGPT (agent {agent_id}): {exc.detail}")
    if isinstance(exc, AuthError):
        return fail(502, "CustomGPT refused the API token")
    return fail(503, f"CustomGPT did not answer: {exc.detail}")
