"""Post-training environments: the protocol, each verifier on right and wrong answers, the tools on
hostile and malformed calls, the game on a scripted action sequence."""

import json
import time

import pytest

from chimera.posttrain.envs import is_held_out, list_ids, make
from chimera.posttrain.envs.calculator import CalculatorError, evaluate, format_value
from chimera.posttrain.envs.clrs_text import render
from chimera.posttrain.envs.schema import check_schema, validate


def call(name, **arguments):
    return f"</think><tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call><eos>"


def responses(result):
    (msg,) = result.messages
    assert msg.role == "tool"
    parts = msg.content.split("<tool_response>")[1:]
    return [json.loads(p.split("</tool_response>")[0]) for p in parts]


def test_unknown_id_lists_the_known_ones():
    with pytest.raises(ValueError, match="tools/calculator") as e:
        make("tools/calculater")
    assert "did you mean tools/calculator" in str(e.value)


@pytest.mark.parametrize("env_id", [i for i in list_ids() if not i.startswith("game/")])
def test_reset_is_seeded_and_the_split_is_held_out(env_id):
    env = make(env_id)
    a, b = env.reset(seed=3), make(env_id).reset(seed=3)
    assert a == b and a[-1].role == "user"
    held = env.reset(seed=3, held_out=True)
    assert is_held_out(held[-1].content)
    assert not is_held_out(a[-1].content)
    assert held != a


@pytest.mark.parametrize("task,right,wrong", [
    ("add", lambda p: str(sum(map(int, p.rstrip("=").split("+")))), "x"),
    ("sort", lambda p: " ".join(map(str, sorted(map(int, p.split()[1:])))), "1 0"),
    ("isort", lambda p: "".join(sorted(p.split()[1])), "9"),
])
def test_reasoning_verifier(task, right, wrong):
    env = make(f"reasoning/{task}")
    prompt = env.reset(seed=1)[-1].content
    r = env.step(f"some thought</think>{right(prompt)}<eos>")
    assert (r.reward, r.done, r.messages) == (1.0, True, [])
    env.reset(seed=1)
    assert env.step(f"</think>{wrong}<eos>").reward == 0.0


@pytest.mark.parametrize("env_id", list_ids())
def test_every_solver_earns_reward_one(env_id):
    if env_id.startswith("game/"):
        pytest.importorskip("minihack")
    env = make(env_id)
    for seed, held_out in ((0, False), (1, False), (2, True)):
        env.reset(seed=seed, held_out=held_out)
        for _ in range(env.max_turns):
            r = env.step(env.solve())
            if r.done:
                break
        assert r.done and r.reward == 1.0, (env_id, seed, r)
    if hasattr(env, "close"):
        env.close()


def test_calculator_arithmetic_is_exact():
    assert evaluate("(12345678 * 87654321) // 7 - 3 ** 4 % 5") == (12345678 * 87654321) // 7 - 3 ** 4 % 5
    assert format_value(evaluate("10 / 4")) == "2.5" and format_value(evaluate("-2 ** 10")) == "-1024"
    assert format_value(evaluate("2 ** -2")) == "0.25"
    assert evaluate("(" * 100 + "1" + ")" * 100) == 1  # parentheses add no nodes


@pytest.mark.parametrize("expr,why", [
    ("__import__('os').system('echo hi')", "not allowed"), ("9**9**9**9", "bits"), ("2**100000", "bits"),
    ("1/0", "division by zero"), ("1.5 * 2", "integer"), ("x + 1", "Name"), ("(" * 300 + "1" + ")" * 300, "characters"),
    ("-" * 100 + "1", "nested"), ("[1] * 10**9", "not allowed"), ("", "empty"),
    ("'a' * 10", "integer"), ("1 if 1 else 2", "not allowed"), ("(lambda: 1)()", "not allowed"),
    ("10**200 * 10**200", "bits"),
])
def test_calculator_refuses_hostile_expressions_quickly(expr, why):
    t = time.perf_counter()
    with pytest.raises(CalculatorError, match=why):
        evaluate(expr)
    assert time.perf_counter() - t < 0.5


