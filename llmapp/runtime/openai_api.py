"""The OpenAI wire format: request parsing and validation, response and chunk shapes, errors.

Shapes follow OpenAI's published OpenAPI document (CreateChatCompletionResponse,
CreateCompletionResponse, CreateChatCompletionStreamResponse, Model, Error): every field it marks
required is present, and every value it enumerates is one of its values.
"""

import json
import math
import time
import uuid
from dataclasses import dataclass, field

SAMPLING_EPS = 1e-5  # a temperature below this samples greedily (as vLLM does): no division by ~0
MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = {"chat": 20, "completion": 5}
LOGPROB_FLOOR = -9999.0  # OpenAI's value for "very unlikely"; JSON has no -Infinity


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def model_not_found(name) -> APIError:
    return APIError(404, f"The model `{name}` does not exist or you do not have access to it.", code="model_not_found")


# --- requests -------------------------------------------------------------------------------------


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
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    @property
    def deterministic(self) -> bool:
        """Greedy decoding: the same request always gets the same answer, so it may be cached."""
        return self.greedy

    def sampling_key(self) -> tuple:
        """Requests with equal keys can share one forward pass."""
        if self.greedy:
            return (0.0, 1.0, self.min_tokens, None)
        return (self.temperature, self.top_p, self.min_tokens, self.seed)


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON value")


def load_json(raw: bytes):
    """Parse a request body as strict JSON (no NaN or Infinity).

    :raise APIError: 400 when it is not JSON, or nested too deeply to parse.
    """
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as e:
        raise APIError(400, "The request body is nested too deeply.") from e
    except ValueError as e:  # includes UnicodeDecodeError and JSONDecodeError
        raise APIError(400, f"The request body is not valid JSON: {e}.") from e


def _number(body, name, default, low, high, kind=float):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise APIError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}.", param=name)
    if kind is int and value != int(value):
        raise APIError(400, f"'{name}' must be an integer.", param=name)
    if not low <= value <= high:
        raise APIError(400, f"'{name}' must be between {low} and {high}.", param=name)
    return kind(value)


