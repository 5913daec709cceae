"""The gateway's HTTP side (aiohttp): authenticate, route by ``model``, pass the answer through.

Errors are OpenAI's shape, with the app servers' own messages where they mean the same thing. The
replica checks the key again and answers everything else (parameters, limits, plugins); the gateway
forwards the body as it came.
"""

import asyncio
import contextlib
import json
import logging
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ..runtime import openai_api
from ..runtime.errors import APIError, incorrect_key, key_store_unreachable, missing_key, model_not_found
from ..runtime.keys import bearer_token
from ..runtime.serving import model_object, sse
from .counts import ReleaseCounts
from .table import RUNNING, Replica, Route, RoutingTable
from .watch import HealthChecks, KeyRoutes, KeyUnknown, RouteWatcher, check_health

log = logging.getLogger("llmapp.gateway")

CONNECT_TIMEOUT_S = 5.0
# Below the app servers' keep-alive (5 s): the gateway drops an idle connection before a server does,
# so a request never goes out on a connection the server is closing.
KEEPALIVE_S = 4.0
# The paths the gateway serves: only the OpenAI endpoints, forwarded by these exact names.
FORWARDED = ("/v1/chat/completions", "/v1/completions")
RELEASE_HEADER = "X-Llmapp-Release"
# Per hop, never passed on (RFC 9110 §7.6.1); the lengths are the gateway's own to set; the body is
# read already (no Expect); the platform's cookies are not the replica's business.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Expect", "Cookie",
    )
)  # fmt: skip
UNAVAILABLE = {
    "stopped": "The application “{}” is stopped: deploy it to call it.",
    "deploying": "The application “{}” is deploying; retry shortly.",
    "stopping": "The application “{}” is stopping.",
    "failed": "The application “{}” failed: its page says why.",
}
# A replica that could not be reached at all: the request goes to another one. (A connection lost after
# the request was sent is not retried: the replica may have started on it.)
NOT_REACHED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)

TABLE = web.AppKey("table", RoutingTable)
KEYS = web.AppKey("keys", KeyRoutes)
SESSION = web.AppKey("session", aiohttp.ClientSession)
WATCHER = web.AppKey("watcher", RouteWatcher)
MAX_BODY = web.AppKey("max_body", int)
COUNTS = web.AppKey("counts", ReleaseCounts)
CLIENT_LEFT, BROKE_OFF = 499, 502  # how an answer passed through ended, for the per-release counts
LOAD_WAIT_S = 5.0  # a request in the first moments waits this long for the table


def error_response(error: APIError) -> web.Response:
    return web.json_response(error.body(), status=error.status, headers=error.headers)


def unavailable(message: str) -> APIError:
    return APIError(503, message, "server_error", code="application_unavailable", headers={"Retry-After": "5"})


async def route_of_key(request: web.Request) -> Route | None:
    """The route the request's key reaches (None: the key's application is gone).

    :raise APIError: no key (401), a key of no application (401), Redis unreachable (503).
    """
    if len(request.headers.getall("Authorization", [])) > 1:
        raise APIError(400, "Send one Authorization header.", code="invalid_api_key")
    key = bearer_token(request.headers.get("Authorization"))
    if not key:
        raise missing_key()
    if not request.app[WATCHER].loaded.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(request.app[WATCHER].loaded.wait(), LOAD_WAIT_S)
        if not request.app[WATCHER].loaded.is_set():
            raise unavailable("The gateway has not read its routes yet; retry shortly.")
    try:
        application_id = await request.app[KEYS].application_of(key)
    except KeyUnknown as e:
        raise key_store_unreachable() from e
    if application_id is None:
        raise incorrect_key()
    return request.app[TABLE].routes.get(application_id)


