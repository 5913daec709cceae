"""Content filter: keyword and regular-expression rules, on the input and/or the output.

Actions: ``block`` (input: a 400 in OpenAI's error shape; output: the response ends with
``finish_reason: "content_filter"``, as OpenAI's API does) or ``mask`` (each match replaced).
On a stream, a match split across chunks is held back until it is whole (rewrite.StreamRewriter);
``max_match_chars`` bounds how long a pattern's match may be, so how much text is held back.

Matching reads the text folded (normalise.py: fullwidth, invisible characters, combining marks and
look-alike letters cannot hide a keyword), and masks the text as written at the places it came from.
Keywords are folded the same way; patterns run on both the folded and the original text (a pattern
written for a script's own letters still matches it as written).
"""

import re
from dataclasses import dataclass

from .normalise import Folded, fold
from .rewrite import Span, checkpoint, held_back

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
        folded = sorted({f for f in (fold(k).text for k in self.keywords if k) if f}, key=len, reverse=True)
        self._keywords = re.compile("|".join(map(re.escape, folded)), flags) if folded else None
        self._patterns = [re.compile(p, flags) for p in self.patterns if p]
        longest_keyword = max((len(k) for k in folded), default=1)
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
        folded = fold(text)
        spans = []
        if self._keywords:
            spans += [self._span(folded, m, "keyword") for m in self._keywords.finditer(folded.text)]
        for pattern in self._patterns:
            checkpoint()
            spans += [
                self._span(folded, m, "pattern")
                for m in pattern.finditer(folded.text)
                if 0 < m.end() - m.start() <= self.max_match_chars
            ]
            if folded.starts is not None:  # and as written
                spans += [
                    Span(m.start(), m.end(), "pattern", self.mask)
                    for m in pattern.finditer(text)
                    if 0 < m.end() - m.start() <= self.max_match_chars
                ]
        return spans

    def _span(self, folded: Folded, match: re.Match, kind: str) -> Span:
        return Span(*folded.span(match.start(), match.end()), kind, self.mask)

    def hold_from(self, text: str) -> int:
        """The last ``hold - 1`` characters, counted in the folded text (invisible characters do not
        count, so padding a keyword with them cannot push its start out early) and in the original."""
        folded = fold(text)
        return min(held_back(text, self.hold), folded.at(held_back(folded.text, self.hold)))


def pattern_errors(patterns: list[str]) -> list[str]:
    """Why each pattern that does not compile fails (for the form, at the field)."""
    errors = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            errors.append(f"“{pattern}” is not a valid regular expression: {e}.")
    return errors
