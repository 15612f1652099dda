"""SFT on solver-made demonstrations, so that RL starts above zero where an environment is new to
the model (as Nemotron's SFT precedes its RL): the synthetic tasks' reasoning traces, the scripted
tool users, the CLRS algorithms' answers, the game's shortest-path solver.

A demonstration is an episode played by ``env.solve()``: the same token layout as a rollout (the
opening, each assistant turn, each environment reply as chat turns), with the loss on the
assistant turns only. Unlike a rollout, the assistant turns are encoded from the solver's text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from chimera.posttrain.envs import Env
from chimera.posttrain.rollout import chat_ids

IGNORE = -100


def demonstration(env: Env, tok, seed: int, thinking: bool = True,
                  held_out: bool = False) -> tuple[list[int], list[int]]:
    """Tokens of one solved episode and its loss mask (1 on the assistant turns)."""
    tokens = chat_ids(tok, env.reset(seed=seed, held_out=held_out), True, thinking)
    mask = [0] * len(tokens)
    for _ in range(max(1, env.max_turns)):
        text = env.solve()
        ids = tok.encode(text)
        tokens, mask = tokens + ids, mask + [1] * len(ids)
        result = env.step(text)
        if result.done:
            if result.reward != 1.0:
                raise RuntimeError(f"{env.id}'s solver failed on seed {seed} (reward {result.reward}); fix the solver")
            return tokens, mask
        reply = chat_ids(tok, result.messages, False, thinking)
        tokens, mask = tokens + reply, mask + [0] * len(reply)
    raise RuntimeError(f"{env.id}'s solver did not finish seed {seed} within {env.max_turns} turns")


def solver_needs(env: Env, tok, seeds: int = 8, thinking: bool = True) -> tuple[int, int]:
    """The longest assistant turn and the longest episode (tokens) of the solver over a few problems:
    what ``rollout.max_new_tokens`` and ``rollout.max_len`` must allow for the environment to be solvable."""
    turn = episode = 0
    for seed in range(seeds):
        tokens, mask = demonstration(env, tok, seed, thinking)
        episode, run = max(episode, len(tokens)), 0
        for m in mask:
            run = run + 1 if m else 0
            turn = max(turn, run)
    return turn, episode


def sft_batch(envs: dict[str, Env], weights: Sequence[float], tok, batch_size: int, pool_size: int, seed: int,
              step: int, thinking: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs (b, T) and targets (b, T) with IGNORE off the assistant turns: a pure function of (seed, step)."""
    rng = random.Random(f"{seed}/sft/{step}")
    ids = list(envs)
    seqs = [demonstration(envs[e], tok, rng.randrange(pool_size), thinking)
            for e in rng.choices(ids, weights=weights, k=batch_size)]
    T = max(len(t) for t, _ in seqs) - 1
    x = torch.full((batch_size, T), tok.pad_id, dtype=torch.long)
    y = torch.full((batch_size, T), IGNORE, dtype=torch.long)
    for i, (t, m) in enumerate(seqs):
        n = len(t) - 1
        x[i, :n] = torch.tensor(t[:-1])
        y[i, :n] = torch.where(torch.tensor(m[1:]).bool(), torch.tensor(t[1:]), IGNORE)
    return x, y


def sft(model, envs: dict[str, Env], weights: Sequence[float], tok, steps: int, batch_size: int, lr: float,
        pool_size: int, seed: int, thinking: bool = True, log=print, first_step: int = 0) -> list[float]:
    """``steps`` AdamW steps of cross-entropy on demonstrations (batches ``first_step`` onwards); returns the
    losses."""
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=lr, betas=(0.9, 0.95))
    model.train()
    losses = []
    for step in range(first_step, first_step + steps):
        x, y = sft_batch(envs, weights, tok, batch_size, pool_size, seed, step, thinking)
        out = model(x)
        loss = F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
        (loss if out.aux_loss is None else loss + out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_moe_bias()
        losses.append(loss.item())
        done = step + 1 - first_step
        if done % max(1, steps // 10) == 0 or done == steps:
            log(f"sft   {done:>5}/{steps}  loss {loss.item():.4f}")
    return losses
