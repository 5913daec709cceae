"""The app server's HTTP API (Starlette on uvicorn): OpenAI-compatible, with the application's
concurrency limit, timeout, response cache and API keys in front of its engine."""

import asyncio
import json
import logging
import time
from collections import OrderedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import keys, openai_api
from .engines import Engine
from .openai_api import APIError, ChunkWriter

log = logging.getLogger("llmapp.server")


class ResponseCache:
    """Exact-match LRU of deterministic (temperature 0), non-streamed responses; capacity 0 disables it."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[str, dict] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def key(path: str, body: dict) -> str:
        return path + json.dumps({k: v for k, v in body.items() if k not in ("user", "stream")}, sort_keys=True)

    def get(self, key: str) -> dict | None:
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        return None

    def put(self, key: str, value: dict) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
            self.evictions += 1


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def build_app(spec: dict, engine: Engine, redis_connection) -> Starlette:
    config = spec["config"]
    application_id, model_name = spec["app_id"], spec["app_name"]
    max_concurrency, timeout_s = config["max_concurrency"], config["timeout_s"]
    cache = ResponseCache(config["cache_size"])
    key_checker = keys.KeyChecker(redis_connection, application_id)
    state = {"in_flight": 0, "requests": 0, "rejected": 0, "timeouts": 0, "started": time.time()}

    async def authenticate(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise APIError(
                401,
                "Missing API key: send 'Authorization: Bearer <key>'. Keys are made on the application's page.",
                code="invalid_api_key",
            )
        if await key_checker.check(key.strip()) is None:
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def health(request: Request) -> JSONResponse:
        body = {
            "status": engine.status,
            "application": model_name,
            "in_flight": state["in_flight"],
            "requests": state["requests"],
            "rejected": state["rejected"],
            "timeouts": state["timeouts"],
            "cache": {
                "size": len(cache.entries),
                "capacity": cache.capacity,
                "hits": cache.hits,
                "misses": cache.misses,
                "evictions": cache.evictions,
            },
            "engine": engine.stats(),
            "config": config,
            "deploy_id": spec.get("deploy_id"),
        }
        return JSONResponse(body, status_code=200 if engine.status == "ready" else 503)

    async def models(request: Request) -> Response:
        try:
            await authenticate(request)
        except APIError as e:
            return error_response(e)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": model_name, "object": "model", "created": int(state["started"]), "owned_by": "llmapp"}],
            }
        )

    async def completions(request: Request, kind: str) -> Response:
        started = time.perf_counter()
        try:
            await authenticate(request)
            if engine.status != "ready":
                raise APIError(
                    503,
                    f"The model is {engine.status.replace('_', ' ')}.",
                    "server_error",
                    headers={"Retry-After": "5"},
                )
            try:
                body = await request.json()
            except ValueError as e:
                raise APIError(400, "The request body is not valid JSON.") from e
            parsed = openai_api.parse(kind, body, engine.max_context)
            if state["in_flight"] >= max_concurrency:
                state["rejected"] += 1
                log.warning("429: %d requests in flight (max concurrency %d)", state["in_flight"], max_concurrency)
                raise APIError(
                    429,
                    f"This application serves at most {max_concurrency} requests at once; retry shortly.",
                    "rate_limit_error",
                    headers={"Retry-After": "1"},
                )
        except APIError as e:
            return error_response(e)
        body["model"] = model_name
        state["requests"] += 1
        log.debug(
            "%s request: %s", request.url.path, {k: v for k, v in body.items() if k not in ("messages", "prompt")}
        )
        if parsed.stream:
            return StreamingResponse(
                stream(body, parsed, started),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        cache_key = ResponseCache.key(request.url.path, body) if cache.capacity and parsed.deterministic else None
        headers = {}
        state["in_flight"] += 1
        try:
            if cache.capacity:
                headers["X-Cache"] = "MISS"
            if cache_key and (cached := cache.get(cache_key)) is not None:
                headers["X-Cache"] = "HIT"
                result = cached
            else:
                async with asyncio.timeout(timeout_s):
                    result = await engine.complete(body, parsed)
                if cache_key:
                    cache.put(cache_key, result)
        except TimeoutError:
            state["timeouts"] += 1
            log.warning("504: the request ran past the %d s timeout and was cancelled", timeout_s)
            return error_response(
                APIError(
                    504,
                    f"The request took longer than the application's {timeout_s} s "
                    "timeout; its generation was stopped.",
                    "timeout_error",
                )
            )
        except APIError as e:
            return error_response(e)
        finally:
            state["in_flight"] -= 1
        elapsed = (time.perf_counter() - started) * 1000
        headers["X-Server-Time-Ms"] = f"{elapsed:.3f}"
        log.info(
            "%s 200 %s tokens in %.0f ms%s",
            request.url.path,
            result.get("usage", {}).get("total_tokens", "?"),
            elapsed,
            " (cache hit)" if headers.get("X-Cache") == "HIT" else "",
        )
        return JSONResponse(result, headers=headers)

    async def stream(body, parsed, started):
        state["in_flight"] += 1
        chunks = engine.stream(body, parsed)
        try:
            async with asyncio.timeout(timeout_s):
                async for chunk in chunks:
                    yield chunk
        except TimeoutError:
            state["timeouts"] += 1
            log.warning("stream ran past the %d s timeout and was cancelled", timeout_s)
            yield ChunkWriter.error(
                APIError(
                    504,
                    f"The stream took longer than the application's {timeout_s} s timeout; its generation was stopped.",
                    "timeout_error",
                )
            )
        except APIError as e:
            yield ChunkWriter.error(e)
        finally:
            await chunks.aclose()  # stops the generation if the client left or the timeout fired
            state["in_flight"] -= 1
            log.info(
                "%s stream ended after %.0f ms",
                "/v1/" + ("chat/completions" if parsed.kind == "chat" else "completions"),
                (time.perf_counter() - started) * 1000,
            )

    async def chat(request):
        return await completions(request, "chat")

    async def completion(request):
        return await completions(request, "completion")

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completion, methods=["POST"]),
        ]
    )
