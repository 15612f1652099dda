"""Generated tokens -> the text, reasoning and tool calls of an OpenAI answer, incrementally.

Three stages, each fed piece by piece so a stream and a whole answer come out the same:

- ``Detokenizer``: tokens -> text deltas, holding back a token that ends inside a UTF-8 character
  (decoding a window of tokens, as vLLM does, so tokenizers whose pieces depend on their
  neighbours decode right);
- ``StopMatcher``: cuts the text before the first stop string, holding back a tail that could be
  the start of one;
- ``OutputParser``: splits the text into reasoning (up to ``</think>`` when the prompt opened a
  thinking segment) and content, and collects ``<tool_call>{json}</tool_call>`` blocks from the first
  ``<tool_call>`` on. At the end the blocks become tool calls when every one is a JSON object with a
  ``name`` and object ``arguments`` and nothing but whitespace lies between them; otherwise the
  whole section is returned as content text (malformed output is the model's answer, not an error).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

THINK_END = "</think>"
TOOL_START, TOOL_END = "<tool_call>", "</tool_call>"
_TOOL_BLOCK = re.compile(re.escape(TOOL_START) + r"(.*?)" + re.escape(TOOL_END), re.S)


class Detokenizer:
    """Tokens in, text out (see the module doc)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def push(self, ids: list[int]) -> str:
        """The text that ``ids`` add (may be empty while a character is incomplete)."""
        self.ids += ids
        return self._delta(final=False)

    def flush(self) -> str:
        """Whatever is held back, at the end of the output."""
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        if self.read == len(self.ids):
            return ""
        before = self.tok.decode(self.ids[self.prefix:self.read])
        text = self.tok.decode(self.ids[self.prefix:])
        if not final and text.endswith("\ufffd") and len(self.ids) - self.read < 4:
            return ""  # wait for the rest of a multi-byte character (4 bytes at most)
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]


def _held(text: str, markers: list[str]) -> int:
    """How many trailing characters of ``text`` could begin one of ``markers``."""
    best = 0
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:k]):
                best = k
                break
    return best


class StopMatcher:
    """Cuts text at the first of ``stops`` (see the module doc)."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """The part of ``text`` that is certainly output; ``stopped`` turns True at a stop string."""
        if self.stopped:
            return ""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[:min(hits)], ""
            return out
        keep = _held(self.pending, self.stops)
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


@dataclass
class Delta:
    """A piece of an answer: reasoning text, content text, or tool calls (the last, at the end only)."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


class OutputParser:
    """Reasoning / content / tool calls of one answer (see the module doc). ``thinking``: the prompt ends
    inside ``<think>``; ``tools``: tool calls were offered (otherwise ``<tool_call>`` is plain text)."""

    def __init__(self, thinking: bool, tools: bool):
        self.state = "reasoning" if thinking else "content"
        self.tools = tools
        self.buf = ""
        self.tool_text = ""

    def feed(self, text: str) -> Delta:
        """The part of the answer that ``text`` completes."""
        out = Delta()
        self.buf += text
        if self.state == "reasoning":
            i = self.buf.find(THINK_END)
            if i < 0:
                keep = _held(self.buf, [THINK_END])
                out.reasoning, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
                return out
            out.reasoning, self.buf = self.buf[:i], self.buf[i + len(THINK_END):]
            self.state = "content"
        if self.state == "content":
            i = self.buf.find(TOOL_START) if self.tools else -1
            if i < 0:
                keep = _held(self.buf, [TOOL_START]) if self.tools else 0
                out.content, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
                return out
            out.content, self.buf = self.buf[:i], self.buf[i:]
            self.state = "tools"
        self.tool_text += self.buf  # the tool section is held until the end
        self.buf = ""
        return out

    def finish(self) -> Delta:
        """The rest of the answer once generation ended: held text, and the tool calls if well formed."""
        out = Delta()
        if self.state == "reasoning":
            out.reasoning = self.buf
        elif self.state == "content":
            out.content = self.buf
        else:
            calls = parse_tool_calls(self.tool_text)
            if calls is None:
                out.content = self.tool_text
            else:
                out.tool_calls = calls
        self.buf = self.tool_text = ""
        return out


def parse_tool_calls(text: str) -> list[dict] | None:
    """``<tool_call>{json}</tool_call>`` blocks -> OpenAI tool calls; None when anything is malformed."""
    calls = []
    for m in _TOOL_BLOCK.finditer(text):
        try:
            obj = json.loads(m.group(1))
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return None
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        calls.append({"id": "call_" + secrets.token_hex(12), "type": "function",
                      "function": {"name": obj["name"], "arguments": json.dumps(args)}})
    if not calls or _TOOL_BLOCK.sub("", text).strip():
        return None
    return calls