def test_calculator_env_answers_calls_and_errors():
    env = make("tools/calculator")
    env.reset(seed=0)
    q = env._question
    r = env.step(call("calculator", expression=q.removeprefix("What is ").removesuffix("?")))
    assert not r.done and r.reward == 0.0
    (resp,) = responses(r)
    assert resp["result"] == env.answer
    bad = env.step("</think><tool_call>{not json</tool_call>"
                   + "<tool_call>" + json.dumps({"name": "shell", "arguments": {"cmd": "rm -rf /"}}) + "</tool_call>"
                   + "<tool_call>" + json.dumps({"name": "calculator", "arguments": {"expression": "9**9**9**9"}})
                   + "</tool_call><tool_call>[1, 2]</tool_call>")
    errs = responses(bad)
    assert [("error" in e) for e in errs] == [True] * 4
    assert "not valid JSON" in errs[0]["error"] and "unknown tool" in errs[1]["error"]
    assert "bits" in errs[2]["error"] and "object" in errs[3]["error"]
    answer = resp["result"]
    final = env.step(f"</think>{answer}<eos>")
    assert final.done and final.reward == 1.0 and final.info["tool_calls"] == 5 and final.info["tool_errors"] == 4


def test_calculator_env_scripted_tool_user_succeeds_and_wrong_answer_fails():
    env = make("tools/calculator")
    for seed in range(3):
        env.reset(seed=seed)
        r1 = env.step(env.solve())
        assert not r1.done and env.solve() == f"</think>{env.answer}<eos>"
        assert env.step(env.solve()).reward == 1.0
    env.reset(seed=0)
    assert env.step("</think>12<eos>").reward == 0.0


def test_lookup_needs_several_calls_and_rejects_unknown_keys():
    env = make("tools/lookup")
    env.reset(seed=2)
    assert len(env.keys) >= 2
    assert "no such key" in responses(env.step(call("lookup", key="nope")))[0]["error"]
    assert "string" in responses(env.step(call("lookup", key=["x"])))[0]["error"]
    values = [responses(env.step(call("lookup", key=k)))[0]["value"] for k in env.keys]
    assert env.step(f"</think>{sum(values)}<eos>").reward == 1.0


def test_tool_env_ends_at_the_turn_limit():
    env = make("tools/lookup")
    env.reset(seed=0)
    results = [env.step(call("lookup", key="nope")) for _ in range(env.max_turns)]
    assert [r.done for r in results] == [False] * (env.max_turns - 1) + [True]
    assert results[-1].reward == 0.0


def test_schema_validator():
    schema = {"type": "object", "required": ["a"], "additionalProperties": False,
              "properties": {"a": {"type": "integer", "minimum": 0},
                             "b": {"type": "array", "items": {"type": "string"}}}}
    assert validate({"a": 1, "b": ["x"]}, schema) == []
    assert validate({"a": -1}, schema) == ["$.a: -1 < minimum 0"]
    assert validate({"a": True}, schema) == ["$.a: expected integer, got bool"]
    assert validate({"b": [1], "c": 0}, schema) == ["$: missing required property 'a'", "$: unexpected property 'c'",
                                                     "$.b[0]: expected string, got int"]
    with pytest.raises(ValueError, match="pattern"):
        check_schema({"type": "string", "pattern": "x"})


def test_json_env_rewards_valid_and_correct_json_only():
    env = make("json/record")
    prompt = env.reset(seed=4)[-1].content
    want = env.problem
    assert want["name"] in prompt
    assert env.step("</think>" + json.dumps(want) + "<eos>").reward == 1.0
    env.reset(seed=4)
    r = env.step("</think>" + json.dumps({**want, "extra": 1}))
    assert r.reward == 0.0 and r.info == {"json_parsed": 1.0, "schema_valid": 0.0, "correct": 0.0}
    env.reset(seed=4)
    assert env.step("</think>{'name': 1}").info["json_parsed"] == 0.0
    env = make("json/sort")
    env.reset(seed=1)
    assert env.step("</think>" + json.dumps(env.problem)).reward == 1.0
    env.reset(seed=1)
    assert env.step("</think>" + json.dumps([*env.problem[::-1], 0])).info == \
        {"json_parsed": 1.0, "schema_valid": 1.0, "correct": 0.0}


