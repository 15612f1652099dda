"""Budget-control RL: budgets are sampled per prompt group as configured and seeded, rollouts keep every
turn within its budget (forced tokens out of the loss), the reward is the answer's under the budget
(hand-checked with a scripted policy), bad options are refused, and resume stays exact."""

import pytest
import torch

import chimera.posttrain.train as pt
from chimera.inference import Sampler
from chimera.models import HybridLM, get_config
from chimera.posttrain.envs import make
from chimera.posttrain.rollout import RolloutConfig, batch_tensors, rollout, thinking_budget, token_logprobs
from chimera.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
THINK, END = TOK.token_id("<think>"), TOK.token_id("</think>")


def problems(k, env="reasoning/add"):
    return [(env, s, False) for s in range(k)]


def test_budgets_are_sampled_per_group_as_configured_and_seeded():
    probs = problems(300)
    envs = [make("reasoning/add") for _ in probs]
    opts = pt.BudgetOptions(prob=0.5, fractions=(0.0, 0.5))
    got = pt.sample_budgets(opts, probs, envs, TOK, seed=1, step=3)
    assert got == pt.sample_budgets(opts, probs, envs, TOK, seed=1, step=3)
    assert got != pt.sample_budgets(opts, probs, envs, TOK, seed=1, step=4)
    assert 0.4 < sum(b is not None for b in got) / len(got) < 0.6
    for (env_id, seed, _), b in zip(probs, got):
        if b is None:
            continue
        env = make(env_id)
        env.reset(seed=seed)
        ref = len(TOK.encode(env.solution(env.problem)[0]))  # the solver's thinking, by hand
        assert b in (0, round(0.5 * ref))
    assert {b for b in got if b is not None} - {0}  # the 0.5 fraction was drawn too
    assert all(b is None for b in pt.sample_budgets(pt.BudgetOptions(prob=0.0), probs, envs, TOK, 1, 3))
    absolute = pt.sample_budgets(pt.BudgetOptions(prob=1.0, tokens=(3, 5)), probs, envs, TOK, 1, 3)
    assert set(absolute) == {3, 4, 5}
    # a data-parallel rank's block of the groups (first: its start) draws the whole step's budgets of them
    assert pt.sample_budgets(opts, probs[120:200], envs[120:200], TOK, seed=1, step=3, first=120) == got[120:200]
    assert pt.sample_budgets(opts, probs[120:200], envs[120:200], TOK, seed=1, step=3) != got[120:200]


@pytest.mark.parametrize("kw, match", [
    ({"prob": 1.5}, r"budget.prob=1.5 .* \[0, 1\]"),
    ({"prob": 0.5, "fractions": ()}, "budget.fractions"),
    ({"prob": 0.5, "fractions": (-0.1,)}, "budget.fractions"),
    ({"prob": 0.5, "tokens": (5, 3)}, "budget.tokens"),
    ({"prob": 0.5, "tokens": (5,)}, "budget.tokens"),
    ({"prob": 0.5, "over_penalty": 2.0}, "over_penalty"),
])
def test_bad_budget_options_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        pt.PostTrainConfig(budget=pt.BudgetOptions(**kw)).validate()
    with pytest.raises(ValueError, match=r"rollout\.thinking"):
        pt.PostTrainConfig(budget=pt.BudgetOptions(prob=0.5), rollout=pt.RolloutOptions(thinking=False)).validate()
    with pytest.raises(ValueError, match=r"sft\.thinking_cut"):
        pt.PostTrainConfig(sft=pt.SFTOptions(thinking_cut=-0.1)).validate()


def test_sampled_rollouts_keep_within_budget_and_forced_tokens_are_out_of_the_loss():
    torch.manual_seed(0)
    model = HybridLM(get_config("tiny")).eval()  # never closes <think> by itself: every budget binds
    probs = problems(3)
    budgets = [thinking_budget(TOK, n) for n in (0, 5, 12)]
    eps = rollout(model, TOK, [make("reasoning/add") for _ in range(6)], probs, 2, Sampler(temperature=1.0),
                  RolloutConfig(max_new_tokens=24, max_len=400), seed=3, budgets=budgets)
    for ep in eps:
        n = (0, 5, 12)[ep.prompt_index]
        assert ep.budget == n and ep.thinking_tokens <= n + budgets[ep.prompt_index].grace
        turn = ep.turns[0]
        assert END in turn and turn.index(END) == ep.thinking_tokens
        assert ep.forced_tokens == 1 and ep.mask[ep.prompt_len + turn.index(END)] == 0
        assert THINK not in turn[turn.index(END):]  # the closed segment cannot reopen
    b = batch_tensors(eps, TOK.pad_id)
    lp = token_logprobs(model, b["inputs"], b["targets"], closed=b["closed"], segment_ids=(THINK, END))
    m = b["mask"].bool()
    assert b["closed"][m].any() and not b["closed"][~m & (b["targets"] == END)].any()
    assert (lp[m] - b["rollout_logp"][m]).abs().max() < 1e-4  # sampled tokens: trainer and engine agree
    unmasked = token_logprobs(model, b["inputs"], b["targets"])  # scoring without the engine's mask is off
    assert (unmasked[m] - b["rollout_logp"][m]).abs().max() > 1e-3


