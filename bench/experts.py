"""Experts on real answers: each expert's accuracy per domain on held-out
questions, the real default model (SmolLM2-135M-Instruct Q4_1 through
xllamacpp, greedy), graded exactly (p2pnet.experts.grading).

    .venv/bin/python bench/experts.py [-n 30] [--cross 6] [--k 1] [--json OUT]

Experts: the bare model and one knowledge expert per shipped domain
(chemistry, geography, units), all sharing one loaded model. Each domain's
N held-out questions (a fixed sample: the N with the smallest sha256 of
their id, so every kind of question is in it) are asked of the bare model
and of the domain's own specialist; ``--cross`` of them also of the other
specialists. Then, from the same answers:

- the per-domain **oracle**: the best expert for each domain;
- the **network with inferred routing** (p2pnet.experts.domains on the
  experts' announced term summaries): each question delivered by the expert
  its inferred domain routes to (a specialist, or the bare model for
  "general"); questions asked of the routed expert only where answers exist;
- **routing** alone: how often the inferred domain is the question's, on
  every held-out question of the three banks (no model needed).

Progress goes to stderr; the tables (markdown) to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import trio

from p2pnet.experts import domains
from p2pnet.experts.backend import Speed
from p2pnet.experts.expert import Expert
from p2pnet.experts.grading import KnownAnswer, grade
from p2pnet.experts.knowledge import DEFAULT_TOP_K, KnowledgeBase
from p2pnet.experts.knowledge_build import load_questions, shipped_dir
from p2pnet.experts.spec import build_expert, parse_expert_spec
from p2pnet.wire import ChatMessage, PromptBody

DOMAINS = ("chemistry", "geography", "units")
BARE = "bare"


def sample(folder: Path, n: int) -> list[dict]:
    rows = load_questions(folder, "heldout")
    return sorted(rows, key=lambda q: hashlib.sha256(q["id"].encode()).digest())[:n]


def routing_table(root: Path, bases: dict) -> dict:
    """Per domain: held-out questions, routed to it, and where the others went."""
    cards = [SimpleNamespace(domains=(d,), terms=kb.summary.bits, terms_hashes=kb.summary.hashes)
             for d, kb in bases.items()]
    out = {}
    for d in DOMAINS:
        qs = load_questions(root / d, "heldout")
        went: dict = {}
        for q in qs:
            r = domains.infer(q["question"], cards).domain
            went[r] = went.get(r, 0) + 1
        out[d] = {"questions": len(qs), "right": went.get(d, 0), "elsewhere": {k: v for k, v in went.items() if k != d}}
    return out


async def run(args) -> dict:
    root = Path(args.knowledge) if args.knowledge else shipped_dir()
    bases = {d: KnowledgeBase.load(root / d / "passages.jsonl").index(args.cache) for d in DOMAINS}
    spec = parse_expert_spec("model=smollm2-135m")
    bare = build_expert(spec, args.data_dir, n_threads=args.threads)
    experts = {BARE: bare}
    for d, kb in bases.items():
        experts[d] = Expert(d, bare.backend, domains=(d,), knowledge=kb, knowledge_k=args.k)
    speed = Speed(1.0, 1.0)  # not measured: all share one model
    for e in experts.values():
        await e.start(speed=speed)
    plan = []  # (domain, question, expert name)
    for d in DOMAINS:
        qs = sample(root / d, args.n)
        for i, q in enumerate(qs):
            plan += [(d, q, BARE), (d, q, d)]
            if i < args.cross:
                plan += [(d, q, other) for other in DOMAINS if other != d]
    rows = []
    started = time.monotonic()
    try:
        for i, (d, q, name) in enumerate(plan, 1):
            body = PromptBody((ChatMessage("user", q["question"]),), args.max_tokens, temperature=0.0)
            ans = await experts[name].answer(os.urandom(16), body, timeout=300)
            ok = ans.status == "ok" and grade(ans.text, KnownAnswer.from_obj(q), q["question"])
            rows.append({"domain": d, "id": q["id"], "kind": q["kind"], "question": q["question"],
                         "answer": q["answer"], "expert": name, "text": ans.text.strip(), "right": ok,
                         "retrieved": q["passage"] in ans.passages, "passages": list(ans.passages),
                         "prompt_tokens": ans.prompt_tokens})
            if i % args.progress == 0 or i == len(plan):
                el = time.monotonic() - started
                print(f"[{i}/{len(plan)}] {el:.0f} s, {el / i:.2f} s/answer; last: {name} on {d}: "
                      f"{'right' if ok else 'wrong'}", file=sys.stderr, flush=True)
    finally:
        await bare.aclose()
    return {"n": args.n, "cross": args.cross, "k": args.k, "max_tokens": args.max_tokens,
            "seconds": round(time.monotonic() - started, 1), "rows": rows,
            "routing": routing_table(root, bases), "load": os.getloadavg(), "cores": os.cpu_count()}


def _acc(rows) -> tuple[int, int]:
    return sum(r["right"] for r in rows), len(rows)


def _cell(rows) -> str:
    right, n = _acc(rows)
    return f"{right}/{n} ({right / n:.0%})" if n else "–"


def tables(out: dict) -> str:
    rows = out["rows"]
    names = [BARE, *DOMAINS]
    lines = ["### Accuracy per expert and domain (held-out questions)", "",
             "| domain | " + " | ".join("bare model" if n == BARE else f"{n} expert" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for d in DOMAINS:
        cells = [_cell([r for r in rows if r["domain"] == d and r["expert"] == n]) for n in names]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")

    lines += ["", "### Per kind of question: bare model vs the domain's specialist", "",
              "| domain | kind | bare | specialist | right passage retrieved |", "|---|---|---:|---:|---:|"]
    for d in DOMAINS:
        for kind in sorted({r["kind"] for r in rows if r["domain"] == d}):
            b = [r for r in rows if r["domain"] == d and r["kind"] == kind and r["expert"] == BARE]
            s = [r for r in rows if r["domain"] == d and r["kind"] == kind and r["expert"] == d]
            retrieved = sum(r["retrieved"] for r in s)
            lines.append(f"| {d} | {kind} | {_cell(b)} | {_cell(s)} | {retrieved}/{len(s)} |")

    routing = out["routing"]
    lines += ["", "### Delivered accuracy: one generalist, inferred routing, per-domain oracle", "",
              "| domain | one generalist (bare) | network, inferred routing | oracle (best expert) | oracle expert |",
              "|---|---:|---:|---:|---|"]
    for d in DOMAINS:
        by = {n: [r for r in rows if r["domain"] == d and r["expert"] == n] for n in names}
        # the oracle compares experts on the questions all of them answered (the cross sample)
        best = max((n for n in names if by[n]), key=lambda n: (_acc(by[n])[0] / _acc(by[n])[1], n == d))
        routed = []  # the answer of the expert each question's inferred route reaches
        for r in by[BARE]:
            target = BARE if r["route"] == domains.GENERAL else r["route"]
            routed += [x for x in rows if x["id"] == r["id"] and x["expert"] == target][:1]
        lines.append(f"| {d} | {_cell(by[BARE])} | {_cell(routed)} | {_cell(by[best])} | "
                     f"{'bare model' if best == BARE else best + ' expert'} |")

    lines += ["", "### Routing by what is asked (every held-out question, no model)", "",
              "| domain | questions | routed to it | elsewhere |", "|---|---:|---:|---|"]
    for d in DOMAINS:
        r = routing[d]
        elsewhere = ", ".join(f"{k} {v}" for k, v in sorted(r["elsewhere"].items())) or "–"
        lines.append(f"| {d} | {r['questions']} | {r['right']} ({r['right'] / r['questions']:.1%}) | {elsewhere} |")
    load = ", ".join(f"{x:.2f}" for x in out["load"])
    lines += ["", f"{len(rows)} answers in {out['seconds']} s ({out['seconds'] / max(1, len(rows)):.2f} s each), "
              f"max_tokens {out['max_tokens']}, top {out['k']} passages; {out['cores']} cores, "
              f"load average at the end {load}."]
    return "\n".join(lines)


def add_routes(out: dict, root: Path) -> None:
    """The inferred route of each answered question (on the experts' summaries)."""
    bases = {d: KnowledgeBase.load(root / d / "passages.jsonl") for d in DOMAINS}
    cards = [SimpleNamespace(domains=(d,), terms=kb.summary.bits, terms_hashes=kb.summary.hashes)
             for d, kb in bases.items()]
    for r in out["rows"]:
        r["route"] = domains.infer(r["question"], cards).domain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=30, help="held-out questions per domain (default 30)")
    p.add_argument("--cross", type=int, default=6, help="of those, asked of the other specialists too")
    p.add_argument("--k", type=int, default=DEFAULT_TOP_K, help="passages put into the prompt")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--progress", type=int, default=10, help="a progress line every this many answers")
    p.add_argument("--data-dir", default=os.environ.get("P2PNET_TEST_MODELS")
                   or str(Path.home() / ".cache" / "p2pnet-test-models"))
    p.add_argument("--knowledge", default=None, help="folder of the domains (default: the shipped ones)")
    p.add_argument("--cache", default=None, help="index cache folder")
    p.add_argument("--json", default=None, help="write every answer to this JSON file")
    p.add_argument("--from-json", default=None, help="print the tables of an earlier --json run")
    args = p.parse_args()
    if args.from_json:
        out = json.loads(Path(args.from_json).read_text())
    else:
        out = trio.run(run, args)
        add_routes(out, Path(args.knowledge) if args.knowledge else shipped_dir())
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print(tables(out))


if __name__ == "__main__":
    main()
