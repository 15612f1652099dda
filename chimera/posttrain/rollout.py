"""Multi-turn rollouts on the inference engine, token-in / token-out.

An episode's token sequence is built only from token ids: the chat-templated opening messages,
then per turn exactly the tokens the engine sampled (up to and including the stop token), then the
environment's reply rendered as a chat turn plus the next generation prompt. The model's text is
decoded once, for the environment to read, and never encoded again: re-tokenising it would train
on tokens the policy did not sample (a byte tokenizer's invalid UTF-8 comes back as U+FFFD; a BPE
merges differently), which broke veRL's PPO. ``mask`` is 1 exactly on the sampled tokens, so the
prompt and every environment turn are out of the loss; ``logprobs`` holds the engine's
log-probabilities of those tokens.

Every turn of every active episode is one ``Request`` on one ``Engine`` whose prompt is the episode so
far (prefilled again each turn; the engine keeps no cache between requests). The same seed gives the
same episodes (each request's uniforms come from (seed, prompt, sample, turn)), whatever else
shares the batch. The environments' resets and each turn's steps are one ``call_all`` over the episodes, so
environments in Ray actors (``envs.remote``) answer side by side.

A problem may run under a thinking budget (``ThinkingBudget``, ``chimera.inference.budget``): every
assistant turn of its episodes then thinks at most N tokens plus the engine's grace before
``</think>`` is forced. A forced token was not sampled by the policy, so it is out of the loss mask
(it stays in the sequence, as the policy saw it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from chimera.inference import Engine, Request, Sampler, ThinkingBudget
from chimera.posttrain.envs import Env, StepResult, call_all
from chimera.tokenizer import Message, render_chat


@dataclass
class Episode:
    """One sampled episode: its tokens, which of them were sampled, and what the environment said."""

    env_id: str
    seed: int
    prompt_index: int
    sample: int
    tokens: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    """1 on sampled tokens, 0 on the prompt and environment turns."""
    logprobs: list[float] = field(default_factory=list)
    """The engine's log p of each sampled token (0.0 elsewhere)."""
    closed: list[int] = field(default_factory=list)
    """1 where the token was drawn with ``<think>`` / ``</think>`` masked (a budgeted turn after its segment
    closed), so the trainer scores the same distribution the engine drew from."""
    prompt_len: int = 0
    turns: list[list[int]] = field(default_factory=list)
    """The tokens sampled in each assistant turn."""
    reward: float = 0.0
    info: dict = field(default_factory=dict)
    truncated: bool = False
    """A turn hit its token limit (no stop token), or the context filled up, before the episode ended."""
    done: bool = False
    budget: int | None = None
    """The thinking budget N its turns ran under (None: no limit)."""
    thinking_tokens: int = 0
    """Tokens sampled inside ``<think>`` over all its turns."""
    forced_tokens: int = 0
    """Tokens the budget forced (``</think>``), in the sequence but out of the mask."""
    over_budget: bool = False
    """Some turn thought past its budget N (into the grace, or up to a forced ``</think>``)."""

    @property
    def response_tokens(self) -> int:
        return sum(self.mask)


def thinking_budget(tok, max_thinking_tokens: int | None) -> ThinkingBudget:
    """A budget of ``max_thinking_tokens`` (None: no limit) with the tokenizer's segment and newline ids and
    the engine's default grace (ceil(10% of N))."""
    return ThinkingBudget(max_thinking_tokens, tok.token_id("<think>"), tok.token_id("</think>"), tok.newline_ids)


def chat_ids(tok, messages: Sequence[Message], opening: bool, thinking: bool = True) -> list[int]:
    """Token ids of chat turns with the next generation prompt; the opening has the tokenizer's bos."""
    bos = tok.decode([tok.bos_id]) if opening else ""
    eos = tok.decode([tok.eos_id])
    return tok.encode(render_chat(messages, add_generation_prompt=True, enable_thinking=thinking, bos=bos, eos=eos))