def test_json_prompts_give_the_schema_first_and_the_content_last_next_to_the_answer():
    # With the schema (~90 characters) between the numbers and the answer, the tiny flagship model sorted
    # 22% of held-out json/sort problems after 150 demonstration steps; with the numbers last, 59%.
    for env_id in ("json/sort", "json/record"):
        env = make(env_id)
        prompt = env.reset(seed=1)[-1].content
        assert prompt.startswith(f"Answer with JSON matching the schema {json.dumps(env.schema)}. ")
    env = make("json/sort")
    prompt = env.reset(seed=1)[-1].content
    numbers = prompt.rsplit("Sort: ", 1)[1].split()
    assert sorted(map(int, numbers)) == env.problem and prompt.endswith(numbers[-1])


def test_clrs_answers_come_from_the_algorithms():
    import numpy as np

    def r(a, n, s):
        return render(a, n, np.random.default_rng(s))

    assert r("insertion_sort", 4, 4) == ("insertion_sort 51 97 8 60", "8 51 60 97")
    assert r("dijkstra", 4, 4) == ("dijkstra distances from 3; edges 0-2:5 2-3:5; nodes 0..3", "10 inf 5 0")
    assert r("bfs", 4, 4)[1] == "2 inf 1 0"
    assert r("matrix_chain_order", 4, 4) == ("matrix chain min cost dims 5 9 1 6", "75")  # (A1 A2) A3 = 45 + 30
    assert r("find_maximum_subarray_kadane", 6, 6) == ("max subarray sum -3 -2 -2 9 2 3", "14")
    env = make("clrs/lcs_length")
    prompt = env.reset(seed=0)[-1].content
    x, y = prompt.split()[3], prompt.split()[5]
    best = max((len(s) for s in _subseqs(x) if _is_subseq(s, y)), default=0)
    assert env.step(f"</think>{best}").reward == 1.0
    env.reset(seed=0)
    assert env.step(f"</think>{best + 1}").reward == 0.0


def _subseqs(x):
    from itertools import combinations
    return ["".join(c) for k in range(len(x) + 1) for c in combinations(x, k)]


def _is_subseq(s, y):
    it = iter(y)
    return all(ch in it for ch in s)


def test_game_scripted_solver_reaches_the_stairs_and_bad_actions_do_not():
    pytest.importorskip("minihack")
    env = make("game/Room-5x5")
    msgs = env.reset(seed=0)
    assert "@" in msgs[-1].content and ">" in msgs[-1].content
    for _ in range(env.max_turns):
        r = env.step(env.solve())
        if r.done:
            break
    assert r.done and r.reward == 1.0
    env.reset(seed=0)
    outs = [env.step("</think>jump") for _ in range(env.max_turns)]
    assert outs[0].info["invalid_actions"] == 1.0 and "unknown action" in outs[0].messages[0].content
    assert outs[-1].done and outs[-1].reward == 0.0
    a = env.reset(seed=7)
    assert a == env.reset(seed=7)
    env.reset(seed=7, held_out=True)
    from chimera.posttrain.envs.game import random_policy_rate

    assert random_policy_rate(env, 40) < 0.1  # 4 diagonal moves needed in 6 turns: a random mover rarely makes it
    env.close()
    env = make("game/Room-Random-5x5")
    maps = {env.reset(seed=s, held_out=True)[-1].content.split("\nHello")[0] for s in range(3)}
    assert all(is_held_out(m) for m in maps)
    assert not is_held_out(env.reset(seed=0)[-1].content.split("\nHello")[0])
    env.close()
