"""The OpenAI-compatible ASGI app: /v1/models, /v1/chat/completions, /v1/completions.

A handler validates the body (``protocol``), renders the prompt (``chat``), makes one ``Request``
per choice (its sampler, seed and key, stop tokens, thinking budget) and submits them to the
engine thread (``engine_loop``). Tokens come back per engine step; each choice runs them through
its ``Detokenizer``, ``StopMatcher`` and ``OutputParser`` (``parsing``), so a stream's chunks and a
whole answer are the same text. A client that goes away, and a choice that reached a stop string,
are cancelled in the engine: their rows decode something else at the next step.

Choices draw at uniforms from (seed, choice index): a request with a ``seed`` repeats exactly,
whatever else the engine is decoding. Without one the server draws a seed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from chimera.inference import Request as EngineRequest
from chimera.inference import Sampler, ThinkingBudget
from chimera.serve.chat import ChatPrompt, render
from chimera.serve.config import ServeConfig
from chimera.serve.engine_loop import EngineLoop, Output
from chimera.serve.parsing import Delta, Detokenizer, OutputParser, StopMatcher
from chimera.serve.protocol import APIError, ChatCompletionBody, CompletionBody, SamplingBody, parse_body

DEFAULT_CONTEXT = 4096
DISCONNECT_POLL_S = 0.25
MIN_LOGPROB = -9999.0


class Choice:
    """One choice's answer as its tokens arrive (see the module doc)."""

    def __init__(self, tokenizer, stops: list[str], stop_ids: frozenset[int], thinking: bool, tools: bool,
                 answer_prefix: str = "", think_end: int | None = None, parse: bool = True):
        self.tok = tokenizer
        self.detok = Detokenizer(tokenizer)
        self.matcher = StopMatcher(stops)
        self.parser = OutputParser(thinking, tools) if parse else OutputParser(False, False)
        self.parser.feed(answer_prefix)  # a forced tool-call opening: parsed as the answer's start
        self.stop_ids = stop_ids
        self.think_end = think_end
        self.thinking = thinking
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.reasoning_tokens = 0
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.tool_calls: list[dict] = []

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, out: Output) -> tuple[Delta, int]:
        """Take one step's output -> (the answer it completes, how many of its tokens count). After a stop
        string the rest is dropped and ``finish_reason`` is "stop"."""
        delta, used = Delta(), 0
        if out.error is not None:
            self.error, self.finish_reason = out.error, "error"
            return delta, 0
        for t, lp in zip(out.tokens, out.logprobs):
            self.tokens.append(t)
            self.logprobs.append(lp)
            used += 1
            if self.thinking and self.think_end is not None:
                if t == self.think_end:
                    self.thinking = False
                else:
                    self.reasoning_tokens += 1
            text = "" if t in self.stop_ids else self.detok.push([t])
            _merge(delta, self.parser.feed(self.matcher.push(text)))
            if self.matcher.stopped:
                self.finish_reason = "stop"
                break
        if self.finish_reason is None and out.finish_reason is not None:
            self.finish_reason = "stop" if out.finish_reason == "stop" else "length"
            _merge(delta, self.parser.feed(self.matcher.push(self.detok.flush()) + self.matcher.flush()))
        if self.finish_reason is not None:
            _merge(delta, self.parser.finish())
            if delta.tool_calls:
                self.finish_reason = "tool_calls"
        self.reasoning.append(delta.reasoning)
        self.content.append(delta.content)
        self.tool_calls += delta.tool_calls
        return delta, used

    def logprob_values(self, start: int, count: int) -> list[float]:
        """Logprobs of tokens [start, start + count); a token forced by the thinking budget that its
        distribution gave no mass has -inf, sent as -9999.0 (JSON has no infinity)."""
        return [max(lp, MIN_LOGPROB) for lp in self.logprobs[start:start + count]]

    def logprob_entries(self, start: int, count: int) -> list[dict]:
        """Chat-format logprobs of tokens [start, start + count)."""
        out = []
        for t, lp in zip(self.tokens[start:start + count], self.logprob_values(start, count)):
            s = self.tok.decode([t])
            out.append({"token": s, "logprob": lp, "bytes": list(s.encode("utf-8")), "top_logprobs": []})
        return out


