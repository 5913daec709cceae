"""Content filter: keyword and regular-expression rules, on the input and/or the output.

Actions: ``block`` (input: a 400 in OpenAI's error shape; output: the response ends with
``finish_reason: "content_filter"``, as OpenAI's API does) or ``mask`` (each match replaced).
On a stream, a match split across chunks is held back until it is whole (rewrite.StreamRewriter);
``max_match_chars`` bounds how long a pattern's match may be, so how much text is held back.
"""

import re
from dataclasses import dataclass

from .rewrite import Span

DEFAULT_MAX_MATCH = 100


@dataclass
class ContentFilter:
    keywords: list[str]
    patterns: list[str]
    case_sensitive: bool = False
    mask: str = "***"
    max_match_chars: int = DEFAULT_MAX_MATCH

    def __post_init__(self):
        flags = 0 if self.case_sensitive else re.IGNORECASE
        words = [re.escape(k) for k in self.keywords if k]
        self._keywords = re.compile("|".join(sorted(words, key=len, reverse=True)), flags) if words else None
        self._patterns = [re.compile(p, flags) for p in self.patterns if p]
        longest_keyword = max((len(k) for k in self.keywords), default=1)
        self.hold = max(longest_keyword, self.max_match_chars if self._patterns else 1)

    @classmethod
    def from_config(cls, config: dict) -> "ContentFilter":
        return cls(
            keywords=list(config.get("keywords") or []),
            patterns=list(config.get("patterns") or []),
            case_sensitive=bool(config.get("case_sensitive", False)),
            mask=config.get("mask", "***"),
            max_match_chars=int(config.get("max_match_chars", DEFAULT_MAX_MATCH)),
        )

    def find(self, text: str) -> list[Span]:
        spans = []
        if self._keywords:
            spans += [Span(m.start(), m.end(), "keyword", self.mask) for m in self._keywords.finditer(text)]
        for pattern in self._patterns:
            spans += [
                Span(m.start(), m.end(), "pattern", self.mask)
                for m in pattern.finditer(text)
                if 0 < m.end() - m.start() <= self.max_match_chars
            ]
        return spans


def pattern_errors(patterns: list[str]) -> list[str]:
    """Why each pattern that does not compile fails (for the form, at the field)."""
    errors = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            errors.append(f"“{pattern}” is not a valid regular expression: {e}.")
    return errors