@dataclass(frozen=True)
class RolloutConfig:
    max_new_tokens: int = 64
    """Tokens one assistant turn may sample."""
    max_len: int = 512
    """Tokens an episode may hold in all (prompt, turns, environment replies)."""
    max_turns: int = 8
    """Assistant turns at most (environments end sooner by their own limits)."""
    thinking: bool = True
    max_rows: int = 256
    compile: bool = False


def rollout(model, tok, envs: Sequence[Env], problems: Sequence[tuple[str, int, bool]], n: int,
            sampler: Sampler, cfg: RolloutConfig, seed: int,
            budgets: Sequence[ThinkingBudget | None] | None = None, first: int = 0) -> list[Episode]:
    """``n`` episodes of each problem (env id, seed, held_out), group-major; ``envs`` holds one fresh or
    reusable environment per episode (``len(problems) * n`` of them, ``envs[i * n + j]`` for sample j of
    problem i). ``budgets[i]`` is the thinking budget of problem i's turns (None or absent: none). ``first``:
    the index of ``problems[0]`` among the step's problems (a data-parallel rank's share starts there); the
    episodes' ``prompt_index`` and their sampling uniforms count from it, so a group draws the same tokens
    whichever rank plays it."""
    if len(envs) != len(problems) * n:
        raise ValueError(f"rollout needs {len(problems) * n} environments (problems x n), got {len(envs)}")
    if budgets is not None and len(budgets) != len(problems):
        raise ValueError(f"rollout got {len(budgets)} budgets for {len(problems)} problems (one per problem)")
    budgets = list(budgets) if budgets is not None else [None] * len(problems)
    episodes: list[Episode] = []
    openings = call_all(envs, "reset", [(env_seed, held_out) for _, env_seed, held_out in problems for _ in range(n)])
    for i, (env_id, env_seed, _) in enumerate(problems):
        for j in range(n):
            ep = Episode(env_id, env_seed, first + i, j,
                         budget=None if budgets[i] is None else budgets[i].max_thinking_tokens)
            opening = openings[i * n + j]
            ep.tokens = chat_ids(tok, opening, True, cfg.thinking)
            ep.prompt_len = len(ep.tokens)
            ep.mask, ep.logprobs, ep.closed = [0] * len(ep.tokens), [0.0] * len(ep.tokens), [0] * len(ep.tokens)
            if ep.prompt_len >= cfg.max_len:
                raise ValueError(f"{env_id} (seed {env_seed}) opens with {ep.prompt_len} tokens; raise "
                                 f"rollout.max_len above {cfg.max_len}")
            episodes.append(ep)
    was_training = model.training
    model.eval()
    try:
        for turn in range(cfg.max_turns):
            active = [k for k, ep in enumerate(episodes) if not ep.done]
            if not active:
                break
            requests = {k: Request(list(episodes[k].tokens),
                                   min(cfg.max_new_tokens, cfg.max_len - len(episodes[k].tokens)), sampler,
                                   frozenset({tok.eos_id}), seed,
                                   f"{episodes[k].prompt_index}/{episodes[k].sample}/{turn}",
                                   budgets[episodes[k].prompt_index - first])
                        for k in active}
            _run(model, list(requests.values()), cfg)
            answered = [k for k, req in requests.items() if _append_turn(episodes[k], req, tok)]
            texts = [(tok.decode(requests[k].tokens),) for k in answered]
            results = call_all([envs[k] for k in answered], "step", texts)
            for k, result in zip(answered, results):
                _answer(episodes[k], result, tok, cfg, last_turn=turn == cfg.max_turns - 1)
    finally:
        model.train(was_training)
    return episodes


def _run(model, requests: list[Request], cfg: RolloutConfig) -> None:
    capacity = max(len(r.prompt) + r.max_new_tokens for r in requests)
    engine = Engine(model, min(cfg.max_rows, len(requests)), capacity, cfg.compile)
    for r in requests:
        engine.submit(r)
    for _ in engine.run():
        pass


