"""OpenAI requests: the checks every endpoint shares (strict JSON, numbers in range, known
parameters, text that can be encoded, an upstream's parameters that could change its prompt).

What each endpoint reads of its own (messages or a prompt, its log-probabilities) is the endpoint's
(runtime/serving.py); ``parse`` asks it.
"""

import json
import math

from .engines import GenerationRequest
from .errors import APIError, model_not_found

MAX_STOP_SEQUENCES = 4


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


def number(body, name, default, low, high, kind=float):
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


def boolean(body, name, default=False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"'{name}' must be true or false.", param=name)
    return value


def text(value, param: str) -> str:
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
# Each endpoint's own parameters (the other endpoint's are unknown to it): see serving.py.
CHAT_ONLY = frozenset(
    {
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
    }
)
COMPLETION_ONLY = frozenset({"prompt", "echo", "best_of", "suffix"})
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# An upstream keeps each role as sent, and also reads tool results (function: the older name).
UPSTREAM_ROLES = {**{role: role for role in ROLES}, "tool": "tool", "function": "function"}


def check_parameters(endpoint, body: dict, engine_name: str) -> None:
    """Every parameter is one this endpoint knows, and one the engine implements at the value sent."""
    for name, value in body.items():
        if name not in KNOWN or name in endpoint.others_parameters:
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
            texts.append(text(part.get("text"), param + ".text"))
        return "".join(texts)
    return text(content, param)


def _message_list(body: dict) -> list:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list.", param="messages")
    return messages


def read_messages(body: dict) -> list[dict]:
    """A local engine's chat: each message's role (one of ROLES) and its text."""
    return [{"role": role(m, index), "content": _content(m, index)} for index, m in enumerate(_message_list(body))]


def read_upstream_messages(body: dict) -> list[dict]:
    """An upstream's chat as sent, for the plugins to read and change like a local one's: the messages
    keep every field the upstream reads (content parts, tool calls); their roles are checked."""
    messages = _message_list(body)
    for index, message in enumerate(messages):
        role(message, index, UPSTREAM_ROLES)
    return [dict(m) for m in messages]


def role(message, index: int, roles: dict = ROLES) -> str:
    """A message's role, exactly one of ``roles`` (no "System" or "system ": an upstream would render
    it, and a system prompt's replace mode would not know it for a system message)."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise APIError(400, "Each message needs a 'role' and a 'content'.", param=f"messages[{index}]")
    found = roles.get(message["role"])
    if found is None:
        raise APIError(
            400,
            f"Messages of role {message['role']!r} are not supported (one of: {', '.join(roles)}).",
            param=f"messages[{index}].role",
        )
    return found


def _single_prompt(body: dict):
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    return prompt


def read_prompt(body: dict) -> str:
    """A local engine's prompt: one non-empty string."""
    prompt = _single_prompt(body)
    if isinstance(prompt, list):
        raise APIError(400, "'prompt' must be one string (batches of prompts are not supported).", param="prompt")
    prompt = text(prompt, "prompt")
    if not prompt:
        raise APIError(400, "'prompt' must not be empty.", param="prompt")
    return prompt


def read_upstream_prompt(body: dict) -> str | None:
    """An upstream's prompt, when it is one string (a batch or token ids stay the upstream's to judge;
    the plugins refuse what they cannot read)."""
    if body.get("prompt") is None:
        raise APIError(400, "'prompt' is required.", param="prompt")
    prompt = _single_prompt(body)
    return prompt if isinstance(prompt, str) else None


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP_SEQUENCES
    ):
        raise APIError(
            400, f"'stop' must be a string or a list of up to {MAX_STOP_SEQUENCES} non-empty strings.", param="stop"
        )
    return [text(s, "stop") for s in stop or []]


def requested_model(body) -> str:
    """The body's ``model`` (the app servers and the gateway read it alike). :raise APIError: 400."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if model is None:
        raise APIError(400, "You must provide a model parameter.", param="model")
    if not isinstance(model, str):
        raise APIError(400, "'model' must be a string.", param="model")
    return model


def parse(endpoint, body, served_model: str, max_context: int, engine_name: str, passthrough: bool = False):
    """Validate a request ``body`` for ``endpoint`` (serving.ENDPOINTS), as a GenerationRequest.

    ``passthrough`` (an upstream engine): the upstream judges its own parameters; only what this
    server reads itself is checked.
    :raise APIError: 400 (or 404 for a model it does not serve) with the OpenAI error shape.
    """
    model = requested_model(body)
    if model != served_model:
        raise model_not_found(model)
    request = GenerationRequest(kind=endpoint.kind)
    request.stream = boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object.", param="stream_options")
    request.include_usage = bool(options) and boolean(options, "include_usage")
    request.temperature = number(body, "temperature", 1.0, 0, 2)
    if passthrough:
        endpoint.read_upstream_input(body, request)
        return request

    check_parameters(endpoint, body, engine_name)
    endpoint.read_input(body, request)
    number(body, "n", 1, 1, 1, int)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    request.max_tokens = number({"max_tokens": limit}, "max_tokens", endpoint.default_max_tokens, 1, max_context, int)
    request.min_tokens = number(body, "min_tokens", 0, 0, request.max_tokens, int)
    request.top_p = number(body, "top_p", 1.0, 0, 1)
    if request.top_p == 0:
        raise APIError(400, "'top_p' must be greater than 0.", param="top_p")
    request.seed = number(body, "seed", None, -(2**63), 2**63 - 1, int)
    request.stop = _stop(body)
    endpoint.read_logprobs(body, request)
    return request


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


# Parameters that return the reply's tokens besides its text (each maps to the values that don't).
REVEALING = {"logprobs": (None, False), "top_logprobs": (None, 0), "return_token_ids": (None, False)}


def check_revealing_parameters(body: dict) -> None:
    """A request whose reply the application's output plugins rewrite (mask or cut short): refuse a
    parameter that would return the reply's tokens as generated, around the plugins.

    :raise APIError: 400 naming the parameter.
    """
    for name, unrevealing in REVEALING.items():
        value = body.get(name)
        if not any(value is v or (type(value) is type(v) and value == v) for v in unrevealing):
            raise APIError(
                400,
                f"'{name}' is not accepted by this application: its plugins rewrite the reply, and '{name}' "
                "would return the reply's tokens as generated.",
                param=name,
                code="unsupported_parameter",
            )
