"""The app server's request path, as a pipeline of stages (docs/ARCHITECTURE.md, "The request pipeline").

    authenticate → parse → admit → plugins in → cache lookup → prepare → generate → plugins out
    → cache store   … then record (and the chain's webhooks)

Each stage is a small async function of one request ``Context``; it raises ``APIError`` to answer
early with an error, or returns True once the answer is ready (a cache hit), which skips the rest.
Stages read their configuration from ``ctx.served`` (the application being served), never from
module globals, so one process could serve several applications. The order is ``STAGES``, here
and nowhere else. ``record`` runs when the response has ended, however it ended (sent, timed out,
or the client left), and so do the clean-ups stages register with ``ctx.defer`` (the admission
slot): a streamed request holds its slot until its last byte.

The input plugins run after admission and within the request's timeout: their work (matching over a
body of up to megabytes) is the request's, counted against its slot and its deadline; a request that
times out there stops its scan, and keeps its slot until the scan has stopped.
"""

import asyncio
import functools
import json
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from . import openai_api
from .engines import Engine, Prepared
from .keys import KeyChecker, KeyInfo, KeyStoreUnavailable, bearer_token
from .openai_api import APIError, GenerationRequest
from .plugins.chain import Blocked, Chain, OutputRewriter, PluginRun
from .plugins.webhook import WebhookSender
from .spec import ServerSpec

log = logging.getLogger("llmapp.server")
UPSTREAM_TOOLS = ("tools", "functions", "tool_choice")  # what an upstream shows the model besides the chat


class ResponseCache:
    """Exact-match LRU of deterministic (greedy), non-streamed responses; capacity 0 disables it."""

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


class Admission:
    """At most ``limit`` requests in flight; the next is refused (429), never queued."""

    def __init__(self, limit: int):
        self.limit, self.in_flight, self.rejected = limit, 0, 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            self.rejected += 1
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


@dataclass
class Served:
    """One application as its server serves it: its spec, engine and per-application state."""

    spec: ServerSpec
    engine: Engine
    keys: KeyChecker
    cache: ResponseCache = None
    admission: Admission = None
    outcomes: Counter = field(default_factory=Counter)  # status code → requests answered with it
    started: float = field(default_factory=time.time)
    recorder: object = None  # a recorder.Recorder, which counts each request for the metrics
    chain: Chain = field(default_factory=Chain)  # the plugins, swapped whole when the platform changes them
    webhooks: WebhookSender | None = None  # started with the first chain that has a webhook
    plugin_threads: ThreadPoolExecutor = None  # the input plugins' work: a thread for each slot

    def __post_init__(self):
        self.cache = self.cache or ResponseCache(self.spec.config.cache_size)
        self.admission = self.admission or Admission(self.spec.config.max_concurrency)
        # As many threads as slots: an admitted request never waits for another's plugins (nor for the
        # default executor's threads, which other work shares).
        self.plugin_threads = self.plugin_threads or ThreadPoolExecutor(
            self.admission.limit, thread_name_prefix="plugins"
        )


