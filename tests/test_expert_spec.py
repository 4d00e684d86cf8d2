"""Parsing the --expert flag."""

from __future__ import annotations

import pytest

from p2pnet.experts.errors import ExpertSpecError, P2PNetError
from p2pnet.experts.expert import DEFAULT_SYSTEM_PROMPT
from p2pnet.experts.spec import DEFAULT_CONCURRENCY, ExpertSpec, parse_expert_spec


def test_full_spec():
    spec = parse_expert_spec("model=smollm2-135m,domains=general+geography,price=0.1,concurrency=2,"
                             "gpu_layers=-1,ctx=1024,confidence=off,id=geo,system=You are a geographer, be brief.")
    assert spec == ExpertSpec(model="smollm2-135m", domains=("general", "geography"), price_per_1k=0.1,
                              concurrency=2, gpu_layers=-1, n_ctx=1024, confidence=False, expert_id="geo",
                              system_prompt="You are a geographer, be brief.")
    assert spec.id == "geo"


def test_defaults():
    spec = parse_expert_spec("model=/models/My-Model.Q4_0.gguf")
    assert spec.domains == ("general",) and spec.price_per_1k == 0.0 and spec.concurrency == DEFAULT_CONCURRENCY == 4
    assert spec.gpu_layers == 0 and spec.system_prompt == DEFAULT_SYSTEM_PROMPT and spec.confidence is True
    assert parse_expert_spec("model=m,confidence=ON").confidence is True
    assert spec.id == "My-Model.Q4_0"
    assert parse_expert_spec("model=smollm2-135m").id == "smollm2-135m"


@pytest.mark.parametrize("text, key", [
    ("domains=general", "'model'"),
    ("", "'model'"),
    ("model=m,colour=red", "'colour'"),
    ("model=m,price=cheap", "'price'"),
    ("model=m,price=-1", "'price'"),
    ("model=m,price=nan", "'price'"),
    ("model=m,concurrency=0", "'concurrency'"),
    ("model=m,concurrency=1.5", "'concurrency'"),
    ("model=m,gpu_layers=-2", "'gpu_layers'"),
    ("model=m,ctx=10", "'ctx'"),
    ("model=m,confidence=maybe", "'confidence'"),
    ("model=m,confidence=", "'confidence'"),
    ("model=m,domains=Geo Graphy", "'domains'"),
    ("model=m,domains=a++b", "'domains'"),
    ("model=m,model=n", "'model'"),
    ("model=m,justaword", "'justaword'"),
    ("model=m,id=" + "x" * 65, "'id'"),
])
def test_errors_name_the_bad_key(text, key):
    with pytest.raises(ExpertSpecError, match=key) as err:
        parse_expert_spec(text)
    assert isinstance(err.value, P2PNetError) and isinstance(err.value, ValueError)
