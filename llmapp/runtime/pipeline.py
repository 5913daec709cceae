"""The app server's request path, as a pipeline of stages (docs/ARCHITECTURE.md, "The request pipeline").

    authenticate → parse → admit → plugins in → cache lookup → prepare → reserve → generate
    → plugins out → cache store   … then record (and the chain's webhooks) and settle the quotas

Each stage is a small async function of one request ``Context``; it raises ``APIError`` to answer
early with an error, or returns True once the answer is ready (a cache hit), which skips the rest.
Stages read their configuration from ``ctx.served`` (the application being served), never from
module globals, so one process could serve several applications. The order is ``STAGES``, here
and nowhere else. Engines answer with neutral outputs (text, finish reasons, usage): the stages and
the plugins work on those, and only the answer (runtime/answers.py) writes the endpoint's wire shape.
``record_request`` (runtime/request_log.py) runs when the response has ended, however it ended
(sent, timed out, or the client left), and so do the clean-ups stages register with
``ctx.cleanups`` (the admission slot): a streamed request holds its slot until its last byte.

The input plugins run after admission and within the request's timeout: their work (matching over a
body of up to megabytes) is the request's, counted against its slot and its deadline; a request that
times out there stops its scan, and keeps its slot until the scan has stopped.
"""

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from starlette.requests import ClientDisconnect, Request

from . import openai_api
from .answers import Finishing, error_response, respond, timed_out, until_disconnected
from .engines import Prepared, RequestOutput
from .errors import APIError, incorrect_key, key_store_unreachable, missing_key
from .keys import KeyInfo, KeyStoreUnavailable, bearer_token
from .plugins import reply_fields
from .plugins.chain import Blocked, Chain, OutputRewriter, PluginRun
from .quotas import Charge, reservation
from .request_log import record_request
from .served import ResponseCache, Served
from .serving import Endpoint

log = logging.getLogger("llmapp.server")
UPSTREAM_TOOLS = ("tools", "functions", "tool_choice")  # what an upstream shows the model besides the chat


@dataclass
class Outcome:
    """How a request ended, as its record reports it."""

    status: int = 200
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None  # perf_counter time of a stream's first text
    cache_status: str | None = None  # "HIT" or "MISS" when the cache is on
    timings: dict[str, float] = field(default_factory=dict)  # stage → seconds

    def fail(self, error: APIError) -> None:
        self.status, self.error = error.status, error.message


class Cleanups:
    """What must run once a response has ended (the admission slot's release): in reverse order, once,
    and only after work the request gave up on (``lingering``) has really stopped."""

    def __init__(self):
        self.pending: list[Callable[[], None]] = []
        self.lingering: asyncio.Future | None = None

    def add(self, cleanup: Callable[[], None]) -> None:
        self.pending.append(cleanup)

    def run(self) -> None:
        if self.lingering is not None and not self.lingering.done():
            self.lingering.add_done_callback(lambda work: (work.cancelled() or work.exception(), self._run()))
        else:
            self._run()

    def _run(self) -> None:
        for cleanup in reversed(self.pending):
            cleanup()


@dataclass
class Context:
    """One request on its way through the pipeline."""

    served: Served
    request: Request
    endpoint: Endpoint
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    key: KeyInfo | None = None
    body: dict | None = None  # the JSON body, as the input plugins left it
    parsed: openai_api.GenerationRequest | None = None
    prepared: Prepared | None = None
    cache_key: str | None = None
    answer: RequestOutput | None = None  # a whole answer (the engine's, or the cache's)
    stream: AsyncIterator[RequestOutput] | None = None  # a streamed answer, not yet running
    chain: Chain | None = None  # the plugin chain of the moment the request came: a change never reaches
    plugins: PluginRun | None = None  # it half-way; what it did to this request
    outcome: Outcome = field(default_factory=Outcome)
    cleanups: Cleanups = field(default_factory=Cleanups)
    charge: Charge | None = None  # what the request reserved of its limits (runtime/quotas.py)
    streamed_tokens: int = 0  # tokens a stream has produced so far (its usage, if it ends early)
    finished: bool = False

    def __post_init__(self):
        self.chain = self.served.chain
        if self.chain:
            self.plugins = PluginRun(self.chain)

    @property
    def deadline(self) -> float:
        """The event loop's time by which the answer must be complete (the application's timeout)."""
        elapsed = time.perf_counter() - self.started
        return asyncio.get_running_loop().time() - elapsed + self.served.spec.config.timeout_s

    def finish(self) -> None:
        """The response has ended: clean up and record, once."""
        if self.finished:
            return
        self.finished = True
        self.cleanups.run()
        record_request(self)
        if self.charge is not None:
            self.served.quotas.settle_later(self.charge, self.key.id, self.used())

    def used(self) -> dict[str, int]:
        """The tokens the request used, as its usage counts them: a cache hit's are "cached" (no model ran)."""
        outcome = self.outcome
        completion = outcome.completion_tokens or self.streamed_tokens
        if outcome.cache_status == "HIT":
            return {"input": 0, "output": 0, "cached": outcome.prompt_tokens + completion}
        return {"input": outcome.prompt_tokens, "output": completion, "cached": 0}


