"""How well the cascade's confidence tells right answers from wrong ones, on
the real default model: closed-form questions with known answers (sums,
products, capitals), each answered through the cascade's own local path.

Prints the AUC (the chance that a right answer's confidence is above a
wrong one's; a scenario's ``confidence_auc`` takes it as it is), its
normal-model separation d', the mean and spread of right and wrong answers'
confidence, and per threshold the share of answers kept local and their
accuracy.

    .venv/bin/python bench/cascade.py [--store DATA_DIR] [--questions 120]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from statistics import NormalDist

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa", "Australia": "Canberra", "China": "Beijing",
    "Portugal": "Lisbon", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw",
    "Austria": "Vienna", "Ireland": "Dublin", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
    "Argentina": "Buenos Aires", "Thailand": "Bangkok", "Turkey": "Ankara", "Brazil": "Brasilia",
    "Finland": "Helsinki", "Hungary": "Budapest", "Denmark": "Copenhagen", "Cuba": "Havana",
    "Mexico": "Mexico City", "India": "New Delhi", "South Korea": "Seoul", "Vietnam": "Hanoi",
    "Belgium": "Brussels", "Switzerland": "Bern", "Nigeria": "Abuja", "Colombia": "Bogota",
}


def questions(n: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """(kind, question, expected answer), a fixed mix for a given ``n`` and ``seed``."""
    rng = random.Random(seed)
    out = [("capital", f"What is the capital of {c}?", a) for c, a in sorted(CAPITALS.items())]
    while len(out) < n:
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        if rng.random() < 0.5:
            out.append(("sum", f"What is {a} + {b}?", str(a + b)))
        else:
            a, b = a % 12 + 1, b % 12 + 1
            out.append(("product", f"What is {a} times {b}?", str(a * b)))
    rng.shuffle(out)
    return out[:n]


def is_right(kind: str, answer: str, expected: str) -> bool:
    if kind == "capital":
        return re.search(rf"\b{re.escape(expected)}\b", answer, re.IGNORECASE) is not None
    numbers = re.findall(r"-?\d+", answer.replace(",", ""))
    return bool(numbers) and numbers[-1] == expected  # the result, not an operand


def auc(right: list[float], wrong: list[float]) -> float:
    """P(a right answer's confidence > a wrong one's), ties counting half."""
    if not right or not wrong:
        return float("nan")
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    import trio

    from p2pnet.query import ChatRequest
    from p2pnet.experts import modelstore
    from p2pnet.experts.cascade import Cascade, CascadeSettings, open_local_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("P2PNET_TEST_MODELS")
                                                       or Path.home() / ".cache" / "p2pnet-test-models"),
                    help="data dir whose models/ holds the default model")
    ap.add_argument("--questions", type=int, default=120)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    backend = open_local_model(args.store)
    cascade = Cascade(backend, None, CascadeSettings(local_only=True, max_tokens=args.max_tokens))
    rows = []
    started = time.perf_counter()
    try:
        qs = questions(args.questions)
        for i, (kind, q, expected) in enumerate(qs, 1):
            local = trio.run(cascade.answer_locally, ChatRequest("p2pnet", (("user", q),)))
            rows.append((kind, local.confidence, is_right(kind, local.text, expected)))
            print(f"\r{i}/{len(qs)} answered", end="", flush=True, file=sys.stderr)
    finally:
        backend.close()
    print(file=sys.stderr)
    print(f"{len(rows)} questions in {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores, "
          f"model {modelstore.DEFAULT_MODEL}, confidence by {local.method}\n")
    print("| questions | right | AUC | d' | confidence of right answers | of wrong answers |")
    print("|---|---|---|---|---|---|")
    for kind in ("all", "capital", "sum", "product"):
        sel = [r for r in rows if kind in ("all", r[0])]
        right = [c for _, c, ok in sel if ok]
        wrong = [c for _, c, ok in sel if not ok]
        a = auc(right, wrong)
        d = 2 ** 0.5 * NormalDist().inv_cdf(min(max(a, 1e-6), 1 - 1e-6)) if a == a else float("nan")
        print(f"| {kind} ({len(sel)}) | {len(right) / len(sel):.2f} | {a:.2f} | {d:.2f} "
              f"| {_mean_sd(right)} | {_mean_sd(wrong)} |")
    print("\n| threshold | kept local | accuracy kept | accuracy escalated |")
    print("|---|---|---|---|")
    for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        kept = [ok for _, c, ok in rows if c >= t]
        sent = [ok for _, c, ok in rows if c < t]
        acc = lambda xs: f"{sum(xs) / len(xs):.2f}" if xs else "n/a"  # noqa: E731
        print(f"| {t:.1f} | {len(kept) / len(rows):.2f} | {acc(kept)} | {acc(sent)} |")


if __name__ == "__main__":
    main()
