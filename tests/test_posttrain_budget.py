"""The accuracy-vs-thinking-budget curve: budgets are the fractions of each problem's natural trace,
the engine keeps every episode within its budget plus grace, the full budget reproduces the unbudgeted
greedy episode token for token, and the result is a plain JSON-ready dict."""

import json

import pytest
import torch

from chimera.models import HybridLM, get_config
from chimera.posttrain.budget import budget_curve, budget_episodes, budget_tokens, grace
from chimera.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
ENVS = ["reasoning/add", "json/sort"]


def biased_model(eos_bias=0.3):
    """A random tiny model whose <eos> logit is raised a little: it thinks 7 tokens, then ends."""
    torch.manual_seed(0)
    model = HybridLM(get_config("tiny")).eval()
    model.lm_head.register_forward_hook(lambda m, i, out: out + eos_bias * torch.nn.functional.one_hot(
        torch.tensor(TOK.eos_id), out.size(-1)).to(out.dtype))
    return model


@pytest.fixture(scope="module")
def played():
    return budget_episodes(biased_model(), TOK, ENVS, problems=2, max_new_tokens=24, max_len=400)


def test_budgets_are_fractions_of_the_natural_trace_and_are_respected(played):
    free, runs = played
    assert all(ep.thinking_tokens > 4 for ep in free)  # natural traces long enough for 25% / 50% to bind
    for f, eps in runs.items():
        for ep, nat in zip(eps, free):
            assert ep.budget == budget_tokens(f, nat.thinking_tokens)
            assert ep.thinking_tokens <= ep.budget + grace(ep.budget)
            assert len(ep.turns[0]) == sum(ep.mask[ep.prompt_len:]) + ep.forced_tokens
    assert all(ep.thinking_tokens == 0 and ep.turns[0][0] == TOK.token_id("</think>") for ep in runs[0.0])
    bound = [ep for f in (0.25, 0.5) for ep in runs[f]]
    assert all(ep.thinking_tokens < nat.thinking_tokens and ep.forced_tokens == 1
               for ep, nat in zip(bound, free + free))


def test_full_budget_equals_unbudgeted_greedy(played):
    free, runs = played
    assert [ep.tokens for ep in runs[1.0]] == [ep.tokens for ep in free]
    assert [ep.info for ep in runs[1.0]] == [ep.info for ep in free]
    assert all(ep.forced_tokens == 0 for ep in runs[1.0])
    assert [ep.tokens for ep in runs[0.5]] != [ep.tokens for ep in free]


def test_curve_is_a_plain_dict_with_one_value_per_fraction(tmp_path):
    curve = budget_curve(biased_model(), TOK, ENVS, problems=2, fractions=(0.0, 0.5, 1.0), max_new_tokens=24,
                         max_len=400)
    path = tmp_path / "curve.json"
    path.write_text(json.dumps(curve))
    got = json.loads(path.read_text())
    assert got["fractions"] == [0.0, 0.5, 1.0] and set(got["envs"]) == set(ENVS)
    for c in got["envs"].values():
        assert c["problems"] == 2 and len(c["natural"]) == 2
        assert len(c["accuracy"]) == len(c["thinking_tokens"]) == len(c["budget_tokens"]) == 3
        assert c["budget_tokens"][0] == 0 and c["budget_tokens"][2] == c["natural_tokens"]
        assert c["thinking_tokens"][0] == 0 < c["thinking_tokens"][1] < c["thinking_tokens"][2]
        assert c["accuracy"][2] == c["unbudgeted_accuracy"]
    assert len(got["mean_accuracy"]) == 3


@pytest.mark.parametrize("kw, match", [
    ({"env_ids": ["tools/calculator"]}, "several turns"),
    ({"env_ids": ["reasoning/nope"]}, "unknown environment"),
    ({"fractions": (0.0, 1.5)}, r"fractions in \[0, 1\]"),
    ({"fractions": ()}, "non-empty"),
    ({"problems": 0}, "at least 1"),
])
def test_bad_arguments_are_refused(kw, match):
    args = {"env_ids": ["reasoning/add"], "problems": 1, "fractions": (0.0, 1.0), **kw}
    with pytest.raises(ValueError, match=match):
        budget_curve(None, TOK, args.pop("env_ids"), **args)


def test_budget_control_demonstrations_drop_or_cut_the_trace_and_keep_the_answer():
    from chimera.posttrain.envs import make
    from chimera.posttrain.sft import demonstration, sft_batch

    env = make("reasoning/add")
    full, _ = demonstration(env, TOK, seed=4)
    trace, answer = env.solve().split("</think>")
    off, off_mask = demonstration(env, TOK, seed=4, thinking=False)
    half, _ = demonstration(env, TOK, seed=4, cut=0.5)
    text = TOK.decode
    assert text(full).endswith(f"<think>{trace}</think>{answer}")
    assert text(off).endswith(f"<think></think>{answer}") and text([t for t, m in zip(off, off_mask) if m]) == answer
    assert text(half).endswith(f"<think>{trace[:round(len(trace) / 2)]}</think>{answer}")
    assert text(half).count("</think>") == text(off).count("</think>") == 1
    lookup = make("tools/lookup")  # every turn of a multi-turn demonstration with thinking off closes once
    tokens, _ = demonstration(lookup, TOK, seed=1, thinking=False)
    assert text(tokens).count("</think>") == text(tokens).count("<|assistant|>") == 2
    envs = {"reasoning/add": env}
    x0, _ = sft_batch(envs, (1.0,), TOK, 64, 64, seed=0, step=0)
    x1, _ = sft_batch(envs, (1.0,), TOK, 64, 64, seed=0, step=0, thinking_off=0.25, thinking_cut=0.25)
    assert torch.equal(x1, sft_batch(envs, (1.0,), TOK, 64, 64, seed=0, step=0, thinking_off=0.25,
                                     thinking_cut=0.25)[0])
    rows = [text(r.tolist()) for r in x1]
    n_off = sum("<think></think>" in r for r in rows)
    assert 8 <= n_off <= 24 and not torch.equal(x0, x1)
    with pytest.raises(ValueError, match="thinking_off"):
        sft_batch(envs, (1.0,), TOK, 4, 64, seed=0, step=0, thinking_off=1.5)
    with pytest.raises(ValueError, match="> 1"):
        sft_batch(envs, (1.0,), TOK, 4, 64, seed=0, step=0, thinking_off=0.6, thinking_cut=0.6)
