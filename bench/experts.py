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

``--swarm``: the second part instead, on a real local swarm (testnet.swarm):
a chemistry expert, a geography expert, a bad expert (scripted:wrong) and the
bare model, each on its own node and each claiming both domains, asked through
a fifth node's API. Warm-up: the four expert nodes are the validators and
probe every ``--probe-interval`` seconds (the probe halves of the banks,
graded exactly, full weight); the bench polls node 4's /reputation until each
specialist ranks first in its own domain by ``--settle-margin`` (or
``--settle-timeout`` passes), then optionally ``--warmup`` questions per domain
with graded user feedback (/v1/feedback, at node 4: a newcomer's weight).
Then held-out questions; who delivered each answer; the oracle from the real
experts answering the same held-out questions in one process afterwards.

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


# ------------------------------------------------------------------ a real swarm (issue 24 item 5, second part)

SWARM_DOMAINS = ("chemistry", "geography")
SWARM_EXPERTS = ("chemistry", "geography", "bad", "bare")  # node i hosts SWARM_EXPERTS[i]; node 4 asks


def swarm_specs(model: str = "smollm2-135m") -> dict:
    """Every expert claims both domains, so reputation has to choose."""
    from p2pnet.experts.knowledge_build import shipped_passages

    both = "+".join(SWARM_DOMAINS)
    return {"chemistry": f"model={model},domains={both},id=chemistry,knowledge={shipped_passages('chemistry')}",
            "geography": f"model={model},domains={both},id=geography,knowledge={shipped_passages('geography')}",
            "bad": f"model=scripted:wrong,domains={both},id=bad",
            "bare": f"model={model},domains={both},id=bare"}


def _ask(api: str, q: dict, domain: str, max_tokens: int) -> dict:
    from p2pnet.api import client

    body = {"model": "p2pnet", "messages": [{"role": "user", "content": q["question"]}],
            "domain": domain, "max_tokens": max_tokens, "temperature": 0.0, "deadline_s": 120}
    t0 = time.monotonic()
    out = client.post_json(api + "/v1/chat/completions", body, timeout=180)
    text = out["choices"][0]["message"]["content"] or ""
    prov = out.get("p2pnet") or {}
    chosen = (prov.get("chosen") or {}).get("expert_id")
    return {"domain": domain, "id": q["id"], "question": q["question"], "answer": q["answer"], "text": text.strip(),
            "right": grade(text, KnownAnswer.from_obj(q), q["question"]), "expert": chosen,
            "asked": [(r.get("expert_id"), r.get("status"), r.get("latency_ms")) for r in prov.get("respondents") or ()],
            "reason": prov.get("reason"),
            "query_id": prov.get("query_id"), "seconds": round(time.monotonic() - t0, 2)}


def settled(table: dict, margin: float, min_ratings: int) -> bool:
    """Whether each domain's specialist ranks first in it by ``margin``, with
    every expert rated at least ``min_ratings`` times in it: ``table`` is
    domain -> expert name -> (score, confidence, ratings)."""
    for d in SWARM_DOMAINS:
        row = table.get(d, {})
        if set(row) != set(SWARM_EXPERTS) or any(v[2] < min_ratings for v in row.values()):
            return False
        if any(row[d][0] < v[0] + margin for name, v in row.items() if name != d):
            return False
    return True


def _standings(api: str, names: dict) -> dict:
    """domain -> expert name -> (score, confidence, count) from the node's /reputation."""
    from p2pnet.api import client

    out = {}
    for d in SWARM_DOMAINS:
        rows = client.get_json(f"{api}/reputation?domain={d}", timeout=10).get("standings") or ()
        out[d] = {names[r["peer_id"]]: (round(r["score"], 3), round(r["confidence"], 3), r["count"])
                  for r in rows if r["peer_id"] in names}
    return out


def _settle(nodes: list, args, started: float) -> dict:
    """Poll node 4's reputation until the specialists rank first in their domains."""
    from p2pnet.api import client

    names = {nodes[i]["peer_id"]: name for i, name in enumerate(SWARM_EXPERTS)}
    api, t0, timeline = nodes[-1]["api"], time.monotonic(), []
    while True:
        try:
            table = _standings(api, names)
            sent = sum(client.get_json(n["api"] + "/status", timeout=10).get("probes_sent", 0)
                       for n in nodes[:len(SWARM_EXPERTS)])
        except Exception as exc:  # a node busy answering: try again at the next poll
            print(f"poll failed: {exc}", file=sys.stderr, flush=True)
            table, sent = None, None
        el = round(time.monotonic() - t0, 1)
        if table is not None:
            timeline.append({"seconds": el, "probes_sent": sent, "standings": table})
            line = "; ".join(f"{d}: " + ", ".join(f"{n} {v[0]:.2f}/{v[2]}" for n, v in sorted(table[d].items()))
                             for d in SWARM_DOMAINS)
            print(f"[settle {el:.0f} s, {sent} probes] {line}", file=sys.stderr, flush=True)
            if settled(table, args.settle_margin, args.settle_min_ratings):
                return {"settled": True, "seconds": el, "probes_sent": sent, "timeline": timeline}
        if el >= args.settle_timeout:
            return {"settled": False, "seconds": el, "probes_sent": sent, "timeline": timeline}
        time.sleep(args.settle_poll)


def run_swarm(args) -> dict:
    """Probe warm-up until routing settles, then held-out questions through a real swarm."""
    from p2pnet.api import client
    from p2pnet_testnet import swarm as swarm_mod

    root = Path(args.knowledge) if args.knowledge else shipped_dir()
    specs = swarm_specs()
    swarm_dir = Path(args.swarm_dir)
    extra = {i: ("--expert", specs[name], "--probe-interval", str(args.probe_interval))
             for i, name in enumerate(SWARM_EXPERTS)}
    extra[len(SWARM_EXPERTS)] = ("--no-experts",)
    out = {"specs": specs, "warmup": [], "heldout": [], "cores": os.cpu_count(), "load_start": os.getloadavg(),
           "probe_interval": args.probe_interval}
    started = time.monotonic()
    nodes = swarm_mod.up(len(SWARM_EXPERTS) + 1, swarm_dir, validators=len(SWARM_EXPERTS),
                         node_args=["--threads", str(args.threads)], extra_args=extra,
                         model_store=Path(args.data_dir), timeout_s=300,
                         progress=lambda m: print(m, file=sys.stderr, flush=True))
    try:
        api = nodes[-1]["api"]
        out["up_seconds"] = round(time.monotonic() - started, 1)
        out["settle"] = _settle(nodes, args, started)
        out["settle"]["after"] = _standings(api, {nodes[i]["peer_id"]: n for i, n in enumerate(SWARM_EXPERTS)})
        warm = {d: sorted(load_questions(root / d, "probe"),
                          key=lambda q: hashlib.sha256(q["id"].encode()).digest())[:args.warmup] for d in SWARM_DOMAINS}
        held = {d: sample(root / d, args.n) for d in SWARM_DOMAINS}
        # interleave the domains, so both learn at once
        for phase, qs in (("warmup", warm), ("heldout", held)):
            plan = [(d, q) for pair in zip(*(qs[d] for d in SWARM_DOMAINS)) for d, q in zip(SWARM_DOMAINS, pair)]
            for i, (d, q) in enumerate(plan, 1):
                try:
                    row = _ask(api, q, d, args.max_tokens)
                except Exception as exc:  # an error is a delivered non-answer
                    row = {"domain": d, "id": q["id"], "question": q["question"], "answer": q["answer"],
                           "text": "", "right": False, "expert": None, "error": str(exc)[:200]}
                if phase == "warmup" and row.get("query_id"):
                    try:
                        row["feedback"] = client.post_json(api + "/v1/feedback",
                                                           {"query_id": row["query_id"], "accept": bool(row["right"])},
                                                           timeout=30)
                    except Exception as exc:
                        row["feedback_error"] = str(exc)[:200]
                out[phase].append(row)
                print(f"[{phase} {i}/{len(plan)}] {time.monotonic() - started:.0f} s: {d} -> {row['expert']} "
                      f"{'right' if row['right'] else 'wrong'} {row.get('error', '')}", file=sys.stderr, flush=True)
    finally:
        out["load_end_swarm"] = os.getloadavg()
        try:
            out["standings_end"] = _standings(nodes[-1]["api"], {nodes[i]["peer_id"]: n
                                                                 for i, n in enumerate(SWARM_EXPERTS)})
        except Exception as exc:
            out["standings_end"] = str(exc)[:200]
        swarm_mod.down(swarm_dir)
    out["swarm_seconds"] = round(time.monotonic() - started, 1)
    # the oracle's row: every real expert on the same held-out questions, in one process, same prompts
    out["per_expert"] = trio.run(_per_expert, args, held, specs)
    out["load_end"] = os.getloadavg()
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


async def _per_expert(args, held: dict, specs: dict) -> list[dict]:
    bare = build_expert(parse_expert_spec("model=smollm2-135m"), args.data_dir, n_threads=args.threads)
    experts = {"bare": bare}
    for name in ("chemistry", "geography"):
        kb = KnowledgeBase.load(parse_expert_spec(specs[name]).knowledge).index(args.cache)
        experts[name] = Expert(name, bare.backend, domains=SWARM_DOMAINS, knowledge=kb, knowledge_k=args.k)
    for e in experts.values():
        await e.start(speed=Speed(1.0, 1.0))
    rows = []
    try:
        for d, qs in held.items():
            for q in qs:
                for name, e in experts.items():
                    body = PromptBody((ChatMessage("user", q["question"]),), args.max_tokens, temperature=0.0)
                    ans = await e.answer(os.urandom(16), body, timeout=300)
                    rows.append({"domain": d, "id": q["id"], "expert": name, "text": ans.text.strip(),
                                 "right": ans.status == "ok" and grade(ans.text, KnownAnswer.from_obj(q), q["question"])})
            print(f"per-expert answers for {d} done", file=sys.stderr, flush=True)
    finally:
        await bare.aclose()
    return rows


def swarm_tables(out: dict) -> str:
    held, per = out["heldout"], out["per_expert"]
    lines = ["### A real swarm: reputation routing after warm-up (held-out questions)", "",
             "| domain | network, reputation routing | one generalist (bare model) | random routing (mean of 4) "
             "| per-domain oracle | network / oracle |", "|---|---:|---:|---:|---:|---:|"]
    for d in SWARM_DOMAINS:
        net = [r for r in held if r["domain"] == d]
        acc = {n: _acc([r for r in per if r["domain"] == d and r["expert"] == n]) for n in ("chemistry", "geography", "bare")}
        n = len(net)
        acc["bad"] = (0, n)  # scripted:wrong: wrong on every question by construction
        rand = sum(a / max(1, b) for a, b in acc.values()) / 4
        best = max(("chemistry", "geography", "bare"), key=lambda k: acc[k][0])
        o = acc[best][0] / max(1, acc[best][1])
        netacc = _acc(net)[0] / max(1, n)
        lines.append(f"| {d} | {_cell(net)} | {acc['bare'][0]}/{acc['bare'][1]} | {rand:.0%} | "
                     f"{acc[best][0]}/{acc[best][1]} ({o:.0%}), {best} expert | {netacc / o if o else float('nan'):.2f} |")
    lines += ["", "Per-expert accuracy on the same held-out questions (in one process, same prompts):", "",
              "| domain | chemistry expert | geography expert | bare model | bad expert |", "|---|---:|---:|---:|---:|"]
    for d in SWARM_DOMAINS:
        c = [_cell([r for r in per if r["domain"] == d and r["expert"] == n]) for n in ("chemistry", "geography", "bare")]
        lines.append(f"| {d} | " + " | ".join(c) + " | 0 (scripted) |")
    lines += ["", "Who delivered the answer, per block of 10 queries (warm-up, then held-out):", "",
              "| queries | phase | chemistry | geography | bare | bad | none/error | right |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    allrows = [("warm-up", r) for r in out["warmup"]] + [("held-out", r) for r in out["heldout"]]
    for s in range(0, len(allrows), 10):
        blk = allrows[s:s + 10]
        cnt = lambda n: sum(1 for _, r in blk if r["expert"] == n)
        other = len(blk) - sum(cnt(n) for n in SWARM_EXPERTS)
        lines.append(f"| {s + 1}–{s + len(blk)} | {'/'.join(sorted({p for p, _ in blk}))} | {cnt('chemistry')} | "
                     f"{cnt('geography')} | {cnt('bare')} | {cnt('bad')} | {other} | {sum(r['right'] for _, r in blk)} |")
    for d in SWARM_DOMAINS:
        rs = [r for r in out["heldout"] if r["domain"] == d]
        by = {}
        for r in rs:
            by[r["expert"]] = by.get(r["expert"], 0) + 1
        lines.append("")
        lines.append(f"held-out {d}: delivered by " + ", ".join(f"{k} {v}" for k, v in sorted(by.items(), key=str)))
    st = out.get("settle")
    if st:
        lines += ["", f"Warm-up by the validators' probes (every {out.get('probe_interval')} s ± 50% on each of 4 "
                  f"validators): {'settled' if st['settled'] else 'NOT settled'} after {st['seconds']:.0f} s, "
                  f"{st['probes_sent']} probes sent (all domains; score/ratings per expert):", "",
                  "| seconds | probes | " + " | ".join(f"{d}: {n}" for d in SWARM_DOMAINS for n in SWARM_EXPERTS) + " |",
                  "|---:|---:|" + "---:|" * (len(SWARM_DOMAINS) * len(SWARM_EXPERTS))]
        tl = st["timeline"]
        shown = tl if len(tl) <= 12 else [tl[i * (len(tl) - 1) // 11] for i in range(12)]
        for row in shown:
            cells = []
            for d in SWARM_DOMAINS:
                for n in SWARM_EXPERTS:
                    v = row["standings"].get(d, {}).get(n)
                    cells.append(f"{v[0]:.2f}/{v[2]}" if v else "–")
            lines.append(f"| {row['seconds']:.0f} | {row['probes_sent']} | " + " | ".join(cells) + " |")
    reasons: dict = {}
    for r in out["heldout"]:
        key = (r.get("reason") or r.get("error") or "none").split(":")[0].split(" (")[0][:60]
        reasons[key] = reasons.get(key, 0) + 1
    slow = sum(1 for r in out["heldout"] for a in r.get("asked") or () if a[1] == "slow")
    asked = sum(len(r.get("asked") or ()) for r in out["heldout"])
    secs = [r["seconds"] for r in out["heldout"] if "seconds" in r]
    lines += ["", f"Held-out queries: {asked} respondent slots ({asked / max(1, len(out['heldout'])):.2f} a query), "
              f"{slow} given up on as slow; {sum(secs) / max(1, len(secs)):.1f} s a query (max "
              f"{max(secs, default=0):.0f} s). Reasons for the choice: "
              + "; ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) + "."]
    lat: dict = {}
    for r in out["heldout"]:
        for a in r.get("asked") or ():
            if len(a) > 2 and a[1] == "ok" and a[2] is not None:
                lat.setdefault(a[0], []).append(a[2] / 1000)
    if lat:
        lines += ["", "Answer times in the held-out queries (ok answers, s): " + "; ".join(
            f"{n} median {sorted(v)[len(v) // 2]:.1f}, max {max(v):.1f} ({len(v)})" for n, v in sorted(lat.items())) + "."]
    fb = sum(1 for r in out["warmup"] if r.get("feedback") is not None)
    la = lambda x: " / ".join(f"{v:.2f}" for v in x)
    lines += ["", f"{len(out['warmup'])} warm-up queries ({fb} with feedback recorded), {len(out['heldout'])} held-out; "
              f"swarm {out['swarm_seconds']} s (up in {out.get('up_seconds')} s), total {out['seconds']} s; "
              f"{out['cores']} cores; load average at start {la(out['load_start'])}, end of swarm "
              f"{la(out['load_end_swarm'])}, end {la(out['load_end'])}."]
    return "\n".join(lines)


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
    p.add_argument("--swarm", action="store_true", help="the real-swarm part instead (reputation routing)")
    p.add_argument("--swarm-dir", default="/tmp/p2pnet-experts-swarm", help="with --swarm: the swarm's folder")
    p.add_argument("--warmup", type=int, default=0,
                   help="with --swarm: warm-up questions per domain with user feedback, after the probes settle")
    p.add_argument("--probe-interval", type=float, default=20.0, help="with --swarm: the validators' probe interval (s)")
    p.add_argument("--settle-margin", type=float, default=0.1,
                   help="with --swarm: settled when each specialist's score leads its domain by this")
    p.add_argument("--settle-min-ratings", type=int, default=3,
                   help="with --swarm: and every expert rated at least this often in each domain")
    p.add_argument("--settle-timeout", type=float, default=900.0, help="with --swarm: stop waiting after this (s)")
    p.add_argument("--settle-poll", type=float, default=15.0, help="with --swarm: seconds between reputation polls")
    args = p.parse_args()
    if args.swarm:
        out = json.loads(Path(args.from_json).read_text()) if args.from_json else run_swarm(args)
        if args.json and not args.from_json:
            Path(args.json).write_text(json.dumps(out, indent=1, ensure_ascii=False))
        print(swarm_tables(out))
        return
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
