"""An application's plugin chain as its server runs it: built from the document the platform publishes,
applied to each request in the chain's order.

The order is the user's, and it holds on both sides of the model: on the way in, each plugin sees the
request as the plugins before it left it (a system prompt, then PII redaction, also redacts what the
prompt added; redaction before retrieval searches with the redacted question); on the way out, each
output-side plugin rewrites the reply as the ones before it let it through, and a webhook reports
the input and output as they were at its place in the chain (redaction before the webhook: it never
sees the addresses).

A chain never changes once built: the server swaps in a new one between requests, and a request
keeps the chain it started with, so a change never reaches a request half-way.
"""

import copy
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from . import retrieval
from .content_filter import ContentFilter
from .pii import PiiRedactor
from .rewrite import Matcher, Piece, StreamRewriter, cancellable, checkpoint, rewrite
from .system_prompt import Added, SystemPrompt, content_text


@dataclass(frozen=True)
class Step:
    """One attached plugin: its name, type and effective configuration, and what it runs."""

    name: str
    type: str
    config: dict
    prompt: SystemPrompt | None = None
    matcher: Matcher | None = None  # content filter and PII: what they look for
    block: bool = False
    input_side: bool = False
    output_side: bool = False
    index: retrieval.Index | None = None

    @classmethod
    def build(cls, name: str, type_: str, config: dict, documents: list[tuple[str, str]] = ()) -> "Step":
        apply_to = config.get("apply_to", "both")
        sides = {"input_side": apply_to in ("input", "both"), "output_side": apply_to in ("output", "both")}
        if type_ == "system_prompt":
            return cls(name, type_, config, prompt=SystemPrompt.from_config(config))
        if type_ == "content_filter":
            block = config.get("action", "block") == "block"
            return cls(name, type_, config, matcher=ContentFilter.from_config(config), block=block, **sides)
        if type_ == "pii_redaction":
            return cls(name, type_, config, matcher=PiiRedactor.from_config(config), **sides)
        if type_ == "knowledge_retrieval":
            index = retrieval.Index.from_documents(list(documents), int(config.get("passage_chars", 800)))
            return cls(name, type_, config, index=index)
        if type_ == "webhook_audit":
            return cls(name, type_, config)
        raise ValueError(f"unknown plugin type {type_!r}")


