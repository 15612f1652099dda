"""`chimera serve` end to end: the real server (uvicorn on a free local port) and the official `openai` client.

The served checkpoint is a tiny model trained in the fixture (a few seconds) until greedy decoding
reproduces a handful of answers exactly: one with a long thinking segment, one with a tool call,
one with a malformed tool call. So what the tests assert about reasoning, budgets and tool calls
is what the server made of the model's real output, not of text the test injected. Prompts the
model was not trained on give noise (random bytes, special tokens), which the stream, seed and
batching tests use as such.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from chimera.inference import Engine, Request, Sampler  # noqa: E402
from chimera.models import HybridLM, get_config  # noqa: E402
from chimera.serve.app import create_app  # noqa: E402
from chimera.serve.chat import render  # noqa: E402
from chimera.serve.config import ServeConfig  # noqa: E402
from chimera.serve.parsing import Detokenizer, OutputParser, StopMatcher, parse_tool_calls  # noqa: E402
from chimera.serve.protocol import ChatCompletionBody  # noqa: E402
from chimera.tokenizer import ByteTokenizer  # noqa: E402

MODEL = "tiny-served"
CONTEXT = 512
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
THOUGHT = "".join(f"step {i}: think it over\n" for i in range(1, 5))
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
BROKEN = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'


def chat(content, **kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, **kw}


# what the model is trained to answer (the request as sent, the generated text up to <eos>)
TRAINED = [
    (chat("think hard"), THOUGHT + "</think>42<eos>"),
    (chat("think hard", chat_template_kwargs={"enable_thinking": False}), "42<eos>"),
    (chat("weather in Paris?", tools=[WEATHER]), "</think>" + CALL + "<eos>"),
    (chat("broken call", tools=[WEATHER]), "</think>" + BROKEN + "<eos>"),
    # a named tool_choice opens the call in the prompt; the model writes the arguments
    (chat("weather in Paris?", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
     '{"city": "Paris"}}</tool_call><eos>'),
]


EXTRA = ("chat_template_kwargs", "max_thinking_tokens", "ignore_eos", "top_k")


def create(client, body: dict, **kw):
    """client.chat.completions.create (or completions, for a body with a prompt) with the server's own fields
    (not in the openai signature) sent in extra_body."""
    body = {**body, **kw}
    extra = {k: body.pop(k) for k in EXTRA if k in body}
    api = client.completions if "prompt" in body else client.chat.completions
    return api.create(**body, extra_body=extra or None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: the model is tiny, and where the cores are shared, OpenMP threads that wait on
    each other made training here 15x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("serve") / "model")


def train_checkpoint(path):
    """A tiny model that greedy-decodes the TRAINED answers, saved as an HF checkpoint at ``path``."""
    torch.manual_seed(0)
    tok = ByteTokenizer()
    seqs, starts = [], []
    for body, answer in TRAINED:
        prompt = tok.encode(render(ChatCompletionBody.model_validate(body), tok).text)
        seqs.append(prompt + tok.encode(answer))
        starts.append(len(prompt))
    ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
    mask = torch.zeros(ids.shape)
    for i, (s, p) in enumerate(zip(seqs, starts)):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, p:len(s)] = 1
    model = HybridLM(get_config("tiny"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        logits = model(ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (loss * mask[:, 1:]).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 1e-3:
            break
    assert loss.item() < 0.01, f"the tiny model did not learn its answers (loss {loss.item():.3f})"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def served(checkpoint):
    """The app on a free port in a thread: (openai client, the app's Server, base url)."""
    model = HybridLM.from_pretrained(checkpoint)
    app = create_app(model, ByteTokenizer(), ServeConfig(str(checkpoint), context=CONTEXT, max_batch=8, max_n=4,
                                                         served_model_name=MODEL))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
    # the first decode step loads the C++ decode-attention kernel (a rebuild where its build folder was
    # used from another checkout): pay that here, not inside a test's timeouts
    client.with_options(timeout=600).chat.completions.create(**chat("warm up", max_tokens=2))
    yield client, app.state.server, url
    server.should_exit = True
    thread.join(10)


def stream_text(stream) -> tuple[str, str, list, str, object]:
    """A chat stream reassembled: (reasoning, content, tool calls, finish reason, usage)."""
    reasoning, content, calls, finish, usage = "", "", [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
            content += c.delta.content or ""
            calls += c.delta.tool_calls or []
            finish = c.finish_reason or finish
    return reasoning, content, calls, finish, usage


# ---- the parser, piece by piece -----------------------------------------------------------------
def parse_in_pieces(text: str, cut: int, thinking=True, tools=True):
    p = OutputParser(thinking, tools)
    parts = [p.feed(text[i:i + cut]) for i in range(0, len(text), cut)] + [p.finish()]
    return ("".join(d.reasoning for d in parts), "".join(d.content for d in parts),
            [c for d in parts for c in d.tool_calls])


@pytest.mark.parametrize("cut", [1, 3, 7, 1000])
def test_parser_splits_reasoning_content_and_tool_calls_however_the_text_arrives(cut):
    r, c, calls = parse_in_pieces("plan\n</think>Calling." + CALL + "\n" + CALL.replace("Paris", "Oslo"), cut)
    assert (r, c) == ("plan\n", "Calling.")
    assert [json.loads(x["function"]["arguments"]) for x in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert {x["function"]["name"] for x in calls} == {"get_weather"} and calls[0]["id"] != calls[1]["id"]
    assert parse_in_pieces("no tags <tool_call here", cut, thinking=False) == ("", "no tags <tool_call here", [])
    assert parse_in_pieces("unclosed thought", cut) == ("unclosed thought", "", [])
    assert parse_in_pieces("</think>" + CALL, cut, tools=False) == ("", CALL, [])  # not offered: text


@pytest.mark.parametrize("bad", [
    BROKEN, '<tool_call>{"arguments": {}}</tool_call>', '<tool_call>["get_weather"]</tool_call>',
    '<tool_call>{"name": "f", "arguments": [1]}</tool_call>', '<tool_call>{"name": "f", "arguments": "{x"}</tool_call>',
    '<tool_call>{"name": "f", "arguments": {}}', CALL + " and some words after", '<tool_call></tool_call>'])
def test_malformed_tool_calls_come_back_as_text(bad):
    assert parse_tool_calls(bad) is None
    assert parse_in_pieces(bad, 2, thinking=False) == ("", bad, [])


def test_tool_call_arguments_written_as_a_json_string_are_accepted():
    calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a": 1}'}


def test_stop_matcher_and_detokenizer_hold_back_partial_matches():
    m = StopMatcher(["STOP", "##"])
    assert [m.push(x) for x in ["ab", "cS", "TO", "xy#", "#z"]] == ["ab", "c", "", "STOxy", ""]
    assert m.stopped and m.flush() == ""
    tok = ByteTokenizer()
    d = Detokenizer(tok)
    ids = tok.encode("é€<eos>x")  # 2- and 3-byte characters arrive one byte per token
    assert "".join(d.push([t]) for t in ids) + d.flush() == "é€<eos>x"


def test_chat_rendering_of_tools_tool_turns_and_tool_choice():
    tok = ByteTokenizer()
    turns = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "weather?"},
             {"role": "assistant", "content": None, "reasoning_content": "look it up",
              "tool_calls": [{"id": "c1", "type": "function",
                              "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
             {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]

    def rendered(**kw):
        return render(ChatCompletionBody.model_validate({"model": MODEL, "messages": turns, **kw}), tok)

    p = rendered(tools=[WEATHER])
    assert p.text.startswith("<bos><|system|>Be brief.\n\n# Tools") and json.dumps(WEATHER) in p.text
    assert ('<|assistant|><think>look it up</think><tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
            '</tool_call><eos><|tool|><tool_response>sunny</tool_response><eos><|assistant|><think>') in p.text
    assert p.thinking and p.tools and p.answer_prefix == ""
    none = rendered(tools=[WEATHER], tool_choice="none")
    assert "# Tools" not in none.text and not none.tools
    required = rendered(tools=[WEATHER], tool_choice="required")
    assert required.text.endswith("<|assistant|><think></think><tool_call>") and not required.thinking
    off = rendered(chat_template_kwargs={"enable_thinking": False})
    assert off.text.endswith("<|assistant|><think></think>") and not off.thinking
    assert "look it up" not in off.text  # earlier reasoning is dropped with thinking off, as the template does


# ---- the server -----------------------------------------------------------------------------------
def test_chat_completion_returns_reasoning_apart_from_content_and_counts_usage(served):
    client, _, _ = served
    r = client.chat.completions.create(**chat("think hard"))
    msg = r.choices[0].message
    assert (msg.reasoning_content, msg.content, r.choices[0].finish_reason) == (THOUGHT, "42", "stop")
    tok = ByteTokenizer()
    prompt = render(ChatCompletionBody.model_validate(chat("think hard")), tok).text
    assert r.usage.prompt_tokens == len(tok.encode(prompt))
    assert r.usage.completion_tokens == len(THOUGHT) + 1 + 2 + 1  # thinking bytes, </think>, "42", <eos>
    assert r.usage.completion_tokens_details.reasoning_tokens == len(THOUGHT)
    assert client.models.list().data[0].id == MODEL


def test_thinking_off_answers_without_reasoning(served):
    client, _, _ = served
    r = create(client, chat("think hard", chat_template_kwargs={"enable_thinking": False}))
    assert (r.choices[0].message.content, r.choices[0].message.reasoning_content) == ("42", None)
    assert r.usage.completion_tokens == 3


def test_thinking_budget_closes_the_segment_within_budget_plus_grace(served):
    client, _, _ = served
    budget = 10  # grace ceil(10%) = 1; the unconstrained answer thinks len(THOUGHT) = 88 tokens
    r = create(client, chat("think hard", max_thinking_tokens=budget), logprobs=True, max_tokens=60)
    tokens = [e.token for e in r.choices[0].logprobs.content]
    assert "</think>" in tokens
    thinking = tokens.index("</think>")
    assert thinking <= budget + 1
    assert r.usage.completion_tokens_details.reasoning_tokens == thinking
    assert r.choices[0].message.reasoning_content == THOUGHT[:thinking]
    assert len(tokens) == r.usage.completion_tokens


def test_tool_call_in_the_models_output_comes_back_as_tool_calls(served):
    client, _, _ = served
    body = chat("weather in Paris?", tools=[WEATHER])
    r = create(client, body)
    (call,) = r.choices[0].message.tool_calls
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == (
        "function", "get_weather", {"city": "Paris"})
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    _, content, calls, finish, _ = stream_text(create(client, body, stream=True))
    assert (content, finish, calls[0].function.name, calls[0].function.arguments) == (
        "", "tool_calls", "get_weather", call.function.arguments)
    broken = client.chat.completions.create(**chat("broken call", tools=[WEATHER]))
    assert broken.choices[0].message.content == BROKEN and broken.choices[0].message.tool_calls is None
    assert broken.choices[0].finish_reason == "stop"
    named = create(client, TRAINED[4][0])
    (call,) = named.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert named.choices[0].message.reasoning_content is None  # thinking is off for a forced call


def test_stream_reassembled_equals_the_non_streamed_greedy_answer(served):
    client, _, _ = served
    for body in (chat("think hard"), chat("an untrained prompt", max_tokens=50, stop=["\n\n", "zz"]),
                 chat("noise", max_tokens=40, chat_template_kwargs={"enable_thinking": False})):
        whole = create(client, body)
        stream = create(client, body, stream=True, stream_options={"include_usage": True})
        reasoning, content, _, finish, usage = stream_text(stream)
        msg = whole.choices[0].message
        assert (reasoning or None, content) == (msg.reasoning_content or None, msg.content)
        assert finish == whole.choices[0].finish_reason
        assert usage.completion_tokens == whole.usage.completion_tokens
        assert usage.prompt_tokens == whole.usage.prompt_tokens
    chunks = list(create(client, chat("think hard"), stream=True, logprobs=True))
    streamed = [e.token for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs.content]
    assert "".join(streamed) == THOUGHT + "</think>42<eos>"  # every token once, in order


def test_completions_endpoint_with_stop_strings_and_logprobs(served):
    client, _, _ = served
    tok = ByteTokenizer()
    prompt = render(ChatCompletionBody.model_validate(chat("think hard")), tok).text
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=120, temperature=0)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (THOUGHT + "</think>42", "stop")
    cut = client.completions.create(model=MODEL, prompt=prompt, max_tokens=120, temperature=0, stop=["step 3"],
                                    logprobs=1)
    assert cut.choices[0].text == THOUGHT[:THOUGHT.index("step 3")] and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens == len(THOUGHT[:THOUGHT.index("step 3")]) + len("step 3")
    assert len(cut.choices[0].logprobs.token_logprobs) == cut.usage.completion_tokens
    assert all(lp == 0.0 for lp in cut.choices[0].logprobs.token_logprobs)  # greedy: one-hot
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=120, temperature=0, stream=True,
                                            stop=["step 3"]))
    assert "".join(c.choices[0].text for c in chunks) == cut.choices[0].text
    both = client.completions.create(model=MODEL, prompt=[prompt, "zz"], n=2, max_tokens=120, temperature=0)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert [c.text for c in both.choices[:2]] == [THOUGHT + "</think>42"] * 2  # prompt-major, as OpenAI orders them
    assert both.usage.prompt_tokens == len(tok.encode(prompt)) + len(tok.encode("zz"))


def test_n_choices_with_a_seed_repeat_exactly(served):
    client, _, _ = served
    # the trained model is sure of "</think>42<eos>"; past the <eos> (ignore_eos) the samples part ways
    body = chat("tell me a story", temperature=1.0, top_p=0.95, max_tokens=24, n=3, seed=1234, ignore_eos=True)
    first = create(client, body)
    again = create(client, body)
    texts = [c.message.reasoning_content + c.message.content for c in first.choices]
    assert len(texts) == 3 and len(set(texts)) > 1  # each choice draws at its own uniforms
    assert [c.message.reasoning_content + c.message.content for c in again.choices] == texts
    other = create(client, body, seed=99)
    assert [c.message.reasoning_content + c.message.content for c in other.choices] != texts


def test_concurrent_requests_share_decode_steps_and_get_their_solo_answers(served):
    client, server, _ = served
    bodies = [chat(f"question {i}", max_tokens=30, chat_template_kwargs={"enable_thinking": False})
              for i in range(4)]
    solo = [create(client, b).choices[0].message.content for b in bodies]
    before = server.loop.stats.max_busy
    server.loop.stats.max_busy = 0
    out = [None] * 4

    def ask(i):
        out[i] = create(client, bodies[i]).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == solo
    assert server.loop.stats.max_busy >= 2, "concurrent requests never decoded in the same step"
    server.loop.stats.max_busy = max(before, server.loop.stats.max_busy)


BAD_REQUESTS = [
    ("chat", {"model": "gpt-4o"}, "model", "model_not_found"),
    ("chat", {"max_tokens": -3}, "max_tokens", "invalid_value"),
    ("chat", {"max_completion_tokens": 0}, "max_completion_tokens", "invalid_value"),
    ("chat", {"n": 5}, "n", None),
    ("chat", {"temperature": 3}, "temperature", "invalid_value"),
    ("chat", {"top_p": 0}, "top_p", "invalid_value"),
    ("chat", {"messages": [{"role": "user", "content": "x" * 600}]}, "messages", "context_length_exceeded"),
    ("chat", {"max_tokens": CONTEXT}, "max_tokens", "context_length_exceeded"),
    ("chat", {"messages": []}, "messages", "invalid_value"),
    ("chat", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "invalid_value"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content", "invalid_value"),
    ("chat", {"max_thinking_tokens": -1}, "max_thinking_tokens", "invalid_value"),
    ("chat", {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name", None),
    ("chat", {"presence_penalty": 0.5}, "presence_penalty", "invalid_value"),
    ("chat", {"stop": [""]}, "stop", "invalid_value"),
    ("completions", {"prompt": [5, 9999]}, "prompt", None),
    ("completions", {"prompt": "x", "max_tokens": -1}, "max_tokens", "invalid_value"),
    ("completions", {"prompt": "x" * 600}, "prompt", "context_length_exceeded"),
]


def test_every_bad_request_is_answered_with_an_openai_error_naming_the_field(served):
    client, server, url = served
    for endpoint, change, param, code in BAD_REQUESTS:
        body = {**(chat("hi") if endpoint == "chat" else {"model": MODEL}), **change}
        with pytest.raises(openai.BadRequestError) as e:
            create(client, body)
        err = e.value.body
        assert e.value.status_code == 400 and err["type"] == "invalid_request_error", (change, err)
        assert err["param"] == param and (code is None or err["code"] == code), (change, err)
        assert err["message"]
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        r = httpx.post(url + "/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", raw
    r = httpx.get(url + "/nowhere")
    assert r.status_code == 404 and "error" in r.json()
    assert server.loop.alive
    ok = create(client, chat("think hard", chat_template_kwargs={"enable_thinking": False}))
    assert ok.choices[0].message.content == "42"


FUZZ = [{"messages": "hi"}, {"messages": [{"role": "user"}], "n": "three"}, {"messages": [{"content": "hi"}]},
        {"stop": 5}, {"stop": [1, 2]}, {"seed": "x"}, {"seed": 1.5}, {"max_tokens": 10**12}, {"max_tokens": "many"},
        {"temperature": "hot"}, {"temperature": float("nan")}, {"top_p": float("inf")}, {"n": 10**30},
        {"tools": "get_weather"}, {"tools": [{"type": "function", "function": {"name": ""}}]}, {"tool_choice": 5},
        {"chat_template_kwargs": []}, {"chat_template_kwargs": {"enable_thinking": "maybe"}},
        {"logprobs": [True]}, {"top_logprobs": 3}, {"stop_token_ids": [10**20]}, {"stream_options": 1},
        {"response_format": {"type": "json"}},
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
        {"model": None}, {"model": ["tiny"]}]


def test_fuzzed_bodies_get_a_400_and_extreme_values_are_served(served):
    _, server, url = served
    for change in FUZZ:
        r = httpx.post(url + "/chat/completions", content=json.dumps({**chat("hi", max_tokens=8), **change}),
                       headers={"content-type": "application/json"}, timeout=120)
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, (change, r.text)
    errors = server.loop.stats.errors
    for change in ({"top_k": 10**20, "temperature": 1.0}, {"seed": -(10**30)}, {"seed": 10**30},
                   {"max_thinking_tokens": 10**15}, {"stop": ["x" * 2000]}):
        r = httpx.post(url + "/chat/completions", json={**chat("hi"), "max_tokens": 8, **change}, timeout=120)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, (change, r.text)
    assert server.loop.stats.errors == errors and server.loop.alive


def test_a_failing_engine_step_fails_its_requests_with_a_500_and_the_server_goes_on(served):
    client, server, _ = served
    engine = server.loop.engine

    def broken_step():
        raise RuntimeError("injected fault")

    engine.step = broken_step  # the engine thread rebuilds its engine after a failed step
    with pytest.raises(openai.InternalServerError) as e:
        create(client, chat("think hard"))
    assert e.value.body["type"] == "server_error" and "injected fault" in e.value.body["message"]
    assert server.loop.engine is not engine and server.loop.alive
    assert create(client, chat("think hard")).choices[0].message.content == "42"


def test_a_client_that_disconnects_mid_stream_frees_its_row(served):
    client, server, _ = served
    stats = server.loop.stats
    cancelled = stats.cancelled
    stream = create(client, chat("ramble on", max_tokens=CONTEXT - 20, ignore_eos=True), stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.time() + 60
    while not (stats.cancelled > cancelled and server.loop.engine.idle):
        assert time.time() < deadline, "the disconnected request kept its row"
        time.sleep(0.05)
    ok = client.chat.completions.create(**chat("think hard"))
    assert ok.choices[0].message.content == "42"


def test_a_client_that_gives_up_on_a_whole_answer_frees_its_row(served):
    client, server, url = served
    stats = server.loop.stats
    cancelled, server.disconnect_poll_s = stats.cancelled, 0.02
    body = chat("ramble on", max_tokens=CONTEXT - 20, ignore_eos=True, n=4)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/chat/completions", json=body, timeout=0.1)
    deadline = time.time() + 60
    while not (stats.cancelled >= cancelled + 4 and server.loop.engine.idle):
        assert time.time() < deadline, "the abandoned request kept its rows"
        time.sleep(0.02)
    server.disconnect_poll_s = 0.25
    assert create(client, chat("think hard")).choices[0].message.content == "42"


def test_engine_grows_its_rows_back_when_requests_arrive_after_packing():
    torch.manual_seed(0)
    model = HybridLM(get_config("tiny")).eval()
    sampler = Sampler(1.0)

    def req(i, n):
        return Request([1, 20 + i, 30], n, sampler, seed=5, key=str(i))

    engine = Engine(model, 4, 64)
    first = [engine.submit(req(0, 40)), engine.submit(req(1, 2))]
    for _ in range(4):
        engine.step()
    assert len(engine.rows) == 2  # packed once one row was left
    late = [engine.submit(req(i, 10)) for i in range(2, 5)]
    engine.step()
    assert len(engine.rows) == 4 and engine.busy == 4
    for _ in engine.run():
        pass
    alone = Engine(model, 1, 64)
    for r in [*first, *late]:
        solo = alone.submit(req(int(r.key), r.max_new_tokens))
        for _ in alone.run():
            pass
        assert solo.tokens == r.tokens  # a request's tokens do not depend on the rows around it


def test_chimera_serve_command_serves_the_checkpoint(checkpoint):
    port = free_port()
    env = {**os.environ, "CHIMERA_DECODE_KERNEL": "0", "OMP_NUM_THREADS": "1"}  # SDPA: no kernel load to wait on
    proc = subprocess.Popen([sys.executable, "-m", "chimera", "serve", str(checkpoint), "--port", str(port),
                             "--context", str(CONTEXT), "--max-batch", "4", "--served-model-name", MODEL],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                assert client.models.list().data[0].id == MODEL
                break
            except openai.APIConnectionError:
                assert time.time() < deadline, "chimera serve did not start listening"
                time.sleep(0.2)
        r = client.chat.completions.create(**chat("think hard"))
        assert (r.choices[0].message.reasoning_content, r.choices[0].message.content) == (THOUGHT, "42")
    finally:
        proc.terminate()
        proc.wait(10)
