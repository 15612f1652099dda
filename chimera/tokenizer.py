"""Tokenizers: byte-level by default, with special tokens for chat roles, thinking and tool calls;
a checkpoint's own ``tokenizer.json`` (HF `tokenizers`) when it ships one; and the chat template.

Byte-level ids: 0..15 are special tokens, 16..271 the 256 bytes (vocab 272).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the byte tokenizer's vocabulary [0, {self.vocab_size})")
            if i >= BYTE_OFFSET:
                buf.append(i - BYTE_OFFSET)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special:
                out.append(SPECIAL_TOKENS[i])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    @property
    def newline_ids(self) -> tuple[int, ...]:
        return (BYTE_OFFSET + ord("\n"),)

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                            enable_thinking: bool = True) -> str:
        return render_chat(messages, add_generation_prompt, enable_thinking)


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = True, enable_thinking: bool = True,
                bos: str = "<bos>", eos: str = "<eos>") -> str:
    """Render a conversation. An assistant turn is ``<|assistant|><think>...</think>answer<eos>``;
    with thinking off the think segment is empty. A generation prompt ends after ``<think>``
    (thinking on) or after an empty ``<think></think>`` (off). ``/think`` or ``/no_think`` in the
    system message switch thinking too."""
    for m in messages:
        if m.role == "system" and "/no_think" in m.content:
            enable_thinking = False
        elif m.role == "system" and "/think" in m.content:
            enable_thinking = True
    parts = [bos]
    for m in messages:
        if m.role == "assistant":
            think = m.thinking if (m.thinking and enable_thinking) else ""
            parts.append(f"<|assistant|><think>{think}</think>{m.content}{eos}")
        elif m.role in ("system", "user", "tool"):
            parts.append(f"<|{m.role}|>{m.content}{eos}")
        else:
            raise ValueError(f"unknown chat role {m.role!r} (expected system, user, assistant, tool)")
    if add_generation_prompt:
        parts.append("<|assistant|><think>" if enable_thinking else "<|assistant|><think></think>")
    return "".join(parts)


class HFTokenizer:
    """A checkpoint's ``tokenizer.json`` (HF `tokenizers`) behind the ByteTokenizer interface."""

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError("loading tokenizer.json needs the `tokenizers` package: pip install tokenizers") from e
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        try:
            self.tk = Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON or models
            raise ValueError(f"{file} is not a valid tokenizer.json ({e})") from e
        cfg_path = (path if path.is_dir() else path.parent) / "tokenizer_config.json"
        try:
            cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{cfg_path} is not valid JSON ({e})") from e
        if not isinstance(cfg, dict):
            raise ValueError(f"{cfg_path} holds a JSON {type(cfg).__name__}; expected an object")
        self.bos, self.eos = _token_str(cfg.get("bos_token"), "<s>"), _token_str(cfg.get("eos_token"), "</s>")
        self.pad = _token_str(cfg.get("pad_token"), self.eos)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    def token_id(self, token: str) -> int:
        i = self.tk.token_to_id(token)
        if i is None:
            raise KeyError(f"{token!r} is not in this tokenizer's vocabulary")
        return i

    @property
    def pad_id(self) -> int:
        return self.token_id(self.pad)

    @property
    def bos_id(self) -> int:
        return self.token_id(self.bos)

    @property
    def eos_id(self) -> int:
        return self.token_id(self.eos)

    @property
    def newline_ids(self) -> tuple[int, ...]:
        return tuple(i for t, i in self.tk.get_vocab().items() if t in ("\n", "Ċ", "<0x0A>"))

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                            enable_thinking: bool = True) -> str:
        return render_chat(messages, add_generation_prompt, enable_thinking, bos=self.bos, eos=self.eos)


def _token_str(tok, default: str) -> str:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with its content."""
    if isinstance(tok, dict):
        tok = tok.get("content", default)
    if tok is not None and not isinstance(tok, str):
        raise ValueError(f"tokenizer_config.json: special token {tok!r} is not a string")
    return tok or default


def load_tokenizer(checkpoint: str | Path | None = None) -> ByteTokenizer | HFTokenizer:
    """The checkpoint's tokenizer.json when it ships one, else the byte-level tokenizer."""
    if checkpoint is not None and (Path(checkpoint) / "tokenizer.json").exists():
        return HFTokenizer(checkpoint)
    return ByteTokenizer()
