"""Knowledge bases and question banks with known answers, built from
well-kept data packages (``p2pnet knowledge build``).

Domains, each from its package (recorded with its version in meta.json):

- **chemistry** (``periodictable``, NIST data): one passage per element:
  name, symbol, atomic number, standard atomic weight.
- **geography** (``pycountry``, ISO 3166/4217 data, and ``babel``, Unicode
  CLDR): one passage per country: names, ISO codes, currency in use on
  CURRENCY_DATE. (Neither package has capitals; none are made up.)
- **units** (``pint``'s unit definitions): one passage per unit of length,
  mass, time, area, volume, speed, force, energy, power or pressure: what it
  measures, its symbol, its value in SI units.

Each domain's folder holds ``passages.jsonl`` (a knowledge base, see
p2pnet.experts.knowledge), ``questions.jsonl`` (closed-form questions, each
with its answer, answer type, aliases, tolerance, source passage and split)
and ``meta.json``. A question's split ("probe" or "heldout") comes from the
sha256 of its id alone, so it never changes when other questions come or go.
The data packages are imported only here (the ``knowledge`` extra).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from p2pnet.experts.grading import CODE, NAME, NUMBER
from p2pnet.experts.knowledge import Passage, content_hash

PROBE, HELDOUT = "probe", "heldout"
CURRENCY_DATE = datetime.date(2025, 1, 1)
"""The day whose currencies the geography domain states (babel's CLDR data
holds their history; a fixed day keeps the build reproducible)."""


@dataclass
class Domain:
    name: str
    packages: dict  # package -> version
    passages: list = field(default_factory=list)
    questions: list = field(default_factory=list)

    def passage(self, pid: str, title: str, text: str) -> None:
        self.passages.append(Passage(pid, text, title))

    def ask(self, kind: str, key: str, question: str, answer: str, type_: str, passage: str,
            aliases=(), tolerance: float = 0.0) -> None:
        qid = f"{self.name}/{kind}/{key}"
        self.questions.append({
            "id": qid, "domain": self.name, "kind": kind, "question": question, "answer": answer,
            "type": type_, "aliases": sorted({a for a in aliases if a and a != answer}),
            "tolerance": tolerance, "passage": passage, "split": split_of(qid),
        })


def split_of(question_id: str) -> str:
    """"probe" or "heldout", from the question's id alone (half each, by sha256)."""
    return PROBE if hashlib.sha256(question_id.encode()).digest()[0] < 128 else HELDOUT


def _version(package: str) -> str:
    return importlib.metadata.version(package)


def number_text(value: float) -> str:
    """A value as written in passages and answers: up to 10 significant digits."""
    text = f"{value:.10g}"
    return text[:-2] if text.endswith(".0") else text


# --------------------------------------------------------------- chemistry

_BRITISH = {"aluminum": "aluminium", "cesium": "caesium", "sulfur": "sulphur"}


def chemistry() -> Domain:
    import periodictable

    d = Domain("chemistry", {"periodictable": _version("periodictable")})
    for el in periodictable.elements:
        if el.number < 1:
            continue  # the free neutron ("n", number 0) is not an element
        name = el.name.capitalize()
        variants = [_BRITISH[el.name].capitalize()] if el.name in _BRITISH else []
        mass = number_text(el.mass)
        pid = f"element/{el.symbol}"
        also = f" (also spelled {variants[0]})" if variants else ""
        # one fact a sentence, each naming the element: a 135M model copies such a sentence
        # well, and mixes up facts packed into one (docs/knowledge.md)
        d.passage(pid, name, f"{name}{also} is a chemical element. The chemical symbol of {el.name} is "
                             f"{el.symbol}. The atomic number of {el.name} is {el.number}. The atomic mass "
                             f"(standard atomic weight) of {el.name} is {mass} u.")
        d.ask("atomic_number", el.symbol, f"What is the atomic number of {el.name}?", str(el.number), NUMBER, pid)
        d.ask("symbol", el.symbol, f"What is the chemical symbol of {el.name}?", el.symbol, CODE, pid)
        d.ask("by_symbol", el.symbol, f"Which chemical element has the symbol {el.symbol}?", name, NAME, pid,
              variants)
        d.ask("by_number", el.symbol, f"Which chemical element has atomic number {el.number}?", name, NAME, pid,
              variants)
        d.ask("atomic_mass", el.symbol, f"What is the atomic mass of {el.name}, in u?", mass, NUMBER, pid,
              tolerance=0.002)
    return d