# --- the stages -----------------------------------------------------------------------------------


async def check_key(served: Served, request: Request) -> KeyInfo:
    """The request's API key, one of the application's (401), while Redis can say so (503)."""
    key = bearer_token(request.headers.get("authorization"))
    if not key:
        raise missing_key()
    try:
        found = await served.keys.check(key)
    except KeyStoreUnavailable as e:
        raise key_store_unreachable() from e
    if found is None:
        raise incorrect_key()
    return found


async def authenticate(ctx: Context) -> None:
    """The request's API key must be one of the application's (401), while Redis can say so (503)."""
    ctx.key = await check_key(ctx.served, ctx.request)


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
    ctx.parsed = ctx.endpoint.parse(
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
    parsed, chain = ctx.parsed, ctx.plugins.chain
    if chain.rewrites_output:  # the reply's tokens as generated would go around the plugins
        openai_api.check_revealing_parameters(ctx.body)
    upstream = ctx.served.engine.passthrough and chain.reads_input
    if parsed.messages is None and parsed.prompt is None and chain.reads_input:
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
            ctx.cleanups.lingering = work
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
    if messages is not None:
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
    ctx.cleanups.add(admission.release)


async def prepare(ctx: Context) -> None:
    """The engine's CPU work before generating (tokenising), off the event loop (400 when too long)."""
    ctx.prepared = await ctx.served.engine.prepare(ctx.parsed, ctx.body)
    ctx.outcome.prompt_tokens = ctx.prepared.prompt_tokens


async def cache_lookup(ctx: Context) -> bool:
    """A deterministic, non-streamed request answered before is answered again from the cache."""
    cache = ctx.served.cache
    if not cache.capacity or ctx.parsed.stream:
        return False
    ctx.outcome.cache_status = "MISS"
    if not ctx.parsed.deterministic:
        return False
    # The body after the input plugins, and the version of the chain that made the answer: a changed
    # chain never answers from what the one before it wrote.
    ctx.cache_key = ResponseCache.key(ctx.request.url.path, ctx.body) + ctx.chain.version
    if (cached := cache.get(ctx.cache_key)) is not None:
        await charge(ctx, 0)  # a request, but no tokens: no model runs for it
        ctx.outcome.cache_status, ctx.answer = "HIT", cached
        return True
    return False


async def charge(ctx: Context, tokens: int) -> None:
    """Reserve one request and ``tokens`` of every limit the request's key is held to (429 over one)."""
    ctx.charge = await ctx.served.quotas.admit(ctx.key, tokens)


async def reserve(ctx: Context) -> None:
    """The request's tokens, its prompt's and as many as it may generate, against the limits."""
    engine = ctx.served.engine
    prompt, tokens = reservation(
        ctx.body, ctx.parsed.max_tokens, ctx.outcome.prompt_tokens, engine.passthrough, engine.max_context
    )
    ctx.outcome.prompt_tokens = prompt
    await charge(ctx, tokens)


async def generate(ctx: Context) -> None:
    """The engine answers within the timeout (504); a client that leaves stops the generation (499).

    A stream is only set up here; it runs while the response is sent (answers.EventStream).
    """
    engine = ctx.served.engine
    if ctx.parsed.stream:
        ctx.stream = counted(engine.stream(ctx.prepared), ctx)
        return
    answer = asyncio.ensure_future(engine.complete(ctx.prepared))
    left = asyncio.ensure_future(until_disconnected(ctx.request.receive))
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
    ctx.answer = answer.result()


async def counted(outputs: AsyncIterator[RequestOutput], ctx: Context) -> AsyncIterator[RequestOutput]:
    """A stream whose tokens are counted as they come (each output's token ids, or one for each piece
    of text an upstream sends), so a stream that ends early still costs what it generated."""
    try:
        async for output in outputs:
            ctx.streamed_tokens += sum(len(c.token_ids) or bool(c.text) for c in output.outputs)
            yield output
    finally:
        await outputs.aclose()


async def plugins_out(ctx: Context) -> None:
    """The output side of the chain: a reply masked, or cut short with finish_reason "content_filter"."""
    if ctx.plugins is None or not ctx.plugins.chain.rewrites_output:
        return
    if ctx.stream is not None:
        ctx.stream = rewrite_stream(ctx.stream, ctx.plugins)
        return
    for output in ctx.answer.outputs:
        rewriter = ctx.plugins.output()
        output.text = rewriter.whole(output.text)
        output.extra, fields_blocked = reply_fields.rewrite_whole(output.extra, ctx.plugins)
        if rewriter.blocked or fields_blocked:
            output.finish_reason = "content_filter"


async def rewrite_stream(outputs: AsyncIterator[RequestOutput], run: PluginRun) -> AsyncIterator[RequestOutput]:
    """A stream through the output side of the chain. Each rewriter holds back the text that could still
    grow into a match, so a match split across outputs is still caught; a block ends the stream there, with
    finish_reason "content_filter", and stops the generation."""
    rewriters: dict[int, OutputRewriter] = {}
    held: dict[int, dict] = {}  # each choice's other fields (tool calls…), sent rewritten at its end
    try:
        async for output in outputs:
            blocked = False
            for choice in output.outputs:
                rewriter = rewriters.setdefault(choice.index, run.output())
                choice.text = rewriter.feed(choice.text)
                reply_fields.merge(held.setdefault(choice.index, {}), choice.extra)
                choice.extra = {}
                if choice.finish_reason and not rewriter.blocked:
                    choice.text += rewriter.close()
                    choice.extra, fields_blocked = reply_fields.rewrite_whole(held.pop(choice.index), run)
                    if fields_blocked:
                        choice.finish_reason = "content_filter"
                if rewriter.blocked:
                    choice.finish_reason, blocked = "content_filter", True
            if output.outputs and not any(choice.says_something for choice in output.outputs):
                continue  # everything in it is held back for now
            yield output
            if blocked:
                return
    finally:
        await outputs.aclose()


async def cache_store(ctx: Context) -> None:
    if ctx.cache_key and ctx.answer is not None:
        ctx.served.cache.put(ctx.cache_key, ctx.answer)


Stage = Callable[[Context], Awaitable[bool | None]]
STAGES: tuple[Stage, ...] = (
    authenticate,
    parse,
    admit,
    plugins_in,  # in the slot and the timeout: their work is the request's
    cache_lookup,
    prepare,
    reserve,
    generate,
    plugins_out,
    cache_store,
)


async def run(ctx: Context, stages: tuple[Stage, ...] = STAGES):
    """Take the request through ``stages``; return what answers it (an ASGI app that finishes ``ctx``)."""
    try:
        for stage in stages:
            started = time.perf_counter()
            try:
                answered = await stage(ctx)
            finally:
                ctx.outcome.timings[stage.__name__] = time.perf_counter() - started
            if answered:
                break
        response = respond(ctx)
    except APIError as e:
        ctx.outcome.fail(e)
        if ctx.charge is not None:
            e.headers = {**ctx.charge.headers, **e.headers}
        response = error_response(e)
    except Exception:  # noqa: BLE001 - a bug answers 500 in OpenAI's shape, with the request id to find it
        log.exception("unexpected error", extra={"request_id": ctx.request_id})
        error = APIError(500, f"Internal error; request id {ctx.request_id}.", "server_error")
        ctx.outcome.fail(error)
        response = error_response(error)
    return Finishing(response, ctx)
