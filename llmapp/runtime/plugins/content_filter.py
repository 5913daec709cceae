"""Content filter: keyword and regular-expression rules, on the input and/or the output.

Actions: ``block`` (input: a 400 in OpenAI's error shape; output: the response ends with
``finish_reason: "content_filter"``, as OpenAI's API does) or ``mask`` (each match replaced).
On a stream, a match split across chunks is held back until it is whole (rewrite.StreamRewriter): the
tail that is still the start of a keyword ("pass" of "password"), and, when there are patterns, the
last ``max_match_chars`` characters (``max_match_chars`` bounds how long a pattern's match may be; RE2
cannot say whether a text is the start of one, so that much waits).

Matching reads the text folded (normalise.py: fullwidth, invisible characters, combining marks and
look-alike letters cannot hide a keyword), and masks the text as written at the places it came from.
Keywords are folded the same way, and the words of one ("api key") match across any run of
whitespace ("api\\n\\tkey"). Accents: a keyword typed with them (schön) matches only them (not
schon); one typed without them matches accented text too (password: pässwörd), unless ``accents``
is set, when the accents of a language's letters count (ban: not Vietnamese bạn). Marks that make no
letter (strikethroughs, overlays) never count. Patterns run on both the folded and the original text
(a pattern written for a script's own letters still matches it as written).

Patterns are RE2 (google-re2): matching takes time linear in the text whatever the pattern, so a
pattern such as ``(a|aa)+$`` cannot hold a request's slot or stall the server's event loop (Python's
``re`` takes exponential time on it). RE2 has no backreferences or lookaround: such a pattern is
refused where it is saved (``pattern_errors``). ``\\w``, ``\\d``, ``\\s`` keep Python's meaning (any
script's letters and digits, Unicode spaces); ``\\b`` is RE2's, between ASCII word characters.
"""

import bisect
import re
from dataclasses import dataclass

import re2

from .normalise import Folded, fold, has_accents
from .rewrite import Span, checkpoint, held_back

DEFAULT_MAX_MATCH = 100
# Python's Unicode classes, in RE2's syntax (RE2's own \w, \d and \s are ASCII): outside a class, and
# inside one. \W, \D and \S inside a class have no such form; they keep RE2's (ASCII) meaning.
UNICODE_CLASSES = {
    "w": (r"[\p{L}\p{N}_]", r"\p{L}\p{N}_"),
    "W": (r"[^\p{L}\p{N}_]", None),
    "d": (r"\p{Nd}", r"\p{Nd}"),
    "D": (r"\P{Nd}", r"\P{Nd}"),
    "s": (r"[\s\p{Z}\x{85}]", r"\s\p{Z}\x{85}"),
    "S": (r"[^\s\p{Z}\x{85}]", None),
    "Z": (r"\z", None),  # Python's end of the text
}


