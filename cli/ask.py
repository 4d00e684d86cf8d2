"""`p2pnet ask "question"`: ask the network through a node's OpenAI-compatible API."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from p2pnet.config import MAX_JUDGES
from p2pnet.query import ChatRequest, ChatResult, ExpertKey, Provenance
from p2pnet_cli.main import cli
from p2pnet_cli.util import api_base, api_url, emit, local_model_store, post_json

ACCEPT = ("a", "accept", "y", "yes")
REJECT = ("r", "reject", "n", "no")
SKIP = ("s", "skip")
VERDICTS = ACCEPT + REJECT + SKIP


@cli.command()
@click.argument("question")
@click.option("--api", default=None, metavar="URL", help="Node API to ask (default: the node of --data-dir).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--domain", default=None, help="Query domain, e.g. geography (default: inferred from the question).")
@click.option("--respondents", "-k", type=click.IntRange(1, 16), default=None,
              help="How many experts answer (default: the node's setting).")
@click.option("--model", default="p2pnet", show_default=True, help="Model id, or p2pnet for any expert.")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=None)
@click.option("--deadline", "deadline_s", type=click.FloatRange(0.1, 600), default=None, help="Seconds.")
@click.option("--system", default=None, help="A system prompt.")
@click.option("--stream/--no-stream", default=None, help="Print the answer as it arrives (default: on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole response as JSON.")
@click.option("--judges", type=click.IntRange(0, MAX_JUDGES), default=None,
              help="How many other experts rank the answers (peer judging; costs extra generations).")
@click.option("--cascade", is_flag=True,
              help="Answer with the local small model first; ask the network only if it is not confident.")
@click.option("--local-only", is_flag=True, help="Answer with the local model only; the prompt never leaves (implies --cascade).")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Cascade: ask the network when the local confidence is below this (1: always, 0: never).")
@click.option("--model-store", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cascade: data dir whose models/ holds the local model (default: the data dir).")
@click.option("--feedback", "with_feedback", is_flag=True,
              help="After the answer, ask whether you accept it and record your verdict as a rating.")
def ask(question, api, data_dir, domain, respondents, model, max_tokens, deadline_s, system, stream, as_json,
        judges, cascade, local_only, threshold, model_store, with_feedback) -> None:
    """Ask QUESTION; prints the answer and where it came from."""
    import os

    from p2pnet.api import client

    if not question.strip():
        raise click.BadParameter("is empty: ask something", param_hint="QUESTION")
    _check_utf8(question, "QUESTION")
    _check_utf8(system or "", "--system")
    if local_only:
        _refuse_network_options(click.get_current_context(), ("api", "domain", "respondents", "deadline_s",
                                                              "judges", "threshold", "with_feedback"))
    if api:
        api = api_base(api, data_dir)  # a bad --api fails now, before a local model loads
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    body = {"model": model, "messages": messages}
    for key, value in (("domain", domain), ("respondents", respondents), ("max_tokens", max_tokens),
                       ("deadline_s", deadline_s), ("judges", judges)):
        if value is not None:
            body[key] = value
    if cascade or local_only:
        _ask_cascade(body, api, data_dir, model_store, threshold, local_only, as_json, with_feedback)
        return
    base = api_base(api, data_dir)
    key = os.environ.get("P2PNET_API_KEY")
    timeout = (deadline_s or 120) + 30
    if stream is None:
        stream = sys.stdout.isatty() and not as_json
    if stream and not as_json:
        p2pnet: dict = {}
        usage_tokens = 0
        for chunk in client.stream_json(base + "/v1/chat/completions", {**body, "stream": True},
                                        timeout=timeout, api_key=key):
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    click.echo(piece, nl=False)
                    usage_tokens += 1
            p2pnet = chunk.get("p2pnet") or p2pnet
        click.echo()
        _print_provenance(Provenance.from_json(p2pnet), p2pnet.get("query_id") or "")
        if with_feedback:
            _ask_feedback(base, p2pnet.get("query_id"))
        return
    out = client.post_json(base + "/v1/chat/completions", body, timeout=timeout, api_key=key)
    if as_json:
        emit(out)
    else:
        click.echo(out["choices"][0]["message"]["content"])
        p2pnet = out.get("p2pnet") or {}
        _print_provenance(Provenance.from_json(p2pnet), p2pnet.get("query_id") or "")
    if with_feedback:
        _ask_feedback(base, (out.get("p2pnet") or {}).get("query_id"))


def _refuse_network_options(ctx: click.Context, params: tuple) -> None:
    """--local-only never asks the network: an option that only shapes the
    network's answer is a mistake to point out, not to ignore."""
    from click.core import ParameterSource

    names = [opt for p in ctx.command.params if p.name in params
             and ctx.get_parameter_source(p.name) not in (ParameterSource.DEFAULT, None)
             for opt in p.opts[:1]]
    if names:
        raise click.UsageError(f"{', '.join(names)} only {'applies' if len(names) == 1 else 'apply'} to answers "
                               "from the network; --local-only never asks it")


