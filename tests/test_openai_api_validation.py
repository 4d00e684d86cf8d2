"""Chat-completions bodies: whatever arrives, the answer is a 400 JSON error
or a valid request; never a 500, never a crash."""

from __future__ import annotations

import json

import h11
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnet.api.errors import HttpError
from p2pnet.api.http import Router
from p2pnet.api.openai import mount_openai
from p2pnet.api.openai_schema import ChatLimits, parse_chat_request
from p2pnet.api.server import HttpServer
from p2pnet.query import ROLES, ChatRequest, ChatResult

KEYS = [
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stream", "stream_options",
    "n", "user", "domain", "respondents", "deadline_s", "top_p", "seed", "logprobs", "response_format",
    "tools", "stop",
]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from([*ROLES, "tool", "developer", ""]) | junk,
            "content": st.text(max_size=30) | junk,
            "name": st.text(max_size=5) | junk,
            "tool_calls": junk,
        },
    )
    | junk,
    max_size=4,
)
# near-valid bodies: known keys with junk values, so the validators are reached
bodies = (
    st.fixed_dictionaries(
        {},
        optional={key: junk for key in KEYS} | {"messages": messages, "model": st.text(max_size=10) | junk},
    )
    | junk
)


def check_parse(body) -> ChatRequest | None:
    try:
        request, include_usage = parse_chat_request(body, ChatLimits())
    except HttpError as error:
        assert error.status == 400
        assert error.error_type == "invalid_request_error"
        assert error.param is None or isinstance(error.param, str)
        json.dumps(error.body(), allow_nan=False)
        return None
    assert isinstance(include_usage, bool)
    assert request.messages and all(role in ROLES and isinstance(c, str) for role, c in request.messages)
    assert request.temperature is None or 0 <= request.temperature <= 2
    assert request.max_tokens is None or 1 <= request.max_tokens <= ChatLimits().max_tokens
    return request


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_parse_answers_a_request_or_a_400(body):
    check_parse(body)


@given(st.text(min_size=1, max_size=20), st.lists(st.tuples(st.sampled_from(ROLES), st.text()), min_size=1))
def test_valid_bodies_parse_to_what_was_sent(model, turns):
    body = {"model": model, "messages": [{"role": r, "content": c} for r, c in turns]}
    request, include_usage = parse_chat_request(body)
    assert request == ChatRequest(model=model, messages=tuple(turns))
    assert include_usage is False


def test_developer_role_and_text_parts_are_understood():
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "be terse"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ],
        "max_completion_tokens": 9,
    }
    request, _ = parse_chat_request(body)
    assert request.messages == (("system", "be terse"), ("user", "ab"))
    assert request.max_tokens == 9


class EchoService:
    def list_models(self):
        return []

    async def chat(self, req, on_delta=None):
        return ChatResult("ok", "stop", 1, 1, "q", {})


async def post_raw(port: int, body: bytes) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        headers = [("host", "127.0.0.1"), ("content-type", "application/json"), ("content-length", str(len(body)))]
        data = conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=headers))
        data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        answer = b""
        status = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                answer += event.data
            else:
                return status, answer


@settings(max_examples=150, deadline=None)
@given(body=bodies.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=64))
async def test_junk_bodies_over_the_wire_get_400_json(body):
    router = Router()
    mount_openai(router, EchoService())
    server = HttpServer(router)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(server.run)
        status, answer = await post_raw(int(url.rsplit(":", 1)[1]), body)
        nursery.cancel_scope.cancel()
    decoded = json.loads(answer)
    if status == 200:  # a valid request: then it parses too
        assert check_parse(json.loads(body)) is not None
        assert decoded["object"] == "chat.completion"
    else:
        assert status == 400, (status, answer)
        assert set(decoded["error"]) == {"message", "type", "param", "code"}
    assert 500 not in server.stats()["requests_by_status"]