class Scripted:
    """A policy that thinks ``abc\\n`` repeated for 16 tokens, then answers; the answer is right only if
    it thought at least 8 tokens, so a tight budget makes it wrong."""

    def __init__(self, model, answer: str, wrong: str):
        self.hist: list[int] = []
        self.answer, self.wrong = TOK.encode(answer), TOK.encode(wrong)
        model.backbone.embeddings.register_forward_hook(self.see)
        model.lm_head.register_forward_hook(self.act)

    def see(self, module, inputs, output):
        ids = inputs[0]  # one row: a prefill (1, T) of the prompt, which ends in <think>, then (1,) per step
        self.hist = [THINK] if ids.dim() == 2 else [*self.hist, int(ids[0])]

    def next_token(self) -> int:
        start = len(self.hist) - 1 - self.hist[::-1].index(THINK)
        seg = self.hist[start + 1:]
        if END not in seg:
            return END if len(seg) >= 16 else TOK.encode("abc\n")[len(seg) % 4]
        thought, said = seg.index(END), seg[seg.index(END) + 1:]
        answer = (self.answer if thought >= 8 else self.wrong) + [TOK.eos_id]
        return answer[len(said)]

    def act(self, module, inputs, out):
        if out.dim() == 2:
            return out + 100.0 * torch.nn.functional.one_hot(torch.tensor([self.next_token()]), out.size(-1))
        return out


@pytest.mark.parametrize("budget, correct, over", [(None, 1.0, False), (4, 0.0, False), (10, 1.0, True)])
def test_reward_is_the_answers_under_the_budget(budget, correct, over):
    env = make("reasoning/add")
    env.reset(seed=2)
    answer = env.problem.answer
    torch.manual_seed(0)
    model = HybridLM(get_config("tiny")).eval()
    Scripted(model, answer, wrong=str(int(answer) + 1))
    (ep,) = rollout(model, TOK, [make("reasoning/add")], [("reasoning/add", 2, False)], 1, Sampler(),
                    RolloutConfig(max_new_tokens=40, max_len=400), seed=0,
                    budgets=[None if budget is None else thinking_budget(TOK, budget)])
    # budget 4: "abc\n" closes at the newline (4 thinking tokens); budget 10: no newline within the grace of
    # 1, so </think> is forced after 11 tokens, past the budget
    assert ep.thinking_tokens == {None: 16, 4: 4, 10: 11}[budget]
    assert ep.reward == correct and ep.over_budget == over
    assert TOK.decode(ep.turns[0]).endswith(f"</think>{answer if correct else int(answer) + 1}<eos>")
    cfg = pt.PostTrainConfig(samples_per_prompt=1, budget=pt.BudgetOptions(prob=1.0, over_penalty=0.25))
    assert pt.shaped_rewards([ep], cfg).item() == correct - 0.25 * over


ORIGINAL_BUILD = pt.build_model


def test_resume_is_exact_with_budgets_on(tmp_path, monkeypatch):
    from test_posttrain_train import Killed, eos_biased, rows

    monkeypatch.setattr(pt, "build_model", lambda spec: eos_biased(ORIGINAL_BUILD(spec), bias=2.0))

    def config(out):
        cfg = pt.PostTrainConfig(
            model="tiny", envs=("reasoning/add", "json/sort"), steps=2, prompts_per_step=4, samples_per_prompt=2,
            rollout=pt.RolloutOptions(max_new_tokens=12, max_len=300),
            budget=pt.BudgetOptions(prob=0.5, fractions=(0.0, 0.5), over_penalty=0.1),
            run=pt.PostTrainRunConfig(out_dir=str(out), eval_problems=1, ckpt_every=1, plots=False))
        cfg.validate()
        return cfg

    full = pt.train(config(tmp_path / "a"), log=lambda s: None)
    got = rows(full)
    steps = [r for r in got if "budget/share_budgeted" in r]
    assert len(steps) == 2 and any(0 < r["budget/share_budgeted"] < 1 for r in steps)
    assert any(k.startswith("budget/budgeted/thinking_tokens/") for r in steps for k in r)
    assert any(k.startswith("budget/unbudgeted/reward/") for r in steps for k in r)

    def kill_at_step_2(line):
        if line.startswith("step     2/2"):
            raise Killed

    with pytest.raises(Killed):
        pt.train(config(tmp_path / "b"), log=kill_at_step_2)
    (killed,) = (tmp_path / "b").iterdir()
    assert rows(pt.train(config(tmp_path / "b"), resume=str(killed), log=lambda s: None)) == got
