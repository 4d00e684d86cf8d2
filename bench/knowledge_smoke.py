"""Smoke check of a knowledge expert on the real default model: N held-out
questions of one domain asked to a bare expert and to the same model with
the domain's knowledge base, graded exactly (p2pnet.experts.grading).

    .venv/bin/python bench/knowledge_smoke.py [--domain chemistry] [-n 20]

Both experts share one loaded model (greedy, temperature 0). The model must
be stored (``p2pnet models pull smollm2-135m``) in --data-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import trio

from p2pnet.experts.backend import Speed
from p2pnet.experts.expert import Expert
from p2pnet.experts.grading import KnownAnswer, accuracy, grade
from p2pnet.experts.knowledge_build import load_questions
from p2pnet.experts.spec import build_expert, parse_expert_spec
from p2pnet.wire import ChatMessage, PromptBody

ROOT = Path(__file__).resolve().parents[1]


async def run(args) -> dict:
    folder = ROOT / "testnet" / "knowledge" / args.domain
    spec = parse_expert_spec(f"model=smollm2-135m,domains={args.domain},knowledge={folder / 'passages.jsonl'}")
    with_kb = build_expert(spec, args.data_dir, n_threads=args.threads, knowledge_cache=args.cache)
    bare = Expert("bare", with_kb.backend, domains=(args.domain,))
    questions = load_questions(folder, "heldout")[:args.n]
    speed = Speed(1.0, 1.0)  # not measured: both share one model
    await with_kb.start(speed=speed)
    await bare.start(speed=speed)
    rows = []
    started = time.monotonic()
    try:
        for i, q in enumerate(questions):
            body = PromptBody((ChatMessage("user", q["question"]),), args.max_tokens, temperature=0.0)
            row = {"question": q["question"], "answer": q["answer"]}
            for name, expert in (("bare", bare), ("knowledge", with_kb)):
                ans = await expert.answer(os.urandom(16), body, timeout=120)
                row[name] = ans.text.strip()
                row[f"{name}_ok"] = ans.status == "ok" and grade(ans.text, KnownAnswer.from_obj(q), q["question"])
                row[f"{name}_prompt_tokens"] = ans.prompt_tokens
                if name == "knowledge":
                    row["passages"] = list(ans.passages)
                    row["retrieved"] = q["passage"] in ans.passages
            rows.append(row)
    finally:
        await with_kb.aclose()
    return {
        "domain": args.domain, "questions": len(rows), "seconds": round(time.monotonic() - started, 1),
        "bare": accuracy([r["bare_ok"] for r in rows]),
        "knowledge": accuracy([r["knowledge_ok"] for r in rows]),
        "retrieved": accuracy([r["retrieved"] for r in rows]),
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domain", default="chemistry")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=os.environ.get("P2PNET_TEST_MODELS")
                   or str(Path.home() / ".cache" / "p2pnet-test-models"))
    p.add_argument("--cache", default=None, help="index cache folder (default: DATA_DIR/knowledge)")
    p.add_argument("--json", action="store_true", help="print every answer")
    args = p.parse_args()
    out = trio.run(run, args)
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for r in out["rows"]:
            print(f"{'+' if r['bare_ok'] else '-'}{'+' if r['knowledge_ok'] else '-'} {r['question']} "
                  f"[{r['answer']}] bare: {r['bare'][:60]!r} | knowledge: {r['knowledge'][:60]!r}")
    print(f"{out['domain']}: {out['questions']} held-out questions in {out['seconds']} s: bare {out['bare']:.0%}, "
          f"knowledge {out['knowledge']:.0%} (right passage retrieved {out['retrieved']:.0%})")


if __name__ == "__main__":
    main()
