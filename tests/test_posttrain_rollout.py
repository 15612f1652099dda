"""Multi-turn rollouts are token-in / token-out: the trained tokens and the loss mask are exactly the
sampled tokens, environment turns are excluded, and the trainer's log-probabilities of the sampled
tokens match the engine's."""

import json

import pytest
import torch

from chimera.inference import Sampler
from chimera.models import HybridLM, get_config
from chimera.posttrain.envs import Env, StepResult
from chimera.posttrain.rollout import RolloutConfig, batch_tensors, chat_ids, rollout, token_logprobs
from chimera.tokenizer import ByteTokenizer, Message


class CountingEnv(Env):
    """Answers every assistant turn with a tool turn until the third, then ends with reward 1."""

    id = "test/counting"

    def reset(self, seed, held_out=False):
        self.t, self.seen = 0, []
        return [Message("system", "count"), Message("user", f"start {seed}")]

    def step(self, text):
        self.t += 1
        self.seen.append(text)
        if self.t == 3:
            return StepResult([], 1.0, True, {"correct": 1.0})
        return StepResult([Message("tool", f"<tool_response>{json.dumps({'turn': self.t})}</tool_response>")],
                          0.0, False, {})


def eos_biased_model(bias=4.0):
    """A random tiny model whose <eos> logit is raised, so turns end within a few tokens."""
    torch.manual_seed(0)
    model = HybridLM(get_config("tiny")).eval()
    eos = ByteTokenizer().eos_id
    model.lm_head.register_forward_hook(lambda m, i, out: out + bias * torch.nn.functional.one_hot(
        torch.tensor(eos), out.size(-1)).to(out.dtype))
    return model


@pytest.fixture(scope="module")
def episodes():
    tok = ByteTokenizer()
    model = eos_biased_model()
    envs = [CountingEnv() for _ in range(6)]
    eps = rollout(model, tok, envs, [("test/counting", 1, False), ("test/counting", 2, False)], n=3,
                  sampler=Sampler(temperature=1.0), cfg=RolloutConfig(max_new_tokens=32, max_len=400), seed=5)
    return model, tok, envs, eps


def test_trained_tokens_are_the_sampled_ones_and_env_turns_are_masked(episodes):
    _, tok, envs, eps = episodes
    finished = [ep for ep in eps if not ep.truncated]
    assert len(finished) >= 4 and all(len(ep.turns) == 3 and ep.reward == 1.0 for ep in finished)
    for ep, env in zip(eps, envs):
        opening = chat_ids(tok, env.reset(ep.seed), True)
        assert ep.tokens[:ep.prompt_len] == opening
        # walk the sequence: sampled turn (mask 1) then the environment's reply (mask 0)
        pos = ep.prompt_len
        for t, sampled in enumerate(ep.turns):
            assert ep.tokens[pos:pos + len(sampled)] == sampled
            assert ep.mask[pos:pos + len(sampled)] == [1] * len(sampled)
            pos += len(sampled)
            if t < len(ep.turns) - 1:
                reply = chat_ids(tok, [Message("tool", f"<tool_response>{json.dumps({'turn': t + 1})}"
                                                       "</tool_response>")], False)
                assert ep.tokens[pos:pos + len(reply)] == reply and ep.mask[pos:pos + len(reply)] == [0] * len(reply)
                pos += len(reply)
        assert pos == len(ep.tokens) and sum(ep.mask) == sum(map(len, ep.turns))


def test_sampled_tokens_survive_even_where_retokenising_would_change_them(episodes):
    _, tok, _, eps = episodes
    changed = [t for ep in eps for t in ep.turns if tok.encode(tok.decode(t)) != t]
    assert changed, "expected some sampled turn with invalid UTF-8 that re-encodes differently"
    for ep in eps:
        flat = [tok_id for tok_id, m in zip(ep.tokens, ep.mask) if m]
        assert flat == [x for t in ep.turns for x in t]


def test_trainer_logprobs_of_the_sampled_tokens_equal_the_engines(episodes):
    model, tok, _, eps = episodes
    b = batch_tensors(eps, tok.pad_id)
    with torch.no_grad():
        lp = token_logprobs(model, b["inputs"], b["targets"])
    m = b["mask"].bool()
    assert int(m.sum()) == sum(ep.response_tokens for ep in eps)
    torch.testing.assert_close(lp[m], b["rollout_logp"][m], atol=2e-4, rtol=0)
    assert (b["rollout_logp"][~m] == 0).all()


def test_rollouts_are_seeded():
    tok, model = ByteTokenizer(), eos_biased_model()

    def run(seed):
        eps = rollout(model, tok, [CountingEnv() for _ in range(2)], [("test/counting", 1, False)], n=2,
                      sampler=Sampler(temperature=1.0), cfg=RolloutConfig(max_new_tokens=16, max_len=300), seed=seed)
        return [ep.tokens for ep in eps]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_a_turn_cut_by_its_token_limit_ends_the_episode_unrewarded():
    tok, model = ByteTokenizer(), eos_biased_model(bias=-20.0)  # never stops
    (ep,) = rollout(model, tok, [CountingEnv()], [("test/counting", 1, False)], n=1,
                    sampler=Sampler(temperature=1.0), cfg=RolloutConfig(max_new_tokens=5), seed=0)
    assert ep.truncated and ep.done and ep.reward == 0.0 and len(ep.turns) == 1 and ep.response_tokens == 5


def test_a_group_rolled_out_in_a_later_share_samples_what_it_samples_in_the_whole_batch(episodes):
    """Data-parallel ranks roll out blocks of a step's groups: with ``first`` (the block's start) a group's
    sampling uniforms are named by its place in the step, so its episodes do not depend on the rank."""
    model, tok, _, whole = episodes
    cfg = RolloutConfig(max_new_tokens=32, max_len=400)
    share = rollout(model, tok, [CountingEnv() for _ in range(3)], [("test/counting", 2, False)], n=3,
                    sampler=Sampler(temperature=1.0), cfg=cfg, seed=5, first=1)
    assert [ep.prompt_index for ep in share] == [1, 1, 1]
    assert [ep.tokens for ep in share] == [ep.tokens for ep in whole[3:]]
    for ep, ref in zip(share, whole[3:]):  # a smaller batch: the same log-probabilities to float noise
        assert ep.logprobs == pytest.approx(ref.logprobs, abs=1e-5)
    alone = rollout(model, tok, [CountingEnv() for _ in range(3)], [("test/counting", 2, False)], n=3,
                    sampler=Sampler(temperature=1.0), cfg=cfg, seed=5)
    assert [ep.tokens for ep in alone] != [ep.tokens for ep in whole[3:]]  # counted from 0: group 0's draws
