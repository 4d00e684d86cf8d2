"""Provider records in the DHT (p2pnet/gossip/providers.py): the schedule
alone, then real nodes on 127.0.0.1 finding the hosts of a domain and of a
model by its sha256 through the DHT, without their announcements."""

import os

from p2pnet import wire
from p2pnet.gossip.network import GossipNetwork
from p2pnet.gossip.policy import Watermarks
from p2pnet.gossip.providers import ProvideSchedule, Providers, domain_key, keys_of, merge, model_key
from p2pnet.identity import Identity

from .conftest_net import wait_for

SHA = "ab" * 32


def card(expert_id="e1", domains=("math",), sha256=SHA):
    return wire.ModelCard(expert_id=expert_id, model="m", sha256=sha256, quantization="q4", n_ctx=2048,
                          domains=domains, prompt_tps=100.0, gen_tps=10.0, price_per_1k=0.1, load=0,
                          max_concurrency=1)


def test_keys_are_the_cards_domains_and_models_once_each():
    keys = keys_of([card("a", ("math", "law")), card("b", ("math",), sha256=""), card("c", ("law",))])
    assert keys == [domain_key("math"), domain_key("law"), model_key(SHA)]
    assert model_key(SHA.upper()) == model_key(SHA)


def test_schedule_provides_new_keys_at_once_then_every_reprovide_and_retries_failures():
    s = ProvideSchedule(reprovide_s=100.0, retry_s=10.0)
    assert s.due(["a", "b"], 0.0) == ["a", "b"]
    s.done("a", True, 0.0)
    s.done("b", False, 0.0)
    assert s.due(["a", "b"], 5.0) == []
    assert s.due(["a", "b"], 10.0) == ["b"]
    s.done("b", True, 10.0)
    assert s.due(["a", "b", "c"], 50.0) == ["c"]  # a key that appears goes at once
    assert s.due(["a", "b"], 100.0) == ["a"]
    assert s.due(["b"], 200.0) == ["b"]  # "a" no longer served: forgotten
    assert s.next_at() == 110.0


def test_a_peer_named_twice_is_one_provider():
    p, q = b"p" * 38, b"q" * 38
    got = merge([(p, ["/ip4/1.1.1.1/tcp/1"]), (q, []), (p, ["/ip4/1.1.1.1/tcp/1", "/ip4/2.2.2.2/tcp/2"])], 20)
    assert [g.peer for g in got] == [p, q]
    assert got[0].addrs == ("/ip4/1.1.1.1/tcp/1", "/ip4/2.2.2.2/tcp/2")
    assert len(merge([(bytes([i]) * 38, []) for i in range(30)], 5)) == 5


async def test_nothing_is_provided_or_found_while_the_dht_is_off():
    providers = Providers(lambda: None, lambda: ["k"])
    assert await providers.provide_due(0.0) == 0
    assert await providers.find_domain("math") == []


async def test_hosts_of_a_domain_and_of_a_model_are_found_through_the_dht(nursery):
    """Four nodes in a line a - b - c - d (low watermark 1: nobody dials
    more); d hosts an expert for "math" with model SHA. a, which holds no
    announcement of d, finds d as the provider of the domain and of the
    model, and nobody for a domain no one serves."""
    nets = []
    for i in range(4):
        ident = Identity(os.urandom(32))
        boot = [nets[-1].listen_addrs[0]] if nets else []
        extra = (lambda: {"cards": (card("d-expert"),)}) if i == 3 else dict
        net = GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], boot, watermarks=Watermarks(1, 2),
                            announce_extra=extra)
        net.connector.dht_wanted = True
        net.providers.poll_s = 0.5
        await nursery.start(net.run)
        nets.append(net)
    a, b, c, d = nets
    await wait_for(lambda: all(n.connector.routing is not None for n in nets), 30, "the DHTs to run")
    await wait_for(lambda: a.connector.routing.known(b.peer_id) and b.connector.routing.known(c.peer_id)
                   and c.connector.routing.known(d.peer_id), 30, "the routing tables to hold the line")
    await wait_for(lambda: d.providers.provided >= 2, 60, "d to provide its domain and model")
    a.announces.expire(float("inf"))  # whatever a heard of d: not from its announcement
    hosts = await a.providers.find_domain("math")
    assert d.peer_id in [p.peer for p in hosts], hosts
    assert len({p.peer for p in hosts}) == len(hosts)
    assert d.peer_id in [p.peer for p in await a.providers.find_model(SHA)]
    assert await a.providers.find_domain("chemistry") == []
    assert a.providers.status()["lookups"] == 3 and d.providers.status()["keys"] == 2
    for n in nets:
        n.close()
