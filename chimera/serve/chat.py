"""OpenAI chat messages -> the prompt text of the checkpoint's chat template (``chimera.tokenizer``).

The template knows system / user / assistant / tool turns and the thinking switch. Tools go into
the system prompt, as Hermes-style templates (Qwen, Nemotron) put them: the function schemas as
JSON lines inside ``<tools>...</tools>`` and the instruction to answer a call as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. Earlier assistant tool calls are
rendered the same way in that turn, tool results as ``<tool_response>...</tool_response>``.

``tool_choice="required"`` or a named function is enforced by the prompt: the assistant turn is
opened with an empty thinking segment and ``<tool_call>`` (and, for a named function, its name),
so the model's continuation is the call's JSON; thinking is off for that turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from chimera.serve.protocol import APIError, ChatCompletionBody
from chimera.tokenizer import Message

TOOLS_HEADER = "# Tools\nFunctions you may call, one JSON schema a line:\n<tools>\n"
TOOLS_FOOTER = ('\n</tools>\nCall one as <tool_call>{"name": <function-name>, "arguments": <args-json-object>}'
                "</tool_call>")


@dataclass(frozen=True)
class ChatPrompt:
    """The rendered prompt, whether the generation starts inside ``<think>``, and the text the prompt already
    holds of the answer (the forced opening of a tool call), which the output is parsed as beginning with."""

    text: str
    thinking: bool
    answer_prefix: str = ""
    tools: bool = False


def render(body: ChatCompletionBody, tokenizer) -> ChatPrompt:
    """The chat request's messages, tools and thinking switch as prompt text (see the module doc)."""
    tools = body.tools or []
    choice = body.tool_choice
    if choice is not None and choice != "none" and choice != "auto" and not tools:
        raise APIError("tool_choice asks for a tool call but the request has no tools", param="tool_choice")
    offer = bool(tools) and choice != "none"
    messages = [_message(m, i) for i, m in enumerate(body.messages)]
    if offer:
        schemas = "\n".join(json.dumps(t.model_dump(exclude_none=True)) for t in tools)
        block = TOOLS_HEADER + schemas + TOOLS_FOOTER
        if messages and messages[0].role == "system":
            messages[0] = Message("system", messages[0].content + "\n\n" + block)
        else:
            messages.insert(0, Message("system", block))
    thinking = body.enable_thinking
    prefix = ""
    if offer and choice == "required":
        prefix = "<tool_call>"
    elif offer and choice is not None and not isinstance(choice, str):
        names = [t.function.name for t in tools]
        if choice.function.name not in names:
            raise APIError(f"tool_choice names function {choice.function.name!r}, which is not among the tools "
                           f"({', '.join(names)})", param="tool_choice.function.name")
        prefix = '<tool_call>{"name": ' + json.dumps(choice.function.name) + ', "arguments": '
    if prefix:
        thinking = False
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=thinking)
    if thinking and not text.endswith("<think>"):
        thinking = False  # a /no_think system message switched it off
    return ChatPrompt(text + prefix, thinking, prefix, offer)


def _message(m, i: int) -> Message:
    """One OpenAI message as a template turn."""
    role = "system" if m.role == "developer" else m.role
    content = m.text()
    if role == "assistant" and m.tool_calls:
        calls = []
        for c in m.tool_calls:
            try:
                args = json.loads(c.function.arguments or "{}")
            except json.JSONDecodeError:
                raise APIError(f"messages[{i}].tool_calls: arguments of {c.function.name!r} are not valid JSON",
                               param=f"messages[{i}].tool_calls") from None
            calls.append("<tool_call>" + json.dumps({"name": c.function.name, "arguments": args}) + "</tool_call>")
        content += "".join(calls)
    if role == "tool":
        content = f"<tool_response>{content}</tool_response>"
    return Message(role, content, thinking=m.reasoning_content if role == "assistant" else None)