@dataclass
class Context:
    """One request on its way through the pipeline."""

    served: Served
    request: Request
    kind: str  # "chat" or "completion"
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    key: KeyInfo | None = None
    body: dict | None = None
    parsed: GenerationRequest | None = None
    prepared: Prepared | None = None
    cache_key: str | None = None
    cache_status: str | None = None  # "HIT" or "MISS" when the cache is on
    result: dict | None = None  # a non-streamed answer
    chunks: AsyncIterator[dict] | None = None  # a streamed answer, not yet running
    status: int = 200
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    timings: dict[str, float] = field(default_factory=dict)  # stage → seconds
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    finished: bool = False
    plugins: PluginRun | None = None  # what the application's plugin chain did to this request
    lingering: asyncio.Future | None = None  # work given up on that still runs: the clean-ups wait for it

    def __post_init__(self):
        if self.served.chain:  # the chain of the moment: a change never reaches a request half-way
            self.plugins = PluginRun(self.served.chain)

    @property
    def deadline(self) -> float:
        """The event loop's time by which the answer must be complete (the application's timeout)."""
        elapsed = time.perf_counter() - self.started
        return asyncio.get_running_loop().time() - elapsed + self.served.spec.config.timeout_s

    def defer(self, cleanup: Callable[[], None]) -> None:
        """Run ``cleanup`` once the response has ended."""
        self.cleanups.append(cleanup)

    def fail(self, error: APIError) -> None:
        self.status, self.error = error.status, error.message

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.lingering is not None and not self.lingering.done():
            # The slot is freed when the abandoned work has really stopped, not before.
            self.lingering.add_done_callback(lambda work: (work.cancelled() or work.exception(), self._clean_up()))
        else:
            self._clean_up()
        record(self)

    def _clean_up(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()


# --- the stages -----------------------------------------------------------------------------------


async def authenticate(ctx: Context) -> None:
    """The request's API key must be one of the application's (401), while Redis can say so (503)."""
    key = bearer_token(ctx.request.headers.get("authorization"))
    if not key:
        raise APIError(
            401,
            "Missing API key: send 'Authorization: Bearer <key>'. Keys are made on the application's page.",
            code="invalid_api_key",
        )
    try:
        ctx.key = await ctx.served.keys.check(key)
    except KeyStoreUnavailable as e:
        raise APIError(
            503,
            "The key store is unreachable and this key has not been seen yet; retry shortly.",
            "server_error",
            headers={"Retry-After": "5"},
        ) from e
    if ctx.key is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read up to ``limit`` bytes.

    :raise APIError: 413 when it is larger.
    """
    too_large = APIError(
        413, f"The request body is larger than this server's limit of {limit // 1024} KiB.", code="request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
    except ClientDisconnect as e:
        raise APIError(499, "The client went away while sending its request.") from e
    return bytes(body)


async def parse(ctx: Context) -> None:
    """The body is a valid request for this endpoint and this application's model (400, 404, 413)."""
    served = ctx.served
    if served.engine.status != "ready":
        raise APIError(
            503, f"The model is {served.engine.status.replace('_', ' ')}.", "server_error", headers={"Retry-After": "5"}
        )
    ctx.body = openai_api.load_json(await read_body(ctx.request, served.spec.max_request_bytes))
    ctx.parsed = openai_api.parse(
        ctx.kind,
        ctx.body,
        served.spec.app_name,
        served.engine.max_context,
        served.engine.name,
        passthrough=served.engine.passthrough,
    )
    if log.isEnabledFor(logging.DEBUG):  # the parameters, never the conversation
        settings = {k: v for k, v in ctx.body.items() if k not in ("messages", "prompt")}
        log.debug("%s request: %s", ctx.request.url.path, settings, extra={"request_id": ctx.request_id})


async def plugins_in(ctx: Context) -> None:
    """The input side of the application's plugin chain, in the request's slot and within its timeout
    (400 when a content filter blocks the input, 504 past the timeout)."""
    if ctx.plugins is None:
        return
    parsed = ctx.parsed
    upstream = ctx.served.engine.passthrough and ctx.plugins.chain.reads_input
    if parsed.kind == "completion" and parsed.prompt is None and ctx.plugins.chain.reads_input:
        raise APIError(400, "This application's plugins read the prompt: 'prompt' must be one string.", param="prompt")
    if upstream:  # the upstream renders the prompt: nothing may change it past the plugins
        openai_api.check_upstream_parameters(parsed.kind, ctx.body)
    tools = {k: ctx.body[k] for k in UPSTREAM_TOOLS if ctx.body.get(k) is not None} if upstream else None
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    work = loop.run_in_executor(
        ctx.served.plugin_threads,
        functools.partial(ctx.plugins.apply_input, parsed.kind, parsed.messages, parsed.prompt, cancel, tools=tools),
    )
    try:
        done, _ = await asyncio.wait({work}, timeout=max(0, ctx.deadline - loop.time()))
    finally:
        if not work.done():  # past the timeout, or the request was cancelled: the scan stops
            cancel.set()
            ctx.lingering = work
    if not done:
        raise timed_out(ctx)
    try:
        messages, prompt = work.result()
    except Blocked as e:
        raise APIError(
            400,
            f"The request was blocked by the application's content filter “{e.step.name}”.",
            code="content_filter",
        ) from e
    parsed.messages, parsed.prompt = messages, prompt
    if ctx.plugins.tools:
        ctx.body = {**ctx.body, **ctx.plugins.tools}
    if parsed.kind == "chat":
        ctx.body = {**ctx.body, "messages": messages}
    elif prompt is not None:
        ctx.body = {**ctx.body, "prompt": prompt}


async def admit(ctx: Context) -> None:
    """Take a concurrency slot, held until the response's last byte (429 when none is free)."""
    admission = ctx.served.admission
    if not admission.try_acquire():
        raise APIError(
            429,
            f"This application serves at most {admission.limit} requests at once; retry shortly.",
            "rate_limit_error",
            code="concurrency_limit",
            headers={"Retry-After": "1"},
        )
    ctx.defer(admission.release)


async def prepare(ctx: Context) -> None:
    """The engine's CPU work before generating (tokenising), off the event loop (400 when too long)."""
    ctx.prepared = await ctx.served.engine.prepare(ctx.parsed, ctx.body)
    ctx.prompt_tokens = ctx.prepared.prompt_tokens


async def cache_lookup(ctx: Context) -> bool:
    """A deterministic, non-streamed request answered before is answered again from the cache."""
    cache = ctx.served.cache
    if not cache.capacity or ctx.parsed.stream:
        return False
    ctx.cache_status = "MISS"
    if not ctx.parsed.deterministic:
        return False
    # The body after the input plugins, and the chain's version: a changed chain never answers from
    # what the one before it wrote.
    ctx.cache_key = ResponseCache.key(ctx.request.url.path, ctx.body) + ctx.served.chain.version
    if (cached := cache.get(ctx.cache_key)) is not None:
        ctx.cache_status, ctx.result = "HIT", cached
        return True
    return False


async def _until_disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def generate(ctx: Context) -> None:
    """The engine answers within the timeout (504); a client that leaves stops the generation (499).

    A stream is only set up here; it runs while the response is sent (see EventStream).
    """
    engine = ctx.served.engine
    if ctx.parsed.stream:
        ctx.chunks = engine.stream(ctx.prepared)
        return
    answer = asyncio.ensure_future(engine.complete(ctx.prepared))
    left = asyncio.ensure_future(_until_disconnected(ctx.request.receive))
    loop = asyncio.get_running_loop()
    try:
        done, _ = await asyncio.wait(
            {answer, left}, timeout=max(0, ctx.deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        left.cancel()
    if answer not in done:
        answer.cancel()  # the engine stops this request's generation at its next token
        await asyncio.gather(answer, return_exceptions=True)
        if left in done:
            raise APIError(499, "The client went away; its generation was stopped.")
        raise timed_out(ctx)
    ctx.result = answer.result()


def timed_out(ctx: Context) -> APIError:
    timeout = ctx.served.spec.config.timeout_s
    return APIError(
        504,
        f"The request took longer than the application's {timeout} s timeout; its generation was stopped.",
        "timeout_error",
    )


async def plugins_out(ctx: Context) -> None:
    """The output side of the chain: a reply masked, or cut short with finish_reason "content_filter"."""
    if ctx.plugins is None or not ctx.plugins.chain.rewrites_output:
        return
    if ctx.chunks is not None:
        ctx.chunks = rewrite_stream(ctx.chunks, ctx.plugins)
        return
    for choice in ctx.result.get("choices") or ():
        rewriter = ctx.plugins.output()
        if "message" in choice:
            choice["message"]["content"] = rewriter.whole(choice["message"].get("content") or "")
        else:
            choice["text"] = rewriter.whole(choice.get("text") or "")
        if rewriter.blocked:
            choice["finish_reason"] = "content_filter"


def _text(choice: dict) -> str:
    return (choice.get("delta") or {}).get("content") or choice.get("text") or ""


def _set_text(choice: dict, text: str) -> None:
    if "delta" in choice:
        choice["delta"]["content"] = text
    else:
        choice["text"] = text


async def rewrite_stream(chunks: AsyncIterator[dict], run: PluginRun) -> AsyncIterator[dict]:
    """A stream through the output side of the chain. Each rewriter holds back as much text as its
    longest match, so a match split across chunks is still caught; a block ends the stream there, with
    finish_reason "content_filter", and stops the generation."""
    rewriters: dict[int, OutputRewriter] = {}
    try:
        async for chunk in chunks:
            blocked = False
            for choice in chunk.get("choices") or ():
                rewriter = rewriters.setdefault(choice.get("index", 0), run.output())
                text = rewriter.feed(_text(choice))
                if choice.get("finish_reason") and not rewriter.blocked:
                    text += rewriter.close()
                if rewriter.blocked:
                    choice["finish_reason"], blocked = "content_filter", True
                if text or _text(choice):
                    _set_text(choice, text)
            if chunk.get("choices") and not any(
                _text(c) or c.get("finish_reason") or (c.get("delta") or {}).get("role") for c in chunk["choices"]
            ):
                continue  # everything in it is held back for now
            yield chunk
            if blocked:
                return
    finally:
        await chunks.aclose()


async def cache_store(ctx: Context) -> None:
    if ctx.cache_key and ctx.result is not None:
        ctx.served.cache.put(ctx.cache_key, ctx.result)


Stage = Callable[[Context], Awaitable[bool | None]]
STAGES: tuple[Stage, ...] = (
    authenticate,
    parse,
    admit,
    plugins_in,  # in the slot and the timeout: their work is the request's
    cache_lookup,
    prepare,
    generate,
    plugins_out,
    cache_store,
)


# --- running the stages, answering, recording ------------------------------------------------------


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def run(ctx: Context, stages: tuple[Stage, ...] = STAGES):
    """Take the request through ``stages``; return what answers it (an ASGI app that finishes ``ctx``)."""
    try:
        for stage in stages:
            started = time.perf_counter()
            try:
                answered = await stage(ctx)
            finally:
                ctx.timings[stage.__name__] = time.perf_counter() - started
            if answered:
                break
        response = respond(ctx)
    except APIError as e:
        ctx.fail(e)
        response = error_response(e)
    except Exception:  # noqa: BLE001 - a bug answers 500 in OpenAI's shape, with the request id to find it
        log.exception("unexpected error", extra={"request_id": ctx.request_id})
        error = APIError(500, f"Internal error; request id {ctx.request_id}.", "server_error")
        ctx.fail(error)
        response = error_response(error)
    return Finishing(response, ctx)


def respond(ctx: Context) -> Response:
    headers = {}
    if ctx.cache_status:
        headers["X-Cache"] = ctx.cache_status
    if ctx.chunks is not None:
        return EventStream(ctx, headers)
    headers["X-Server-Time-Ms"] = f"{(time.perf_counter() - ctx.started) * 1000:.3f}"
    return JSONResponse(ctx.result, headers=headers)


class Finishing:
    """Sends a response, then finishes the request's context, however the sending ended."""

    def __init__(self, response, ctx: Context):
        self.response, self.ctx = response, ctx

    async def __call__(self, scope, receive, send):
        try:
            await self.response(scope, receive, send)
        finally:
            self.ctx.finish()


class EventStream:
    """A streamed answer as server-sent events, ended by its last chunk, the timeout or the client leaving.

    The usage chunk the engine always sends is recorded, and passed on only when the client asked for it.
    """

    def __init__(self, ctx: Context, headers: dict):
        self.ctx = ctx
        self.headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        self.headers += [(b"x-accel-buffering", b"no")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def _events(self) -> AsyncIterator[bytes]:
        ctx = self.ctx
        chunks = ctx.chunks
        try:
            async with asyncio.timeout_at(ctx.deadline):
                async for chunk in chunks:
                    if "usage" in chunk and not chunk.get("choices"):
                        ctx.prompt_tokens = chunk["usage"].get("prompt_tokens", ctx.prompt_tokens)
                        ctx.completion_tokens = chunk["usage"].get("completion_tokens", 0)
                        if not ctx.parsed.include_usage:
                            continue
                    elif ctx.first_token_at is None and _has_content(chunk):
                        ctx.first_token_at = time.perf_counter()
                    if "error" in chunk:
                        ctx.status = 502
                    yield openai_api.sse(chunk)
        except TimeoutError:
            error = timed_out(ctx)
            ctx.fail(error)
            yield openai_api.sse(error.body())
        except APIError as e:
            ctx.fail(e)
            yield openai_api.sse(e.body())
        finally:
            await chunks.aclose()  # stops the generation if the client left or the timeout fired
        yield openai_api.sse("[DONE]")

    async def _send_all(self, send) -> None:
        async for event in self._events():
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        sending = asyncio.ensure_future(self._send_all(send))
        left = asyncio.ensure_future(_until_disconnected(receive))
        done, _ = await asyncio.wait({sending, left}, return_when=asyncio.FIRST_COMPLETED)
        if sending in done:
            left.cancel()
            sending.result()
            return
        sending.cancel()  # the client went away: stop generating for it
        await asyncio.gather(sending, return_exceptions=True)
        self.ctx.status, self.ctx.error = 499, "The client went away during the stream."


def _has_content(chunk: dict) -> bool:
    for choice in chunk.get("choices") or ():
        if (choice.get("delta") or {}).get("content") or choice.get("text"):
            return True
    return False


# --- the record of each request -------------------------------------------------------------------


def record(ctx: Context) -> None:
    """One log line per request (with its request id and key label), and its metrics."""
    if ctx.result is not None:  # the usage the client was told (a cache hit's too)
        usage = ctx.result.get("usage") or {}
        ctx.prompt_tokens = usage.get("prompt_tokens", ctx.prompt_tokens)
        ctx.completion_tokens = usage.get("completion_tokens", 0)
    ctx.served.outcomes[ctx.status] += 1
    if ctx.served.recorder is not None:
        ctx.served.recorder.observe(ctx)
    elapsed_ms = (time.perf_counter() - ctx.started) * 1000
    level = logging.ERROR if ctx.status >= 500 and ctx.status != 504 else logging.INFO
    if ctx.status in (429, 499, 504):
        level = logging.WARNING
    parts = [
        f"{ctx.request.url.path} {ctx.status}",
        f"{ctx.prompt_tokens}+{ctx.completion_tokens} tokens",
        f"in {elapsed_ms:.0f} ms",
    ]
    if ctx.parsed is not None and ctx.parsed.stream:
        parts.append("stream")
    if ctx.cache_status == "HIT":
        parts.append("(cache hit)")
    if ctx.key is not None:
        parts.append(f"key={ctx.key.label or ctx.key.id}")
    run = ctx.plugins
    if run is not None:
        parts.append("plugins " + ", ".join(f"{name} {ms * 1000:.2f} ms" for name, ms in run.seconds.items()))
        if run.passages:
            parts.append("passages " + " ".join(run.passages))
        for event in run.events:
            parts.append(f"policy: {event['plugin']} {event['action']} {event['side']} ({', '.join(event['found'])})")
    if ctx.error:
        parts.append(f"— {ctx.error}")
    fields = {
        "status": ctx.status,
        "ms": round(elapsed_ms, 1),
        "tokens_in": ctx.prompt_tokens,
        "tokens_out": ctx.completion_tokens,
        "stream": bool(ctx.parsed and ctx.parsed.stream),
        "cache": ctx.cache_status,
        "key": ctx.key.label if ctx.key else None,
    }
    if run is not None:
        fields["plugins_ms"] = {name: round(s * 1000, 3) for name, s in run.seconds.items()}
        fields["policy"] = run.events
        fields["passages"] = run.passages
    log.log(level, " ".join(parts), extra={"request_id": ctx.request_id, "fields": fields})
    if run is not None and run.chain.webhooks():
        send_webhooks(ctx, elapsed_ms)


def send_webhooks(ctx: Context, elapsed_ms: float) -> None:
    """Each webhook of the chain gets its summary, queued for its sender thread (never awaited here)."""
    served = ctx.served
    if served.webhooks is None:
        served.webhooks = WebhookSender(allow=served.spec.webhook_allow)
    record = {
        "application": served.spec.app_name,
        "request_id": ctx.request_id,
        "key_label": ctx.key.label if ctx.key else None,
        "status": ctx.status,
        "latency_ms": round(elapsed_ms, 1),
        "prompt_tokens": ctx.prompt_tokens,
        "completion_tokens": ctx.completion_tokens,
    }
    for step, summary in ctx.plugins.webhook_summaries(record):
        served.webhooks.send(
            step.config["url"],
            step.config.get("secret", ""),
            summary,
            float(step.config.get("timeout_s", 5)),
            int(step.config.get("retries", 3)),
        )


def new_request_id(given: str | None) -> str:
    """The client's own X-Request-Id when it is a sensible one, else a new one."""
    if given and len(given) <= 128 and all(c.isalnum() or c in "-_.:" for c in given):
        return given
    return uuid.uuid4().hex
