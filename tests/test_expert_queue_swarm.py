"""Many users at once on a small swarm (real nodes in one process, real
libp2p over loopback, scripted experts): a query that finds every expert busy
waits in an expert's bounded queue instead of failing, and a node without
queues (``queue=0``) turns the same load away."""

import pytest
import trio

from p2pnet import config
from p2pnet.experts import scripted
from p2pnet.experts.expert import Expert
from p2pnet.node import Node
from p2pnet.query import ChatRequest, QueryError

from .conftest_net import wait_for
from .test_coordinator import QUESTION, boot_addr, coordinator_of

USERS = 8


async def _swarm(nursery, tmp_path, queue: int):
    def cfg(name, boot=None):
        return config.build(None, data_dir=tmp_path / name, listen=("/ip4/127.0.0.1/tcp/0",), api_port=0,
                            bootstrap=(boot,) if boot else (), announce_interval_s=0.5)

    coord = Node(cfg("coord"))
    await nursery.start(coord.run)
    nodes = [coord]
    for i in range(3):
        backend = scripted.ScriptedBackend({QUESTION: "Paris."}, latency=0.4, seed=i)
        expert = Expert(f"e{i}", backend, domains=("geography",), max_concurrency=1, max_queue=queue)
        await expert.start()
        node = Node(cfg(f"n{i}", boot_addr(coord)), experts=[expert])
        await nursery.start(node.run)
        nodes.append(node)
    await wait_for(lambda: all(len(x.network.peers()) == 3 for x in nodes), 30, "mesh")
    coordinator = coordinator_of(coord)
    await wait_for(lambda: len(coordinator.directory.all(coordinator.clock())) == 3, 30, "announcements")
    return coordinator


async def _eight_users(coordinator) -> list:
    outcomes = []

    async def user(i):
        req = ChatRequest(model="p2pnet", messages=(("user", QUESTION),), domain="geography",
                          respondents=1, deadline_s=30, temperature=0.5)
        try:
            outcomes.append((await coordinator.chat(req)).text)
        except QueryError as exc:
            outcomes.append(type(exc).__name__)

    async with trio.open_nursery() as nursery:
        for i in range(USERS):
            nursery.start_soon(user, i)
    return outcomes


@pytest.mark.parametrize("queue", [8, 0])
async def test_eight_users_on_three_single_slot_experts(nursery, tmp_path, queue):
    coordinator = await _swarm(nursery, tmp_path, queue)
    outcomes = await _eight_users(coordinator)
    assert len(outcomes) == USERS
    if queue:
        assert outcomes == ["Paris."] * USERS  # every one waited for a slot and was answered
    else:
        assert outcomes.count("Paris.") < USERS  # without queues some are turned away at once
        assert set(outcomes) - {"Paris."} <= {"NoExpertAvailable"}
