"""The upstream engine: an OpenAI-compatible server someone else runs (vLLM, Ollama, TGI, llama.cpp, a
cloud API), forwarded with the upstream's model name and API key.

The request goes out as the client sent it (after the input plugins), and the answer comes back into
neutral outputs: text and finish reasons where the pipeline and the plugins read them, the usage, and
whatever else the upstream sent (tool calls, reasoning, its log-probabilities and ids, usage details)
kept as it came, for the serving layer to write back. A stream is read event by event, each event one
output. What the upstream sends is not trusted to be well formed: a value of the wrong type is read as
absent, never as a crash.
"""

import json
import logging
from collections.abc import AsyncIterator

from ..errors import APIError
from . import CompletionOutput, Engine, GenerationRequest, Prepared, RequestOutput

log = logging.getLogger("llmapp.server")
PATHS = {"chat": "chat/completions", "completion": "completions"}
# What the serving layer writes itself: never copied from the upstream's answer.
OWN_FIELDS = {"object", "model", "choices", "usage"}
CHOICE_FIELDS = {"index", "message", "delta", "text", "finish_reason"}
USAGE_FIELDS = {"prompt_tokens", "completion_tokens", "total_tokens"}


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def read_choice(choice: dict, position: int) -> CompletionOutput:
    """One choice of an upstream's answer or chunk."""
    message = choice.get("message") if "message" in choice else choice.get("delta")
    extra = {}
    if isinstance(message, dict):  # chat: the text is the content; other fields pass on as they are
        text = message.get("content")
        extra = {k: v for k, v in message.items() if k not in ("role", "content")}
        if "content" in message and text is None:
            extra["content"] = None  # a tool call's null content stays null
    else:
        text = choice.get("text")
    index = choice.get("index")
    finish_reason = choice.get("finish_reason")
    return CompletionOutput(
        index=index if isinstance(index, int) and not isinstance(index, bool) else position,
        text=text if isinstance(text, str) else "",
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        extra=extra,
        choice_extra={k: v for k, v in choice.items() if k not in CHOICE_FIELDS},  # its logprobs as sent too
    )


def read_output(data: dict) -> RequestOutput:
    """An upstream's answer (or one chunk of its stream) as a neutral output."""
    choices = data.get("choices") if isinstance(data.get("choices"), list) else []
    output = RequestOutput([read_choice(c, i) for i, c in enumerate(choices) if isinstance(c, dict)])
    output.extra = {k: v for k, v in data.items() if k not in OWN_FIELDS}
    usage = data.get("usage")
    if isinstance(usage, dict):
        output.prompt_tokens = _count(usage.get("prompt_tokens"))
        output.completion_tokens = _count(usage.get("completion_tokens"))
        if details := {k: v for k, v in usage.items() if k not in USAGE_FIELDS}:
            output.extra["usage"] = details
    return output


class UpstreamEngine(Engine):
    """Forwards with aiohttp: in bench/serving.py's profile, httpx's async client spent more CPU per
    request than the rest of the proxy together, and on a shared machine that CPU is latency."""

    name = "openai"
    passthrough = True
    max_context = 10_000_000  # the upstream enforces its own

    def __init__(self, base_url: str, upstream_model: str, api_key: str | None, timeout_s: float, served_name=""):
        super().__init__(served_name)
        self.base_url, self.upstream_model = base_url.rstrip("/"), upstream_model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self.session = None  # made on the server's event loop, at the first request
        self.forwarded = 0

    def load(self) -> None:
        import httpx

        # The upstream must answer; a wrong URL fails the deploy with a clear reason.
        try:
            response = httpx.get(f"{self.base_url}/models", headers=self.headers, timeout=10)
        except httpx.HTTPError as e:
            raise ConnectionError(f"The upstream {self.base_url} does not answer: {e}") from e
        if response.status_code in (401, 403):
            raise PermissionError(f"The upstream {self.base_url} refused the API key ({response.status_code}).")
        log.info("upstream %s answers (%d), model %s", self.base_url, response.status_code, self.upstream_model)

    def stats(self) -> dict:
        return {"forwarded": self.forwarded, "upstream": self.base_url}

    def _session(self):
        import aiohttp

        if self.session is None:
            self.session = aiohttp.ClientSession(
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s + 5, connect=10),
                connector=self._connector(),
            )
        return self.session

    def _connector(self):
        import aiohttp

        return aiohttp.TCPConnector(limit=1024, keepalive_timeout=30)

    def _url(self, request: GenerationRequest) -> str:
        return f"{self.base_url}/{PATHS[request.kind]}"

    @staticmethod
    def _error(status: int, text: bytes | dict) -> APIError:
        """The upstream's error, in its own words when it gave them in OpenAI's shape."""
        try:
            error = (json.loads(text) if isinstance(text, bytes) else text)["error"]
            return APIError(
                status,
                str(error.get("message", "upstream error")),
                str(error.get("type", "upstream_error")),
                error.get("code") if isinstance(error.get("code"), str) else None,
                error.get("param") if isinstance(error.get("param"), str) else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return APIError(502, f"The upstream answered {status}.", "upstream_error")

    def _upstream_body(self, prepared: Prepared) -> dict:
        body = {**prepared.body, "model": self.upstream_model}
        if prepared.request.stream:  # usage is always asked for (and recorded); the client gets it if it asked
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return body

    async def complete(self, prepared: Prepared) -> RequestOutput:
        import aiohttp

        self.forwarded += 1
        try:
            async with self._session().post(self._url(prepared.request), json=self._upstream_body(prepared)) as answer:
                content = await answer.read()
        except aiohttp.ClientError as e:
            raise APIError(502, f"The upstream did not answer: {e}", "upstream_error") from e
        if answer.status != 200:
            raise self._error(answer.status, content)
        try:
            data = json.loads(content)
        except ValueError as e:
            raise APIError(502, "The upstream's answer is not JSON.", "upstream_error") from e
        if not isinstance(data, dict):
            raise APIError(502, "The upstream's answer is not a JSON object.", "upstream_error")
        output = read_output(data)
        if not output.has_usage:
            output.prompt_tokens = output.completion_tokens = 0
        return output

    async def stream(self, prepared: Prepared) -> AsyncIterator[RequestOutput]:
        import aiohttp

        self.forwarded += 1
        try:
            async with self._session().post(self._url(prepared.request), json=self._upstream_body(prepared)) as answer:
                if answer.status != 200:
                    raise self._error(answer.status, await answer.read())
                async for line in answer.content:  # server-sent events, passed on one by one
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue  # comments, event names, blank separators
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        continue
                    if not isinstance(chunk, dict):
                        continue
                    if "error" in chunk:  # the upstream failed half-way: its words, as a broken stream
                        raise self._error(502, chunk)
                    yield read_output(chunk)
        except aiohttp.ClientError as e:
            raise APIError(502, f"The upstream stream broke: {e}", "upstream_error") from e

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
