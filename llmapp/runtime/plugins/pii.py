"""PII redaction: e-mail addresses, phone numbers and ID numbers, found and masked.

Phone numbers are parsed by ``phonenumbers`` (Google's libphonenumber), numbers without a country
code read as ``region`` (default CN, so mainland mobile numbers such as 13812345678 are found);
only numbers it judges valid count. ID numbers: the 18-digit mainland resident ID, whose check
digit ``python-stdnum`` verifies (an 18-digit number with a wrong checksum is left alone).
Masks: a label (``[EMAIL]``, ``[PHONE]``, ``[ID]``) or partial (the shape kept: j***@example.com,
*******5678, 110105********123X).
"""

import re
from dataclasses import dataclass, field

import phonenumbers
from stdnum.cn import ric

from .rewrite import Span

ENTITIES = ("email", "phone", "id_number")
LABELS = {"email": "[EMAIL]", "phone": "[PHONE]", "id_number": "[ID]"}
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
RESIDENT_ID = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")
HOLD = 64  # the longest address or number masked on a stream as it arrives


@dataclass
class PiiRedactor:
    entities: list[str] = field(default_factory=lambda: list(ENTITIES))
    region: str = "CN"
    partial: bool = False
    hold: int = HOLD

    @classmethod
    def from_config(cls, config: dict) -> "PiiRedactor":
        return cls(
            entities=list(config.get("entities") or ENTITIES),
            region=(config.get("region") or "CN").upper(),
            partial=config.get("mask_style") == "partial",
        )

    def find(self, text: str) -> list[Span]:
        spans = []
        if "email" in self.entities:
            spans += [self._span(m.start(), m.end(), "email", m.group()) for m in EMAIL.finditer(text)]
        if "id_number" in self.entities:
            spans += [
                self._span(m.start(), m.end(), "id_number", m.group())
                for m in RESIDENT_ID.finditer(text)
                if ric.is_valid(m.group())
            ]
        if "phone" in self.entities:
            matcher = phonenumbers.PhoneNumberMatcher(text, self.region, leniency=phonenumbers.Leniency.VALID)
            spans += [self._span(m.start, m.end, "phone", m.raw_string) for m in matcher]
        return spans

    def _span(self, start: int, end: int, kind: str, found: str) -> Span:
        return Span(start, end, kind, _partial(kind, found) if self.partial else LABELS[kind])


def _partial(kind: str, found: str) -> str:
    if kind == "email":
        local, _, domain = found.partition("@")
        return f"{local[:1]}***@{domain}"
    if kind == "id_number":
        return found[:6] + "*" * 8 + found[-4:]
    digits = [c for c in found if c.isdigit()]
    keep = "".join(digits[-4:])
    return "*" * max(0, len(digits) - 4) + keep
