"""OpenAI's wire shapes, without I/O: strict parsing of a chat-completions body
into a ChatRequest, the response objects built from a ChatResult, and the HTTP
answer to each query error (the one place that knows their status codes).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from p2pnet.api.errors import HttpError
from p2pnet.query import (
    ROLES,
    BadQuery,
    Busy,
    CascadeUnavailable,
    ChatRequest,
    ChatResult,
    DeadlineExceeded,
    FeedbackRepeated,
    NoExpertAvailable,
    QueryError,
    UnknownModel,
    UnknownQuery,
)


@dataclass(frozen=True)
class ChatLimits:
    max_tokens: int = 32768
    max_messages: int = 1024
    max_respondents: int = 16
    max_deadline_s: float = 600.0
    max_name_chars: int = 256  # model, user, domain


# Accepted and checked, but without effect on the answer.
_NETWORK_ONLY = ("domain", "respondents", "deadline_s", "judges", "cascade_threshold")
_IGNORED = frozenset({"top_p", "presence_penalty", "frequency_penalty", "seed", "logprobs", "response_format"})
_SUPPORTED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "stream",
        "stream_options", "n", "user", "domain", "respondents", "deadline_s", "judges",
        "cascade", "cascade_threshold", "local_only",
    }
)
_MESSAGE_KEYS = frozenset({"role", "content", "name"})
_ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role


def _invalid(message: str, param: str | None, code: str = "invalid_value") -> HttpError:
    return HttpError(400, message, param=param, code=code)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _optional_int(body: dict, key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value):
        raise _invalid(f"'{key}' must be an integer", key, "invalid_type")
    if not low <= value <= high:
        raise _invalid(f"'{key}' must be between {low} and {high}, not {value}", key)
    return value


def _optional_number(body: dict, key: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise _invalid(f"'{key}' must be a number", key, "invalid_type")
    if not (low < value if low_open else low <= value) or value > high:
        raise _invalid(f"'{key}' must be {'over' if low_open else 'at least'} {low} and at most {high}", key)
    return float(value)


def _optional_str(body: dict, key: str, max_chars: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid(f"'{key}' must be a string", key, "invalid_type")
    if not 0 < len(value) <= max_chars:
        raise _invalid(f"'{key}' must be 1 to {max_chars} characters long", key)
    return value


def _optional_bool(body: dict, key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise _invalid(f"'{key}' must be true or false", key, "invalid_type")
    return value


def _content(value: Any, param: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _invalid("only text content parts are supported", param, "unsupported_value")
            texts.append(part["text"])
        return "".join(texts)
    raise _invalid(f"'{param}' must be a string", param, "invalid_type")


def _messages(value: Any, limits: ChatLimits) -> tuple[tuple[str, str], ...]:
    if value is None:
        raise _invalid("missing required parameter 'messages'", "messages", "missing_required_parameter")
    if not isinstance(value, list) or not value:
        raise _invalid("'messages' must be a non-empty array", "messages")
    if len(value) > limits.max_messages:
        raise _invalid(f"'messages' holds more than {limits.max_messages} messages", "messages")
    messages = []
    for i, message in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _invalid(f"'{param}' must be an object", param, "invalid_type")
        extra = sorted(set(message) - _MESSAGE_KEYS)
        if extra:
            raise _invalid(f"'{param}.{extra[0]}' is not supported", f"{param}.{extra[0]}", "unsupported_parameter")
        role = message.get("role")
        role = _ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise _invalid(f"'{param}.role' must be one of {', '.join(ROLES)}", f"{param}.role")
        if "name" in message and not isinstance(message["name"], str):
            raise _invalid(f"'{param}.name' must be a string", f"{param}.name", "invalid_type")
        messages.append((role, _content(message.get("content"), f"{param}.content")))
    return tuple(messages)


def _check_ignored(body: dict) -> None:
    _optional_number(body, "top_p", 0.0, 1.0)
    _optional_number(body, "presence_penalty", -2.0, 2.0)
    _optional_number(body, "frequency_penalty", -2.0, 2.0)
    if body.get("seed") is not None and not _is_int(body["seed"]):
        raise _invalid("'seed' must be an integer", "seed", "invalid_type")
    if _optional_bool(body, "logprobs"):
        raise _invalid("'logprobs' is not supported", "logprobs", "unsupported_value")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise _invalid("only the text response format is supported", "response_format", "unsupported_value")


def parse_chat_request(body: Any, limits: ChatLimits = ChatLimits()) -> tuple[ChatRequest, bool]:
    """(request, include_usage) from a chat-completions body; HttpError(400) if invalid."""
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object", None, "invalid_type")
    unknown = sorted(set(body) - _SUPPORTED - _IGNORED)
    if unknown:
        raise _invalid(f"unsupported parameter '{unknown[0]}'", unknown[0], "unsupported_parameter")
    model = _optional_str(body, "model", limits.max_name_chars)
    if model is None:
        raise _invalid("missing required parameter 'model'", "model", "missing_required_parameter")
    messages = _messages(body.get("messages"), limits)
    n = _optional_int(body, "n", 1, 2**31)
    if n is not None and n != 1:
        raise _invalid("only n=1 is supported", "n", "unsupported_value")
    max_tokens = _optional_int(body, "max_tokens", 1, limits.max_tokens)
    max_completion_tokens = _optional_int(body, "max_completion_tokens", 1, limits.max_tokens)
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        raise _invalid("'max_tokens' and 'max_completion_tokens' disagree", "max_tokens")
    stream = bool(_optional_bool(body, "stream"))
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _invalid("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _invalid("'stream_options' may only hold 'include_usage'", "stream_options")
        include_usage = bool(_optional_bool(options, "include_usage"))
    _check_ignored(body)
    request = ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_completion_tokens if max_completion_tokens is not None else max_tokens,
        temperature=_optional_number(body, "temperature", 0.0, 2.0),
        stream=stream,
        domain=_optional_str(body, "domain", limits.max_name_chars),
        respondents=_optional_int(body, "respondents", 1, limits.max_respondents),
        deadline_s=_optional_number(body, "deadline_s", 0.0, limits.max_deadline_s, low_open=True),
        user=_optional_str(body, "user", limits.max_name_chars),
        judges=_optional_int(body, "judges", 0, limits.max_respondents),
        cascade=bool(_optional_bool(body, "cascade")),
        cascade_threshold=_optional_number(body, "cascade_threshold", 0.0, 1.0),
        local_only=bool(_optional_bool(body, "local_only")),
    )
    if request.local_only:
        for name in _NETWORK_ONLY:
            if body.get(name) is not None:
                raise _invalid(f"'{name}' only applies to answers from the network; 'local_only' never asks it",
                               name, "unsupported_value")
    return request, include_usage


# How the API answers each query error: (HTTP status, OpenAI error type, code).
# Looked up along the exception's MRO, so a subclass answers like its parent.
QUERY_ERROR_HTTP: dict[type[QueryError], tuple[int, str, str]] = {
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


def query_error_http(exc_type: type[QueryError]) -> tuple[int, str, str]:
    """(status, OpenAI error type, code) for a QueryError class: the entry of
    its nearest ancestor in QUERY_ERROR_HTTP."""
    for cls in exc_type.__mro__:
        entry = QUERY_ERROR_HTTP.get(cls)
        if entry is not None:
            return entry
    return QUERY_ERROR_HTTP[QueryError]


def query_error(exc: QueryError) -> HttpError:
    """The HTTP answer to a QueryError from the service."""
    status, error_type, code = query_error_http(type(exc))
    retry = (("retry-after", "1"),) if status == 503 else ()  # busy, or no expert right now
    return HttpError(status, str(exc) or type(exc).__name__, error_type=error_type, code=code, headers=retry)


def provenance(result: ChatResult) -> dict[str, Any]:
    """The ``p2pnet`` object of an answer: its query id and its provenance."""
    return {"query_id": result.query_id, **result.provenance.to_json()}


def usage(result: ChatResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_object(completion_id: str, created: int, model: str, result: ChatResult) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage(result),
        "p2pnet": provenance(result),
    }


def chunk_object(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A chat.completion.chunk; `delta=None` gives the usage chunk (no choices)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
        **extra,
    }


def model_object(entry: dict[str, Any]) -> dict[str, Any]:
    return {"object": "model", "created": 0, "owned_by": "p2pnet", **entry}


def model_list(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(entry) for entry in entries]}
