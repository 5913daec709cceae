"""Finding spans in text and rewriting them, whole or as a stream arrives in chunks.

A *matcher* finds spans (a keyword, a pattern, an e-mail address…) and says what replaces each. On a
stream, a span may be split across chunks, so ``StreamRewriter`` holds back the tail of the text that
could still grow into a span (the matcher says where it starts: ``hold_from``) until more text shows
whether it does: a span never leaves in pieces, and text that can't start one is never delayed.

Matching on a request's input runs in a worker thread; ``checkpoint`` lets a long scan stop once its
request has timed out (``cancellable``), rather than burn the CPU for nobody.
"""

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

_local = threading.local()


class Cancelled(Exception):
    """The request whose text is being scanned has ended (its timeout): the scan stops."""


@contextmanager
def cancellable(event: threading.Event):
    """Scans in this thread stop at their next ``checkpoint`` once ``event`` is set."""
    _local.cancel = event
    try:
        yield
    finally:
        _local.cancel = None


def checkpoint() -> None:
    """:raise Cancelled: the scan's request has been given up on."""
    event = getattr(_local, "cancel", None)
    if event is not None and event.is_set():
        raise Cancelled


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # what was found: "keyword", "pattern", "email", "phone", "id_number"
    replacement: str


class Matcher(Protocol):
    def find(self, text: str) -> list[Span]: ...

    def hold_from(self, text: str) -> int:
        """Where the tail of a stream's text that a span could still start in begins."""
        ...


def held_back(text: str, hold: int) -> int:
    """A fixed hold-back, for spans that can't be told from their start: the last ``hold - 1`` characters."""
    return max(0, len(text) - (hold - 1))


def non_overlapping(spans: list[Span]) -> list[Span]:
    """Leftmost first; of two that overlap, the longer wins."""
    chosen: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -(s.end - s.start))):
        if not chosen or span.start >= chosen[-1].end:
            chosen.append(span)
    return chosen


def rewrite(text: str, spans: list[Span]) -> str:
    parts, at = [], 0
    for span in non_overlapping(spans):
        parts += [text[at : span.start], span.replacement]
        at = span.end
    return "".join(parts) + text[at:]


@dataclass
class Piece:
    """What a stream rewriter lets out: text, and the spans found in it (for the policy log)."""

    text: str
    found: list[Span]
    blocked: bool = False  # a span was found and the action is "block": the stream ends here


class StreamRewriter:
    """Rewrite (mask) or block spans in a stream of chunks; ``feed`` each chunk, ``close`` at the end."""

    def __init__(self, matcher: Matcher, block: bool = False):
        self.matcher, self.block = matcher, block
        self.buffer = ""
        self.ended = False

    def feed(self, chunk: str) -> Piece:
        if self.ended:
            return Piece("", [])
        self.buffer += chunk
        return self._release(final=False)

    def close(self) -> Piece:
        if self.ended:
            return Piece("", [])
        return self._release(final=True)

    def _release(self, final: bool) -> Piece:
        spans = non_overlapping(self.matcher.find(self.buffer))
        cut = len(self.buffer) if final else self.matcher.hold_from(self.buffer)
        if self.block and spans and (final or spans[0].start < cut):
            # Everything before the first span goes out; nothing after it, ever.
            out, self.buffer, self.ended = self.buffer[: spans[0].start], "", True
            return Piece(out, spans[:1], blocked=True)
        done = [s for s in spans if s.end <= cut]
        straddling = [s for s in spans if s.start < cut < s.end]
        if straddling:  # a span across the cut leaves whole, later
            cut = straddling[0].start
        out = rewrite(self.buffer[:cut], done)
        self.buffer = self.buffer[cut:]
        return Piece(out, done)
