"""The app server's HTTP API (Starlette on uvicorn): OpenAI-compatible, in front of one application's
engine. Completions go through the pipeline (pipeline.py); this module holds the routes, the request
id every response carries, and the server's lifespan (its background work, runtime/upkeep.py).

The routes read the application from ``app.state`` (``served``, ``log_writer``, ``redis``, ``upkeep``,
``chains``): build_app only wires them together.
"""

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import pipeline
from .answers import error_response
from .engines import Engine
from .errors import APIError, model_not_found
from .keys import KeyChecker, authorization
from .pipeline import Context
from .recorder import Recorder
from .request_log import new_request_id
from .served import Served
from .serving import ENDPOINTS, model_object
from .spec import ServerSpec
from .upkeep import ChainWatcher, Upkeep

log = logging.getLogger("llmapp.server")


class RequestIds:
    """ASGI middleware: every response carries X-Request-Id (the client's own if it sent a sensible one)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = new_request_id(given)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


def has_platform_token(request: Request) -> bool:
    """Whether the request carries the platform's metrics token (the same for every server)."""
    expected = request.app.state.served.spec.metrics_token_sha256
    _, token = authorization(request.headers.get("authorization"))  # any scheme, as Prometheus sends it
    digest = hashlib.sha256(token.encode()).hexdigest()
    return bool(expected) and hmac.compare_digest(digest, expected)


def health_details(state) -> dict:
    """What /health tells the platform: the server's configuration, counters and plugin chain."""
    served, writer = state.served, state.log_writer
    admission, cache, engine = served.admission, served.cache, served.engine
    webhooks = served.webhooks
    return {
        "status": engine.status,
        "error": engine.error,
        "application": served.spec.app_name,
        "deploy_id": served.spec.deploy_id,
        "in_flight": admission.in_flight,
        "requests": sum(served.outcomes.values()),
        "rejected": admission.rejected,
        "timeouts": served.outcomes[504],
        "client_disconnects": served.outcomes[499],
        "outcomes": {str(code): count for code, count in sorted(served.outcomes.items())},
        "redis": "unreachable" if state.upkeep.failing or served.keys.unreachable_until > time.monotonic() else "ok",
        "cache": {
            "size": len(cache.entries),
            "capacity": cache.capacity,
            "hits": cache.hits,
            "misses": cache.misses,
            "evictions": cache.evictions,
        },
        "engine": engine.stats(),
        "plugins": {
            "version": served.chain.version,
            "chain": [{"name": step.name, "type": step.type} for step in served.chain.steps],
            "webhooks": None
            if webhooks is None
            else {"delivered": webhooks.delivered, "failed": webhooks.failed, "dropped": webhooks.dropped},
        },
        "config": served.spec.config.__dict__,
        "log": {
            "written": getattr(writer, "written", 0),
            "queued": writer.queue.unfinished_tasks if writer else 0,
            "dropped": getattr(writer, "dropped", 0),
        },
    }


async def health(request: Request) -> JSONResponse:
    """Liveness for anyone (the status only); the configuration, counters and plugin chain for the
    platform's metrics token."""
    engine = request.app.state.served.engine
    status_code = 200 if engine.status == "ready" else 503
    if not has_platform_token(request):
        return JSONResponse({"status": engine.status}, status_code=status_code)
    return JSONResponse(health_details(request.app.state), status_code=status_code)


async def models(request: Request):
    served = request.app.state.served
    try:
        await pipeline.check_key(served, request)
    except APIError as e:
        return error_response(e)
    return JSONResponse({"object": "list", "data": [model_object(served.spec.app_name, int(served.started))]})


async def model(request: Request):
    served = request.app.state.served
    try:
        await pipeline.check_key(served, request)
        if request.path_params["model"] != served.spec.app_name:
            raise model_not_found(request.path_params["model"])
    except APIError as e:
        return error_response(e)
    return JSONResponse(model_object(served.spec.app_name, int(served.started)))


async def prometheus(request: Request):
    """Prometheus's text format, for the platform's metrics token only (the same for every server,
    so one scrape job follows every application; the applications' own keys don't open it)."""
    if not has_platform_token(request):
        return error_response(APIError(401, "/metrics needs the platform's metrics token.", code="invalid_api_key"))
    return Response(generate_latest(request.app.state.served.recorder.registry), media_type=CONTENT_TYPE_LATEST)


def completions(endpoint):
    async def serve(request: Request):
        ctx = Context(request.app.state.served, request, endpoint, request.state.request_id)
        return await pipeline.run(ctx)

    return serve


async def http_error(request: Request, exc: HTTPException):
    messages = {404: "Unknown path: the endpoints are /v1/models, /v1/chat/completions and /v1/completions."}
    message = messages.get(exc.status_code, exc.detail)
    return error_response(APIError(exc.status_code, message, headers=getattr(exc, "headers", None)))


async def server_error(request: Request, exc: Exception):
    log.error("unexpected error: %r", exc, extra={"request_id": getattr(request.state, "request_id", None)})
    return error_response(APIError(500, "Internal error.", "server_error"))


@contextlib.asynccontextmanager
async def lifespan(app):
    state = app.state
    served, connection = state.served, state.redis
    tasks = [
        asyncio.create_task(state.upkeep.run()),
        asyncio.create_task(served.recorder.run(connection)),
        asyncio.create_task(state.chains.run()),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await served.recorder.flush(connection)  # the last seconds' counts, before exiting
        await state.upkeep.leave()
        await served.quotas.close()  # the last requests' usage
        await served.engine.close()
        if served.webhooks is not None:
            await asyncio.to_thread(served.webhooks.close)  # the last summaries, briefly


ROUTES = [
    Route("/health", health),
    Route("/metrics", prometheus),
    Route("/v1/models", models),
    Route("/v1/models/{model:path}", model),
    *(Route(endpoint.path, completions(endpoint), methods=["POST"]) for endpoint in ENDPOINTS.values()),
]


def build_app(spec: ServerSpec, engine: Engine, redis_connection, log_writer=None, *, chain_key: bytes):
    """The server's ASGI app for one application (wrapped in RequestIds). ``chain_key``: the application's
    own key (its plugin chain is encrypted with it, its key entries signed)."""
    served = Served(spec, engine, KeyChecker(redis_connection, spec.app_id, chain_key))
    served.recorder = Recorder(spec.app_id, engine, served.admission, spec.metrics_flush_s)
    app = Starlette(
        routes=ROUTES,
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.served, app.state.redis, app.state.log_writer = served, redis_connection, log_writer
    app.state.upkeep = Upkeep(served, redis_connection)
    app.state.chains = ChainWatcher(served, redis_connection, chain_key)
    return RequestIds(app)
