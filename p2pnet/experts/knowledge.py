"""A knowledge expert's passages: load, validate, index, search, and fit
into a prompt.

A knowledge base is a JSONL file of passages, one JSON object a line
(``{"id": ..., "text": ..., "title": ...}``; only ``text`` is required), or a
folder of ``.md`` / ``.txt`` files, split into passages at blank lines and
headings. It is identified by the sha256 of its passages (``content_hash``),
not of its files: the same passages give the same hash whatever the layout.

The index is BM25 (the ``bm25s`` library: numpy only, milliseconds to index
a few thousand passages, saved as plain .npy/.json files). It is cached
under ``<cache_dir>/<content hash>-v<INDEX_VERSION>/``, so a restart with
the same passages loads it instead of indexing again.

Bad input raises one :class:`KnowledgeError` naming the file (and line for
JSONL); a passage longer than ``MAX_PASSAGE_CHARS`` is truncated with a
warning (``KnowledgeBase.warnings``), never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from p2pnet.experts.errors import KnowledgeError

log = logging.getLogger("p2pnet.experts.knowledge")

INDEX_VERSION = 1
"""Bumped when the tokenizer or the index layout changes: old caches are ignored."""

MAX_PASSAGES = 1_000_000
MAX_PASSAGE_CHARS = 4000
"""A longer passage is truncated at load (with a warning): it could not fit
beside a question in a small model's context anyway."""
MAX_ID_CHARS = 128
MAX_TITLE_CHARS = 200
MAX_NAME_CHARS = 64
MAX_FILE_BYTES = 512 * 1024 * 1024
TEXT_SUFFIXES = (".md", ".txt")
GENERIC_STEMS = ("passages", "knowledge", "index", "kb", "corpus")
"""File stems that do not name a knowledge base: its folder's name is used."""

CHARS_PER_TOKEN = 3.0
"""A rough, deliberately low estimate (English prose is ~4 characters a
token; numbers and codes are fewer), so the context is never overflowed."""
PROMPT_RESERVE_TOKENS = 48
"""Tokens kept free for the chat template's markup around the messages."""
MIN_PASSAGE_CHARS = 80
"""A passage cut shorter than this is left out rather than sent."""
DEFAULT_TOP_K = 1
"""Passages put into a prompt. One: SmolLM2-135M copies the right fact from
the best passage, and with two or three it often copies a neighbour's
(bench/experts.py, docs/knowledge.md); the best passage is the right one for
99-100% of the shipped banks' held-out questions."""

CONTEXT_HEADER = ("Use the following facts to answer the question. "
                  "Answer with the fact itself, briefly.\n\nFacts:\n")

STOP_WORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they",
    "this", "to", "was", "will", "with", "what", "which", "who", "whom", "how", "many", "much", "does",
    "do", "did", "has", "have", "its", "one", "called", "name",
})
_WORD = re.compile(r"[A-Za-z]+|\d+(?:[.,]\d+)*")