def _boolean(body, name, default=False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false.", param=name)
    return value


def _text(value, param: str) -> str:
    """A string that can be encoded (JSON allows lone surrogates; UTF-8 and tokenizers do not)."""
    if not isinstance(value, str):
        raise APIError(400, f"'{param}' must be a string.", param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise APIError(400, f"'{param}' contains invalid Unicode (a lone surrogate).", param=param) from e
    return value


# Parameters of OpenAI's API that the local engine does not implement: refused by name rather than
# ignored. Each maps to the values that mean "not used", which are accepted.
UNSUPPORTED = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False),  # meaningless without tools
    "logit_bias": (None, {}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "verbosity": (None,),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "response_format": (None, {"type": "text"}),
}
# Accepted and without effect on the answer (bookkeeping for the caller).
IGNORED = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
READ = {
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "min_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
}
KNOWN = READ | IGNORED | set(UNSUPPORTED)
# Each endpoint's own parameters: the other endpoint's are unknown to it.
ONLY = {
    "chat": {
        "messages",
        "max_completion_tokens",
        "top_logprobs",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "audio",
        "modalities",
        "prediction",
        "reasoning_effort",
        "web_search_options",
        "verbosity",
        "response_format",
        "metadata",
        "store",
        "service_tier",
    },
    "completion": {"prompt", "echo", "best_of", "suffix"},
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# An upstream keeps each role as sent, and also reads tool results (function: the older name).
UPSTREAM_ROLES = {**{role: role for role in ROLES}, "tool": "tool", "function": "function"}


def _check_parameters(kind: str, body: dict, engine_name: str) -> None:
    other = ONLY["completion" if kind == "chat" else "chat"]
    for name, value in body.items():
        if name not in KNOWN or name in other:
            raise APIError(400, f"Unrecognized request argument supplied: {name}", param=name)
        if name in UNSUPPORTED and value not in UNSUPPORTED[name]:
            raise APIError(
                400,
                f"'{name}' is not supported by this application's engine ({engine_name}).",
                param=name,
                code="unsupported_parameter",
            )


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    param = f"messages[{index}].content"
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(400, f"Only text content parts are supported (got {kind!r}).", param=param)
            texts.append(_text(part.get("text"), param + ".text"))
        return "".join(texts)
    return _text(content, param)


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list.", param="messages")
    return [{"role": _role(m, index), "content": _content(m, index)} for index, m in enumerate(messages)]


def _role(message, index: int, roles: dict = ROLES) -> str:
    """A message's role, exactly one of ``roles`` (no "System" or "system ": an upstream would render
    it, and a system prompt's replace mode would not know it for a system message)."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise APIError(400, "Each message needs a 'role' and a 'content'.", param=f"messages[{index}]")
    role = roles.get(message["role"])
    if role is None:
        raise APIError(
            400,
            f"Messages of role {message['role']!r} are not supported (one of: {', '.join(roles)}).",
            param=f"messages[{index}].role",
        )
    return role


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise APIError(400, "'prompt' must be one string (batches of prompts are not supported).", param="prompt")
    prompt = _text(prompt, "prompt")
    if not prompt:
        raise APIError(400, "'prompt' must not be empty.", param="prompt")
    return prompt


def parse(kind: str, body, served_model: str, max_context: int, engine_name: str, passthrough: bool = False):
    """Validate a /v1/chat/completions or /v1/completions body.

    ``passthrough`` (an upstream engine): the upstream judges its own parameters; only what this
    server reads itself is checked.
    :raise APIError: 400 (or 404 for a model it does not serve) with the OpenAI error shape.
    """
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise APIError(400, "You must provide a model parameter.", param="model")
    if not isinstance(model, str):
        raise APIError(400, "'model' must be a string.", param="model")
    if model != served_model:
        raise model_not_found(model)
    request = GenerationRequest(kind=kind)
    request.stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object.", param="stream_options")
    request.include_usage = bool(options) and _boolean(options, "include_usage")
    request.temperature = _number(body, "temperature", 1.0, 0, 2)
    if passthrough:
        _passthrough_input(kind, body, request)
        return request

    _check_parameters(kind, body, engine_name)
    if kind == "chat":
        request.messages = _messages(body)
        default_max = 256
    else:
        request.prompt = _prompt(body)
        default_max = 16
    _number(body, "n", 1, 1, 1, int)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    request.max_tokens = _number({"max_tokens": limit}, "max_tokens", default_max, 1, max_context, int)
    request.min_tokens = _number(body, "min_tokens", 0, 0, request.max_tokens, int)
    request.top_p = _number(body, "top_p", 1.0, 0, 1)
    if request.top_p == 0:
        raise APIError(400, "'top_p' must be greater than 0.", param="top_p")
    request.seed = _number(body, "seed", None, -(2**63), 2**63 - 1, int)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP_SEQUENCES
    ):
        raise APIError(
            400, f"'stop' must be a string or a list of up to {MAX_STOP_SEQUENCES} non-empty strings.", param="stop"
        )
    request.stop = [_text(s, "stop") for s in stop or []]
    _logprobs(kind, body, request)
    return request


def _passthrough_input(kind: str, body: dict, request: GenerationRequest) -> None:
    """An upstream's request: its messages (or prompt) as sent, for the plugins to read and change like
    a local one's. The messages keep every field the upstream reads (content parts, tool calls)."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' must be a non-empty list.", param="messages")
        for index, message in enumerate(messages):
            _role(message, index, UPSTREAM_ROLES)
        request.messages = [dict(m) for m in messages]
        return
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "'prompt' is required.", param="prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    # A batch or token ids stay the upstream's to judge; the plugins refuse what they cannot read.
    request.prompt = prompt if isinstance(prompt, str) else None


# An upstream's parameters that its plugins can vouch for: OpenAI's own, and the sampling settings
# vLLM adds, none of which changes the prompt the upstream renders or shows it to the client.
UPSTREAM_SAFE = {
    "chat": {
        "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias",
        "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities", "n",
        "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key", "reasoning_effort",
        "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
        "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    },
    "completion": {
        "model", "prompt", "best_of", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
        "presence_penalty", "seed", "stop", "stream", "stream_options", "temperature", "top_p", "user",
    },
    "both": {
        "top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens", "stop_token_ids",
        "include_stop_str_in_output", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
        "allowed_token_ids", "bad_words", "use_beam_search", "guided_json", "guided_regex", "guided_choice",
        "guided_grammar", "guided_decoding_backend", "guided_whitespace_pattern", "structured_outputs",
        "priority", "request_id",
    },
}  # fmt: skip
# Others, at the value that leaves the prompt as the plugins left it (each one's default).
UPSTREAM_NEUTRAL = {
    "echo": (False,),  # true: the prompt, system prompt and all, comes back
    "suffix": ("",),  # text of the prompt's own, never read by the plugins
    "add_generation_prompt": (True,),
    "continue_final_message": (False,),
    "add_special_tokens": (False,),
    "return_token_ids": (False,),  # the prompt's token ids: the prompt, again
    "return_tokens_as_token_ids": (False,),
}


def check_upstream_parameters(kind: str, body: dict) -> None:
    """An upstream request whose input the application's plugins read (a system prompt, a content
    filter…): refuse a parameter that could change the prompt the upstream renders (``chat_template``,
    ``chat_template_kwargs``, ``continue_final_message``, ``documents``, ``truncate_prompt_tokens``…)
    or return it (``echo``, ``prompt_logprobs``), and any other it does not know, rather than drop it
    behind the client's back.

    :raise APIError: 400 naming the parameter.
    """
    safe = UPSTREAM_SAFE[kind] | UPSTREAM_SAFE["both"]
    for name, value in body.items():
        neutral = UPSTREAM_NEUTRAL.get(name, ())
        if name in safe or value is None or any(value is v or (type(value) is type(v) and value == v) for v in neutral):
            continue
        raise APIError(
            400,
            f"'{name}' is not accepted by this application: its plugins read the input, and '{name}' "
            "could change the prompt the model reads, or return it.",
            param=name,
            code="unsupported_parameter",
        )


def _logprobs(kind: str, body: dict, request: GenerationRequest) -> None:
    top_max = MAX_TOP_LOGPROBS[kind]
    if kind == "chat":
        request.logprobs = _boolean(body, "logprobs")
        request.top_logprobs = _number(body, "top_logprobs", 0, 0, top_max, int)
        if body.get("top_logprobs") is not None and not request.logprobs:
            raise APIError(400, "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    else:  # completions: logprobs is the number of top alternatives (0 = only the chosen token's)
        count = _number(body, "logprobs", None, 0, top_max, int)
        request.logprobs, request.top_logprobs = count is not None, count or 0


# --- responses ------------------------------------------------------------------------------------


@dataclass
class TokenLogprob:
    """One generated token with its log probability and the most likely alternatives at its position."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] | None = None


def _ids(kind):
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24], int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _floor(logprob: float) -> float:
    return max(LOGPROB_FLOOR, logprob)


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(entries: list[TokenLogprob] | None) -> dict | None:
    if entries is None:
        return None
    return {
        "content": [
            {
                "token": entry.token,
                "logprob": _floor(entry.logprob),
                "bytes": _token_bytes(entry.token),
                "top_logprobs": [
                    {"token": token, "logprob": _floor(logprob), "bytes": _token_bytes(token)}
                    for token, logprob in entry.top
                ],
            }
            for entry in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
    """The legacy completions shape; ``offset`` is where the first token starts in the text."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [_floor(entry.logprob) for entry in entries],
        "top_logprobs": [{token: _floor(logprob) for token, logprob in entry.top} for entry in entries],
        "text_offset": offsets,
    }


def response(kind: str, model: str, g: Generation) -> dict:
    response_id, created = _ids(kind)
    if kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": g.text, "refusal": None},
            "finish_reason": g.finish_reason,
            "logprobs": chat_logprobs(g.logprobs),
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": g.text,
            "finish_reason": g.finish_reason,
            "logprobs": completion_logprobs(g.logprobs),
        }
        obj = "text_completion"
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(g.prompt_tokens, g.completion_tokens),
    }


def model_object(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "llmapp"}


class ChunkWriter:
    """The chunks (dicts) of one streamed response, in OpenAI's shape."""

    def __init__(self, kind: str, model: str):
        self.kind, self.model = kind, model
        self.id, self.created = _ids(kind)
        self.offset = 0  # completions' logprobs count text offsets across chunks

    def _chunk(self, choices, **extra) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices, **extra}

    def first(self) -> dict | None:
        if self.kind == "chat":
            return self._chunk(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
            )
        return None

    def delta(self, text: str, logprobs: list[TokenLogprob] | None = None) -> dict:
        if self.kind == "chat":
            choice = {
                "index": 0,
                "delta": {"content": text},
                "logprobs": chat_logprobs(logprobs),
                "finish_reason": None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": completion_logprobs(logprobs, self.offset),
                "finish_reason": None,
            }
            self.offset += len(text)
        return self._chunk([choice])

    def last(self, finish_reason: str) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": "", "finish_reason": finish_reason, "logprobs": None}
        return self._chunk([choice])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict:
        return self._chunk([], usage=usage(prompt_tokens, completion_tokens))


def sse(data: dict | str) -> bytes:
    """One server-sent event: a chunk, an error, or "[DONE]"."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
