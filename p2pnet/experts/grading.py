"""Grading free-text answers against known ones: normalised exact match.

A :class:`KnownAnswer` is a number, a name or a code:

- **number**: the numbers written in the answer ("1,609.344", "1.6e3",
  "1.38 × 10^-23", units after them ignored) that do not also appear in the
  question; correct if one of them equals the known value within its
  relative ``tolerance`` (0: exactly) and the answer names at most
  ``MAX_NUMBERS`` such numbers (a list of guesses is not an answer).
- **name**: the answer and the known name (or one of its ``aliases``) are
  normalised (case, accents, punctuation, "the"/"a"/"an", "&" and "and");
  correct if the name is the whole answer or a run of whole words in it, and
  the answer has at most ``MAX_WORDS`` words.
- **code**: a symbol or code ("Fe", "DEU", "mi"), matched with its case,
  as a whole token; or the whole answer equal to it in any case.

The answers of a small model are sentences ("The atomic number of tungsten
is 74."), so a match inside the answer counts; the bounds keep a list of
candidates from passing.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Optional, Sequence

NUMBER, NAME, CODE = "number", "name", "code"
KINDS = (NUMBER, NAME, CODE)
MAX_NUMBERS = 3
MAX_WORDS = 40

_ARTICLES = frozenset({"the", "a", "an"})
_NUM = re.compile(
    r"(?<![\w.])([-−+]?)(\d{1,3}(?:[,\u202f\u00a0]\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s*(?:[eE]([-−+]?\d+)|(?:[x×*·]\s*10\s*(?:\^|\*\*)\s*\(?([-−+]?\d+)\)?)))?")


@dataclass(frozen=True)
class KnownAnswer:
    answer: str
    kind: str = NAME
    aliases: tuple[str, ...] = ()
    tolerance: float = 0.0  # relative, for numbers

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if self.kind == NUMBER and parse_number(self.answer) is None:
            raise ValueError(f"{self.answer!r} is not a number")

    @classmethod
    def from_obj(cls, obj: dict) -> "KnownAnswer":
        """From a question bank's line (``answer``, ``type``, ``aliases``, ``tolerance``)."""
        return cls(str(obj["answer"]), obj.get("type", NAME), tuple(obj.get("aliases", ())),
                   float(obj.get("tolerance", 0.0)))


def fold(text: str) -> str:
    """``text`` without accents (NFKD, combining marks dropped)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize(text: str) -> str:
    """Lower case, no accents, punctuation as spaces, no articles, "&" as
    "and", single spaces."""
    text = fold(text).lower().replace("&", " and ")
    words = re.sub(r"[^a-z0-9]+", " ", text).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def numbers(text: str) -> list[float]:
    """The numbers written in ``text``, in order: thousands separators
    ("," or thin spaces), decimals, "e" and "× 10^n" exponents."""
    out = []
    for sign, digits, exp, exp10 in _NUM.findall(text):
        try:
            value = float(re.sub(r"[,\u202f\u00a0]", "", digits))
            power = exp or exp10
            if power:
                value *= 10.0 ** int(power.replace("−", "-"))
        except (ValueError, OverflowError):
            continue
        out.append(-value if sign in ("-", "−") else value)
    return out


def parse_number(text: str) -> Optional[float]:
    found = numbers(text)
    return found[0] if len(found) == 1 else None


def _close(a: float, b: float, tolerance: float) -> bool:
    return math.isclose(a, b, rel_tol=max(tolerance, 1e-9), abs_tol=0.0 if b else 1e-12)


def grade(text: str, known: KnownAnswer, question: str = "") -> bool:
    """Whether the answer ``text`` gives ``known`` (see the module's rules)."""
    if known.kind == NUMBER:
        value = parse_number(known.answer)
        asked = numbers(question)
        found = [n for n in numbers(text) if not any(_close(n, q, 1e-9) for q in asked)]
        distinct = {round(n, 12) for n in found}
        return 0 < len(distinct) <= MAX_NUMBERS and any(_close(n, value, known.tolerance) for n in found)
    names = (known.answer,) + tuple(known.aliases)
    if known.kind == CODE:
        stripped = text.strip().strip(".").strip()
        return any(stripped.lower() == c.lower() or re.search(
            rf"(?<![A-Za-z0-9]){re.escape(c)}(?![A-Za-z0-9])", text) for c in names if c)
    said = normalize(text)
    if len(said.split()) > MAX_WORDS:
        return False
    padded = f" {said} "
    return any(n and f" {n} " in padded for n in (normalize(name) for name in names))


def accuracy(results: Sequence[bool]) -> float:
    return sum(results) / len(results) if results else 0.0
