"""Engines: where an app server's completions come from, behind one protocol.

An engine takes a neutral ``GenerationRequest`` (messages or a prompt, and sampling settings) and
answers with neutral outputs: ``RequestOutput``s holding one ``CompletionOutput`` per choice (text,
token ids, log-probabilities, finish reason) and the token usage. It knows nothing of OpenAI's wire
format: the serving layer (runtime/serving.py, one class per endpoint) makes the response and chunk
shapes, so the pipeline and the plugins see text. vLLM's ``EngineClient`` with its
``RequestOutput``/``CompletionOutput`` is the model.

- ``transformers.TransformersEngine``: a local Hugging Face directory, batched (runtime/engines/batching.py).
- ``upstream.UpstreamEngine``: an OpenAI-compatible upstream, forwarded; its answers are read back into
  neutral outputs, with the fields it adds (tool calls, reasoning, its ids) kept for the serving layer.

Which engine a server runs is the engine table's business (llmapp/engines/): each kind builds its own.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

SAMPLING_EPS = 1e-5  # a temperature below this samples greedily (as vLLM does): no division by ~0


@dataclass
class GenerationRequest:
    """What an engine generates from: a chat or a plain prompt, and the sampling settings."""

    kind: str  # "chat" (messages) or "completion" (a prompt)
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


@dataclass
class TokenLogprob:
    """One generated token with its log probability and the most likely alternatives at its position."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class CompletionOutput:
    """One choice of an answer: all of it, or (streamed) what is new since the last output."""

    index: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # set on the choice's last output
    # What an upstream sent besides, written back as it came: its message's (or delta's) other fields
    # (tool calls, reasoning, refusal…), and the choice's own (vLLM's stop_reason, its logprobs as sent).
    extra: dict = field(default_factory=dict)
    choice_extra: dict = field(default_factory=dict)

    @property
    def has_news(self) -> bool:
        """Whether it adds to the answer (text, fields, log-probabilities), its finish aside."""
        return bool(self.text or self.extra or self.logprobs or self.choice_extra.get("logprobs"))

    @property
    def says_something(self) -> bool:
        """Whether a stream has anything to send for it: news, or its end."""
        return self.has_news or self.finish_reason is not None


@dataclass
class RequestOutput:
    """What an engine answers: the whole answer, or one step of a stream (then usage comes last)."""

    outputs: list[CompletionOutput] = field(default_factory=list)
    prompt_tokens: int | None = None  # the usage, where known: always on a whole answer
    completion_tokens: int | None = None
    extra: dict = field(default_factory=dict)  # an upstream's response-level fields (its id, fingerprint…)

    @property
    def has_usage(self) -> bool:
        return self.prompt_tokens is not None


def one(output: CompletionOutput, prompt_tokens: int | None = None, completion_tokens: int | None = None):
    """A RequestOutput of a single choice."""
    return RequestOutput([output], prompt_tokens, completion_tokens)


@dataclass
class Prepared:
    """A validated request, ready for the engine: its body and, for a local model, its prompt's tokens."""

    request: GenerationRequest
    body: dict
    prompt_ids: list[int] | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids or ())


class Engine:
    """The protocol every engine follows (the base answers the calls an engine may leave out)."""

    name = "engine"
    passthrough = False  # True: the upstream judges the request's parameters itself
    status = "loading"  # loading → warming_up → ready, or failed
    error = None
    max_context = 4096

    def __init__(self, served_name: str):
        self.served_name = served_name  # the model name clients send and get back

    def load(self) -> None:
        """Blocking: load weights or check the upstream. Runs in a thread while /health says so."""

    def warm_up(self) -> None:
        pass

    def stats(self) -> dict:
        return {}

    async def prepare(self, request: GenerationRequest, body: dict) -> Prepared:
        """CPU work before generating (tokenising), off the event loop."""
        return Prepared(request, body)

    async def complete(self, prepared: Prepared) -> RequestOutput:
        """The whole answer, with its usage."""
        raise NotImplementedError

    def stream(self, prepared: Prepared) -> AsyncIterator[RequestOutput]:
        """The answer as it is generated: new text per output, finish reasons on each choice's last,
        the usage on an output of its own or on the last one."""
        raise NotImplementedError

    async def close(self) -> None:
        pass
