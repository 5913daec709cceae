"""The app server's HTTP API (Starlette on uvicorn): OpenAI-compatible, in front of one application's
engine. Completions go through the pipeline (pipeline.py); this module holds the routes, the request
id every response carries, and the server's background upkeep (its address and key usage in Redis)."""

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import time

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import keyspace
from . import openai_api, pipeline
from .engines import Engine
from .keys import KeyChecker, authorization
from .openai_api import APIError
from .pipeline import Context, Served, error_response, new_request_id
from .plugins import published
from .plugins.chain import Chain
from .recorder import Recorder
from .spec import ServerSpec

log = logging.getLogger("llmapp.server")
HEARTBEAT_S = 5  # how often a server renews its address in Redis (it expires after 6 beats)
CHAIN_POLL_S = 1.0  # how often a server looks for a new version of its plugin chain


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


def build_app(spec: ServerSpec, engine: Engine, redis_connection, log_writer=None, chain_key: bytes = b"") -> Starlette:
    served = Served(spec, engine, KeyChecker(redis_connection, spec.app_id))
    served.recorder = Recorder(spec.app_id, engine, served.admission, spec.metrics_flush_s)
    upkeep = Upkeep(served, redis_connection)
    chains = ChainWatcher(served, redis_connection, chain_key)

    def platform_token(request: Request) -> bool:
        """Whether the request carries the platform's metrics token (the same for every server)."""
        _, token = authorization(request.headers.get("authorization"))  # any scheme, as Prometheus sends it
        digest = hashlib.sha256(token.encode()).hexdigest()
        return bool(spec.metrics_token_sha256) and hmac.compare_digest(digest, spec.metrics_token_sha256)

    async def health(request: Request) -> JSONResponse:
        """Liveness for anyone (the status only); the configuration, counters and plugin chain for the
        platform's metrics token."""
        status_code = 200 if engine.status == "ready" else 503
        if not platform_token(request):
            return JSONResponse({"status": engine.status}, status_code=status_code)
        admission, cache = served.admission, served.cache
        body = {
            "status": engine.status,
            "error": engine.error,
            "application": spec.app_name,
            "deploy_id": spec.deploy_id,
            "in_flight": admission.in_flight,
            "requests": sum(served.outcomes.values()),
            "rejected": admission.rejected,
            "timeouts": served.outcomes[504],
            "client_disconnects": served.outcomes[499],
            "outcomes": {str(code): count for code, count in sorted(served.outcomes.items())},
            "redis": "unreachable" if upkeep.failing or served.keys.unreachable_until > time.monotonic() else "ok",
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
                if served.webhooks is None
                else {
                    "delivered": served.webhooks.delivered,
                    "failed": served.webhooks.failed,
                    "dropped": served.webhooks.dropped,
                },
            },
            "config": spec.config.__dict__,
            "log": {
                "written": getattr(log_writer, "written", 0),
                "queued": log_writer.queue.unfinished_tasks if log_writer else 0,
                "dropped": getattr(log_writer, "dropped", 0),
            },
        }
        return JSONResponse(body, status_code=status_code)

    async def authenticated(request: Request) -> None:
        ctx = Context(served, request, "models", request.state.request_id)
        await pipeline.authenticate(ctx)

    async def models(request: Request):
        try:
            await authenticated(request)
        except APIError as e:
            return error_response(e)
        return JSONResponse({"object": "list", "data": [openai_api.model_object(spec.app_name, int(served.started))]})

    async def model(request: Request):
        try:
            await authenticated(request)
            if request.path_params["model"] != spec.app_name:
                raise openai_api.model_not_found(request.path_params["model"])
        except APIError as e:
            return error_response(e)
        return JSONResponse(openai_api.model_object(spec.app_name, int(served.started)))

    async def prometheus(request: Request):
        """Prometheus's text format, for the platform's metrics token only (the same for every server,
        so one scrape job follows every application; the applications' own keys don't open it)."""
        if not platform_token(request):
            return error_response(APIError(401, "/metrics needs the platform's metrics token.", code="invalid_api_key"))
        return Response(generate_latest(served.recorder.registry), media_type=CONTENT_TYPE_LATEST)

    def completions(kind: str):
        async def endpoint(request: Request):
            return await pipeline.run(Context(served, request, kind, request.state.request_id))

        return endpoint

    async def http_error(request: Request, exc: HTTPException):
        messages = {404: "Unknown path: the endpoints are /v1/models, /v1/chat/completions and /v1/completions."}
        message = messages.get(exc.status_code, exc.detail)
        return error_response(APIError(exc.status_code, message, headers=getattr(exc, "headers", None)))

    async def server_error(request: Request, exc: Exception):
        log.error("unexpected error: %r", exc, extra={"request_id": getattr(request.state, "request_id", None)})
        return error_response(APIError(500, "Internal error.", "server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        tasks = [
            asyncio.create_task(upkeep.run()),
            asyncio.create_task(served.recorder.run(redis_connection)),
            asyncio.create_task(chains.run()),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await served.recorder.flush(redis_connection)  # the last seconds' counts, before exiting
            await upkeep.leave()
            await engine.close()
            if served.webhooks is not None:
                await asyncio.to_thread(served.webhooks.close)  # the last summaries, briefly

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", prometheus),
            Route("/v1/models", models),
            Route("/v1/models/{model:path}", model),
            Route("/v1/chat/completions", completions("chat"), methods=["POST"]),
            Route("/v1/completions", completions("completion"), methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.served = served
    app.state.chains = chains
    return RequestIds(app)


class ChainWatcher:
    """Keeps the server's plugin chain the one the platform published: it polls the version, and on a
    change reads, decrypts and builds the new chain off the event loop (a retrieval index takes a
    while), then swaps it in whole. Requests in flight finish on the chain they started with; none is
    dropped or held. A chain that can't be read or built leaves the current one serving, and says why."""

    def __init__(self, served: Served, connection, key: bytes):
        self.served, self.connection, self.key = served, connection, key
        self.failing = False

    def install(self, version: str | None, body: bytes | None) -> None:
        """Build and swap in a published chain (from any thread)."""
        document = published.decrypt(body, self.key) if version is not None else published.EMPTY
        chain = Chain.build(document)
        previous, self.served.chain = self.served.chain, chain
        if chain.version != previous.version:
            names = ", ".join(f"{step.name} ({step.type})" for step in chain.steps) or "none"
            log.info("plugin chain %s: %s", chain.version[:12] or "empty", names)

    def load(self, connection) -> None:
        """Before the server says it is ready: the chain published at deploy (a plain Redis client)."""
        fields = connection.hgetall(keyspace.plugin_chain(self.served.spec.app_id))
        self.install(fields.get(b"version", b"").decode() if fields else None, fields.get(b"body"))

    async def check(self) -> None:
        version = await published.version(self.connection, self.served.spec.app_id)
        if version is None or version == self.served.chain.version:
            return  # nothing published (Redis lost it: the platform publishes it again), or no change
        body = await self.connection.hget(keyspace.plugin_chain(self.served.spec.app_id), "body")
        await asyncio.to_thread(self.install, version, body)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHAIN_POLL_S)
            if self.served.engine.status != "ready":
                continue
            try:
                await self.check()
                self.failing = False
            except (redis.RedisError, ValueError, KeyError, TypeError) as e:
                if not self.failing:
                    log.error("the new plugin chain could not be loaded (%s); the current one keeps serving", e)
                self.failing = True


class Upkeep:
    """The server's periodic work, which outlives Redis outages: once ready, publish where it answers
    (renewed with a TTL, so it reappears after Redis lost its data), load the keys, and write when each
    key was last used."""

    def __init__(self, served: Served, connection):
        self.served, self.connection = served, connection
        self.failing = False
        self.keys_loaded = False

    async def beat(self) -> None:
        spec, engine = self.served.spec, self.served.engine
        if engine.status != "ready":
            return
        if not self.keys_loaded:
            await self.served.keys.load()
            self.keys_loaded = True
        key = keyspace.server(spec.app_id)
        async with self.connection.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "host": spec.host,
                    "port": spec.port,
                    "pid": os.getpid(),
                    "deploy_id": spec.deploy_id,
                    "config": json.dumps(spec.config.__dict__),
                    "hostname": socket.gethostname(),
                },
            )
            pipe.expire(key, HEARTBEAT_S * 6)
            await pipe.execute()
        await self.served.keys.flush_used()

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
                if self.failing:
                    log.warning("Redis is reachable again: the server's address is published")
                self.failing = False
            except redis.RedisError as e:
                if not self.failing:
                    log.warning("Redis is unreachable (%s); the server keeps serving and retries", e)
                self.failing = True
            await asyncio.sleep(HEARTBEAT_S if self.served.engine.status == "ready" and not self.failing else 0.5)

    async def leave(self) -> None:
        with contextlib.suppress(redis.RedisError):
            await self.connection.delete(keyspace.server(self.served.spec.app_id))
