"""Query-path benchmarks. Run: ``python bench/query.py [--parts a,c]``.

(a) hosted-expert generation speed vs calling xllamacpp directly, same model,
    prompt and settings, as a ratio (target >= 0.95); the direct call asking
    for the tokens' log-probabilities (experts do, for their confidence) vs not;
    and a hosted expert with ``confidence=off`` (no log-probabilities);
(b) coordinator overhead: end-to-end latency through a node's HTTP API minus the
    respondents' generation time, for k = 1 and k = 3, real nodes (libp2p over
    127.0.0.1, in one process) whose experts are scripted and answer at once, so
    what is left is selection, sealing, gossip, answer collection, evaluation and
    HTTP (target p50 < 30 ms);
(c) backend total tokens/s with 8 (``--parallel``) concurrent generations vs 1;
(d) a real local swarm as ``p2pnet swarm up --nodes 3 --validators 0`` starts
    it (three node processes, each hosting the default model: copies): temperature-0
    questions with the respondents left to the node (one per model, so one
    copy) vs ``respondents=3`` (every copy, as the node chose before it asked
    one per model), interleaved; latency through the HTTP API and the tokens
    the swarm generated per question;
(e) serving many users: total completion tokens/s of 8 concurrent requests
    through one node's OpenAI API vs 1, the node hosting one real expert with
    the spec's default concurrency and queue, and how many were turned away.

Each part is a function returning rows ``(metric, value, note)``; ``main``
prints them as a table headed by the machine's core count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import trio

from p2pnet.config import default_data_dir
from p2pnet.experts import modelstore
from p2pnet.experts.expert import DEFAULT_SYSTEM_PROMPT
from p2pnet.experts.llama import LlamaBackend, LlamaSettings
from p2pnet.experts.spec import open_expert, parse_expert_spec
from p2pnet.wire import ChatMessage, PromptBody

Row = tuple[str, str, str]
QUESTION = "Write a detailed story about a dragon who learns to paint."


def _model(data_dir: Path) -> modelstore.StoredModel:
    return modelstore.ensure_default(data_dir, progress=None)


def _tokens_per_s(generate: Callable[[int], int], n: int) -> float:
    """Total tokens per second of ``n`` calls ``generate(i)`` (each returns its
    token count) run at once on threads."""
    counts = [0] * n

    def one(i: int) -> None:
        counts[i] = generate(i)

    workers = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - t0)


def part_a(data_dir: Path, threads: int, tokens: int, reps: int) -> list[Row]:
    """Hosted Expert.answer vs xllamacpp.Server.handle_chat_completions, end to end."""
    import xllamacpp

    model = _model(data_dir)
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}]
    params = xllamacpp.CommonParams()
    params.model.path = str(model.path)
    params.n_ctx, params.n_parallel, params.kv_unified = 2048, 1, True
    params.n_gpu_layers, params.verbosity = 0, -1
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    direct = xllamacpp.Server(params)
    request = {"messages": messages, "max_tokens": tokens, "temperature": 0.0, "cache_prompt": False}
    scored = {**request, "logprobs": True}  # what an expert asks for: its answer's confidence

    def run_direct(req: dict) -> float:
        t0 = time.perf_counter()
        r = direct.handle_chat_completions(req)
        return r["usage"]["completion_tokens"] / (time.perf_counter() - t0)

    spec = parse_expert_spec(f"model={modelstore.DEFAULT_MODEL},domains=general")
    spec_off = parse_expert_spec(f"model={modelstore.DEFAULT_MODEL},domains=general,confidence=off")
    prompt = PromptBody((ChatMessage("user", QUESTION),), tokens)
    hosted: list[float] = []
    hosted_off: list[float] = []
    plain: list[float] = []
    with_logprobs: list[float] = []

    async def timed(expert, i: int) -> float:
        t0 = time.perf_counter()
        answer = await expert.answer(i.to_bytes(16, "big"), prompt, timeout=600)
        return answer.completion_tokens / (time.perf_counter() - t0)

    async def run() -> None:
        async with open_expert(spec, data_dir, n_threads=threads) as expert, \
                open_expert(spec_off, data_dir, n_threads=threads) as expert_off:
            for i in range(reps):  # interleaved, so machine noise hits all four alike
                plain.append(await trio.to_thread.run_sync(run_direct, request))
                with_logprobs.append(await trio.to_thread.run_sync(run_direct, scored))
                hosted.append(await timed(expert, i))
                hosted_off.append(await timed(expert_off, i))

    trio.run(run)
    del direct
    h, p, lp = statistics.median(hosted), statistics.median(plain), statistics.median(with_logprobs)
    off = statistics.median(hosted_off)
    return [
        ("(a) direct xllamacpp gen tok/s", f"{p:.1f}", f"median of {reps}, {tokens} tokens, end to end"),
        ("(a) direct, with logprobs, tok/s", f"{lp:.1f}", "the same request asking for the tokens' log-probabilities"),
        ("(a) hosted expert gen tok/s", f"{h:.1f}", "Expert.answer (streamed, with logprobs), same prompt and settings"),
        ("(a) hosted, confidence=off, tok/s", f"{off:.1f}", "the same expert without logprobs (--expert ...,confidence=off)"),
        ("(a) direct with logprobs / without", f"{lp / p:.3f}", "the cost of the confidence"),
        ("(a) hosted / direct", f"{h / p:.3f}", "target >= 0.95"),
        ("(a) hosted, confidence=off / direct", f"{off / p:.3f}", "what turning the confidence off gives back"),
    ]


def part_c(data_dir: Path, threads: int, tokens: int, reps: int, parallel: int = 8) -> list[Row]:
    """Total generation tokens/s of one LlamaBackend: ``parallel`` concurrent vs 1."""
    model = _model(data_dir)
    backend = LlamaBackend(model.path, LlamaSettings(n_threads=threads, n_parallel=parallel, n_ctx=4096))
    backend.load()
    messages = [ChatMessage("system", DEFAULT_SYSTEM_PROMPT), ChatMessage("user", QUESTION)]

    def batch(n: int) -> float:
        return _tokens_per_s(lambda i: backend.generate(messages, max_tokens=tokens).completion_tokens, n)

    try:
        backend.generate(messages, max_tokens=4)  # warm up
        runs = [(batch(1), batch(parallel)) for _ in range(reps)]  # interleaved against noise
        single = statistics.median(r[0] for r in runs)
        many = statistics.median(r[1] for r in runs)
    finally:
        backend.close()
    return [
        ("(c) 1 generation tok/s", f"{single:.1f}", f"median of {reps}, {tokens} tokens, n_parallel={parallel}"),
        (f"(c) {parallel} concurrent total tok/s", f"{many:.1f}", "continuous batching over slots"),
        (f"(c) {parallel} vs 1", f"{many / single:.2f}x", ""),
    ]


def part_b(data_dir: Path, threads: int, tokens: int, reps: int, queries: int = 60) -> list[Row]:
    """Coordinator overhead for k = 1 and k = 3 (see the module docstring)."""
    import tempfile

    from p2pnet import config
    from p2pnet.api import client
    from p2pnet.experts import scripted
    from p2pnet.experts.expert import Expert
    from p2pnet.node import Node

    question = "What is the capital of France?"
    rows: list[Row] = []

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="p2pnet-bench-") as tmp:
            async with trio.open_nursery() as nursery:
                nodes = []
                for i in range(4):
                    cfg = config.build(None, data_dir=Path(tmp) / f"n{i}", listen=("/ip4/127.0.0.1/tcp/0",),
                                       api_port=0, announce_interval_s=0.5, log_level="warning",
                                       bootstrap=(nodes[0].network.listen_addrs[0],) if nodes else ())
                    experts = []
                    if i:
                        expert = Expert(f"e{i}", scripted.ScriptedBackend({question: "Paris."}),
                                        domains=("general",), max_concurrency=4)
                        await expert.start()
                        experts.append(expert)
                    node = Node(cfg, experts=experts)
                    await nursery.start(node.run)
                    nodes.append(node)
                coord = next(s.coordinator for s in nodes[0].services if hasattr(s, "coordinator"))
                while len(coord.directory.all(coord.clock())) < 3 or len(nodes[0].network.peers()) < 3:
                    await trio.sleep(0.05)
                url = nodes[0].api_url + "/v1/chat/completions"
                for k in (1, 3):
                    overheads = []
                    for q in range(queries + 5):
                        body = {"model": "p2pnet", "messages": [{"role": "user", "content": question}],
                                "respondents": k}
                        t0 = time.perf_counter()
                        out = await trio.to_thread.run_sync(lambda: client.post_json(url, body))
                        e2e = (time.perf_counter() - t0) * 1000
                        gen = max(r["gen_ms"] for r in out["p2pnet"]["respondents"])
                        if q >= 5:  # warm-up
                            overheads.append(e2e - gen)
                    overheads.sort()
                    p50 = statistics.median(overheads)
                    p95 = overheads[int(0.95 * (len(overheads) - 1))]
                    rows.append((f"(b) overhead k={k} p50", f"{p50:.1f} ms", f"{queries} queries, target < 30 ms"))
                    rows.append((f"(b) overhead k={k} p95", f"{p95:.1f} ms", "e2e via HTTP minus slowest gen_ms"))
                for node in nodes:
                    node.stop()

    trio.run(run)
    return rows


SWARM_QUESTIONS = ("What is the capital of France?", "What is 12 + 30?", "Name three primary colors.",
                   "Explain in two sentences why the sky is blue.")


def part_d(data_dir: Path, threads: int, tokens: int, reps: int) -> list[Row]:
    """Real processes: what asking one copy instead of every copy saves."""
    import tempfile

    from p2pnet.api import client
    from p2pnet_testnet import swarm

    _model(data_dir)  # the nodes load it from this store
    modes = {"one per model (node's choice)": None, "every copy (respondents=3)": 3}
    latency = {m: [] for m in modes}
    generated = {m: [] for m in modes}
    asked = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="p2pnet-bench-swarm-") as tmp:
        nodes = swarm.up(3, Path(tmp), model_store=data_dir, timeout_s=300)
        try:
            url = nodes[0]["api"] + "/v1/chat/completions"
            for rep in range(reps + 1):  # the first round warms the models up
                order = list(modes) if rep % 2 else list(reversed(modes))
                for question in SWARM_QUESTIONS:
                    for mode in order:
                        body = {"model": "p2pnet", "messages": [{"role": "user", "content": question}],
                                "max_tokens": tokens, "temperature": 0.0, "deadline_s": 300}
                        if modes[mode]:
                            body["respondents"] = modes[mode]
                        t0 = time.perf_counter()
                        out = client.post_json(url, body, timeout=320)
                        ms = (time.perf_counter() - t0) * 1000
                        rows = out["p2pnet"]["respondents"]
                        if rep:
                            latency[mode].append(ms)
                            generated[mode].append(sum(r["completion_tokens"] for r in rows))
                            asked[mode].append(len(rows))
        finally:
            swarm.down(Path(tmp), quiet=True)
    out_rows: list[Row] = []
    n = reps * len(SWARM_QUESTIONS)
    for mode in modes:
        out_rows += [
            (f"(d) {mode} p50", f"{statistics.median(latency[mode]):.0f} ms", f"{n} questions, end to end"),
            (f"(d) {mode} respondents", f"{statistics.mean(asked[mode]):.2f}", "per question"),
            (f"(d) {mode} tokens", f"{statistics.mean(generated[mode]):.1f}", "generated per question, all respondents"),
        ]
    one, every = (statistics.median(latency[m]) for m in modes)
    out_rows.append(("(d) latency, one / every copy", f"{one / every:.2f}", "p50 ratio, same run"))
    return out_rows


def part_e(data_dir: Path, threads: int, tokens: int, reps: int, concurrent: int = 8) -> list[Row]:
    """Serving many users: total completion tokens/s of ``concurrent`` requests
    at once through one node's OpenAI API vs 1 at a time, the node hosting one
    real expert with the spec's defaults (concurrency, queue), and how many of
    the concurrent requests were turned away (429/503)."""
    import tempfile

    from p2pnet import config
    from p2pnet.api import client
    from p2pnet.experts.spec import DEFAULT_CONCURRENCY
    from p2pnet.node import Node

    _model(data_dir)
    spec = parse_expert_spec("model=smollm2-135m")
    rows: list[Row] = []
    refused: list[int] = []

    def ask(url: str, i: int) -> int:
        body = {"model": "p2pnet", "max_tokens": tokens, "temperature": 0.0, "deadline_s": 600,
                "messages": [{"role": "user", "content": f"{QUESTION} Call the dragon number {i}."}]}
        try:
            return client.post_json(url, body, timeout=620)["usage"]["completion_tokens"]
        except client.HttpError as exc:
            if exc.status in (429, 503):
                refused.append(exc.status)
                return 0
            raise

    def batch(url: str, n: int) -> float:
        return _tokens_per_s(lambda i: ask(url, i), n)

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="p2pnet-bench-e-") as tmp:
            cfg = config.build(None, data_dir=Path(tmp) / "n0", listen=("/ip4/127.0.0.1/tcp/0",),
                               api_port=0, log_level="warning")
            async with open_expert(spec, data_dir, n_threads=threads) as expert:
                node = Node(cfg, experts=[expert])
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    url = node.api_url + "/v1/chat/completions"
                    await trio.to_thread.run_sync(ask, url, 0)  # warm up
                    runs = []
                    for _ in range(reps):  # interleaved against noise
                        one = await trio.to_thread.run_sync(batch, url, 1)
                        many = await trio.to_thread.run_sync(batch, url, concurrent)
                        runs.append((one, many))
                    node.stop()
            single = statistics.median(r[0] for r in runs)
            many = statistics.median(r[1] for r in runs)
            rows.extend([
                ("(e) 1 request, tok/s via API", f"{single:.1f}",
                 f"median of {reps}, {tokens} tokens, concurrency={DEFAULT_CONCURRENCY} (default)"),
                (f"(e) {concurrent} concurrent, total tok/s via API", f"{many:.1f}", "the rest wait in the queue"),
                (f"(e) {concurrent} vs 1", f"{many / single:.2f}x", "target >= 2x"),
                (f"(e) refused (429/503) of {concurrent * reps}", str(len(refused)), "queue default 8"),
            ])

    trio.run(run)
    return rows


PARTS: dict[str, Callable[..., list[Row]]] = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e}
"""Benchmark parts by letter."""


def print_table(rows: list[Row], out=sys.stdout) -> None:
    print(f"nproc={os.cpu_count()}  python={sys.version.split()[0]}", file=out)
    width = max(len(r[0]) for r in rows)
    print(f"| {'metric':<{width}} | {'value':>9} | note", file=out)
    print(f"|{'-' * (width + 2)}|{'-' * 11}|------", file=out)
    for metric, value, note in rows:
        print(f"| {metric:<{width}} | {value:>9} | {note}", file=out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="a,b,c", help="comma-separated parts to run (default a,b,c)")
    ap.add_argument("--data-dir", type=Path, default=None, help="where models live (default: node data dir)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=8, help="concurrent generations in part c (default 8)")
    args = ap.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    rows: list[Row] = []
    for part in args.parts.split(","):
        extra = {"parallel": args.parallel} if part.strip() == "c" else {}
        rows += PARTS[part.strip()](data_dir, args.threads, args.tokens, args.reps, **extra)
    print_table(rows)


if __name__ == "__main__":
    main()
