"""PII redaction: e-mail addresses, phone numbers and ID numbers, found and masked.

Phone numbers are parsed by ``phonenumbers`` (Google's libphonenumber), numbers without a country
code read as ``region`` (default CN, so mainland mobile numbers such as 13812345678 are found);
only numbers it judges valid count. ID numbers: the 18-digit mainland resident ID, whose check
digit ``python-stdnum`` verifies (an 18-digit number with a wrong checksum is left alone).
Masks: a label (``[EMAIL]``, ``[PHONE]``, ``[ID]``) or partial (the shape kept: j***@example.com,
*******5678, 110105********123X).

The text is read folded (normalise.py), so a fullwidth ＠ or digits, or a zero-width space inside an
address, hide nothing; addresses may be internationalised (letters of any script, IDN domains).
Every matcher is linear in the text: e-mail addresses are looked for around each @ only, their parts
bounded by the lengths an address may have; phone numbers in bounded windows (libphonenumber's
matcher also gives up after a number of candidates, which on a long text left the rest unmasked).
"""

import re
from dataclasses import dataclass, field

import phonenumbers
from stdnum.cn import ric

from .normalise import fold
from .rewrite import Span, checkpoint

ENTITIES = ("email", "phone", "id_number")
LABELS = {"email": "[EMAIL]", "phone": "[PHONE]", "id_number": "[ID]"}
MAX_LOCAL, MAX_DOMAIN, MAX_EMAIL = 64, 253, 254  # RFC 5321's limits on an address and its parts
LOCAL = re.compile(r"[\w.%+-]+")  # read backwards from the @
DOMAIN = re.compile(r"(?:[^\W_][\w-]*\.)+[^\W\d_][\w-]*[^\W_]")
ADDRESS_CHAR = re.compile(r"[\w.%+@-]+")
RUN_ON = re.compile(r"(?:[\w-]|\.(?=[\w-]))+")  # a domain past its limit: to its end, less a final dot
RESIDENT_ID = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")
# On a stream, what is held back is only a tail that could still grow into a match: a run of address
# characters (e-mail), a run of the characters a phone number is written with that starts as a number can
# (digits, +, an opening bracket), a run of an ID's characters. Each run is looked for in a bounded tail.
LONGEST_NUMBER = 64  # a phone number with its spaces, brackets and extension; an ID: 18 characters
PHONE_CHARS = re.compile(r"[\d\s+()\[\].,/~#*\-\u2010-\u2015\u2212\u30fc\uff0d\uff0f\u00adextEXT]+")
PHONE_START = re.compile(r"[\d+(\[]")
ID_CHARS = re.compile(r"[0-9Xx]+")
PHONE_WINDOW, PHONE_CONTEXT = 4096, 128  # phone numbers are looked for in windows this long, overlapping


@dataclass
class PiiRedactor:
    entities: list[str] = field(default_factory=lambda: list(ENTITIES))
    region: str = "CN"
    partial: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "PiiRedactor":
        return cls(
            entities=list(config.get("entities") or ENTITIES),
            region=(config.get("region") or "CN").upper(),
            partial=config.get("mask_style") == "partial",
        )

    def find(self, text: str) -> list[Span]:
        folded = fold(text)
        found: list[tuple[int, int, str]] = []  # in the folded text
        if "email" in self.entities:
            found += [(start, end, "email") for start, end in emails(folded.text)]
        if "id_number" in self.entities:
            found += [
                (m.start(), m.end(), "id_number") for m in RESIDENT_ID.finditer(folded.text) if ric.is_valid(m.group())
            ]
        if "phone" in self.entities:
            found += [(start, end, "phone") for start, end in phones(folded.text, self.region)]
        return [self._span(*folded.span(start, end), kind, folded.text[start:end]) for start, end, kind in found]

    def _span(self, start: int, end: int, kind: str, found: str) -> Span:
        return Span(start, end, kind, _partial(kind, found) if self.partial else LABELS[kind])

    def hold_from(self, text: str) -> int:
        """Where the tail that could still be (part of) an address or a number begins: a run of address
        characters (up to an address's longest, so one never leaves in part), a number being written."""
        folded = fold(text)
        at = len(folded.text)
        if "email" in self.entities:
            at = min(at, _run_start(folded.text, ADDRESS_CHAR, MAX_EMAIL))
        if "phone" in self.entities:
            at = min(at, _run_start(folded.text, PHONE_CHARS, LONGEST_NUMBER, PHONE_START))
        if "id_number" in self.entities:
            at = min(at, _run_start(folded.text, ID_CHARS, LONGEST_NUMBER, PHONE_START))
        return folded.at(at)


def _run_start(text: str, chars: re.Pattern, longest: int, first: re.Pattern | None = None) -> int:
    """Where the run of ``chars`` that ends ``text`` begins (looked for in its last ``longest``
    characters); with ``first``, at the run's first character that a match can start with."""
    tail = text[-longest:]
    run = chars.match(tail[::-1])
    if not run:
        return len(text)
    start = len(text) - run.end()
    if first is None:
        return start
    begins = first.search(text, start)
    return begins.start() if begins else len(text)


def emails(text: str) -> list[tuple[int, int]]:
    """The addresses in ``text``, found around each @: the local part read backwards from it (at most
    64 characters), the domain forwards (at most 253): linear in the text however it looks."""
    found, done, at = [], 0, text.find("@")
    while at != -1:
        checkpoint()
        lo = max(done, at - MAX_LOCAL)
        local = LOCAL.match(text[lo:at][::-1])
        if local:
            start = at - local.end()
            while start < at and text[start] == ".":  # a local part does not start with a dot
                start += 1
            end = min(len(text), at + 1 + MAX_DOMAIN, start + MAX_EMAIL)
            domain = DOMAIN.match(text, at + 1, end)
            if start < at and domain:
                # Longer than an address may be: the whole run of address characters goes, or what is
                # past the limit would stay readable (each character is read at most once more).
                if at - local.end() == lo > done:
                    more = LOCAL.match(text[done:lo][::-1])
                    start = lo - (more.end() if more else 0)
                    while text[start] == ".":
                        start += 1
                run = RUN_ON.match(text, domain.end())  # (nothing, unless it stopped at the limit)
                stop = run.end() if run else domain.end()
                found.append((start, stop))
                done = stop
        at = text.find("@", max(at + 1, done))
    return found


def phones(text: str, region: str) -> list[tuple[int, int]]:
    """Phone numbers, in overlapping windows: each number is taken from the window whose core it starts
    in, with enough text around it to be judged as in the whole text."""
    if len(text) <= PHONE_WINDOW:
        return _phones_in(text, region, 0)
    stride = PHONE_WINDOW - 2 * PHONE_CONTEXT
    found = []
    for core in range(0, len(text), stride):
        checkpoint()
        lo = max(0, core - PHONE_CONTEXT)
        window = text[lo : core + stride + PHONE_CONTEXT]
        found += [(s, e) for s, e in _phones_in(window, region, lo) if core <= s < core + stride]
    return found


def _phones_in(text: str, region: str, offset: int) -> list[tuple[int, int]]:
    matcher = phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID)
    return [(offset + m.start, offset + m.end) for m in matcher]


def _partial(kind: str, found: str) -> str:
    if kind == "email":
        local, _, domain = found.partition("@")
        return f"{local[:1]}***@{domain}"
    if kind == "id_number":
        return found[:6] + "*" * 8 + found[-4:]
    digits = [c for c in found if c.isdigit()]
    keep = "".join(digits[-4:])
    return "*" * max(0, len(digits) - 4) + keep
