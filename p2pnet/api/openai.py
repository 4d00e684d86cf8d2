"""OpenAI-compatible routes over a QueryService:

    POST /v1/chat/completions   (streaming with "stream": true)
    GET  /v1/models
    GET  /v1/models/{model}
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable, Optional, Union

import trio

from p2pnet.api import sse
from p2pnet.api.errors import HttpError
from p2pnet.api.http import Request, Response, Router, SendChunk, StreamingResponse
from p2pnet.api.openai_schema import (
    ChatLimits,
    chunk_object,
    completion_object,
    model_list,
    model_object,
    new_completion_id,
    parse_chat_request,
    provenance,
    query_error,
    usage,
)
from p2pnet.query import ChatRequest, ChatResult, QueryError, QueryService

# What the chat task hands the stream writer: a text delta, the result, or the failure.
_StreamItem = Union[str, ChatResult, HttpError]
# Told of every chat completion once it is answered or failed: (request, result
# or None, the HttpError or None, seconds taken). The dashboard's recent list.
OnDone = Callable[[ChatRequest, Optional[ChatResult], Optional[HttpError], float], None]


def mount_openai(
    router: Router,
    service: QueryService,
    *,
    limits: ChatLimits = ChatLimits(),
    clock: Callable[[], float] = time.time,
    stream_buffer: int = 64,
    logger: logging.Logger | None = None,
    on_done: OnDone | None = None,
) -> None:
    """Register the OpenAI-compatible routes for `service` on `router`."""
    routes = _OpenAIRoutes(service, limits, clock, stream_buffer, logger or logging.getLogger(__name__), on_done)
    router.add("GET", "/v1/models", routes.list_models)
    router.add("GET", "/v1/models/{model}", routes.get_model)
    router.add("POST", "/v1/chat/completions", routes.chat_completions)


class _OpenAIRoutes:
    def __init__(
        self,
        service: QueryService,
        limits: ChatLimits,
        clock: Callable[[], float],
        stream_buffer: int,
        logger: logging.Logger,
        on_done: OnDone | None = None,
    ) -> None:
        self._service = service
        self._limits = limits
        self._clock = clock
        self._stream_buffer = stream_buffer
        self._log = logger
        self._on_done = on_done

    def _done(self, chat: ChatRequest, result: ChatResult | None, error: HttpError | None, started: float) -> None:
        if self._on_done is None:
            return
        try:
            self._on_done(chat, result, error, time.monotonic() - started)
        except Exception:  # a recorder's bug must not fail the answer
            self._log.exception("recording a chat completion failed")

    async def list_models(self, request: Request) -> Response:
        return Response.json(200, model_list(self._service.list_models()))

    async def get_model(self, request: Request) -> Response:
        model_id = request.path_params["model"]
        for entry in self._service.list_models():
            if entry.get("id") == model_id:
                return Response.json(200, model_object(entry))
        raise HttpError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found")

    async def chat_completions(self, request: Request) -> Response | StreamingResponse:
        chat, include_usage = parse_chat_request(request.json(), self._limits)
        completion_id = new_completion_id()
        created = int(self._clock())
        if chat.stream:
            write = partial(self._write_stream, chat, include_usage, completion_id, created)
            return StreamingResponse.event_stream(write)
        started = time.monotonic()
        try:
            result = await self._service.chat(chat)
        except QueryError as exc:
            error = query_error(exc)
            self._done(chat, None, error, started)
            raise error from None
        except Exception:
            self._done(chat, None, HttpError(500, "internal server error", code="internal_error"), started)
            raise
        self._done(chat, result, None, started)
        return Response.json(200, completion_object(completion_id, created, chat.model, result))

    async def _run_chat(self, chat: ChatRequest, channel: trio.MemorySendChannel[_StreamItem]) -> None:
        started = time.monotonic()
        async with channel:

            async def on_delta(text: str) -> None:
                if text:
                    await channel.send(text)

            try:
                result: _StreamItem = await self._service.chat(chat, on_delta)
            except QueryError as exc:
                result = query_error(exc)
            except Exception:
                self._log.exception("chat for model %r failed", chat.model)
                result = HttpError(500, "internal server error", code="internal_error")
            if isinstance(result, HttpError):
                self._done(chat, None, result, started)
            else:
                self._done(chat, result, None, started)
            await channel.send(result)

    async def _write_stream(
        self, chat: ChatRequest, include_usage: bool, completion_id: str, created: int, send: SendChunk
    ) -> None:
        """Headers go out with the first chunk, so a failure before the first
        delta is still an ordinary error response."""
        chunk = partial(chunk_object, completion_id, created, chat.model)
        started = False
        streamed_text = False
        failure: HttpError | None = None
        deltas_in, deltas_out = trio.open_memory_channel[_StreamItem](self._stream_buffer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_chat, chat, deltas_in)
            async with deltas_out:
                async for item in deltas_out:
                    if isinstance(item, HttpError):
                        failure = item
                        break
                    if not started:
                        started = True
                        await send(sse.encode_json_event(chunk({"role": "assistant", "content": ""})))
                    if isinstance(item, str):
                        streamed_text = True
                        await send(sse.encode_json_event(chunk({"content": item})))
                        continue
                    if item.text and not streamed_text:  # the service sent no deltas
                        await send(sse.encode_json_event(chunk({"content": item.text})))
                    final = chunk({}, item.finish_reason, p2pnet=provenance(item))
                    await send(sse.encode_json_event(final))
                    if include_usage:
                        await send(sse.encode_json_event(chunk(None, usage=usage(item))))
                    await send(sse.DONE)
        if failure is not None:
            if not started:
                raise failure
            await send(sse.encode_json_event(failure.body()))