# --------------------------------------------------------------- geography

def geography() -> Domain:
    import pycountry
    from babel import Locale
    from babel.numbers import get_currency_name, get_territory_currencies

    territories = Locale("en").territories
    d = Domain("geography", {"pycountry": _version("pycountry"), "babel": _version("babel")})
    for c in sorted(pycountry.countries, key=lambda c: c.alpha_2):
        name = territories.get(c.alpha_2) or getattr(c, "common_name", None) or c.name
        names = {name, c.name, getattr(c, "common_name", ""), getattr(c, "official_name", "")} - {""}
        pid = f"country/{c.alpha_2}"
        numeric = str(int(c.numeric))
        others = sorted(names - {name})
        # one fact a sentence, each naming the country (see chemistry)
        text = (f"{name}" + (f" (also: {'; '.join(others)})" if others else "") +
                f" is a country or territory. The ISO 3166-1 alpha-2 code of {name} is {c.alpha_2}. "
                f"The ISO 3166-1 alpha-3 code of {name} is {c.alpha_3}. "
                f"The ISO 3166-1 numeric code of {name} is {c.numeric}.")
        currencies = get_territory_currencies(c.alpha_2, start_date=CURRENCY_DATE, tender=True)
        if len(currencies) == 1:
            code = currencies[0]
            cname = get_currency_name(code, locale="en")
            iso = pycountry.currencies.get(alpha_3=code)
            text += f" The currency of {name} is the {cname} ({code})."
            d.ask("currency", c.alpha_2, f"What is the currency of {name}?", cname, NAME, pid,
                  [code] + ([iso.name] if iso else []))
        d.passage(pid, name, text)
        d.ask("alpha2", c.alpha_2, f"What is the ISO 3166-1 alpha-2 code of {name}?", c.alpha_2, CODE, pid)
        d.ask("alpha3", c.alpha_2, f"What is the ISO 3166-1 alpha-3 code of {name}?", c.alpha_3, CODE, pid)
        d.ask("numeric", c.alpha_2, f"What is the ISO 3166-1 numeric code of {name}?", numeric, NUMBER, pid)
        d.ask("by_alpha3", c.alpha_2, f"Which country has the ISO 3166-1 alpha-3 code {c.alpha_3}?", name, NAME,
              pid, names)
    return d


# ------------------------------------------------------------------- units

# dimensionality -> (quantity, SI unit, its plural, symbol)
_QUANTITIES = {
    "[length]": ("length", "meter", "metres", "m"),
    "[mass]": ("mass", "kilogram", "kilograms", "kg"),
    "[time]": ("time", "second", "seconds", "s"),
    "[length] ** 2": ("area", "meter ** 2", "square metres", "m²"),
    "[length] ** 3": ("volume", "meter ** 3", "cubic metres", "m³"),
    "[length] / [time]": ("speed", "meter / second", "metres per second", "m/s"),
    "[length] * [mass] / [time] ** 2": ("force", "newton", "newtons", "N"),
    "[mass] * [length] / [time] ** 2": ("force", "newton", "newtons", "N"),
    "[length] ** 2 * [mass] / [time] ** 2": ("energy", "joule", "joules", "J"),
    "[mass] * [length] ** 2 / [time] ** 2": ("energy", "joule", "joules", "J"),
    "[length] ** 2 * [mass] / [time] ** 3": ("power", "watt", "watts", "W"),
    "[mass] * [length] ** 2 / [time] ** 3": ("power", "watt", "watts", "W"),
    "[mass] / [length] / [time] ** 2": ("pressure", "pascal", "pascals", "Pa"),
}
_UNIT_NAME = re.compile(r"[A-Za-z][a-z]+(?:_[A-Za-z][a-z]+)*")
"""Units with a plain name ("mile", "US_survey_foot"); not symbols, atomic or Planck units."""
_SKIP = re.compile(r"atomic|planck|^natural|^a_u|_unit$|^unit_")


