"""The query vocabulary (p2pnet.query): the typed provenance and its JSON, the
one table that maps query errors to HTTP answers, and the import graph that
keeps the vocabulary neutral (no trio, no HTTP) and the experts off the API."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from p2pnet import query
from p2pnet.api.openai_schema import QUERY_ERROR_HTTP, provenance, query_error, query_error_http
from p2pnet.query import (
    BadQuery,
    Busy,
    CascadeUnavailable,
    ChatResult,
    DeadlineExceeded,
    Escalation,
    ExpertKey,
    FeedbackRepeated,
    JudgeReport,
    NoExpertAvailable,
    Provenance,
    QueryError,
    RespondentReport,
    SelectionReport,
    UnknownModel,
    UnknownQuery,
)

ROOT = Path(__file__).resolve().parents[1]
A, B = ExpertKey("12D3KooWa", "e1"), ExpertKey("12D3KooWb", "e2")
FULL = Provenance(
    domain="geography",
    selection=SelectionReport("ucb-cost", "2 of 3 free experts", (("12D3KooWa", "e1", 0.75), ("12D3KooWb", "e2", 0.5))),
    respondents=(
        RespondentReport("12D3KooWa", "e1", "ok", latency_ms=120, completion_tokens=5, prompt_tokens=9, gen_ms=80,
                         score=1.0, confidence=0.9, signal="judge+agreement", signals={"agreement": 1.0, "judge": 0.6}),
        RespondentReport("12D3KooWb", "e2", "timeout", latency_ms=3000, error="deadline exceeded"),
    ),
    chosen=A,
    reason="majority answer (1 of 1 agree)",
    tiebreakers=(B,),
    escalated=Escalation("its confidence 0.30 is below 0.50", 0.3, 0.5, (B,)),
    escalation_declined=None,
    judges=(JudgeReport("12D3KooWc", "j1", "ok", 0.8, A), JudgeReport("12D3KooWd", "j2", "timeout", 0.2, None)),
    cascade={"path": "network", "confidence": 0.2, "method": "logprob", "threshold": 0.5, "reason": "low",
             "local_text": "Lyon."},
)


# -- provenance ---------------------------------------------------------------

@pytest.mark.parametrize("prov", [
    FULL,
    dataclasses.replace(FULL, judges=None, cascade=None, escalated=None, escalation_declined="no second expert"),
    dataclasses.replace(FULL, judges=(), chosen=None),
    Provenance(),
    Provenance(cascade={"path": "local", "confidence": 0.9}),
])
def test_provenance_round_trips_through_json(prov):
    data = json.loads(json.dumps(prov.to_json()))  # through real JSON: tuples come back as lists
    assert Provenance.from_json(data) == prov
    assert Provenance.from_json(data).to_json() == prov.to_json()


def test_the_p2pnet_object_keeps_its_shape():
    """The API's ``p2pnet`` object: the query id first, then the keys in the
    order the coordinator wrote them before the provenance was typed."""
    out = provenance(ChatResult("Paris.", "stop", 9, 5, "ab" * 16, FULL))
    assert list(out) == ["query_id", "domain", "selection", "tiebreakers", "escalated", "escalation_declined",
                         "respondents", "chosen", "reason", "judges", "cascade"]
    assert out["query_id"] == "ab" * 16
    assert out["selection"] == {"policy": "ucb-cost", "reason": "2 of 3 free experts",
                                "scores": [["12D3KooWa", "e1", 0.75], ["12D3KooWb", "e2", 0.5]]}
    assert out["respondents"][1] == {
        "peer_id": "12D3KooWb", "expert_id": "e2", "status": "timeout", "latency_ms": 3000, "completion_tokens": 0,
        "prompt_tokens": 0, "gen_ms": 0, "score": None, "error": "deadline exceeded", "confidence": None,
        "signal": None, "signals": {}}
    assert out["escalated"] == {"reason": "its confidence 0.30 is below 0.50", "confidence": 0.3, "below": 0.5,
                                "to": [{"peer_id": "12D3KooWb", "expert_id": "e2"}]}
    assert out["judges"][1] == {"peer_id": "12D3KooWd", "expert_id": "j2", "status": "timeout", "weight": 0.2,
                                "pick": None}
    # no peer judging asked: no "judges" key; no cascade: no "cascade" key
    plain = dataclasses.replace(FULL, judges=None, cascade=None).to_json()
    assert "judges" not in plain and "cascade" not in plain
    # only the cascade answered (locally): just its report; nobody at all: {}
    assert provenance(ChatResult("4", "stop", 1, 1, "q", Provenance(cascade={"path": "local"}))) == {
        "query_id": "q", "cascade": {"path": "local"}}
    assert provenance(ChatResult("4", "stop", 1, 1, "q")) == {"query_id": "q"}


@pytest.mark.parametrize("data", [
    None, [], "garbage", 7, {},
    {"query_id": "ab", "unknown": {"x": 1}, "respondents": "nope", "judges": "nope", "tiebreakers": 5},
    {"selection": "nope", "chosen": "nope", "escalated": ["nope"], "cascade": "nope"},
    {"respondents": [None, "x", {"peer_id": "p"}], "tiebreakers": [None, {"expert_id": "e"}],
     "judges": [None, {"pick": "nope"}], "escalated": {"to": [None, {"peer_id": "p"}], "below": None}},
    {"selection": {"scores": [None, ["p", "e", 0.5], "x"]}, "respondents": [{"latency_ms": None, "signals": None}]},
])
def test_from_json_tolerates_missing_and_garbage_keys(data):
    prov = Provenance.from_json(data)
    assert isinstance(prov, Provenance)
    json.dumps(prov.to_json())  # and it can be answered again


def test_from_json_keeps_what_it_can_read():
    prov = Provenance.from_json({
        "query_id": "ab", "respondents": [None, {"peer_id": "p"}], "tiebreakers": [None, {"expert_id": "e"}],
        "judges": [None, {"pick": "nope"}], "escalated": {"to": [None, {"peer_id": "p"}]}, "chosen": "nope",
        "selection": {"scores": [None, ["p", "e", 0.5]]}})
    assert prov.respondents == (RespondentReport("p", "", ""),)
    assert prov.tiebreakers == (ExpertKey("", "e"),)
    assert prov.judges == (JudgeReport("", "", "", 0.0, None),)
    assert prov.escalated == Escalation("", None, 0.0, (ExpertKey("p", ""),))
    assert prov.chosen is None and prov.selection.scores == (("p", "e", 0.5),)


def test_cascade_report_goes_into_the_provenance():
    from p2pnet.experts.cascade import NETWORK, CascadeResult, LocalAnswer

    network = ChatResult("Paris.", "stop", 9, 5, "ab" * 16, dataclasses.replace(FULL, cascade=None))
    result = CascadeResult("Paris.", NETWORK, LocalAnswer("Lyon.", 0.2, "logprob"), 0.5, "low", network)
    answered = result.as_chat_result()
    assert answered.query_id == network.query_id
    assert answered.provenance.cascade["path"] == NETWORK and answered.provenance.cascade["local_text"] == "Lyon."
    assert dataclasses.replace(answered.provenance, cascade=None) == network.provenance
    assert result.to_json()["network"] == {"query_id": "ab" * 16, **network.provenance.to_json()}


# -- errors -------------------------------------------------------------------

EXPECTED = {
    QueryError: (500, "server_error", "internal_error"),
    BadQuery: (400, "invalid_request_error", "invalid_request"),
    UnknownModel: (404, "invalid_request_error", "model_not_found"),
    NoExpertAvailable: (503, "server_error", "no_expert_available"),
    Busy: (503, "server_error", "busy"),
    DeadlineExceeded: (504, "server_error", "deadline_exceeded"),
    UnknownQuery: (404, "invalid_request_error", "query_not_found"),
    FeedbackRepeated: (409, "invalid_request_error", "feedback_already_given"),
    CascadeUnavailable: (400, "invalid_request_error", "cascade_unavailable"),
}


@pytest.mark.parametrize("cls", list(EXPECTED))
def test_each_query_error_has_its_http_answer(cls):
    status, error_type, code = EXPECTED[cls]
    assert query_error_http(cls) == (status, error_type, code)
    answer = query_error(cls("it went wrong"))
    assert (answer.status, answer.error_type, answer.code, answer.message) == (status, error_type, code,
                                                                              "it went wrong")
    assert answer.headers == ((("retry-after", "1"),) if status == 503 else ())


def test_the_table_covers_every_query_error_and_nothing_else():
    defined = {obj for obj in vars(query).values() if isinstance(obj, type) and issubclass(obj, QueryError)}
    assert set(QUERY_ERROR_HTTP) == defined == set(EXPECTED)


def test_a_subclass_answers_like_its_parent():
    class TooLong(BadQuery):
        pass

    class Odd(QueryError):
        pass

    assert query_error_http(TooLong) == (400, "invalid_request_error", "invalid_request")
    assert query_error(TooLong("too long")).status == 400
    assert query_error_http(Odd) == (500, "server_error", "internal_error")
    assert query_error(Odd()).message == "Odd"  # no message: the class name


def test_query_errors_carry_no_http_numbers():
    for cls in EXPECTED:
        assert not {"status", "error_type", "code"} & set(vars(cls)), cls


# -- the import graph ---------------------------------------------------------

def _imports(path: Path, source: str | None = None) -> set[str]:
    """Every module the file at ``path`` (or ``source`` as that file) imports,
    at the top or inside functions; for ``from X import Y`` both X and X.Y (Y
    may be a submodule)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                package = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                base = ".".join(package + ((node.module,) if node.module else ()))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_experts_never_import_the_api():
    files = sorted((ROOT / "p2pnet" / "experts").rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): sorted(n for n in _imports(f) if _within(n, "p2pnet.api"))
                 for f in files}
    assert {f: names for f, names in offenders.items() if names} == {}


def test_the_vocabulary_is_neutral():
    names = _imports(ROOT / "p2pnet" / "query.py")
    for forbidden in ("trio", "h11", "p2pnet.api", "p2pnet.experts"):
        assert not [n for n in names if _within(n, forbidden)], (forbidden, names)


def test_the_import_check_sees_imports_inside_functions():
    source = "def f():\n    from p2pnet.api import client\n    import h11\n\nfrom . import wire\n"
    names = _imports(ROOT / "p2pnet" / "experts" / "sample.py", source)
    assert {"p2pnet.api", "p2pnet.api.client", "h11", "p2pnet.experts", "p2pnet.experts.wire"} <= names


def test_the_query_errors_live_only_in_the_vocabulary():
    """No old copy is left: api/types.py is gone, and no module under
    p2pnet/experts defines a query error of its own."""
    import importlib
    import inspect

    assert not (ROOT / "p2pnet" / "api" / "types.py").exists()
    for path in sorted((ROOT / "p2pnet" / "experts").glob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional engine that is not installed
            continue
        own = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
               if obj.__module__ == module.__name__ and issubclass(obj, QueryError)]
        assert own == [], name