def _merge(into: Delta, d: Delta) -> None:
    into.reasoning += d.reasoning
    into.content += d.content
    into.tool_calls += d.tool_calls


class Server:
    """What the handlers share: the model's name and tokenizer, the limits and the engine thread."""

    def __init__(self, model, tokenizer, config: ServeConfig):
        self.model, self.tok, self.config = model, tokenizer, config
        self.name = config.served_model_name or config.checkpoint
        extra = getattr(model.config, "extra", {}) or {}
        self.context = config.context or int(extra.get("max_position_embeddings", DEFAULT_CONTEXT))
        self.loop = EngineLoop(model, config.max_batch, self.context, config.compile)
        self.created = int(time.time())
        self.disconnect_poll_s = DISCONNECT_POLL_S
        """How often a non-streamed request checks that its client is still there."""

    def special(self, token: str) -> int | None:
        try:
            return self.tok.token_id(token)
        except KeyError:
            return None

    # ---- building requests ----------------------------------------------------------------------
    def check(self, body: SamplingBody) -> None:
        if body.model != self.name:
            raise APIError(f"the model {body.model!r} does not exist; this server serves {self.name!r}",
                           param="model", code="model_not_found")
        if body.n > self.config.max_n:
            raise APIError(f"n={body.n} is over this server's limit of {self.config.max_n}", param="n")
        vocab = self.model.config.vocab_size
        for t in body.stop_token_ids or []:
            if not 0 <= t < vocab:
                raise APIError(f"stop_token_ids: {t} is outside the vocabulary [0, {vocab})", param="stop_token_ids")

    def requests(self, body: SamplingBody, prompt: list[int], prompt_param: str, limit_param: str,
                 first_key: int, thinking_budget: int | None) -> list[EngineRequest]:
        """The engine requests of one prompt's ``n`` choices (keys first_key .. first_key + n - 1)."""
        if len(prompt) + 1 > self.context:
            raise APIError(f"the prompt is {len(prompt)} tokens, which leaves no room in this model's context of "
                           f"{self.context} tokens", param=prompt_param, code="context_length_exceeded")
        limit = body.token_limit
        if limit is None:
            limit = self.context - len(prompt)
        elif len(prompt) + limit > self.context:
            raise APIError(f"{limit_param}={limit} plus the prompt's {len(prompt)} tokens exceeds this model's "
                           f"context of {self.context} tokens; ask for at most {self.context - len(prompt)}",
                           param=limit_param, code="context_length_exceeded")
        vocab = self.model.config.vocab_size
        sampler = Sampler(body.temperature, min(max(body.top_k, 0), vocab), body.top_p)
        budget = None
        if thinking_budget is not None:
            start, end = self.special("<think>"), self.special("</think>")
            if start is None or end is None:
                raise APIError("max_thinking_tokens needs <think> and </think> tokens, which this checkpoint's "
                               "tokenizer lacks", param="max_thinking_tokens")
            budget = ThinkingBudget(thinking_budget, start, end, self.tok.newline_ids)
            if not budget.track(prompt).thinking:
                budget = None  # the prompt opens no thinking segment: nothing to limit (and nothing to mask)
        stops = frozenset([*([] if body.ignore_eos else [self.tok.eos_id]), *(body.stop_token_ids or [])])
        seed = body.seed if body.seed is not None else secrets.randbits(62)
        return [EngineRequest(prompt, limit, sampler, stops, seed, f"choice {first_key + j}", budget)
                for j in range(body.n)]

    # ---- running them ---------------------------------------------------------------------------
    async def run(self, requests: list[EngineRequest], choices: list[Choice],
                  http: Request | None) -> AsyncIterator[tuple[int, Delta, int]]:
        """Submit ``requests`` and yield (choice, delta, tokens used) as steps arrive, until all are done.
        A stop string cancels its request; leaving early (a disconnect) cancels the rest."""
        q = self.loop.submit(requests)
        clock = asyncio.get_running_loop().time
        next_check = clock() + self.disconnect_poll_s
        try:
            while not all(c.done for c in choices):
                try:
                    i, out = await asyncio.wait_for(q.get(), self.disconnect_poll_s)
                except TimeoutError:
                    i, out = -1, None
                if http is not None and clock() >= next_check:
                    next_check = clock() + self.disconnect_poll_s
                    if await http.is_disconnected():
                        return
                if out is None or choices[i].done:
                    continue
                delta, used = choices[i].add(out)
                if choices[i].done and not out.finish_reason:
                    self.loop.cancel([requests[i]])  # a stop string: the engine need not go on
                yield i, delta, used
        finally:
            left = [r for r, c in zip(requests, choices) if not c.done]
            if left:
                self.loop.cancel(left)