def tokens(text: str) -> list[str]:
    """Index terms of ``text``: lower-case words without accents or stop
    words, numbers kept whole ("183.84"), and short words written with
    capitals ("Fe", "DEU", "As") also kept as they are (marked ``^``): codes
    and chemical symbols that are otherwise stop words or common words."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = []
    for word in _WORD.findall(folded):
        lower = word.lower()
        if lower not in STOP_WORDS:
            out.append(lower.replace(",", ""))
        if word != lower and len(word) <= 3:
            out.append("^" + word)
    return out


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    title: str = ""

    def as_obj(self) -> dict:
        return {"id": self.id, "title": self.title, "text": self.text}


def content_hash(passages: Sequence[Passage]) -> str:
    """sha256 (hex) of the passages, in order: ids, titles and texts."""
    h = hashlib.sha256()
    for p in passages:
        h.update(json.dumps([p.id, p.title, p.text], ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise KnowledgeError(f"knowledge file {path}: {size} bytes is more than {MAX_FILE_BYTES}")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KnowledgeError(f"knowledge file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise KnowledgeError(f"knowledge file {path}: cannot be read ({exc.strerror or exc})") from None


def _clip(text: str, limit: int, where: str, warnings: list) -> str:
    if len(text) <= limit:
        return text
    warnings.append(f"{where}: passage of {len(text)} characters truncated to {limit}")
    return text[:limit]


def _jsonl_passages(path: Path, warnings: list) -> list[Passage]:
    out: list[Passage] = []
    seen: set[str] = set()
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KnowledgeError(f"knowledge file {where}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise KnowledgeError(f"knowledge file {where}: a passage must be a JSON object")
        text, title, pid = obj.get("text"), obj.get("title", ""), obj.get("id", f"{path.stem}:{lineno}")
        if not isinstance(text, str) or not text.strip():
            raise KnowledgeError(f"knowledge file {where}: 'text' must be a non-empty string")
        if not isinstance(title, str):
            raise KnowledgeError(f"knowledge file {where}: 'title' must be a string")
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not 0 < len(str(pid)) <= MAX_ID_CHARS:
            raise KnowledgeError(f"knowledge file {where}: 'id' must be a string or an integer "
                                 f"of 1 to {MAX_ID_CHARS} characters")
        pid = str(pid)
        if pid in seen:
            raise KnowledgeError(f"knowledge file {where}: id {pid!r} is used twice")
        seen.add(pid)
        out.append(Passage(pid, _clip(text.strip(), MAX_PASSAGE_CHARS, where, warnings),
                           _clip(title.strip(), MAX_TITLE_CHARS, where, [])))
        if len(out) > MAX_PASSAGES:
            raise KnowledgeError(f"knowledge file {path}: more than {MAX_PASSAGES} passages")
    return out


_HEADING = re.compile(r"^#{1,6}\s+(.*)$")


def _text_passages(path: Path, rel: str, warnings: list) -> list[Passage]:
    """A .md/.txt file's passages: its paragraphs (split at blank lines and
    headings), joined while they fit in MAX_PASSAGE_CHARS; the title is the
    latest heading, else the file's name."""
    title = Path(rel).stem
    out: list[Passage] = []
    buf: list[str] = []

    def flush() -> None:
        text = "\n\n".join(buf).strip()
        buf.clear()
        if text:
            where = f"{path} (passage {len(out) + 1})"
            suffix = f"#{len(out) + 1}"
            pid = rel[-(MAX_ID_CHARS - len(suffix)):] + suffix
            out.append(Passage(pid, _clip(text, MAX_PASSAGE_CHARS, where, warnings), title[:MAX_TITLE_CHARS]))

    for block in re.split(r"\n\s*\n", _read_text(path)):
        block = block.strip()
        if not block:
            continue
        heading = _HEADING.match(block.splitlines()[0])
        if heading:
            flush()
            title = heading.group(1).strip() or title
            block = "\n".join(block.splitlines()[1:]).strip()
            if not block:
                continue
        if buf and sum(len(b) + 2 for b in buf) + len(block) > MAX_PASSAGE_CHARS:
            flush()
        buf.append(block)
    flush()
    return out


def _name_for(path: Path) -> str:
    name = path.name if path.is_dir() else path.stem
    if name.lower() in GENERIC_STEMS and path.parent.name:
        name = path.parent.name
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "knowledge"
    return name[:MAX_NAME_CHARS]


