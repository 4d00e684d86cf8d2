"""The ``--expert`` flag: parsing it, and building a running Expert from it.

Syntax: comma-separated ``key=value`` pairs, for example
``model=smollm2-135m,domains=general+geography,price=0.1,concurrency=2``.
Keys: ``model`` (required: a known name or a .gguf path), ``domains``
(``+``-separated, default "general"), ``price`` (per 1k tokens, default 0),
``concurrency`` (generations batched at once, default 4: llama.cpp batches
them continuously, see DEFAULT_CONCURRENCY), ``queue`` (queries that wait for a free slot
when ``concurrency`` are running, default 8; 0: answer "busy" at once),
``gpu_layers`` (default 0; -1 all), ``ctx``
(context tokens, default 2048), ``confidence`` (``on`` or ``off``, default
on: answers carry exp(mean log-probability) of their tokens; off saves its
cost), ``knowledge`` (a knowledge base: a .jsonl file of passages or a folder
of .md/.txt files, indexed at start; its best passages for each question go
into the prompt, see p2pnet.experts.knowledge), ``id`` (expert id, default
the model name) and ``system`` (system prompt). ``system`` must come last: its value runs to the end of the spec,
commas included.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Optional

import trio

from p2pnet.experts.errors import ExpertSpecError
from p2pnet.experts.expert import DEFAULT_SYSTEM_PROMPT, Expert
from p2pnet.experts.knowledge import KnowledgeBase
from p2pnet.experts.llama import LlamaBackend, LlamaSettings
from p2pnet.experts.modelstore import ModelRegistry, resolve

log = logging.getLogger("p2pnet.experts.spec")

DEFAULT_QUEUE = 8
"""Queries an expert lets wait for a slot (up to their deadline) before it says busy."""

_DOMAIN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
DEFAULT_CONCURRENCY = 4
"""Generations an expert runs at once unless its spec says otherwise. llama.cpp
batches concurrent requests over slots (continuous batching): measured on 2
CPU cores with SmolLM2-135M, 4 concurrent generations give 1.46x the total
tokens/s of 1 and 8 give 1.57x, each slower than alone (docs/benchmarks.md,
"Experts", (c) and (e)); 4 keeps most of that gain at half the per-request
slowdown. Further requests wait in the expert's queue."""

_KEYS = ("model", "domains", "price", "concurrency", "queue", "gpu_layers", "ctx", "confidence", "knowledge", "id",
         "system")
_SWITCH = {"on": True, "off": False}



@dataclass(frozen=True)
class ExpertSpec:
    model: str
    domains: tuple[str, ...] = ("general",)
    price_per_1k: float = 0.0
    concurrency: int = DEFAULT_CONCURRENCY
    queue: int = DEFAULT_QUEUE
    gpu_layers: int = 0
    n_ctx: int = 2048
    confidence: bool = True
    expert_id: str = ""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    knowledge: str = ""  # path of a knowledge base; "" none

    @property
    def id(self) -> str:
        """The expert id: ``expert_id`` or else derived from the model name."""
        if self.expert_id:
            return self.expert_id
        return (Path(self.model).stem if self.model.endswith(".gguf") else self.model)[:64]


def parse_expert_spec(text: str) -> ExpertSpec:
    """Parse one ``--expert`` value; ExpertSpecError naming the bad key."""
    values: dict[str, str] = {}
    rest = text.strip()
    while rest:
        if rest.startswith("system="):
            key, value, rest = "system", rest[len("system="):], ""
        else:
            item, _, rest = rest.partition(",")
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq:
                raise ExpertSpecError(f"expert spec: {item.strip()!r} is not key=value")
            if key not in _KEYS:
                raise ExpertSpecError(f"expert spec: unknown key {key!r} (known: {', '.join(_KEYS)})")
            value = value.strip()
        if key in values:
            raise ExpertSpecError(f"expert spec: key {key!r} given twice")
        values[key] = value
    if not values.get("model"):
        raise ExpertSpecError("expert spec: key 'model' is required (model=NAME or a .gguf path)")
    domains = tuple(d.strip().lower() for d in values.get("domains", "general").split("+"))
    if not domains or len(domains) > 32 or not all(_DOMAIN.fullmatch(d) for d in domains):
        raise ExpertSpecError(f"expert spec: key 'domains': {values.get('domains')!r} must be "
                              "+-separated names of letters, digits, '_', '.', '-'")
    confidence = values.get("confidence", "on").lower()
    if confidence not in _SWITCH:
        raise ExpertSpecError(f"expert spec: key 'confidence': {values['confidence']!r} must be on or off")
    if "knowledge" in values and not values["knowledge"]:
        raise ExpertSpecError("expert spec: key 'knowledge' needs a path (a .jsonl file or a folder)")
    expert_id = values.get("id", "")
    if len(expert_id) > 64:
        raise ExpertSpecError("expert spec: key 'id' is longer than 64 characters")
    return ExpertSpec(
        model=values["model"],
        domains=domains,
        price_per_1k=_number(values, "price", float, 0.0, minimum=0.0),
        concurrency=_number(values, "concurrency", int, DEFAULT_CONCURRENCY, minimum=1),
        queue=_number(values, "queue", int, DEFAULT_QUEUE, minimum=0),
        gpu_layers=_number(values, "gpu_layers", int, 0, minimum=-1),
        n_ctx=_number(values, "ctx", int, 2048, minimum=64),
        confidence=_SWITCH[confidence],
        expert_id=expert_id,
        system_prompt=values.get("system", DEFAULT_SYSTEM_PROMPT),
        knowledge=values.get("knowledge", ""),
    )


