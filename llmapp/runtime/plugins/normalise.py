"""Text as the content filter and PII redaction read it, with a map back to the text as written.

A blocked word must not pass by being spelt differently: fullwidth (Ｆｏｘ), with zero-width characters,
soft hyphens or bidi controls inside it (f\u200box), with combining marks (f\u0336o\u0336x), or with
look-alike letters of other scripts (Cyrillic о for Latin o, small capitals ᴘᴀꜱꜱ for pass). Each
character is folded on its own: compatibility decomposition (NFKD, so fullwidth and ligatures become
plain letters), invisible characters (format characters, Cf, and the blank fillers) dropped,
look-alikes mapped to the Latin letter they imitate, what is left recomposed (NFC, so Hangul syllables
stay whole). The ideographic full stops (。．｡, which browsers take as a domain's dots) fold to ".".

Combining marks (Mn, Me), two ways:
- ``accents=False`` (the default): every mark dropped, so ``pässwörd`` reads as ``password`` and so
  does ``p̶a̶s̶s̶``. The price: an unaccented keyword also matches words of languages whose accents
  make them other words (``ban`` matches Vietnamese ``bạn``, ``schon`` German ``schön``).
- ``accents=True``: a mark that makes one letter with the letter before it (ö, ạ, é: a letter of some
  language, precomposed in Unicode) is kept as part of it, written either way (o + U+0308 reads as
  ö); any other mark (strikethroughs, overlays, enclosing circles, a second mark that makes no
  letter) is dropped, as it only decorates.
Because each character folds alone, ``starts``/``ends`` say which characters of the original each
folded character came from: a match found in the folded text masks the original text at the right
places.
"""

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from .rewrite import checkpoint

# Cyrillic, Greek, Armenian and IPA letters that look like Latin ones (a small table on purpose: the
# whole of Unicode's confusables.txt also folds l/I and 0/O, which would block innocent text).
CONFUSABLES = str.maketrans(
    {
        # Cyrillic capitals
        "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
        "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W", "Һ": "H", "Ү": "Y", "Ӏ": "I",
        # Cyrillic small letters
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
        "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԛ": "q", "ԝ": "w", "һ": "h", "ү": "y", "ӏ": "l",
        "ԁ": "d", "ɡ": "g",
        # Greek
        "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
        "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "α": "a", "ο": "o", "ρ": "p", "ι": "i", "κ": "k", "ν": "v",
        "υ": "u", "χ": "x", "γ": "y", "ϲ": "c", "ϳ": "j", "ω": "w", "ε": "e",
        # Armenian and Latin variants
        "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ɑ": "a", "ı": "i", "ȷ": "j", "ʏ": "y", "ɪ": "i",
        # Ideographic full stops: a domain's label separators in IDNA (UTS #46), so john@example。com
        "\u3002": ".", "\uff0e": ".", "\uff61": ".",
    }
    # Small capitals (ᴘᴀꜱꜱ: IPA, Phonetic Extensions, Latin Extended-D): "LATIN LETTER SMALL CAPITAL X".
    | {
        chr(code): name[-1].lower()
        for code in (*range(0x0250, 0x02B0), *range(0x1D00, 0x1D80), *range(0xA720, 0xA800))
        for name in [unicodedata.name(chr(code), "")]
        if re.fullmatch(r"LATIN (?:CAPITAL )?LETTER SMALL CAPITAL [A-Z]", name)
    }
)  # fmt: skip
# Blank letters that are not format characters but show as nothing.
FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u034f")
WHITESPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c")
PLAIN = re.compile(r"[\t\n\r\x20-\x7e]*")  # printable ASCII: folds to itself
CHECK_EVERY = 1 << 16  # characters between checks for a cancelled request


MARKS = ("Mn", "Me")


@lru_cache(maxsize=1 << 16)
def fold_char(c: str, accents: bool = False) -> tuple[str, bool]:
    """The folded form of one character, and whether it is a mark (which belongs to the letter before)."""
    category = unicodedata.category(c)
    if category in MARKS:
        return "", True
    if category == "Cf" or c in FILLERS or (category == "Cc" and c not in WHITESPACE_CONTROLS):
        return "", False
    kept = ""
    for ch in unicodedata.normalize("NFKD", c):
        if unicodedata.category(ch) in MARKS:
            if accents and kept and len(_composed(kept[-1], ch)) == 1:
                kept = kept[:-1] + _composed(kept[-1], ch)
        elif unicodedata.category(ch) != "Cf" and ch not in FILLERS:
            kept += ch.translate(CONFUSABLES)
    return unicodedata.normalize("NFC", kept), False


@lru_cache(maxsize=1 << 12)
def _composed(letter: str, mark: str) -> str:
    """The letter and the mark as one character, where Unicode has it (else two)."""
    return unicodedata.normalize("NFC", letter + mark)


def has_accents(text: str) -> bool:
    """Whether ``text`` has a mark that folding with ``accents=True`` keeps (ö, ạ: not a strikethrough)."""
    return fold(text, accents=True).text != fold(text).text


@dataclass(frozen=True)
class Folded:
    original: str
    text: str  # the folded text
    starts: list[int] | None  # folded index → index in the original of the character it came from (None: same)
    ends: list[int] | None  # folded index → end in the original of that character (and the marks on it)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Where the folded text's [start, end) is in the original."""
        if self.starts is None:
            return start, end
        return self.starts[start], self.ends[end - 1]

    def at(self, index: int) -> int:
        """Where the original text is at the folded text's ``index`` (its end past the last character)."""
        if self.starts is None:
            return index
        return self.starts[index] if index < len(self.starts) else len(self.original)


def fold(text: str, accents: bool = False) -> Folded:
    if PLAIN.fullmatch(text):
        return Folded(text, text, None, None)
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    last = 0  # the first folded index of the last character that folded to something
    for i, c in enumerate(text):
        if i % CHECK_EVERY == 0:
            checkpoint()
        folded, mark = fold_char(c, accents)
        if mark and accents and out and out[-1] and len(_composed(out[-1][-1], c)) == 1:
            # A mark written apart that makes one letter with the one before (o + U+0308: ö): kept.
            out[-1] = out[-1][:-1] + _composed(out[-1][-1], c)
            for j in range(last, len(ends)):
                ends[j] = i + 1
            continue
        if folded:
            last = len(starts)
            out.append(folded)
            for _ in folded:
                starts.append(i)
                ends.append(i + 1)
        elif mark and ends:  # a mark goes with its letter: masking the letter masks the mark
            for j in range(last, len(ends)):
                ends[j] = i + 1
    # ``out`` holds one string per character; starts/ends have one entry per folded character.
    return Folded(text, "".join(out), starts, ends)