def _append_turn(ep: Episode, req: Request, tok) -> bool:
    """Append a turn's sampled tokens; -> whether the environment answers it (the turn ended in a stop token)."""
    mask, closed, n_think = _sampled_mask(req, tok)
    ep.tokens += req.tokens
    ep.mask += mask
    ep.closed += closed
    ep.thinking_tokens += n_think
    ep.forced_tokens += len(mask) - sum(mask)
    ep.over_budget |= ep.budget is not None and n_think > ep.budget
    ep.logprobs += req.logprobs
    ep.turns.append(list(req.tokens))
    if req.finish_reason != "stop":  # cut mid-turn: the answer never ended
        ep.truncated = ep.done = True
        ep.info = {**ep.info, "correct": 0.0}
        return False
    return True


def _answer(ep: Episode, result: StepResult, tok, cfg: RolloutConfig, last_turn: bool) -> None:
    """Take the environment's answer to the turn: reward, info, and its reply appended (unmasked)."""
    ep.reward, ep.info = float(result.reward), dict(result.info)
    if result.done:
        ep.done = True
        return
    reply = chat_ids(tok, result.messages, False, cfg.thinking)
    if last_turn or len(ep.tokens) + len(reply) >= cfg.max_len:
        ep.truncated = ep.done = True
        return
    ep.tokens += reply
    ep.mask += [0] * len(reply)
    ep.logprobs += [0.0] * len(reply)
    ep.closed += [0] * len(reply)


def _sampled_mask(req: Request, tok) -> tuple[list[int], list[int], int]:
    """Which of a finished request's tokens were sampled (1) rather than forced by its budget (0), which were
    drawn with the segment tokens masked, and how many were thinking tokens: the budget's tracker replayed
    over the tokens, which decides exactly what the engine's tracker decided."""
    tracker = (req.budget or thinking_budget(tok, None)).track(req.prompt)
    mask, closed = [], []
    for t in req.tokens:
        mask.append(0 if req.budget is not None and tracker.forced() is not None else 1)
        closed.append(int(req.budget is not None and tracker.closed))
        tracker.observe(t)
    return mask, closed, tracker.n_think


def batch_tensors(episodes: Sequence[Episode], pad_id: int) -> dict[str, torch.Tensor]:
    """Next-token training tensors: inputs (B, L-1), targets (B, L-1), mask (B, L-1) on the sampled targets,
    rollout_logp (B, L-1) the engine's log p of each target, closed (B, L-1) where the engine drew the target
    with the thinking-segment tokens masked (L: the longest episode)."""
    L = max(len(ep.tokens) for ep in episodes)
    B = len(episodes)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros(B, L)
    lp = torch.zeros(B, L)
    closed = torch.zeros(B, L, dtype=torch.bool)
    for b, ep in enumerate(episodes):
        n = len(ep.tokens)
        ids[b, :n] = torch.tensor(ep.tokens)
        mask[b, :n] = torch.tensor(ep.mask, dtype=torch.float32)
        lp[b, :n] = torch.tensor(ep.logprobs)
        closed[b, :n] = torch.tensor(ep.closed, dtype=torch.bool)
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "mask": mask[:, 1:], "rollout_logp": lp[:, 1:],
            "closed": closed[:, 1:]}


def token_logprobs(model, inputs: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   closed: torch.Tensor | None = None, segment_ids: Sequence[int] = ()) -> torch.Tensor:
    """(B, L) log p(target) under ``model`` at ``temperature`` (the distribution the engine samples from
    when top-k and top-p are off), with ``segment_ids`` masked where ``closed`` (B, L) is set, as the
    engine masks them once a budgeted turn's thinking segment has closed."""
    logits = model(inputs).logits  # (B, L, V) fp32
    if temperature != 1.0:
        logits = logits / temperature
    if closed is not None and segment_ids and closed.any():
        ban = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)
        ban[list(segment_ids)] = True
        logits = logits.masked_fill(closed[..., None] & ban, float("-inf"))  # (B, L, V)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]


