"""Sending a request's answer: a whole one as JSON, a stream as server-sent events, an error in
OpenAI's shape; each in the endpoint's wire shape (runtime/serving.py), and each finishing the request
(its clean-ups and its record) however the sending ended."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.responses import JSONResponse, Response

from .errors import APIError
from .serving import sse

log = logging.getLogger("llmapp.server")


def timed_out(ctx) -> APIError:
    timeout = ctx.served.spec.config.timeout_s
    return APIError(
        504,
        f"The request took longer than the application's {timeout} s timeout; its generation was stopped.",
        "timeout_error",
    )


async def until_disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


INPUT_MASKED_HEADER = "X-LLMApp-Input-Masked"


def input_masked(ctx) -> str:
    """What the plugins masked in the request before the model saw it, by kind ("email, phone"): the
    client learns its words were changed, not what they were changed from ("" when nothing was)."""
    events = ctx.plugins.events if ctx.plugins is not None else ()
    kinds = sorted({kind for e in events if e["side"] == "input" and e["action"] == "mask" for kind in e["found"]})
    return ", ".join(kinds)


def respond(ctx) -> Response:
    """The response for a request whose stages are done: its stream, or its whole answer."""
    headers = dict(ctx.charge.headers) if ctx.charge is not None else {}
    if ctx.outcome.cache_status:
        headers["X-Cache"] = ctx.outcome.cache_status
    if masked := input_masked(ctx):
        headers[INPUT_MASKED_HEADER] = masked
    if ctx.stream is not None:
        return EventStream(ctx, headers)
    headers["X-Server-Time-Ms"] = f"{(time.perf_counter() - ctx.started) * 1000:.3f}"
    return JSONResponse(ctx.endpoint.response(ctx.served.spec.app_name, ctx.answer), headers=headers)


class Finishing:
    """Sends a response, then finishes the request's context, however the sending ended."""

    def __init__(self, response, ctx):
        self.response, self.ctx = response, ctx

    async def __call__(self, scope, receive, send):
        try:
            await self.response(scope, receive, send)
        finally:
            self.ctx.finish()


class EventStream:
    """A streamed answer as server-sent events, ended by its last output, the timeout or the client leaving.

    The usage the engine always gives is recorded, and passed on only when the client asked for it.
    """

    def __init__(self, ctx, headers: dict):
        self.ctx = ctx
        self.headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        self.headers += [(b"x-accel-buffering", b"no")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def _events(self) -> AsyncIterator[bytes]:
        ctx, outcome = self.ctx, self.ctx.outcome
        outputs = ctx.stream
        writer = ctx.endpoint.chunk_writer(ctx.served.spec.app_name)
        try:
            async with asyncio.timeout_at(ctx.deadline):
                async for output in outputs:
                    if outcome.first_token_at is None and any(c.text for c in output.outputs):
                        outcome.first_token_at = time.perf_counter()
                    if output.has_usage:
                        outcome.prompt_tokens = output.prompt_tokens
                        outcome.completion_tokens = output.completion_tokens or 0
                    for chunk in writer.chunks(output):
                        if chunk["choices"] or "usage" not in chunk or ctx.parsed.include_usage:
                            yield sse(chunk)
        except TimeoutError:
            error = timed_out(ctx)
            outcome.fail(error)
            yield sse(error.body())
        except APIError as e:
            outcome.fail(e)
            yield sse(e.body())
        except Exception:  # noqa: BLE001 - a bug ends the stream with an error event, never a reset connection
            log.exception("unexpected error in a stream", extra={"request_id": ctx.request_id})
            error = APIError(500, f"Internal error; request id {ctx.request_id}.", "server_error")
            outcome.fail(error)
            yield sse(error.body())
        finally:
            await outputs.aclose()  # stops the generation if the client left or the timeout fired
        yield sse("[DONE]")

    async def _send_all(self, send) -> None:
        # Closed here, whatever ends the sending (a cancel while send() waits on a slow client
        # included), so the generation stops before the request's slot is given back.
        async with contextlib.aclosing(self._events()) as events:
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        sending = asyncio.ensure_future(self._send_all(send))
        left = asyncio.ensure_future(until_disconnected(receive))
        done, _ = await asyncio.wait({sending, left}, return_when=asyncio.FIRST_COMPLETED)
        if sending in done:
            left.cancel()
            sending.result()
            return
        sending.cancel()  # the client went away: stop generating for it
        await asyncio.gather(sending, return_exceptions=True)
        self.ctx.outcome.status, self.ctx.outcome.error = 499, "The client went away during the stream."
