"""The OpenAI-compatible API, driven by the official `openai` client unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

import openai
import pytest
import trio

from p2pnet.api import client as api_client
from p2pnet.api.errors import HttpError
from p2pnet.api.http import Router
from p2pnet.api.openai import mount_openai
from p2pnet.api.openai_schema import query_error_http
from p2pnet.api.server import HttpServer
from p2pnet.query import (
    BadQuery,
    Busy,
    ChatRequest,
    ChatResult,
    DeadlineExceeded,
    NoExpertAvailable,
    Provenance,
    QueryError,
    RespondentReport,
    UnknownModel,
)

MODELS = [
    {"id": "p2pnet/general", "owned_by": "p2pnet", "created": 1700000000, "domains": ["general"], "experts": 3},
    {"id": "p2pnet/code", "owned_by": "peer-7", "created": 1700000001, "domains": ["code", "python"], "experts": 1},
]
USER_HI = [{"role": "user", "content": "hi"}]


def provenance_for(domain: str | None) -> Provenance:
    return Provenance(domain=domain or "", respondents=(RespondentReport("peer-1", "e1", "ok"),
                                                        RespondentReport("peer-2", "e2", "ok")))


@dataclass
class FakeQueryService:
    """Scripted answers: `deltas` streamed in order, optional failures before or after them."""

    text: str = "Hello from the network."
    deltas: tuple[str, ...] = ("Hello ", "from ", "the ", "network.")
    fail_before: QueryError | None = None
    fail_after_deltas: QueryError | None = None
    hang_after_deltas: bool = False
    requests: list[ChatRequest] = field(default_factory=list)
    cancelled: trio.Event = field(default_factory=trio.Event)

    def list_models(self) -> list[dict]:
        return [dict(model) for model in MODELS]

    async def chat(self, req, on_delta=None) -> ChatResult:
        self.requests.append(req)
        if req.model not in {m["id"] for m in MODELS}:
            raise UnknownModel(f"the model '{req.model}' does not exist")
        if self.fail_before:
            raise self.fail_before
        try:
            if on_delta is not None:
                for delta in self.deltas:
                    await on_delta(delta)
            if self.hang_after_deltas:
                await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.set()
            raise
        if self.fail_after_deltas:
            raise self.fail_after_deltas
        return ChatResult(
            text=self.text,
            finish_reason="stop",
            prompt_tokens=7,
            completion_tokens=4,
            query_id="q-123",
            provenance=provenance_for(req.domain),
        )


async def serve(nursery, service, **kwargs) -> str:
    router = Router()
    mount_openai(router, service, clock=lambda: 1234.5)
    return await nursery.start(HttpServer(router, **kwargs).run)


async def in_thread(url, use, api_key="unused"):
    """Run `use(openai_client)` in a worker thread while the server runs in this loop."""

    def run():
        with openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0) as client:
            return use(client)

    return await trio.to_thread.run_sync(run)


# -- chat ---------------------------------------------------------------------


async def test_chat_completion(nursery):
    service = FakeQueryService()
    url = await serve(nursery, service)
    completion = await in_thread(
        url,
        lambda c: c.chat.completions.create(
            model="p2pnet/general",
            messages=[{"role": "system", "content": "be brief"}, *USER_HI],
            max_tokens=50,
            temperature=0.5,
            user="alice",
            extra_body={"domain": "medicine", "respondents": 3, "deadline_s": 12.5},
        ),
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.created == 1234
    assert completion.model == "p2pnet/general"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", "Hello from the network.")
    assert choice.finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 4)
    assert completion.usage.total_tokens == 11
    p2pnet = completion.model_extra["p2pnet"]
    assert p2pnet == {"query_id": "q-123", **provenance_for("medicine").to_json()}
    assert list(p2pnet) == ["query_id", "domain", "selection", "tiebreakers", "escalated", "escalation_declined",
                            "respondents", "chosen", "reason"]
    assert [r["peer_id"] for r in p2pnet["respondents"]] == ["peer-1", "peer-2"]
    assert p2pnet["domain"] == "medicine"
    assert service.requests == [
        ChatRequest(
            model="p2pnet/general",
            messages=(("system", "be brief"), ("user", "hi")),
            max_tokens=50,
            temperature=0.5,
            stream=False,
            domain="medicine",
            respondents=3,
            deadline_s=12.5,
            user="alice",
        )
    ]


async def test_chat_streaming(nursery):
    service = FakeQueryService()
    url = await serve(nursery, service)

    def use(client):
        stream = client.chat.completions.create(
            model="p2pnet/general", messages=USER_HI, stream=True, extra_body={"domain": "law"}
        )
        return list(stream)

    chunks = await in_thread(url, use)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == "Hello from the network."
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == list(service.deltas)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.model_extra["p2pnet"]["query_id"] == "q-123"
    assert last.model_extra["p2pnet"]["domain"] == "law"
    assert service.requests[0].stream is True


async def test_streaming_when_the_service_sends_no_deltas(nursery):
    service = FakeQueryService(deltas=())
    url = await serve(nursery, service)
    chunks = await in_thread(
        url, lambda c: list(c.chat.completions.create(model="p2pnet/general", messages=USER_HI, stream=True))
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == service.text


async def test_streaming_with_usage(nursery):
    url = await serve(nursery, FakeQueryService())
    chunks = await in_thread(
        url,
        lambda c: list(
            c.chat.completions.create(
                model="p2pnet/general", messages=USER_HI, stream=True, stream_options={"include_usage": True}
            )
        ),
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == 11
    assert all(chunk.usage is None for chunk in chunks[:-1])


# -- service errors -----------------------------------------------------------

QUERY_ERRORS = [BadQuery, UnknownModel, NoExpertAvailable, Busy, DeadlineExceeded]


@pytest.mark.parametrize("error_class", QUERY_ERRORS)
async def test_query_error_maps_to_its_status(nursery, error_class):
    url = await serve(nursery, FakeQueryService(fail_before=error_class("it went wrong")))

    def use(client):
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="p2pnet/general", messages=USER_HI)
        return info.value

    error = await in_thread(url, use)
    status, error_type, code = query_error_http(error_class)
    assert error.status_code == status
    assert (error.response.headers.get("retry-after") == "1") == (status == 503)
    assert error.body == {
        "message": "it went wrong",
        "type": error_type,
        "param": None,
        "code": code,
    }


async def test_unknown_model_is_404(nursery):
    url = await serve(nursery, FakeQueryService())

    def use(client):
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model="nope", messages=USER_HI)
        return info.value

    assert (await in_thread(url, use)).code == "model_not_found"


@pytest.mark.parametrize("error_class", QUERY_ERRORS)
async def test_query_error_before_streaming_is_an_ordinary_error_response(nursery, error_class):
    url = await serve(nursery, FakeQueryService(fail_before=error_class("nothing to stream")))

    def use(client):
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="p2pnet/general", messages=USER_HI, stream=True)
        return info.value

    error = await in_thread(url, use)
    status, _, code = query_error_http(error_class)
    assert error.status_code == status
    assert error.code == code


async def test_query_error_after_streaming_started_is_an_error_event(nursery):
    service = FakeQueryService(fail_after_deltas=DeadlineExceeded("out of time"))
    url = await serve(nursery, service)

    def use(client):
        seen = []
        stream = client.chat.completions.create(model="p2pnet/general", messages=USER_HI, stream=True)
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
        return "".join(seen), info.value

    text, error = await in_thread(url, use)
    assert text == service.text  # every delta arrived before the error
    assert error.message == "out of time"
    assert error.code == "deadline_exceeded"


async def test_client_leaving_mid_stream_cancels_the_query(nursery):
    service = FakeQueryService(hang_after_deltas=True)
    url = await serve(nursery, service)

    def use(client):
        stream = client.chat.completions.create(model="p2pnet/general", messages=USER_HI, stream=True)
        first = next(iter(stream))
        stream.close()
        return first

    first = await in_thread(url, use)
    assert first.choices[0].delta.role == "assistant"
    with trio.fail_after(10):
        await service.cancelled.wait()


async def test_chat_service_crash_is_500(nursery, caplog):
    class Broken(FakeQueryService):
        async def chat(self, req, on_delta=None):
            raise ZeroDivisionError

    url = await serve(nursery, Broken())
    for stream in (False, True):

        def use(client):
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="p2pnet/general", messages=USER_HI, stream=stream)
            return info.value

        assert (await in_thread(url, use)).code == "internal_error"
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert len(failures) == 2  # one record each


# -- models -------------------------------------------------------------------


async def test_models_list_and_retrieve(nursery):
    url = await serve(nursery, FakeQueryService())
    page = await in_thread(url, lambda c: c.models.list())
    assert [model.id for model in page.data] == ["p2pnet/general", "p2pnet/code"]
    code = page.data[1]
    assert (code.object, code.owned_by, code.created) == ("model", "peer-7", 1700000001)
    assert code.model_extra == {"domains": ["code", "python"], "experts": 1}
    model = await in_thread(url, lambda c: c.models.retrieve("p2pnet/code"))
    assert model.id == "p2pnet/code"

    def missing(client):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("p2pnet/nope")

    await in_thread(url, missing)


# -- API key ------------------------------------------------------------------


async def test_openai_client_with_api_key(nursery):
    url = await serve(nursery, FakeQueryService(), api_key="k-1")
    page = await in_thread(url, lambda c: c.models.list(), api_key="k-1")
    assert len(page.data) == 2

    def wrong(client):
        with pytest.raises(openai.AuthenticationError) as info:
            client.models.list()
        return info.value

    assert (await in_thread(url, wrong, api_key="k-2")).code == "invalid_api_key"


# -- validation through the wire ---------------------------------------------

BAD_BODIES = [
    ([1, 2], None),
    ({"messages": USER_HI}, "model"),
    ({"model": "", "messages": USER_HI}, "model"),
    ({"model": 5, "messages": USER_HI}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
    ({"model": "m", "messages": USER_HI, "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": USER_HI, "max_tokens": 10**9}, "max_tokens"),
    ({"model": "m", "messages": USER_HI, "max_tokens": 1.5}, "max_tokens"),
    ({"model": "m", "messages": USER_HI, "max_tokens": True}, "max_tokens"),
    ({"model": "m", "messages": USER_HI, "temperature": 2.5}, "temperature"),
    ({"model": "m", "messages": USER_HI, "temperature": -0.1}, "temperature"),
    ({"model": "m", "messages": USER_HI, "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": USER_HI, "n": 2}, "n"),
    ({"model": "m", "messages": USER_HI, "n": 0}, "n"),
    ({"model": "m", "messages": USER_HI, "stream": "yes"}, "stream"),
    ({"model": "m", "messages": USER_HI, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "m", "messages": USER_HI, "tools": []}, "tools"),
    ({"model": "m", "messages": USER_HI, "respondents": 0}, "respondents"),
    ({"model": "m", "messages": USER_HI, "deadline_s": 0}, "deadline_s"),
    ({"model": "m", "messages": USER_HI, "deadline_s": 1e9}, "deadline_s"),
    ({"model": "m", "messages": USER_HI, "domain": ["a"]}, "domain"),
    ({"model": "m", "messages": USER_HI, "logprobs": True}, "logprobs"),
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES)
async def test_malformed_chat_body_is_400(nursery, body, param):
    service = FakeQueryService()
    url = await serve(nursery, service)

    def post():
        with pytest.raises(HttpError) as info:
            api_client.post_json(url + "/v1/chat/completions", body, timeout=10)
        return info.value

    error = await trio.to_thread.run_sync(post)
    assert (error.status, error.error_type, error.param) == (400, "invalid_request_error", param)
    assert service.requests == []