def load_passages(path: str | os.PathLike) -> tuple[list[Passage], list[str]]:
    """The passages at ``path`` (a .jsonl file, or a folder of .md/.txt files,
    read in sorted order, subfolders included) and the warnings raised on
    the way; KnowledgeError naming the file for anything unusable."""
    root = Path(path).expanduser()
    warnings: list[str] = []
    if not root.exists():
        raise KnowledgeError(f"knowledge path {root}: no such file or folder")
    if root.is_dir():
        try:
            files = sorted(p for p in root.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
        except OSError as exc:
            raise KnowledgeError(f"knowledge folder {root}: cannot be listed ({exc.strerror or exc})") from None
        if not files:
            raise KnowledgeError(f"knowledge folder {root}: holds no .md or .txt files")
        passages = [p for f in files for p in _text_passages(f, f.relative_to(root).as_posix(), warnings)]
    elif root.suffix.lower() == ".jsonl":
        passages = _jsonl_passages(root, warnings)
    elif root.suffix.lower() in TEXT_SUFFIXES:
        passages = _text_passages(root, root.name, warnings)
    else:
        raise KnowledgeError(f"knowledge file {root}: must be a .jsonl file of passages, "
                             "a .md or .txt file, or a folder of them")
    if not passages:
        raise KnowledgeError(f"knowledge {'folder' if root.is_dir() else 'file'} {root}: holds no passages")
    if len(passages) > MAX_PASSAGES:
        raise KnowledgeError(f"knowledge folder {root}: more than {MAX_PASSAGES} passages")
    return passages, warnings


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


class KnowledgeBase:
    """Passages with a BM25 index. :meth:`load` reads and validates them;
    :meth:`index` builds (or loads from its cache) the index that
    :meth:`search` needs."""

    def __init__(self, name: str, passages: Sequence[Passage], *, source: str = "",
                 warnings: Sequence[str] = ()) -> None:
        if not passages:
            raise KnowledgeError(f"knowledge base {name!r}: no passages")
        self.name = name[:MAX_NAME_CHARS]
        self.passages = tuple(passages)
        self.source = source
        self.warnings = tuple(warnings)
        self.sha256 = content_hash(self.passages)
        self.cached = False  # whether index() found its index in the cache
        self._retriever = None
        self._summary = None  # its term summary, made on first use

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KnowledgeBase":
        passages, warnings = load_passages(path)
        for warning in warnings[:5]:
            log.warning("knowledge: %s", warning)
        if len(warnings) > 5:
            log.warning("knowledge: %d more passages truncated", len(warnings) - 5)
        return cls(_name_for(Path(path).expanduser()), passages, source=str(path), warnings=warnings)

    def __len__(self) -> int:
        return len(self.passages)

    def card_fields(self) -> dict:
        """What a model card announces of this knowledge base: its name,
        passage count and content hash, and the term summary (a Bloom filter
        of its terms, p2pnet.experts.domains) that routes questions to it."""
        summary = self.summary
        return {"knowledge": self.name, "knowledge_passages": len(self.passages), "knowledge_sha256": self.sha256,
                "terms": summary.bits, "terms_hashes": summary.hashes}

    @property
    def summary(self):
        """The term summary (``domains.TermSummary``), made on first use
        (:meth:`index` makes it, off the event loop)."""
        if self._summary is None:
            from p2pnet.experts.domains import summarize

            self._summary = summarize(f"{p.title}\n{p.text}" for p in self.passages)
        return self._summary

    def index(self, cache_dir: Optional[str | os.PathLike] = None) -> "KnowledgeBase":
        """Build the BM25 index, or load it from ``cache_dir`` when it holds
        one for these passages; a new index is saved there. Returns self."""
        import bm25s

        self.summary  # noqa: B018 (made here, in the caller's worker thread)
        cache = Path(cache_dir) / f"{self.sha256}-v{INDEX_VERSION}" if cache_dir is not None else None
        if cache is not None and cache.is_dir():
            try:
                retriever = bm25s.BM25.load(str(cache), show_progress=False)
                if int(retriever.scores["num_docs"]) == len(self.passages):
                    self._retriever, self.cached = retriever, True
                    return self
            except Exception as exc:  # a damaged cache is rebuilt, never fatal
                log.warning("knowledge %s: cached index in %s unusable (%s); indexing again", self.name, cache, exc)
        retriever = bm25s.BM25()
        retriever.index([tokens(f"{p.title}\n{p.text}") or [""] for p in self.passages], show_progress=False)
        self._retriever, self.cached = retriever, False
        if cache is not None:
            self._save(retriever, cache)
        return self

    def _save(self, retriever, cache: Path) -> None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache.parent))
            retriever.save(str(tmp), show_progress=False)
            try:
                os.replace(tmp, cache)  # atomic: a reader sees all of it or none
            except OSError:  # another node stored the same index first
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            log.warning("knowledge %s: index not cached in %s (%s)", self.name, cache.parent, exc)

    def search(self, query: str, k: int = DEFAULT_TOP_K) -> list[tuple[Passage, float]]:
        """The up to ``k`` best passages for ``query`` with their BM25 scores,
        best first; passages sharing no term with it are left out."""
        if self._retriever is None:
            raise KnowledgeError(f"knowledge base {self.name!r} is not indexed (call index() first)")
        terms = [t for t in tokens(query) if t in self._retriever.vocab_dict]
        k = min(k, len(self.passages))
        if not terms or k <= 0:
            return []
        docs, scores = self._retriever.retrieve([terms], k=k, show_progress=False, n_threads=1)
        return [(self.passages[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0]

    def context(self, question: str, budget_chars: int, k: int = DEFAULT_TOP_K,
                focus: bool = True) -> tuple[str, tuple[str, ...]]:
        """The facts block for ``question`` (header and numbered passages) in
        at most ``budget_chars`` characters, and the ids of the passages in
        it; ("", ()) when nothing relevant fits. Passages are taken best
        first; the first that does not fit whole is cut (if at least
        MIN_PASSAGE_CHARS of it fit) and nothing comes after it. ``focus``:
        each passage is cut down to its sentences that bear on the question
        (:func:`focus_sentences`)."""
        room = budget_chars - len(CONTEXT_HEADER)
        lines, ids = [], []
        for n, (passage, _) in enumerate(self.search(question, k), 1):
            text = focus_sentences(passage.text, question, passage.title) if focus else passage.text
            line = f"[{n}] {passage.title}: {text}" if passage.title else f"[{n}] {text}"
            if len(line) + 1 > room:
                if room - 1 >= MIN_PASSAGE_CHARS:
                    lines.append(line[:room - 2] + "…")
                    ids.append(passage.id)
                break
            lines.append(line)
            ids.append(passage.id)
            room -= len(line) + 1
        if not lines:
            return "", ()
        return CONTEXT_HEADER + "\n".join(lines), tuple(ids)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
FOCUS_MIN_SENTENCES = 3
"""Passages of fewer sentences are given whole."""


def focus_sentences(text: str, question: str, title: str = "") -> str:
    """For a question that names the passage's subject (its ``title``, if
    it has one), ``text`` cut down to its first sentence (which names the
    subject) and the sentences sharing the most index terms with
    ``question`` (all that tie), in their order. Otherwise, or for a
    passage of fewer than FOCUS_MIN_SENTENCES sentences, or none sharing a
    term, ``text`` as it is.

    A 135M model given a passage of several like facts ("The alpha-2 code
    of Kenya is KE. The alpha-3 code of Kenya is KEN. ...") often copies the
    wrong one; given the one that answers, it copies that. A question that
    asks for the subject itself ("Which country has the alpha-3 code
    JAM?") was answered better from the whole passage (docs/knowledge.md)."""
    sentences = _SENTENCE_END.split(text.strip())
    asked = set(tokens(question))
    if len(sentences) < FOCUS_MIN_SENTENCES or (title and not set(tokens(title)) <= asked):
        return text
    overlap = [len(asked & set(tokens(s))) for s in sentences]
    best = max(overlap[1:])
    if best == 0:
        return text
    return " ".join(s for i, s in enumerate(sentences) if i == 0 or overlap[i] == best)


def fit_budget(n_ctx: int, max_tokens: int, messages_text: str) -> int:
    """Characters left for facts in a context of ``n_ctx`` tokens once the
    messages (``messages_text``), the answer (``max_tokens``) and the
    template's markup are counted; 0 if none."""
    left = n_ctx - max_tokens - estimate_tokens(messages_text) - PROMPT_RESERVE_TOKENS
    return max(0, int(left * CHARS_PER_TOKEN))
