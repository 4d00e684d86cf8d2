"""The CLI on bad input: one clear line on stderr and a non-zero exit, never
a traceback or an "internal error"."""

import os
import subprocess
import sys

import click
import pytest

from p2pnet.config import ConfigError
from p2pnet.consensus import generate_genesis
from p2pnet_cli import main as main_mod
from p2pnet_cli.util import api_url

from .conftest_net import json_server

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

RUN = "import sys; from p2pnet_cli.main import main; main(sys.argv[1:])"


def p2pnet(*args, home, stdin="", timeout=120):
    env = {**os.environ, "P2PNET_HOME": str(home)}
    env.pop("P2PNET_DEBUG", None)
    argv = [os.fsencode(a) if isinstance(a, str) else a for a in (sys.executable, "-c", RUN, *args)]
    return subprocess.run(argv, input=stdin.encode(), capture_output=True, timeout=timeout, env=env)


def one_line(proc) -> str:
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "internal error" not in lines[0] and "Traceback" not in lines[0]
    return lines[0]


# ---------------------------------------------------------------- exception groups


def run_main_raising(monkeypatch, capsys, exc) -> tuple[int, str]:
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(main_mod.cli, "main", fail)
    monkeypatch.delenv("P2PNET_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main_mod.main([])
    return info.value.code, capsys.readouterr().err


def test_a_nursery_wrapped_user_error_is_one_line(monkeypatch, capsys):
    nested = ExceptionGroup("outer", [ExceptionGroup("Exceptions from Trio nursery", [ConfigError("bad spec")])])
    assert run_main_raising(monkeypatch, capsys, nested) == (1, "p2pnet: error: bad spec\n")


def test_a_group_with_a_bug_in_it_stays_an_internal_error(monkeypatch, capsys):
    mixed = ExceptionGroup("outer", [ConfigError("bad spec"), KeyError("x")])
    code, err = run_main_raising(monkeypatch, capsys, mixed)
    assert code == 1 and err.startswith("p2pnet: internal error: ExceptionGroup")


def test_node_start_failing_inside_the_nursery_is_one_line(tmp_path):
    genesis = tmp_path / "genesis.json"
    genesis.write_text(generate_genesis([os.urandom(32)]).to_json())  # this node is not its validator
    proc = p2pnet("node", "start", "--data-dir", str(tmp_path / "d"), "--listen", "/ip4/127.0.0.1/tcp/0",
                  "--api-port", "0", "--no-experts", "--validator", "--genesis", str(genesis), home=tmp_path)
    assert proc.returncode == 1
    err = proc.stderr.decode().strip().splitlines()[-1]
    assert err.startswith("p2pnet: error: --validator: this node") and "is not a validator" in err


@pytest.mark.parametrize("args, message", [
    (("--expert", "model=nope"), "unknown model 'nope'"),
    (("--expert", "garbage"), "'garbage' is not key=value"),
    (("--expert", "model=smollm2-135m,concurrency=0"), "key 'concurrency'"),
    (("--expert", "model=/nonexistent/m.gguf"), "no such model file"),
    (("--no-experts", "--genesis", "/nonexistent.json"), "genesis /nonexistent.json"),
    (("--expert", "model=smollm2-135m,knowledge=/nonexistent/kb.jsonl"), "knowledge path /nonexistent/kb.jsonl"),
])
def test_node_start_checks_experts_and_genesis_before_starting(tmp_path, args, message):
    proc = p2pnet("node", "start", "--data-dir", str(tmp_path / "d"), "--listen", "/ip4/127.0.0.1/tcp/0",
                  "--api-port", "0", *args, home=tmp_path)
    assert proc.returncode == 1
    line = one_line(proc)  # not even the "starting" line: nothing was started
    assert line.startswith("p2pnet: error: ") and message in line


@pytest.mark.parametrize("judges", ["17", "-1"])
def test_node_start_refuses_judges_out_of_range(tmp_path, judges):
    proc = p2pnet("node", "start", "--data-dir", str(tmp_path), "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0",
                  "--no-experts", "--judges", judges, home=tmp_path, timeout=60)
    assert proc.returncode == 2 and "--judges" in one_line(proc)


# ---------------------------------------------------------------- --api URLs


@pytest.mark.parametrize("url", ["notaurl", "http://[::1", "ftp://127.0.0.1:1", "http://127.0.0.1:port"])
@pytest.mark.parametrize("command", [("ask", "hi"), ("reputation",)])
def test_a_bad_api_url_is_one_line_naming_the_flag(tmp_path, url, command):
    proc = p2pnet(*command, "--api", url, home=tmp_path)
    assert proc.returncode == 2 and "--api" in one_line(proc)


def test_api_url_drops_a_trailing_slash_and_v1():
    for url in ("http://127.0.0.1:8700", "http://127.0.0.1:8700/", "http://127.0.0.1:8700/v1",
                "http://127.0.0.1:8700/v1/"):
        assert api_url(url) == "http://127.0.0.1:8700"
    with pytest.raises(click.BadParameter):
        api_url("127.0.0.1:8700")


# ---------------------------------------------------------------- ask


@pytest.mark.parametrize("question", ["", "   ", b"a\xffb"])
@pytest.mark.parametrize("mode", [(), ("--local-only",), ("--cascade",)])
def test_an_empty_or_non_utf8_question_is_refused_before_anything_runs(tmp_path, question, mode):
    # no node and no local model exist: any attempt to send or load would fail differently
    proc = p2pnet("ask", *mode, question, home=tmp_path)
    line = one_line(proc)
    assert proc.returncode == 2 and "QUESTION" in line
    assert ("UTF-8" in line) if isinstance(question, bytes) else ("empty" in line)


@pytest.fixture
def fake_node():
    """A node API answering every question; it records the requests."""
    seen = []

    def respond(method, path, body):
        seen.append((path, body))
        if path == "/v1/chat/completions":
            return {"choices": [{"message": {"role": "assistant", "content": "Paris."}}],
                    "p2pnet": {"query_id": "ab" * 16}}
        return {"recorded": True, "expert_id": "e", "respondent": "p" * 20}

    with json_server(respond) as url:
        yield url, seen


def test_feedback_with_stdin_at_its_end_is_skipped(tmp_path, fake_node):
    url, seen = fake_node
    proc = p2pnet("ask", "--api", url + "/v1", "--no-stream", "--feedback", "capital of France?", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("Paris.")
    assert "feedback skipped" in proc.stderr.decode() and "aborted" not in proc.stderr.decode()
    assert [path for path, _ in seen] == ["/v1/chat/completions"]  # the /v1 base URL reached the right path


@pytest.mark.parametrize("typed, accept", [("a", True), ("Yes", True), ("n", False), ("REJECT", False)])
def test_feedback_verdict_from_a_pipe_is_still_read(tmp_path, fake_node, typed, accept):
    url, seen = fake_node
    proc = p2pnet("ask", "--api", url, "--no-stream", "--feedback", "capital of France?", stdin=typed + "\n",
                  home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert seen[-1] == ("/v1/feedback", {"query_id": "ab" * 16, "accept": accept})


# ---------------------------------------------------------------- key file


def test_node_start_with_a_key_file_of_random_bytes_is_one_line(tmp_path):
    import random

    d = tmp_path / "d"
    d.mkdir()
    key = d / "node.key"
    key.write_bytes(random.Random(22).randbytes(65))  # not UTF-8: was "internal error: UnicodeDecodeError"
    key.chmod(0o600)
    for command in (("node", "start", "--data-dir", str(d), "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0",
                     "--no-experts"), ("node", "id", "--data-dir", str(d))):
        proc = p2pnet(*command, home=tmp_path, timeout=60)
        assert proc.returncode == 1
        assert one_line(proc) == f"p2pnet: error: key file {key} is not a hex Ed25519 seed (64 hex digits); " \
                                 f"it is damaged or not a p2pnet key: restore it from a backup, or move it aside " \
                                 f"to start with a new identity"