@dataclass(frozen=True)
class Chain:
    version: str = ""
    steps: tuple[Step, ...] = ()

    @classmethod
    def build(cls, document: dict) -> "Chain":
        """From the platform's document: {"version", "plugins": [{"name", "type", "config", "documents"}]}."""
        steps = tuple(
            Step.build(p["name"], p["type"], p.get("config") or {}, [tuple(d) for d in p.get("documents") or ()])
            for p in document.get("plugins") or ()
        )
        return cls(str(document.get("version", "")), steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    @property
    def rewrites_output(self) -> bool:
        return any(step.output_side for step in self.steps) or self.webhooks_want_output

    @property
    def webhooks_want_output(self) -> bool:
        return any(s.type == "webhook_audit" and s.config.get("include_content") for s in self.steps)

    @property
    def reads_input(self) -> bool:
        """Whether any plugin reads or changes the request's input."""
        return any(
            s.prompt is not None
            or s.index is not None
            or (s.matcher is not None and s.input_side)
            or (s.type == "webhook_audit" and s.config.get("include_content"))
            for s in self.steps
        )

    def webhooks(self) -> list[Step]:
        return [step for step in self.steps if step.type == "webhook_audit"]


class Blocked(Exception):
    """An input the content filter blocks."""

    def __init__(self, step: Step):
        super().__init__(step.name)
        self.step = step


@dataclass
class PluginRun:
    """What the chain did to one request: for its log line, its metrics and its webhooks."""

    chain: Chain
    seconds: dict[str, float] = field(default_factory=dict)  # plugin name → time spent on this request
    events: list[dict] = field(default_factory=list)  # policy events: {plugin, action, side, found}
    passages: list[str] = field(default_factory=list)  # "document#n" of each passage added
    inputs: dict[int, str] = field(default_factory=dict)  # step index → the user's input as it saw it
    outputs: dict[int, list[str]] = field(default_factory=dict)  # step index → the reply as it saw it
    tools: dict | None = None  # an upstream request's tools (tools, functions, tool_choice) as the chain left them

    def timed(self, step: Step, started: float) -> None:
        self.seconds[step.name] = self.seconds.get(step.name, 0.0) + time.perf_counter() - started

    def event(self, step: Step, action: str, side: str, spans) -> None:
        kinds = sorted({span.kind for span in spans})
        self.events.append({"plugin": step.name, "action": action, "side": side, "found": kinds})

    # --- the way in -------------------------------------------------------------------------------

    def apply_input(
        self,
        kind: str,
        messages: list[dict] | None,
        prompt: str | None,
        cancel: threading.Event | None = None,
        tools: dict | None = None,
    ):
        """The request's messages (chat) or prompt (completion) after the chain's input side; an
        upstream request's ``tools`` (its tools, functions and tool_choice: the upstream shows them to
        the model) are scanned as well, and left in ``self.tools``.

        :raise Blocked: a content filter blocks the input.
        :raise rewrite.Cancelled: ``cancel`` was set (the request timed out): the chain stops there.
        """
        self.tools = copy.deepcopy(tools) if tools else None
        with cancellable(cancel) if cancel is not None else nullcontext():
            return self._apply_input(kind, messages, prompt)

    def _apply_input(self, kind: str, messages: list[dict] | None, prompt: str | None):
        messages = [copy.deepcopy(m) for m in messages] if messages is not None else None
        for i, step in enumerate(self.chain.steps):
            checkpoint()
            started = time.perf_counter()
            try:
                if step.prompt is not None:
                    if kind == "chat":
                        messages = step.prompt.apply_to_messages(messages)
                    else:
                        prompt = step.prompt.apply_to_prompt(prompt)
                elif step.matcher is not None and step.input_side:
                    messages, prompt = self._rewrite_input(step, messages, prompt)
                elif step.index is not None:
                    messages, prompt = self._retrieve(step, messages, prompt)
                elif step.type == "webhook_audit":
                    self.inputs[i] = _question(messages, prompt)
            finally:
                self.timed(step, started)
        return messages, prompt

    def _rewrite_input(self, step: Step, messages, prompt):
        # Every text of the request the model reads: see text_slots and _tool_slots.
        box = [prompt or ""]
        slots = text_slots(messages) if messages is not None else [(box, 0, box[0])]
        slots += _tool_slots(self.tools)
        spans = []
        for _, _, text in slots:
            checkpoint()
            spans.append(step.matcher.find(text))
        found = [s for per_text in spans for s in per_text]
        if not found:
            return messages, prompt
        if step.block:
            self.event(step, "block", "input", found)
            raise Blocked(step)
        self.event(step, "mask", "input", found)
        for (holder, key, text), per_text in zip(slots, spans, strict=True):
            if not per_text:
                continue
            if isinstance(key, _Key):  # a parameter's name: renamed where it is
                items = list(holder.items())
                holder.clear()
                holder.update((rewrite(text, per_text) if k == text else k, v) for k, v in items)
            else:
                holder[key] = rewrite(text, per_text)
        return messages, (box[0] if messages is None and prompt is not None else prompt)

    def _retrieve(self, step: Step, messages, prompt):
        hits = step.index.search(_question(messages, prompt), int(step.config.get("top_k", 3)))
        if not hits:
            return messages, prompt
        self.passages += [f"{hit.source}#{hit.passage}" for hit in hits]
        passages = "\n\n".join(f"[{n}] ({hit.source}) {hit.text}" for n, hit in enumerate(hits, 1))
        template = step.config.get("template") or "{passages}"
        context = template.replace("{passages}", passages)
        if messages is None:
            return None, f"{context}\n\n{prompt}"
        # The context goes just before the question, after any system message of the request's own.
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages))
        added = Added(role="system", content=context)
        return [*messages[:last_user], added, *messages[last_user:]], prompt

    # --- the way out ------------------------------------------------------------------------------

    def output(self) -> "OutputRewriter":
        return OutputRewriter(self)

    # --- after the request ------------------------------------------------------------------------

    def webhook_summaries(self, record: dict) -> list[tuple[Step, dict]]:
        """Each webhook's summary of the request, with the content as it saw it when it asks for it."""
        from .webhook import summary

        found = []
        for i, step in enumerate(self.chain.steps):
            if step.type != "webhook_audit":
                continue
            seen = {**record, "input": self.inputs.get(i), "output": "".join(self.outputs.get(i, []))}
            found.append((step, summary(seen, bool(step.config.get("include_content")))))
        return found