def re2_syntax(pattern: str) -> str:
    """A Python regular expression's classes in RE2's syntax (the rest is the same in both)."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            outside, inside = UNICODE_CLASSES.get(pattern[i + 1], (None, None))
            replacement = inside if in_class else outside
            out.append(replacement or pattern[i : i + 2])
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            out.append(c)
            i += 1
            if pattern[i : i + 1] == "^":
                out.append("^")
                i += 1
            if pattern[i : i + 1] == "]":  # a "]" first in a class is itself
                out.append("\\]")
                i += 1
            continue
        if c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)


def compile_pattern(pattern: str, case_sensitive: bool = False):
    """:raise re2.error: RE2 cannot compile it (backreferences, lookaround, or too large)."""
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.log_errors = False
    return re2.compile(re2_syntax(pattern), options)


def keyword_regex(folded_keywords: list[str]) -> str:
    """Keywords as literal text, the words of each matching across any run of whitespace."""
    alternatives = {r"\s+".join(map(re.escape, k.split())) for k in folded_keywords if k.split()}
    return "|".join(sorted(alternatives, key=len, reverse=True))


class KeywordStarts:
    """Where the tail of a text that is the start of a keyword begins ("pass" of "password"), the words of a
    keyword separated by any run of whitespace, as in ``keyword_regex``. Text and keywords are compared
    folded without accents and, unless case counts, case-folded: coarser than matching, so what can still
    become a match is always held. Keywords are kept sorted: a tail starts one when the first keyword not
    below it begins with it (a bisection per place in the tail, however many keywords there are)."""

    def __init__(self, keywords: list[str], case_sensitive: bool):
        self.case = str if case_sensitive else str.casefold
        self.keywords = sorted({" ".join(self.case(fold(k).text).split()) for k in keywords if k.split()})
        self.longest = max(map(len, self.keywords), default=0)

    def start(self, folded: str, window: int) -> int | None:
        """The index in ``folded`` where the earliest keyword start that ends it begins (looked for from
        ``window`` on), or None."""
        chars, at, i = [], [], window  # the tail as compared, and each character's index in ``folded``
        while i < len(folded):
            if folded[i].isspace():
                chars.append(" ")
                at.append(i)
                while i < len(folded) and folded[i].isspace():
                    i += 1
                continue
            for c in self.case(folded[i]):
                chars.append(c)
                at.append(i)
            i += 1
        tail = "".join(chars)
        for k in range(len(tail)):
            j = bisect.bisect_left(self.keywords, tail[k:])
            if j < len(self.keywords) and self.keywords[j].startswith(tail[k:]):
                return at[k]
        return None


@dataclass
class ContentFilter:
    keywords: list[str]
    patterns: list[str]
    case_sensitive: bool = False
    mask: str = "***"
    max_match_chars: int = DEFAULT_MAX_MATCH
    accents: bool = False  # whether a keyword typed without accents still matches accented letters

    def __post_init__(self):
        flags = 0 if self.case_sensitive else re.IGNORECASE
        marked = [k for k in self.keywords if k and has_accents(k)]
        plain = [k for k in self.keywords if k and not has_accents(k)]
        # (the folding the text is read in, the keywords found in it); a folding at most once
        groups: dict[bool, list[str]] = {}
        groups.setdefault(self.accents, []).extend(fold(k, self.accents).text for k in plain)
        groups.setdefault(True, []).extend(fold(k, True).text for k in marked)
        regexes = {accents: keyword_regex(ks) for accents, ks in groups.items()}
        self._keywords = [(accents, re.compile(rx, flags)) for accents, rx in regexes.items() if rx]
        self._patterns = [compile_pattern(p, self.case_sensitive) for p in self.patterns if p]
        folded = [k for ks in groups.values() for k in ks]
        self._runs = any(len(k.split()) > 1 for k in folded)  # a match may be longer than its keyword
        # Held back on a stream: a tail that is the start of a keyword, read without accents (coarser than
        # either folding, so a letter whose accent is still to come, o + U+0308, is held too).
        self._starts = KeywordStarts([k for k in self.keywords if k], self.case_sensitive)

    @classmethod
    def from_config(cls, config: dict) -> "ContentFilter":
        return cls(
            keywords=list(config.get("keywords") or []),
            patterns=list(config.get("patterns") or []),
            case_sensitive=bool(config.get("case_sensitive", False)),
            mask=config.get("mask", "***"),
            max_match_chars=int(config.get("max_match_chars", DEFAULT_MAX_MATCH)),
            accents=config.get("accents", "ignore") == "match",
        )

    def _foldings(self, text: str) -> dict[bool, Folded]:
        wanted = {self.accents, *(accents for accents, _ in self._keywords)}
        return {accents: fold(text, accents) for accents in wanted}

    def find(self, text: str) -> list[Span]:
        foldings = self._foldings(text)
        spans = []
        for accents, keywords in self._keywords:
            folded = foldings[accents]
            spans += [self._span(folded, m.start(), m.end(), "keyword") for m in keywords.finditer(folded.text)]
        folded = foldings[self.accents]
        for pattern in self._patterns:
            checkpoint()
            spans += [
                self._span(folded, m.start(), m.end(), "pattern")
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

    def _span(self, folded: Folded, start: int, end: int, kind: str) -> Span:
        return Span(*folded.span(start, end), kind, self.mask)

    def hold_from(self, text: str) -> int:
        """Where the tail that could still grow into a match begins: the start of a keyword (a run of
        whitespace counts as one character when a keyword has words, its match spans the run; invisible
        characters do not count), and the last ``max_match_chars - 1`` characters when there are patterns."""
        at = len(text)
        if self._starts.keywords:
            folded = fold(text)
            window = _held_back(folded.text, self._starts.longest + 1, self._runs)  # no start is further back
            if (start := self._starts.start(folded.text, window)) is not None:
                at = folded.at(start)
        if self._patterns:
            at = min(at, held_back(text, self.max_match_chars))
            for folded in self._foldings(text).values():
                at = min(at, folded.at(_held_back(folded.text, self.max_match_chars, self._runs)))
        return at


def _held_back(text: str, hold: int, runs: bool) -> int:
    if not runs:
        return held_back(text, hold)
    at, count = len(text), 0
    while at > 0 and count < hold - 1:
        at -= 1
        if text[at].isspace():
            while at > 0 and text[at - 1].isspace():
                at -= 1
        count += 1
    return at


def pattern_errors(patterns: list[str]) -> list[str]:
    """Why each pattern that cannot be used fails (for the form, at the field)."""
    errors = []
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            errors.append(f"“{pattern}” is not a valid regular expression: {e}.")
            continue
        try:
            compile_pattern(pattern)
        except re2.error as e:
            reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            errors.append(
                f"“{pattern}” cannot be matched in linear time (RE2): {reason}. Backreferences and "
                "lookaround are not supported."
            )
    return errors
