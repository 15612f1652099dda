"""SFT on solver-made demonstrations, so that RL starts above zero where an environment is new to
the model (as Nemotron's SFT precedes its RL): the synthetic tasks' reasoning traces, the scripted
tool users, the CLRS algorithms' answers, the game's shortest-path solver.

A demonstration is an episode played by ``env.solve()``: the same token layout as a rollout (the
opening, each assistant turn, each environment reply as chat turns), with the loss on the
assistant turns only. Unlike a rollout, the assistant turns are encoded from the solver's text.

Budget control is taught as ``train-lm`` teaches it (``data.thinking_off`` / ``data.thinking_cut``): a
share of the demonstrations has its reasoning removed (the thinking-off prompt, ``<think></think>``, then
the answer) and a share has its first turn's trace cut at a random point, closed with ``</think>`` and
followed by the original answer, so that the model answers when a budget closes its thinking early.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from chimera.posttrain.envs import Env
from chimera.posttrain.rollout import chat_ids
from chimera.train import distributed

IGNORE = -100


def demonstration(env: Env, tok, seed: int, thinking: bool = True, held_out: bool = False,
                  cut: float | None = None) -> tuple[list[int], list[int]]:
    """Tokens of one solved episode and its loss mask (1 on the assistant turns). ``cut`` in [0, 1] keeps that
    share of the first turn's trace (characters) before ``</think>``; with ``thinking`` off there is no trace."""
    tokens = chat_ids(tok, env.reset(seed=seed, held_out=held_out), True, thinking)
    mask = [0] * len(tokens)
    for turn in range(max(1, env.max_turns)):
        text = env.solve()
        step_text = text
        if "</think>" in text and (not thinking or (turn == 0 and cut is not None)):  # the prompt closed it
            trace, answer = text.split("</think>", 1)
            text = answer if not thinking else f"{trace[:round(cut * len(trace))]}</think>{answer}"
        ids = tok.encode(text)
        tokens, mask = tokens + ids, mask + [1] * len(ids)
        result = env.step(step_text)  # the environment grades the solver's answer, which a cut keeps
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


def check_budget_shares(thinking_off: float, thinking_cut: float) -> None:
    """Refuse shares of budget-control demonstrations that are not fractions of one batch."""
    for name, frac in (("thinking_off", thinking_off), ("thinking_cut", thinking_cut)):
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"sft.{name}={frac} is a share of the demonstrations; give a value in [0, 1]")
    if thinking_off + thinking_cut > 1.0:
        raise ValueError(f"sft.thinking_off + sft.thinking_cut = {thinking_off + thinking_cut:g} > 1; they are "
                         f"shares of the same demonstrations")


def sft_sequences(envs: dict[str, Env], weights: Sequence[float], tok, batch_size: int, pool_size: int, seed: int,
                  step: int, thinking: bool = True, thinking_off: float = 0.0,
                  thinking_cut: float = 0.0) -> list[tuple[str, list[int], list[int]]]:
    """Step ``step``'s demonstrations (env id, tokens, loss mask): a pure function of (seed, step).
    ``thinking_off`` / ``thinking_cut``: shares of demonstrations without reasoning / with a cut trace (no
    extra random draw when both are 0, so such runs see the batches they always saw)."""
    check_budget_shares(thinking_off, thinking_cut)
    rng = random.Random(f"{seed}/sft/{step}")
    ids = list(envs)
    seqs = []
    for e in rng.choices(ids, weights=weights, k=batch_size):
        problem, on, cut = rng.randrange(pool_size), thinking, None
        if thinking_off or thinking_cut:
            r = rng.random()
            if r < thinking_off:
                on = False
            elif r < thinking_off + thinking_cut:
                cut = rng.random()
        seqs.append((e, *demonstration(envs[e], tok, problem, on, cut=cut)))
    return seqs