class OutputRewriter:
    """One choice's reply through the output side of the chain, as whole text or chunk by chunk."""

    def __init__(self, run: PluginRun):
        self.run = run
        self.stages: list[tuple[int, Step, StreamRewriter | None]] = []
        for i, step in enumerate(run.chain.steps):
            if step.matcher is not None and step.output_side:
                self.stages.append((i, step, StreamRewriter(step.matcher, block=step.block)))
            elif step.type == "webhook_audit" and step.config.get("include_content"):
                self.stages.append((i, step, None))  # a tap: it records what reaches it
        self.blocked = False

    def feed(self, text: str) -> str:
        return self._through(text, final=False)

    def close(self) -> str:
        return self._through("", final=True)

    def _through(self, text: str, final: bool) -> str:
        for i, step, rewriter in self.stages:
            if rewriter is None:
                self.run.outputs.setdefault(i, []).append(text)
                continue
            started = time.perf_counter()
            piece = rewriter.feed(text) if text else None
            if final and not (piece and piece.blocked):
                closing = rewriter.close()
                if piece is not None:
                    closing = Piece(piece.text + closing.text, piece.found + closing.found, closing.blocked)
                piece = closing
            self.run.timed(step, started)
            if piece is None:
                return ""
            if piece.found:
                self.run.event(step, "block" if piece.blocked else "mask", "output", piece.found)
            text = piece.text
            if piece.blocked:
                self.blocked = True
                final = True  # what follows in the chain hears the end of the reply now
        return text

    def whole(self, text: str) -> str:
        """A non-streamed reply."""
        return self.feed(text) + ("" if self.blocked else self.close())


def _question(messages: list[dict] | None, prompt: str | None) -> str:
    if messages is None:
        return prompt or ""
    return next((content_text(m) for m in reversed(messages) if m.get("role") == "user"), "")


# Fields of a message, besides its content, whose text an upstream may show the model.
MESSAGE_TEXT = ("name", "refusal", "reasoning_content", "reasoning")
CALL_TEXT = ("name", "arguments")  # of a tool call's function, and of the older function_call


class _Key(str):
    """A slot's key that is a dictionary's key (a tool parameter's name), not a place in it."""


def text_slots(messages: list[dict]) -> list[tuple[dict, str, str]]:
    """(holder, key, text) of each text in the chat: holder[key] is where it is written back. The
    content, each text part of content parts, and (upstreams send them) a message's name, and its
    tool calls' function names and arguments."""
    slots = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            slots.append((message, "content", content))
        elif isinstance(content, list):
            slots += [(p, "text", p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        slots += [(message, k, message[k]) for k in MESSAGE_TEXT if isinstance(message.get(k), str)]
        calls = message.get("tool_calls")
        functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
        for function in [*functions, message.get("function_call")]:
            if isinstance(function, dict):
                slots += [(function, k, function[k]) for k in CALL_TEXT if isinstance(function.get(k), str)]
    return slots


def _tool_slots(node, slots=None) -> list[tuple[dict, str, str]]:
    """Every text of tool definitions (names, descriptions, parameters' names, enums, defaults…):
    the upstream renders them into the prompt. Not the JSON Schema's own words (its "type" values)."""
    slots = [] if slots is None else slots
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if isinstance(value, str):
                if key != "type":
                    slots.append((node, key, value))
            else:
                _tool_slots(value, slots)
                if key == "properties" and isinstance(value, dict):
                    slots += [(value, _Key(name), name) for name in value if isinstance(name, str)]
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, str):
                slots.append((node, index, value))
            else:
                _tool_slots(value, slots)
    return slots
