"""``tools/calculator`` and ``tools/lookup``: multi-turn tool use.

The model calls a tool by writing ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in its
answer; the environment replies with a tool turn holding one ``<tool_response>{...}</tool_response>``
per call (at most ``MAX_CALLS_PER_TURN``). An assistant turn without a tool call is the final
answer. Malformed or hostile calls (broken JSON, an unknown tool, an expression the calculator
refuses) get an error in the response, never an exception.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from chimera.posttrain.envs.base import Env, StepResult, final_answer, is_held_out
from chimera.posttrain.envs.calculator import CalculatorError, evaluate, format_value
from chimera.tokenizer import Message

CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
MAX_CALL_CHARS = 1024
MAX_CALLS_PER_TURN = 4


def parse_calls(text: str) -> list[dict[str, Any] | str]:
    """Each tool call in ``text``: a dict with ``name`` (str) and ``arguments`` (dict), or an error string."""
    out: list[dict[str, Any] | str] = []
    for body in CALL.findall(text.rsplit("</think>", 1)[-1]):
        if len(body) > MAX_CALL_CHARS:
            out.append(f"tool call of {len(body)} characters (at most {MAX_CALL_CHARS})")
            continue
        try:
            call = json.loads(body)
        except (json.JSONDecodeError, RecursionError):
            out.append("tool call is not valid JSON; expected {\"name\": ..., \"arguments\": {...}}")
            continue
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) \
                or not isinstance(call.get("arguments", {}), dict):
            out.append("tool call must be an object with a string \"name\" and an object \"arguments\"")
            continue
        out.append({"name": call["name"], "arguments": call.get("arguments", {})})
    return out


def tool_message(results: list[dict[str, Any]]) -> Message:
    return Message("tool", "".join(f"<tool_response>{json.dumps(r)}</tool_response>" for r in results))


class ToolEnv(Env):
    """Questions answered with tools; subclasses give ``sample``, ``tools`` and ``call``."""

    max_turns = 6
    tool_names: tuple[str, ...] = ()
    instructions = ""

    def __init__(self) -> None:
        self.answer: str | None = None
        self.turns = self.calls = self.errors = 0

    def sample(self, rng: random.Random) -> tuple[str, str]:
        raise NotImplementedError

    def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def reset(self, seed: int, held_out: bool = False) -> list[Message]:
        rng = random.Random(f"{self.id}/{seed}")
        for _ in range(10_000):
            self.setup(rng)
            question, answer = self.sample(rng)
            if is_held_out(question) == held_out:
                break
        self.answer, self.turns, self.calls, self.errors = answer, 0, 0, 0
        return [Message("system", self.instructions), Message("user", question)]

    def setup(self, rng: random.Random) -> None:
        """Per-episode state drawn before the question (the lookup's store)."""

    def run_call(self, call: dict[str, Any] | str) -> dict[str, Any]:
        """One call's response; errors are responses too."""
        if isinstance(call, str):
            return {"error": call}
        if call["name"] not in self.tool_names:
            return {"error": f"unknown tool {call['name'][:40]!r} (available: {', '.join(self.tool_names)})"}
        return self.call(call["name"], call["arguments"])

    def step(self, assistant_text: str) -> StepResult:
        if self.answer is None:
            raise RuntimeError(f"{self.id}: step() before reset()")
        self.turns += 1
        calls = parse_calls(assistant_text)
        info = {"tool_calls": 0.0, "tool_errors": 0.0, "turns": float(self.turns), "correct": 0.0}
        if calls and self.turns < self.max_turns:
            results = [self.run_call(c) for c in calls[:MAX_CALLS_PER_TURN]]
            self.calls += len(results)
            self.errors += sum("error" in r for r in results)
            info.update(tool_calls=float(self.calls), tool_errors=float(self.errors))
            return StepResult([tool_message(results)], 0.0, False, info)
        correct = not calls and final_answer(assistant_text) == self.answer
        info.update(tool_calls=float(self.calls), tool_errors=float(self.errors), correct=float(correct))
        self.answer = None
        return StepResult([], float(correct), True, info)


class CalculatorEnv(ToolEnv):
    """Chained multiplication and division of 4-8 digit numbers: beyond mental arithmetic, easy with the tool."""

    id = "tools/calculator"
    tool_names = ("calculator",)
    instructions = ('Tools: calculator. Call it as <tool_call>{"name": "calculator", "arguments": '
                    '{"expression": "..."}}</tool_call>; reply with the integer result only.')

    def sample(self, rng: random.Random) -> tuple[str, str]:
        def num() -> int:
            digits = rng.randint(4, 8)
            return rng.randrange(10 ** (digits - 1), 10 ** digits)

        a, b, c = num(), num(), rng.randrange(10, 10_000)
        if rng.random() < 0.5:
            expr = f"{a} * {b} // {c}"
        else:
            expr = f"({a} + {b}) * {c}"
        return f"What is {expr}?", format_value(evaluate(expr))

    def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        expr = arguments.get("expression")
        try:
            return {"result": format_value(evaluate(expr))}
        except CalculatorError as e:
            return {"error": str(e)}

    def solve(self) -> str:
        """The scripted tool user: the expression to the calculator, then its result as the answer."""
        if self.calls == 0:
            expr = self._question.removeprefix("What is ").removesuffix("?")
            call = json.dumps({"name": "calculator", "arguments": {"expression": expr}})
            return f"</think><tool_call>{call}</tool_call><eos>"
        return f"</think>{self.answer}<eos>"

    def reset(self, seed: int, held_out: bool = False) -> list[Message]:
        msgs = super().reset(seed, held_out)
        self._question = msgs[-1].content
        return msgs


class LookupEnv(ToolEnv):
    """A seeded key-value store of item prices; a question needs several lookups to answer."""

    id = "tools/lookup"
    tool_names = ("lookup",)
    instructions = ('Tools: lookup. Call it as <tool_call>{"name": "lookup", "arguments": {"key": "..."}}'
                    '</tool_call> to read a value; reply with the integer result only.')
    STORE_SIZE = 16

    def setup(self, rng: random.Random) -> None:
        names = rng.sample([f"{a}{b}" for a in ("red", "blue", "green", "gold", "iron", "oak")
                            for b in ("-box", "-key", "-gem", "-cup", "-map")], self.STORE_SIZE)
        self.store = {k: rng.randrange(1, 1000) for k in names}

    def sample(self, rng: random.Random) -> tuple[str, str]:
        keys = rng.sample(sorted(self.store), rng.randint(2, 3))
        self.keys = keys
        return f"What is the total price of {', '.join(keys)}?", str(sum(self.store[k] for k in keys))

    def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        key = arguments.get("key")
        if not isinstance(key, str):
            return {"error": "arguments.key must be a string"}
        if key not in self.store:
            return {"error": f"no such key {key[:40]!r}"}
        return {"key": key, "value": self.store[key]}

    def solve(self) -> str:
        """The scripted tool user: one lookup per key, then the sum as the answer."""
        if self.calls == 0:
            calls = "".join(f"<tool_call>{json.dumps({'name': 'lookup', 'arguments': {'key': k}})}</tool_call>"
                            for k in self.keys)
            return f"</think>{calls}<eos>"
        return f"</think>{self.answer}<eos>"
