"""The OpenAI wire format: request parsing, response and chunk shapes, errors."""

import json
import time
import uuid
from dataclasses import dataclass, field


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code=None,
        param=None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class GenerationRequest:
    """What an engine generates from: a chat or a plain prompt, and the sampling settings."""

    kind: str  # "chat" or "completion"
    messages: list | None = None
    prompt: str | None = None
    max_tokens: int = 16
    min_tokens: int = 0  # vLLM's extension: no end-of-text before this many tokens
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False

    @property
    def deterministic(self) -> bool:
        """Greedy decoding: the same request always gets the same answer, so it may be cached."""
        return self.temperature == 0

    def sampling_key(self) -> tuple:
        """Requests with equal keys can share one forward pass."""
        return (self.temperature, self.top_p, self.min_tokens, self.seed)


def _number(body, name, default, low, high, kind=float):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
        raise APIError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}.", param=name)
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low} and {high}.", param=name)
    return kind(value)


def parse(kind: str, body, max_context: int) -> GenerationRequest:
    """Validate a /v1/chat/completions or /v1/completions body.

    :raise APIError: 400 with the OpenAI error shape.
    """
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    request = GenerationRequest(kind=kind)
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' must be a non-empty list.", param="messages")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise APIError(400, "Each message needs a 'role' and a 'content'.", param="messages")
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                message["content"] = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            elif not isinstance(content, str):
                raise APIError(400, "Each message needs a 'role' and a 'content'.", param="messages")
        request.messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        default_max = 256
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string.", param="prompt")
        request.prompt = prompt
        default_max = 16
    if body.get("n", 1) not in (1, None):
        raise APIError(400, "Only n=1 is supported.", param="n")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    request.max_tokens = _number({"max_tokens": limit}, "max_tokens", default_max, 1, max_context, int)
    request.min_tokens = _number(body, "min_tokens", 0, 0, request.max_tokens, int)
    request.temperature = _number(body, "temperature", 1.0, 0, 2)
    request.top_p = _number(body, "top_p", 1.0, 0, 1)
    if request.top_p == 0:
        raise APIError(400, "'top_p' must be greater than 0.", param="top_p")
    seed = body.get("seed")
    request.seed = None if seed is None else _number(body, "seed", 0, -(2**63), 2**63 - 1, int)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
        raise APIError(400, "'stop' must be a string or a list of strings.", param="stop")
    request.stop = stop or []
    request.stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    request.include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return request


@dataclass
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _ids(kind):
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24], int(time.time())


def usage(g: Generation) -> dict:
    return {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    }


def response(kind: str, model: str, g: Generation) -> dict:
    response_id, created = _ids(kind)
    if kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": g.text},
            "finish_reason": g.finish_reason,
            "logprobs": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None}
        obj = "text_completion"
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(g),
    }


class ChunkWriter:
    """Server-sent event chunks of one streamed response, in OpenAI's shape."""

    def __init__(self, kind: str, model: str):
        self.kind, self.model = kind, model
        self.id, self.created = _ids(kind)

    def _event(self, choices, **extra) -> str:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        data = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices, **extra}
        return f"data: {json.dumps(data)}\n\n"

    def first(self) -> str | None:
        if self.kind == "chat":
            return self._event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        return None

    def delta(self, text: str) -> str:
        if self.kind == "chat":
            return self._event([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
        return self._event([{"index": 0, "text": text, "finish_reason": None, "logprobs": None}])

    def last(self, g: Generation, include_usage: bool) -> str:
        if self.kind == "chat":
            choice = {"index": 0, "delta": {}, "finish_reason": g.finish_reason}
        else:
            choice = {"index": 0, "text": "", "finish_reason": g.finish_reason, "logprobs": None}
        out = self._event([choice])
        if include_usage:
            out += self._event([], usage=usage(g))
        return out + "data: [DONE]\n\n"

    @staticmethod
    def error(error: APIError) -> str:
        return f"data: {json.dumps(error.body())}\n\ndata: [DONE]\n\n"
