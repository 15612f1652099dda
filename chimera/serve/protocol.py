"""The OpenAI request bodies the server accepts, their validation, and the OpenAI error shape.

A request body is checked twice: by the pydantic models here (types, ranges, the fields that the
server does not implement), and by the server against what it serves (the model's name, ``n`` and
the context length). Either way a bad request becomes an ``APIError``, answered as
``{"error": {"message", "type", "param", "code"}}`` with the field it is about in ``param``.
Fields this server ignores (``user``, ``parallel_tool_calls``, ...) are accepted, as OpenAI clients send them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` and the OpenAI error fields."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class FunctionDef(_Body):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class FunctionCall(_Body):
    name: str
    arguments: str = "{}"


class ToolCall(_Body):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, v):
        if isinstance(v, list):
            for i, part in enumerate(v):
                if isinstance(part, dict) and part.get("type") != "text":
                    raise ValueError(f"content part {i} has type {part.get('type')!r}; this server takes text only")
        return v

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class SamplingBody(_Body):
    """The fields chat and text completions share."""

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)
    """vLLM's extension: keep the k most likely tokens (0 or -1: all)."""
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    """vLLM's extension: go on past the end-of-sequence token (to max_tokens or a stop)."""
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 16:
            raise ValueError(f"at most 16 stop strings (got {len(stops)})")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, v):
        if v != 0:
            raise ValueError(f"penalties are not implemented by this server (got {v}; send 0 or leave it out)")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, v):
        if v:
            raise ValueError("logit_bias is not implemented by this server (leave it out)")
        return v

    @property
    def stop_strings(self) -> list[str]:
        return list(self.stop or [])


class ChatCompletionBody(SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    max_thinking_tokens: int | None = Field(None, ge=0)
    """NIM's name for the thinking budget: tokens inside <think> before it is closed (plus a 10% grace)."""
    response_format: dict[str, Any] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, v):
        if v:
            raise ValueError(f"top_logprobs={v}: this server returns the chosen token's logprob only (send 0)")
        return v

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, v):
        if v is not None and v.get("type", "text") != "text":
            raise ValueError(f"response_format type {v.get('type')!r} is not implemented (only 'text')")
        return v

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, v):
        if v is not None and "enable_thinking" in v and not isinstance(v["enable_thinking"], bool):
            raise ValueError(f"enable_thinking must be true or false (got {v['enable_thinking']!r})")
        return v

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def enable_thinking(self) -> bool:
        return bool((self.chat_template_kwargs or {}).get("enable_thinking", True))


class CompletionBody(SamplingBody):
    prompt: str | list[str] | list[int] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)
    """OpenAI's default for text completions is 16; null: up to the context."""
    logprobs: int | None = Field(None, ge=0, le=1)
    """The chosen token's logprob (0 or 1; this server returns no alternatives)."""
    echo: bool = False
    suffix: str | None = None
    max_thinking_tokens: int | None = Field(None, ge=0)

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v):
        if v:
            raise ValueError("echo is not implemented by this server (send false)")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("suffix (insertion) is not implemented by this server")
        return v

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    """A request's bytes -> a validated body, or an APIError naming the field that is wrong."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        param = _param(err["loc"])
        got = "" if err["type"] == "missing" else f" (got {_short(err.get('input'))})"
        raise APIError(f"{param}: {err['msg']}{got}", param=param, code="invalid_value") from None


def _param(loc: tuple) -> str:
    """A pydantic error location as the field path OpenAI names: messages[0].content."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "list[int]", "list[TextPart]", "NamedToolChoice", "function-after"):
            continue  # a member of a union, not a field
        elif not str(part).startswith(("literal[", "function-")):
            out += ("." if out else "") + str(part)
    return out


def _short(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