def _usage(prompt_tokens: int, choices: list[Choice], reasoning: bool) -> dict[str, Any]:
    completion = sum(len(c.tokens) for c in choices)
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                             "total_tokens": prompt_tokens + completion}
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": sum(c.reasoning_tokens for c in choices)}
    return usage


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def _engine_error(choices: list[Choice]) -> APIError | None:
    for c in choices:
        if c.error is not None:
            return APIError(c.error, code="engine_error", status=500, type="server_error")
    return None


def create_app(model, tokenizer, config: ServeConfig) -> FastAPI:
    """The ASGI app serving ``model`` (its engine thread starts and stops with the app)."""
    server = Server(model, tokenizer, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.loop.start()
        yield
        server.loop.stop()

    app = FastAPI(title="chimera serve", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        err = APIError(str(e.detail), status=e.status_code, code=str(e.status_code))
        return JSONResponse(err.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        err = APIError(f"internal error: {type(e).__name__}: {e}", status=500, type="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/health")
    async def health() -> dict:
        if not server.loop.alive:
            raise APIError("the engine thread is not running", status=503, type="server_error")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": server.name, "object": "model", "created": server.created,
                                            "owned_by": "chimera", "max_model_len": server.context}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(http: Request):
        body: ChatCompletionBody = parse_body(await http.body(), ChatCompletionBody)
        server.check(body)
        prompt: ChatPrompt = render(body, server.tok)
        ids = server.tok.encode(prompt.text)
        budget = body.max_thinking_tokens if prompt.thinking else None
        limit_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        requests = server.requests(body, ids, "messages", limit_param, 0, budget)
        stops = frozenset(requests[0].stop_tokens)
        choices = [Choice(server.tok, body.stop_strings, stops, prompt.thinking, prompt.tools, prompt.answer_prefix,
                          server.special("</think>")) for _ in requests]
        rid, created = "chatcmpl-" + secrets.token_hex(12), int(time.time())
        head = {"id": rid, "created": created, "model": server.name}

        def message(c: Choice) -> dict:
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(c.content) or None,
                                   "reasoning_content": "".join(c.reasoning) if prompt.thinking else None}
            if c.tool_calls:
                msg["tool_calls"] = c.tool_calls
            elif msg["content"] is None:
                msg["content"] = ""
            return msg

        if not body.stream:
            async for _ in server.run(requests, choices, http):
                pass
            if not all(c.done for c in choices):
                return JSONResponse({}, status_code=499)  # the client went away
            if (err := _engine_error(choices)) is not None:
                raise err
            out = [{"index": i, "message": message(c), "finish_reason": c.finish_reason,
                    "logprobs": {"content": c.logprob_entries(0, len(c.tokens))} if body.logprobs else None}
                   for i, c in enumerate(choices)]
            return {**head, "object": "chat.completion", "choices": out, "system_fingerprint": None,
                    "usage": _usage(len(ids), choices, prompt.thinking)}

        def chunk(i: int, delta: dict, finish: str | None = None, logprobs=None) -> str:
            return _sse({**head, "object": "chat.completion.chunk",
                         "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

        async def stream() -> AsyncIterator[str]:
            for i in range(len(choices)):
                yield chunk(i, {"role": "assistant", "content": ""})
            async for i, d, used in server.run(requests, choices, None):
                c = choices[i]
                if c.error is not None:
                    yield _sse(APIError(c.error, code="engine_error", status=500, type="server_error").body())
                    continue
                delta: dict[str, Any] = {}
                if d.reasoning:
                    delta["reasoning_content"] = d.reasoning
                if d.content:
                    delta["content"] = d.content
                if d.tool_calls:
                    delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(d.tool_calls)]
                lps = {"content": c.logprob_entries(len(c.tokens) - used, used)} if body.logprobs and used else None
                if delta or lps:
                    yield chunk(i, delta, None, lps)
                if c.done:
                    yield chunk(i, {}, c.finish_reason)
            if body.stream_options is not None and body.stream_options.include_usage:
                yield _sse({**head, "object": "chat.completion.chunk", "choices": [],
                            "usage": _usage(len(ids), choices, prompt.thinking)})
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(http: Request):
        body: CompletionBody = parse_body(await http.body(), CompletionBody)
        server.check(body)
        prompts = _prompts(body.prompt, server.tok, model.config.vocab_size)
        requests, choices, prompt_tokens = [], [], 0
        think_end = server.special("</think>")
        for p, ids in enumerate(prompts):
            param = "prompt" if len(prompts) == 1 else f"prompt[{p}]"
            reqs = server.requests(body, ids, param, "max_tokens", p * body.n, body.max_thinking_tokens)
            requests += reqs
            choices += [Choice(server.tok, body.stop_strings, frozenset(r.stop_tokens), False, False,
                               think_end=think_end, parse=False) for r in reqs]
            prompt_tokens += len(ids)
        rid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": server.name}

        def logprobs(c: Choice, start: int, count: int) -> dict:
            toks = [server.tok.decode([t]) for t in c.tokens[start:start + count]]
            return {"tokens": toks, "token_logprobs": c.logprob_values(start, count), "top_logprobs": None,
                    "text_offset": None}

        if not body.stream:
            async for _ in server.run(requests, choices, http):
                pass
            if not all(c.done for c in choices):
                return JSONResponse({}, status_code=499)
            if (err := _engine_error(choices)) is not None:
                raise err
            out = [{"index": i, "text": "".join(c.content), "finish_reason": c.finish_reason,
                    "logprobs": logprobs(c, 0, len(c.tokens)) if body.logprobs is not None else None}
                   for i, c in enumerate(choices)]
            return {**head, "choices": out, "usage": _usage(prompt_tokens, choices, False)}

        async def stream() -> AsyncIterator[str]:
            async for i, d, used in server.run(requests, choices, None):
                c = choices[i]
                if c.error is not None:
                    yield _sse(APIError(c.error, code="engine_error", status=500, type="server_error").body())
                    continue
                lps = logprobs(c, len(c.tokens) - used, used) if body.logprobs is not None and used else None
                if d.content or lps or c.done:
                    yield _sse({**head, "choices": [{"index": i, "text": d.content, "logprobs": lps,
                                                     "finish_reason": c.finish_reason}]})
            if body.stream_options is not None and body.stream_options.include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(prompt_tokens, choices, False)})
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def _prompts(prompt: str | list[str] | list[int], tokenizer, vocab: int) -> list[list[int]]:
    """A completion request's prompt(s) as token ids."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if all(isinstance(p, int) for p in prompt):
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise APIError(f"prompt: token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt")
        return [list(prompt)]
    out = []
    for i, text in enumerate(prompt):
        ids = tokenizer.encode(text)
        if not ids:
            raise APIError("the prompt is empty" if len(prompt) == 1 else f"prompt[{i}] is empty",
                           param="prompt" if len(prompt) == 1 else f"prompt[{i}]")
        out.append(ids)
    return out


def serve(model, tokenizer, config: ServeConfig) -> None:
    """Serve ``model`` on ``config.host:config.port`` until interrupted (what `chimera serve` runs)."""
    import uvicorn

    uvicorn.run(create_app(model, tokenizer, config), host=config.host, port=config.port, log_level="info")