def requested_model(body: bytes) -> str:
    """The body's ``model``, in the app servers' words when it has none. :raise APIError: 400."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(400, "The request body is not valid JSON.") from e
    return openai_api.requested_model(data)


def reachable(route: Route | None, model: str) -> Route:
    """The route, when ``model`` names it and it is running. :raise APIError: 404, 503."""
    if route is None or model != route.name:
        raise model_not_found(model)  # another member's application looks like a missing one
    if route.status != RUNNING:
        raise unavailable(UNAVAILABLE.get(route.status, "The application “{}” is not running.").format(route.name))
    return route


async def forward(request: web.Request) -> web.StreamResponse:
    """An OpenAI endpoint: the key first (from the headers, before any body is read), then the body's
    model, then the replica."""
    if request.path not in FORWARDED:
        return await unknown_path(request)
    limit = request.app[MAX_BODY]
    try:
        route = await route_of_key(request)
        if (request.content_length or 0) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        body = await request.read()
        route = reachable(route, requested_model(body))
    except web.HTTPRequestEntityTooLarge:
        return error_response(APIError(413, f"The request body is larger than {limit} bytes."))
    except APIError as e:
        return error_response(e)
    return await proxy(request, route, body)


async def proxy(request: web.Request, route: Route, body: bytes) -> web.StreamResponse:
    """Send the request to the least busy replica (another one when it can't be reached before its
    first byte) and pass its answer through."""
    session = request.app[SESSION]
    named = {h.strip().lower() for h in request.headers.get("Connection", "").split(",")}  # more per-hop ones
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | named)
    tried: list[Replica] = []
    while True:
        replica = await _next_replica(request.app, route, tried)
        if replica is None:
            why = "No replica of the application “{}” is answering; retry shortly." if tried else None
            return error_response(unavailable((why or "The application “{}” has no replica ready.").format(route.name)))
        tried.append(replica)
        replica.in_flight += 1
        started = time.monotonic()
        try:
            upstream = await session.post(replica.url + request.path, data=body, headers=headers)
        except NOT_REACHED as e:
            replica.in_flight -= 1
            replica.healthy = False  # the health checks say when it answers again
            log.warning("replica %s of application %s can't be reached (%s): trying another", replica.id, route.id, e)
            continue
        except aiohttp.ClientError as e:  # sent, then lost before an answer: not safe to send again
            replica.in_flight -= 1
            log.warning("replica %s of application %s broke off before answering: %s", replica.id, route.id, e)
            request.app[COUNTS].add(route.id, replica.release, 502, time.monotonic() - started)
            return error_response(APIError(502, "The application's server broke off before answering.", "server_error"))
        except BaseException:
            replica.in_flight -= 1
            raise
        try:
            response, outcome = await _pass_through(request, route, replica, upstream)
            request.app[COUNTS].add(route.id, replica.release, outcome, time.monotonic() - started)
            return response
        finally:
            upstream.close()  # unless released whole: a client that left stops its generation there
            replica.in_flight -= 1


async def _next_replica(app: web.Application, route: Route, tried: list[Replica]) -> Replica | None:
    for replica in app[TABLE].candidates(route, tried):
        if replica.healthy is None and not await check_health(app[SESSION], replica):
            tried.append(replica)  # never known healthy: it gets nothing before it is
            continue
        return replica
    return None


async def _pass_through(
    request: web.Request, route: Route, replica: Replica, upstream: aiohttp.ClientResponse
) -> tuple[web.StreamResponse, int]:
    """The answer passed through, and how it ended for the counts: the replica's status; 499 when the
    client left; 502 when the replica broke off mid-way."""
    response = web.StreamResponse(
        status=upstream.status,
        reason=upstream.reason,
        headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
    )
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    if replica.release is not None:  # the release that answered (two serve during a roll-out)
        response.headers[RELEASE_HEADER] = str(replica.release)
    # A write that fails means the client left: the caller's close of the replica's connection then
    # stops its generation. A read that fails means the replica broke off.
    try:
        await response.prepare(request)
    except ConnectionResetError:
        return response, CLIENT_LEFT
    try:
        async for chunk in upstream.content.iter_any():
            try:
                await response.write(chunk)
            except ConnectionResetError:
                return response, CLIENT_LEFT
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("a replica of application %s broke off an answer: %s", route.id, e)
        if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
            lost = APIError(502, "The replica serving this stream stopped answering.", "server_error")
            with contextlib.suppress(ConnectionError):
                await response.write(b"\n\n" + sse(lost.body()))  # ends an event it broke off in
        else:
            if request.transport is not None:
                request.transport.close()  # a body cut short must not look whole
            return response, BROKE_OFF
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response, BROKE_OFF
    upstream.release()  # read to the end: its connection goes back to the pool
    await response.write_eof()
    return response, upstream.status


async def models(request: web.Request) -> web.Response:
    """What the key may call: its application (the one it was made for)."""
    try:
        route = await route_of_key(request)
    except APIError as e:
        return error_response(e)
    return web.json_response({"object": "list", "data": [model_object(route.name, 0)] if route else []})


async def one_model(request: web.Request) -> web.Response:
    try:
        route = await route_of_key(request)
        if route is None or request.match_info["model"] != route.name:
            raise model_not_found(request.match_info["model"])
    except APIError as e:
        return error_response(e)
    return web.json_response(model_object(route.name, 0))


async def unknown_path(request: web.Request) -> web.Response:
    return error_response(APIError(404, f"Unknown request URL: {request.method} {request.rel_url.path}."))


async def health(request: web.Request) -> web.Response:
    table = request.app[TABLE]
    return web.json_response({"status": "ok", "routes": len(table.routes)})


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Whatever goes wrong answers in OpenAI's shape, never aiohttp's text/plain 500."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(APIError(e.status, e.reason or "The request was refused."))
    except Exception:
        log.exception("the gateway failed on a request")
        return error_response(APIError(500, "The gateway failed on this request.", "server_error"))


def create_gateway(connection, listener, key: bytes, max_body: int) -> web.Application:
    """The gateway's aiohttp application: ``connection`` (redis.asyncio, with timeouts) for commands,
    ``listener`` for the routes' channel, ``key`` to check what the platform signed (table.route_key),
    and the largest body it reads (the app servers' own limit)."""
    app = web.Application(client_max_size=max_body, middlewares=[openai_errors])
    app[MAX_BODY] = max_body
    app[TABLE] = table = RoutingTable()
    app[KEYS] = KeyRoutes(connection, key)
    app[WATCHER] = watcher = RouteWatcher(connection, listener, table, key)
    app[COUNTS] = counts = ReleaseCounts(connection)

    async def background(app: web.Application):
        # No pool limit (one connection per request in flight, kept alive); bytes pass as they came.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=KEEPALIVE_S)
        app[SESSION] = session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
        )
        tasks = [
            asyncio.create_task(watcher.run()),
            asyncio.create_task(HealthChecks(session, table).run()),
            asyncio.create_task(counts.run()),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the counts' last flush, before Redis closes
        await session.close()
        await connection.aclose()
        await listener.aclose()

    app.cleanup_ctx.append(background)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model}", one_model)
    app.router.add_post("/v1/{path:.+}", forward)
    app.router.add_route("*", "/{path:.*}", unknown_path)
    return app
