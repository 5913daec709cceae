"""Knowledge retrieval: documents split into passages, indexed with BM25 (``bm25s``), the top-k
passages for a question added to the request as context.

Passages follow the documents' own structure: paragraphs (and Markdown headings, which start a new
passage) packed up to ``passage_chars``; a longer paragraph is cut at sentence ends. Tokens are
lower-cased words, with CJK text as overlapping character bigrams (Chinese has no spaces; bigrams
are the usual BM25 answer), so English and Chinese questions both find their passages.
"""

import re
from dataclasses import dataclass

import bm25s

WORD = re.compile(r"[A-Za-z0-9_]+|[\u3400-\u9fff\uf900-\ufaff]+")
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*")
STOPWORDS = frozenset(
    "a an and are as at be by for from has have how i in is it its of on or that the this to was what "
    "when where which who why will with do does can you your".split()
)


def tokens(text: str) -> list[str]:
    found = []
    for word in WORD.findall(text.lower()):
        if CJK.match(word):
            found += [word[i : i + 2] for i in range(max(1, len(word) - 1))]
        elif word not in STOPWORDS:
            found.append(word)
    return found


def split(text: str, passage_chars: int = 800) -> list[str]:
    """Passages of at most about ``passage_chars`` characters, along paragraphs and headings."""
    blocks, current = [], []
    for paragraph in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        pieces = [paragraph] if len(paragraph) <= passage_chars else _sentences(paragraph, passage_chars)
        for piece in pieces:
            heading = piece.startswith("#")
            size = sum(len(p) + 2 for p in current)
            if current and (heading or size + len(piece) > passage_chars):
                blocks.append("\n\n".join(current))
                current = []
            current.append(piece)
    if current:
        blocks.append("\n\n".join(current))
    return blocks


def _sentences(paragraph: str, limit: int) -> list[str]:
    pieces, current = [], ""
    for sentence in SENTENCE_END.split(paragraph):
        while len(sentence) > limit:  # one sentence longer than a passage: cut it
            pieces.append(sentence[:limit])
            sentence = sentence[limit:]
        if current and len(current) + len(sentence) + 1 > limit:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


@dataclass(frozen=True)
class Hit:
    passage: int  # its index in the index's passages
    score: float
    text: str
    source: str


class Index:
    """A BM25 index over passages (each with the name of its document)."""

    def __init__(self, passages: list[tuple[str, str]]):
        self.passages = passages  # (source, text)
        self.bm25 = bm25s.BM25()
        corpus = [tokens(text) or [""] for _, text in passages]
        if corpus:
            self.bm25.index(corpus, show_progress=False)

    @classmethod
    def from_documents(cls, documents: list[tuple[str, str]], passage_chars: int = 800) -> "Index":
        """``documents``: (name, text) pairs."""
        return cls([(name, passage) for name, text in documents for passage in split(text, passage_chars)])

    def search(self, question: str, k: int = 3) -> list[Hit]:
        query = tokens(question)
        if not self.passages or not query:
            return []
        k = min(k, len(self.passages))
        results, scores = self.bm25.retrieve([query], k=k, show_progress=False)
        return [
            Hit(int(i), float(score), self.passages[int(i)][1], self.passages[int(i)][0])
            for i, score in zip(results[0], scores[0], strict=True)
            if score > 0
        ]
