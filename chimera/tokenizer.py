"""Byte-level tokenizer with special tokens for chat roles, thinking and tool calls, and a chat template.

Ids 0..15 are special tokens, ids 16..271 the 256 bytes (vocab 272).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SPECIAL_TOKENS = [
    "<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<think>", "</think>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<|tool|>",
    "<reserved_13>", "<reserved_14>", "<reserved_15>",
]
BYTE_OFFSET = len(SPECIAL_TOKENS)


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    thinking: str | None = None


class ByteTokenizer:
    """UTF-8 bytes plus special tokens; special-token strings in text become their ids."""

    def __init__(self) -> None:
        self.special = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

    @property
    def vocab_size(self) -> int:
        return BYTE_OFFSET + 256

    def token_id(self, token: str) -> int:
        if token not in self.special:
            raise KeyError(f"{token!r} is not a special token (known: {', '.join(SPECIAL_TOKENS)})")
        return self.special[token]

    @property
    def pad_id(self) -> int:
        return self.special["<pad>"]

    @property
    def bos_id(self) -> int:
        return self.special["<bos>"]

    @property
    def eos_id(self) -> int:
        return self.special["<eos>"]

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        for part in self._split.split(text):
            if part in self.special:
                ids.append(self.special[part])
            elif part:
                ids.extend(b + BYTE_OFFSET for b in part.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if i >= BYTE_OFFSET:
                buf.append(i - BYTE_OFFSET)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special:
                out.append(SPECIAL_TOKENS[i])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                            enable_thinking: bool = True) -> str:
        """Render a conversation. An assistant turn is ``<|assistant|><think>...</think>answer<eos>``;
        with thinking off the think segment is empty. A generation prompt ends after ``<think>``
        (thinking on) or after an empty ``<think></think>`` (off). ``/think`` or ``/no_think`` in the
        system message switch thinking too."""
        for m in messages:
            if m.role == "system" and "/no_think" in m.content:
                enable_thinking = False
            elif m.role == "system" and "/think" in m.content:
                enable_thinking = True
        parts = ["<bos>"]
        for m in messages:
            if m.role == "assistant":
                think = m.thinking if (m.thinking and enable_thinking) else ""
                parts.append(f"<|assistant|><think>{think}</think>{m.content}<eos>")
            elif m.role in ("system", "user", "tool"):
                parts.append(f"<|{m.role}|>{m.content}<eos>")
            else:
                raise ValueError(f"unknown chat role {m.role!r} (expected system, user, assistant, tool)")
        if add_generation_prompt:
            parts.append("<|assistant|><think>" if enable_thinking else "<|assistant|><think></think>")
        return "".join(parts)