def _check_utf8(text: str, name: str) -> None:
    """Refuse text that is not UTF-8 (such argv bytes arrive as lone surrogates)
    before anything is sent or loaded."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise click.BadParameter("is not valid UTF-8 text", param_hint=name) from None


def _ask_cascade(body, api, data_dir, model_store, threshold, local_only, as_json, with_feedback) -> None:
    """The local model first (in this process), the node's API if it is not confident."""
    import trio

    from p2pnet.api.errors import ApiError
    from p2pnet.experts.cascade import NETWORK, Cascade, CascadeSettings, open_local_model

    store = local_model_store(model_store, data_dir)
    req = ChatRequest(model=body["model"], messages=tuple((m["role"], m["content"]) for m in body["messages"]),
                      max_tokens=body.get("max_tokens"))
    base_box: list = []
    if api:
        api_url(api)  # a bad --api is the user's error, before the model runs

    async def escalate(_req) -> ChatResult:
        try:
            base_box.append(api_base(api, data_dir))
        except click.ClickException as exc:  # no running node: the cascade keeps a usable local answer
            raise ApiError(exc.format_message()) from None
        out = await trio.to_thread.run_sync(lambda: post_json(base_box[0] + "/v1/chat/completions", body,
                                                              timeout=(body.get("deadline_s") or 120) + 30))
        usage = out.get("usage") or {}
        p2pnet = out.get("p2pnet") or {}
        return ChatResult(text=out["choices"][0]["message"]["content"],
                          finish_reason=out["choices"][0].get("finish_reason") or "stop",
                          prompt_tokens=usage.get("prompt_tokens", 0),
                          completion_tokens=usage.get("completion_tokens", 0),
                          query_id=str(p2pnet.get("query_id") or ""), provenance=Provenance.from_json(p2pnet))

    backend = open_local_model(Path(store))
    try:
        cascade = Cascade(backend, None if local_only else escalate,
                          CascadeSettings(threshold=threshold, local_only=local_only))
        result = trio.run(cascade.ask, req)
    finally:
        backend.close()
    if as_json:  # the shape of `ask --json` (and of the API's cascade answers)
        import time

        from p2pnet.api.openai_schema import completion_object, new_completion_id

        emit(completion_object(new_completion_id(), int(time.time()), body["model"], result.as_chat_result()))
    else:
        click.echo(result.text)
        if result.network is not None:
            _print_provenance(result.network.provenance, result.network.query_id)
        limit = "" if local_only else f", threshold {threshold:.2f}"
        click.echo(f"  answered by: {result.path} (local confidence {result.local.confidence:.2f} "
                   f"by {result.local.method}{limit}); {result.reason}", err=True)
    if with_feedback and result.path == NETWORK:
        _ask_feedback(base_box[0], result.network.query_id)


def _ask_feedback(base: str, query_id) -> None:
    if not query_id:
        return
    try:
        verdict = click.prompt("accept this answer? [a]ccept / [r]eject / [s]kip", err=True,
                               type=click.Choice(VERDICTS, case_sensitive=False), default="s",
                               show_choices=False, show_default=False).lower()
    except click.exceptions.Abort:
        if sys.stdin.isatty():
            raise
        # stdin is a pipe or a file (a verdict may come from it): its end skips the feedback
        click.echo(f"\nno verdict on stdin: feedback skipped (later: p2pnet feedback {query_id} accept|reject)",
                   err=True)
        return
    if verdict in SKIP:
        return
    _send_feedback(base, query_id, verdict in ACCEPT)


def _send_feedback(base: str, query_id: str, accept: bool) -> dict:
    out = post_json(base + "/v1/feedback", {"query_id": query_id, "accept": accept})
    note = "recorded" if out.get("recorded") else f"not recorded: {out.get('reason', '')}"
    if out.get("note"):
        note += f" ({out['note']})"
    click.echo(f"feedback {'accept' if accept else 'reject'} for {out.get('expert_id')} "
               f"on {str(out.get('respondent', ''))[:16]}…: {note}", err=True)
    return out


@cli.command()
@click.argument("query_id")
@click.argument("verdict", type=click.Choice(["accept", "reject"]))
@click.option("--api", default=None, metavar="URL", help="Node API (default: the node of --data-dir).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the node's answer as JSON.")
def feedback(query_id, verdict, api, data_dir, as_json) -> None:
    """Accept or reject the answer a node gave to QUERY_ID (shown by `p2pnet ask`)."""
    from p2pnet.api.errors import HttpError

    try:
        out = _send_feedback(api_base(api, data_dir), query_id, verdict == "accept")
    except HttpError as exc:
        raise click.ClickException(f"{exc.status}: {exc.message}") from None
    if as_json:
        emit(out)


def _print_provenance(prov: Provenance, query_id: str = "") -> None:
    """Who answered ``query_id`` and why, on stderr."""
    if prov == Provenance() and not query_id:
        return
    click.echo("", err=True)
    click.echo(f"{'':2}{'peer':18} {'expert':16} {'status':9} {'ms':>7} {'tokens':>6} {'score':>6}", err=True)
    for r in prov.respondents:
        mark = "*" if ExpertKey(r.peer_id, r.expert_id) == prov.chosen else " "
        score = "" if r.score is None else f"{r.score:.2f}"
        click.echo(f"{mark:2}{r.peer_id[:16] + '…':18} {r.expert_id[:16]:16} {r.status:9} "
                   f"{r.latency_ms:>7} {r.completion_tokens:>6} {score:>6}", err=True)
    selection = prov.selection.reason if prov.selection is not None else ""
    click.echo(f"  chosen: {prov.reason}; selection: {selection}", err=True)
    if prov.routing is not None:
        click.echo(f"  domain: {prov.domain or '?'}, inferred from the question "
                   f"({str(prov.routing.get('reason', ''))[:120]})", err=True)
    if prov.escalated is not None:
        to = ", ".join(e.expert_id for e in prov.escalated.to)
        click.echo(f"  escalated to {to}: {prov.escalated.reason}", err=True)
    elif prov.escalation_declined:
        click.echo(f"  not escalated: {prov.escalation_declined}", err=True)
    if query_id:
        click.echo(f"  query: {query_id} (p2pnet feedback {query_id} accept|reject)", err=True)