def pad_batch(seqs: Sequence[tuple[list[int], list[int]]], pad_id: int,
              longest: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs (b, T) and targets (b, T) with IGNORE off the loss mask, padded to the longest sequence (or to
    ``longest`` tokens)."""
    T = max(longest or 0, *(len(t) for t, _ in seqs)) - 1
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for i, (t, m) in enumerate(seqs):
        n = len(t) - 1
        x[i, :n] = torch.tensor(t[:-1])
        y[i, :n] = torch.where(torch.tensor(m[1:]).bool(), torch.tensor(t[1:]), IGNORE)
    return x, y


def sft_batch(envs: dict[str, Env], weights: Sequence[float], tok, batch_size: int, pool_size: int, seed: int,
              step: int, thinking: bool = True, thinking_off: float = 0.0,
              thinking_cut: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """inputs (b, T) and targets (b, T) with IGNORE off the assistant turns: step ``step``'s demonstrations
    (``sft_sequences``) padded into one batch."""
    seqs = sft_sequences(envs, weights, tok, batch_size, pool_size, seed, step, thinking, thinking_off, thinking_cut)
    return pad_batch([(t, m) for _, t, m in seqs], tok.pad_id)


def lr_factor(step: int, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """The learning rate's share of the peak at ``step`` of ``steps``: linear warmup, then cosine decay to
    ``min_lr_ratio`` (1: constant after the warmup)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def backward_demonstrations(model, seqs: Sequence[tuple[str, list[int], list[int]]], pad_id: int,
                            rows: range | None = None) -> float:
    """Backpropagate the mean cross-entropy over every target token of ``seqs`` (env id, tokens, mask); returns
    it. One forward pass per environment, each padded to its own longest episode: the gradient of the one
    mixed batch, without padding every row to the longest environment's episodes (a game's ~400 tokens, a
    reasoning trace's ~45). With ``rows`` (a rank's block under torchrun) only those rows are run, still
    normalised by the whole batch's target tokens: the ranks' terms sum to the batch's loss and gradient."""
    n_targets = max(1, sum(sum(m[1:]) for _, _, m in seqs))  # pad_batch's targets: the masked next tokens
    longest: dict[str, int] = {}  # per environment over the whole batch: a rank's rows padded as in one process
    for e, t, _ in seqs:
        longest[e] = max(longest.get(e, 0), len(t))
    mine = [seqs[i] for i in (rows if rows is not None else range(len(seqs)))]
    envs = dict.fromkeys(e for e, _, _ in mine)
    groups = [pad_batch([(t, m) for e, t, m in mine if e == env], pad_id, longest[env]) for env in envs]
    total = 0.0
    for x, y in groups:
        out = model(x)
        loss = F.cross_entropy(out.logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum") / n_targets
        (loss if out.aux_loss is None else loss + out.aux_loss * len(x) / len(seqs)).backward()
        total += loss.item()
    return total


def sft(model, envs: dict[str, Env], weights: Sequence[float], tok, steps: int, batch_size: int, lr: float,
        pool_size: int, seed: int, thinking: bool = True, log=print, first_step: int = 0,
        thinking_off: float = 0.0, thinking_cut: float = 0.0, warmup_steps: int = 0,
        min_lr_ratio: float = 1.0, world: distributed.World = distributed.ALONE) -> list[float]:
    """``steps`` AdamW steps of cross-entropy on demonstrations (batches ``first_step`` onwards), a
    ``thinking_off`` / ``thinking_cut`` share of them budget-control ones; returns the losses. The learning
    rate warms up over ``warmup_steps`` and decays (cosine) to ``min_lr_ratio`` of ``lr`` by the last step.
    Under torchrun each rank trains on its block of each batch's rows and the gradients are summed: the
    update of one process (the loss is a mean over the whole batch's target tokens)."""
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=lr, betas=(0.9, 0.95))
    model.train()
    losses = []
    rows = distributed.block(batch_size, world)
    for step in range(first_step, first_step + steps):
        done = step + 1 - first_step
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(done - 1, steps, warmup_steps, min_lr_ratio)
        seqs = sft_sequences(envs, weights, tok, batch_size, pool_size, seed, step, thinking, thinking_off,
                             thinking_cut)
        loss = backward_demonstrations(model, seqs, tok.pad_id, rows if world.distributed else None)
        distributed.sum_gradients(model, world)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        distributed.all_reduce_many([moe.expert_load for moe in model.moe_layers()], world)
        model.update_moe_bias()
        loss = float(distributed.total(torch.tensor(loss, dtype=torch.float64), world))
        losses.append(loss)
        if done % max(1, steps // 10) == 0 or done == steps:
            log(f"sft   {done:>5}/{steps}  loss {loss:.4f}")
    return losses