def units() -> Domain:
    import warnings

    import pint

    d = Domain("units", {"pint": _version("pint")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = pint.UnitRegistry()
    seen = set()
    for key in sorted(reg._units):
        definition = reg._units[key]
        uname = definition.name
        if uname in seen or not _UNIT_NAME.fullmatch(uname) or _SKIP.search(uname):
            continue
        seen.add(uname)
        try:
            q = reg.Quantity(1, uname)
            quantity, si, plural, si_symbol = _QUANTITIES[str(q.dimensionality)]
            value = float(q.to(si).magnitude)
        except (KeyError, pint.errors.PintError, TypeError, ValueError):
            continue
        if not value or not 1e-30 < abs(value) < 1e30:
            continue
        shown = uname.replace("_", " ")
        symbol = definition.symbol if definition.symbol and definition.symbol != uname else ""
        aliases = [a.replace("_", " ") for a in definition.aliases if _UNIT_NAME.fullmatch(a) and a != uname]
        pid = f"unit/{uname}"
        amount = number_text(value)
        text = (f"The {shown}" + (f" (symbol {symbol})" if symbol else "") +
                (f", also called {', '.join(aliases)}," if aliases else "") +
                f" is a unit of {quantity}; the physical quantity it is used to measure is {quantity}. "
                f"One {shown} equals {amount} {plural} ({si_symbol}).")
        d.passage(pid, shown, text)
        d.ask("in_si", uname, f"How many {plural} are in one {shown}?", amount, NUMBER, pid, tolerance=0.001)
        d.ask("quantity", uname, f"What physical quantity does the {shown} measure?", quantity, NAME, pid)
        if symbol and symbol.isascii():
            d.ask("symbol", uname, f"What is the symbol of the unit {shown}?", symbol, CODE, pid)
    return d


BUILDERS: dict[str, Callable[[], Domain]] = {"chemistry": chemistry, "geography": geography, "units": units}


def write(domain: Domain, out: str | os.PathLike) -> dict:
    """Write ``domain``'s passages.jsonl, questions.jsonl and meta.json into
    ``out``/<name>/; its meta."""
    folder = Path(out) / domain.name
    folder.mkdir(parents=True, exist_ok=True)
    splits = {s: sum(1 for q in domain.questions if q["split"] == s) for s in (PROBE, HELDOUT)}
    meta = {
        "domain": domain.name, "packages": domain.packages, "passages": len(domain.passages),
        "questions": len(domain.questions), **splits,
        "kinds": sorted({q["kind"] for q in domain.questions}),
        "knowledge_sha256": content_hash(domain.passages),
        "built_by": "p2pnet knowledge build",
    }
    _write_lines(folder / "passages.jsonl", [p.as_obj() for p in domain.passages])
    _write_lines(folder / "questions.jsonl", domain.questions)
    _atomic(folder / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


def _write_lines(path: Path, rows: list) -> None:
    _atomic(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build(out: str | os.PathLike, domains: Optional[list[str]] = None) -> list[dict]:
    """Build and write the named domains (default all); their metas."""
    names = domains or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown domain {unknown[0]!r} (known: {', '.join(BUILDERS)})")
    return [write(BUILDERS[n](), out) for n in names]


def shipped_dir() -> Optional[Path]:
    """The knowledge bases and question banks that ship with p2pnet (the
    ``p2pnet_testnet`` package's ``knowledge/``, in a checkout ``testnet/knowledge``);
    None when that package is not installed."""
    spec = importlib.util.find_spec("p2pnet_testnet")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "knowledge"


def shipped_passages(domain: str) -> Path:
    """The passages of a shipped domain (``chemistry``, ``geography``, ``units``);
    ValueError naming what is missing."""
    if domain not in BUILDERS:
        raise ValueError(f"unknown domain {domain!r} (known: {', '.join(BUILDERS)})")
    root = shipped_dir()
    path = root / domain / "passages.jsonl" if root is not None else None
    if path is None or not path.is_file():
        raise ValueError(f"the {domain} knowledge base is not installed (looked for {path or 'p2pnet_testnet'}; "
                         "rebuild it with: p2pnet knowledge build)")
    return path


def shipped_banks() -> list[Path]:
    """The folders of the shipped domains that hold a question bank."""
    root = shipped_dir()
    if root is None:
        return []
    return [root / d for d in BUILDERS if (root / d / "questions.jsonl").is_file()]


def load_questions(folder: str | os.PathLike, split: Optional[str] = None) -> list[dict]:
    """A domain folder's questions (``split``: only "probe" or "heldout" ones)."""
    with open(Path(folder) / "questions.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]
