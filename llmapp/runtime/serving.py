"""The serving layer: one class per OpenAI endpoint turns engines' neutral outputs into that
endpoint's wire shapes (vLLM's serving_chat.py / serving_completion.py are the model).

Shapes follow OpenAI's published OpenAPI document (CreateChatCompletionResponse,
CreateCompletionResponse, CreateChatCompletionStreamResponse, Model): every field it marks required is
present, and every value it enumerates is one of its values. What an endpoint reads from a request is
its own too (``read_input``, ``read_logprobs``); the checks every endpoint shares are openai_api.py's.
"""

import json
import time
import uuid

from . import openai_api
from .engines import CompletionOutput, GenerationRequest, RequestOutput, TokenLogprob
from .errors import APIError

LOGPROB_FLOOR = -9999.0  # OpenAI's value for "very unlikely"; JSON has no -Infinity


def usage(prompt_tokens: int, completion_tokens: int, details: dict | None = None) -> dict:
    return {
        **(details or {}),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _floor(logprob: float) -> float:
    return max(LOGPROB_FLOOR, logprob)


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def model_object(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "llmapp"}


def sse(data: dict | str) -> bytes:
    """One server-sent event: a chunk, an error, or "[DONE]"."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _logprobs_as_sent(output: CompletionOutput):
    """An upstream's log-probabilities as it sent them (None when it sent none)."""
    return output.choice_extra.get("logprobs")


class Endpoint:
    """One endpoint's wire format."""

    kind: str  # the GenerationRequest's kind
    operation: str  # OpenTelemetry's gen_ai.operation.name, for the metrics
    path: str  # under /v1
    object: str
    chunk_object: str
    id_prefix: str
    default_max_tokens: int
    max_top_logprobs: int
    others_parameters: frozenset[str]  # the other endpoint's own parameters: unknown here

    def new_id(self) -> tuple[str, int]:
        return self.id_prefix + uuid.uuid4().hex[:24], int(time.time())

    # requests: what this endpoint reads ----------------------------------------------------------

    def parse(self, body, served_model: str, max_context: int, engine_name: str, passthrough: bool = False):
        """:raise APIError: see openai_api.parse."""
        return openai_api.parse(self, body, served_model, max_context, engine_name, passthrough)

    def read_input(self, body: dict, request: GenerationRequest) -> None:
        """A local engine's input: what it generates from."""
        raise NotImplementedError

    def read_upstream_input(self, body: dict, request: GenerationRequest) -> None:
        """An upstream's input, as sent, for the plugins."""
        raise NotImplementedError

    def read_logprobs(self, body: dict, request: GenerationRequest) -> None:
        raise NotImplementedError

    # answers -------------------------------------------------------------------------------------

    def logprobs(self, entries: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
        raise NotImplementedError

    def _logprobs_of(self, output: CompletionOutput, offset: int = 0):
        """The choice's log-probabilities: the engine's, or an upstream's as it sent them."""
        return self.logprobs(output.logprobs, offset) if output.logprobs is not None else _logprobs_as_sent(output)

    def choice(self, output: CompletionOutput) -> dict:
        """A whole answer's choice."""
        raise NotImplementedError

    def delta_choice(self, output: CompletionOutput, offset: int) -> dict:
        """A streamed choice's news (its finish comes in a chunk of its own: last_choice)."""
        raise NotImplementedError

    def last_choice(self, output: CompletionOutput) -> dict:
        """A streamed choice's last chunk: its finish reason, and the choice's own fields (stop_reason)."""
        raise NotImplementedError

    def first_choice(self, index: int) -> dict | None:
        """What a streamed choice starts with before any text, if anything."""
        return None

    def response(self, model: str, answer: RequestOutput) -> dict:
        """A whole answer."""
        response_id, created = self.new_id()
        extra = dict(answer.extra)
        details = extra.pop("usage", None)
        return {
            "id": response_id,
            "created": created,
            **extra,
            "object": self.object,
            "model": model,
            "choices": [self.choice(output) for output in answer.outputs],
            "usage": usage(answer.prompt_tokens or 0, answer.completion_tokens or 0, details),
        }

    def chunk_writer(self, model: str) -> "ChunkWriter":
        return ChunkWriter(self, model)


def _own(output: CompletionOutput, *leave_out: str) -> dict:
    return {k: v for k, v in output.choice_extra.items() if k not in leave_out}


class ChatEndpoint(Endpoint):
    kind, path, object, chunk_object = "chat", "/v1/chat/completions", "chat.completion", "chat.completion.chunk"
    id_prefix, default_max_tokens, max_top_logprobs = "chatcmpl-", 256, 20
    operation = "chat"
    others_parameters = openai_api.COMPLETION_ONLY

    def read_input(self, body, request):
        request.messages = openai_api.read_messages(body)

    def read_upstream_input(self, body, request):
        request.messages = openai_api.read_upstream_messages(body)

    def read_logprobs(self, body, request):
        request.logprobs = openai_api.boolean(body, "logprobs")
        request.top_logprobs = openai_api.number(body, "top_logprobs", 0, 0, self.max_top_logprobs, int)
        if body.get("top_logprobs") is not None and not request.logprobs:
            raise APIError(400, "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")

    def logprobs(self, entries, offset=0):
        if entries is None:
            return None

        def one(token: str, logprob: float) -> dict:
            return {"token": token, "logprob": _floor(logprob), "bytes": _token_bytes(token)}

        return {
            "content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries],
            "refusal": None,
        }

    def choice(self, output):
        text = output.text if output.text or "content" not in output.extra else output.extra["content"]
        return {
            **_own(output),
            "index": output.index,
            "message": {"refusal": None, **output.extra, "role": "assistant", "content": text},
            "finish_reason": output.finish_reason,
            "logprobs": self._logprobs_of(output),
        }

    def delta_choice(self, output, offset):
        delta = dict(output.extra)
        if output.text or not delta:
            delta["content"] = output.text
        return {
            "index": output.index,
            "delta": delta,
            "logprobs": self._logprobs_of(output),
            "finish_reason": None,
        }

    def last_choice(self, output):
        own = _own(output, "logprobs")
        return {**own, "index": output.index, "delta": {}, "logprobs": None, "finish_reason": output.finish_reason}

    def first_choice(self, index):
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}


class CompletionEndpoint(Endpoint):
    kind, path, object, chunk_object = "completion", "/v1/completions", "text_completion", "text_completion"
    id_prefix, default_max_tokens, max_top_logprobs = "cmpl-", 16, 5
    operation = "text_completion"
    others_parameters = openai_api.CHAT_ONLY

    def read_input(self, body, request):
        request.prompt = openai_api.read_prompt(body)

    def read_upstream_input(self, body, request):
        request.prompt = openai_api.read_upstream_prompt(body)

    def read_logprobs(self, body, request):
        # logprobs is the number of top alternatives here (0 = only the chosen token's)
        count = openai_api.number(body, "logprobs", None, 0, self.max_top_logprobs, int)
        request.logprobs, request.top_logprobs = count is not None, count or 0

    def logprobs(self, entries, offset=0):
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

    def choice(self, output):
        return {
            **_own(output),
            "index": output.index,
            "text": output.text,
            "finish_reason": output.finish_reason,
            "logprobs": self._logprobs_of(output),
        }

    def delta_choice(self, output, offset):
        logprobs = self._logprobs_of(output, offset)
        return {"index": output.index, "text": output.text, "finish_reason": None, "logprobs": logprobs}

    def last_choice(self, output):
        own = _own(output, "logprobs")
        return {**own, "index": output.index, "text": "", "finish_reason": output.finish_reason, "logprobs": None}


ENDPOINTS: dict[str, Endpoint] = {endpoint.kind: endpoint for endpoint in (ChatEndpoint(), CompletionEndpoint())}


class ChunkWriter:
    """The chunks (dicts) of one streamed answer, from the engine's outputs: one id and creation time for
    all of them (an upstream's own, from its first event), each choice started (chat: the assistant's
    role) before its first news, its finish in a chunk of its own, the usage last."""

    def __init__(self, endpoint: Endpoint, model: str):
        self.endpoint, self.model = endpoint, model
        self.id, self.created = endpoint.new_id()
        self.first = True
        self.started: set[int] = set()  # the choices whose first chunk was written
        self.offsets: dict[int, int] = {}  # completions' logprobs count text offsets across chunks, per choice

    def _chunk(self, choices: list, extra: dict, **fields) -> dict:
        return {
            "id": self.id,
            "created": self.created,
            **extra,
            "object": self.endpoint.chunk_object,
            "model": self.model,
            "choices": choices,
            **fields,
        }

    def _adopt(self, extra: dict) -> dict:
        """The response-level fields an upstream sent with an event; its id and time become the stream's."""
        extra = {k: v for k, v in extra.items() if k != "usage"}
        if self.first:
            self.first = False
            if isinstance(extra.get("id"), str):
                self.id = extra["id"]
            if isinstance(extra.get("created"), int):
                self.created = extra["created"]
        extra.pop("id", None)
        extra.pop("created", None)
        return extra

    def chunks(self, output: RequestOutput) -> list[dict]:
        """An output as chunks."""
        extra = self._adopt(output.extra)
        found = []
        for choice in output.outputs:
            if choice.index not in self.started:
                self.started.add(choice.index)
                if (first := self.endpoint.first_choice(choice.index)) is not None:
                    found.append(self._chunk([first], extra))
        if news := [c for c in output.outputs if c.has_news]:
            choices = []
            for c in news:
                offset = self.offsets.get(c.index, 0)
                choices.append(self.endpoint.delta_choice(c, offset))
                self.offsets[c.index] = offset + len(c.text)
            found.append(self._chunk(choices, extra))
        if ends := [c for c in output.outputs if c.finish_reason]:
            found.append(self._chunk([self.endpoint.last_choice(c) for c in ends], extra))
        if output.has_usage:
            counted = usage(output.prompt_tokens, output.completion_tokens or 0, output.extra.get("usage"))
            found.append(self._chunk([], extra, usage=counted))
        if not found and extra:  # an upstream's event of its own fields only (a content filter's results)
            found.append(self._chunk([], extra))
        return found
