"""What `p2pnet ask` prints of an answer's provenance (on stderr)."""

from p2pnet.query import Provenance
from p2pnet_cli.ask import _print_provenance

ROW = {"peer_id": "12D3KooWabcdefghijklmnop", "expert_id": "smollm2", "status": "ok", "latency_ms": 310,
       "completion_tokens": 8, "score": None}
QUERY_ID = "ab" * 16


def test_an_escalation_and_a_declined_one_are_shown(capsys):
    prov = {"reason": "majority answer (2 of 2 agree)", "chosen": ROW,
            "selection": {"reason": "reputation: 1 of 3 free experts"}, "respondents": [ROW, {**ROW, "expert_id": "b"}],
            "escalated": {"reason": "its confidence 0.41 is below 0.60", "to": [{"peer_id": "x", "expert_id": "b"}]}}
    _print_provenance(Provenance.from_json(prov), QUERY_ID)
    err = capsys.readouterr().err
    assert "  escalated to b: its confidence 0.41 is below 0.60" in err and "not escalated" not in err
    assert f"  query: {QUERY_ID} (p2pnet feedback {QUERY_ID} accept|reject)" in err
    assert "* 12D3KooWabcdefgh…" in err and "  12D3KooWabcdefgh…  b " in err  # the chosen row is marked
    assert "  chosen: majority answer (2 of 2 agree); selection: reputation: 1 of 3 free experts" in err
    _print_provenance(Provenance.from_json({**prov, "escalated": None,
                       "escalation_declined": "its confidence 0.41 is below 0.60, but no second expert is asked: x"}))
    err = capsys.readouterr().err
    assert "  not escalated: its confidence 0.41 is below 0.60, but no second expert is asked: x" in err
    assert "escalated to" not in err and "query:" not in err
    _print_provenance(Provenance.from_json({**prov, "escalated": None}))  # a sure answer: neither line
    assert "escalat" not in capsys.readouterr().err


def test_nothing_to_show_prints_nothing(capsys):
    _print_provenance(Provenance.from_json({}))
    _print_provenance(Provenance.from_json(None))
    assert capsys.readouterr().err == ""