def _number(values: dict, key: str, kind: type, default, *, minimum):
    if key not in values:
        return default
    try:
        number = kind(values[key])
    except ValueError:
        raise ExpertSpecError(f"expert spec: key {key!r}: {values[key]!r} is not "
                              f"{'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(number) or number < minimum:
        raise ExpertSpecError(f"expert spec: key {key!r}: {values[key]!r} must be >= {minimum}")
    return number


def load_knowledge(spec: ExpertSpec, cache_dir: Optional[str | os.PathLike]) -> Optional[KnowledgeBase]:
    """``spec``'s knowledge base, indexed (the index cached in ``cache_dir``
    by content hash); None without one. KnowledgeError names a bad file."""
    if not spec.knowledge:
        return None
    kb = KnowledgeBase.load(spec.knowledge).index(cache_dir)
    log.info("expert %s: knowledge %s, %d passages (sha256 %s…), index %s", spec.id, kb.name, len(kb),
             kb.sha256[:12], "from the cache" if kb.cached else "built")
    return kb


def build_expert(spec: ExpertSpec, data_dir: str | os.PathLike, *, n_threads: int = 0,
                 registry: Optional[ModelRegistry] = None,
                 knowledge_cache: Optional[str | os.PathLike] = None) -> Expert:
    """An (unstarted) Expert on an xllamacpp backend for ``spec``. The model
    must be stored already (see modelstore.pull) or be a .gguf path. A
    knowledge base is loaded and indexed here; its index is cached in
    ``knowledge_cache`` (default ``data_dir``/knowledge)."""
    cache = knowledge_cache if knowledge_cache is not None else Path(data_dir) / "knowledge"
    if spec.model.startswith(SCRIPTED_PREFIX):
        return _scripted_expert(spec, load_knowledge(spec, cache))
    model = resolve(spec.model, data_dir, registry)
    knowledge = load_knowledge(spec, cache)
    settings = LlamaSettings(n_threads=n_threads, gpu_layers=spec.gpu_layers, n_ctx=spec.n_ctx,
                             n_parallel=spec.concurrency, confidence=spec.confidence)
    backend = LlamaBackend(model.path, settings, sha256=model.sha256 or None, model_name=model.name)
    return Expert(spec.id, backend, domains=spec.domains, system_prompt=spec.system_prompt,
                  price_per_1k=spec.price_per_1k, max_concurrency=spec.concurrency, max_queue=spec.queue,
                  knowledge=knowledge)


SCRIPTED_PREFIX = "scripted:"
SCRIPTED_BEHAVIOURS = ("wrong",)


def _scripted_expert(spec: ExpertSpec, knowledge: Optional[KnowledgeBase] = None) -> Expert:
    """A deliberately bad expert for demonstrations and tests of reputation
    (``model=scripted:wrong``): it answers every question wrongly. It is only
    ever built when named explicitly; nothing falls back to it."""
    from p2pnet.experts.scripted import ScriptedBackend

    behaviour = spec.model[len(SCRIPTED_PREFIX):]
    if behaviour not in SCRIPTED_BEHAVIOURS:
        raise ExpertSpecError(f"expert spec: key 'model': scripted behaviour {behaviour!r} is not one of "
                              f"{', '.join(SCRIPTED_BEHAVIOURS)}")
    backend = ScriptedBackend(accuracy=0.0, wrong="I am not sure, maybe it is Atlantis.",
                              model=f"scripted-{behaviour}", latency=0.05, sleep=time.sleep)
    return Expert(spec.id, backend, domains=spec.domains, system_prompt=spec.system_prompt,
                  price_per_1k=spec.price_per_1k, max_concurrency=spec.concurrency, max_queue=spec.queue,
                  knowledge=knowledge)


@asynccontextmanager
async def open_expert(spec: ExpertSpec, data_dir: str | os.PathLike, *, n_threads: int = 0,
                      registry: Optional[ModelRegistry] = None,
                      knowledge_cache: Optional[str | os.PathLike] = None) -> AsyncIterator[Expert]:
    """A started Expert for ``spec`` (model loaded, speed measured, knowledge
    indexed), closed on exit."""
    expert = build_expert(spec, data_dir, n_threads=n_threads, registry=registry, knowledge_cache=knowledge_cache)
    try:
        await expert.start()
        yield expert
    finally:
        with trio.CancelScope(shield=True):
            await expert.aclose()
