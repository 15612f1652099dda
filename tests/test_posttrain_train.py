"""The post-training loop end to end on a tiny model: run directory, per-environment metrics, model/
at the end, seeded determinism, SIGKILL-like interruption then --resume with identical metrics,
ESPO's early stop, and the CLI."""

import json

import pytest
import torch

import chimera.posttrain.train as pt
from chimera.cli import main
from chimera.config import ConfigError
from chimera.models import HybridLM, get_config
from chimera.tokenizer import ByteTokenizer

ORIGINAL_BUILD = pt.build_model


def eos_biased(model, bias=4.0):
    """Raise the <eos> logit of a random model so its turns end after a few tokens."""
    eos = ByteTokenizer().eos_id
    model.lm_head.register_forward_hook(lambda m, i, out: out + bias * torch.nn.functional.one_hot(
        torch.tensor(eos), out.size(-1)).to(out.dtype))
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sft") / "model"
    HybridLM(get_config("tiny-moe")).save_pretrained(path)
    return str(path)


@pytest.fixture(autouse=True)
def biased_models(monkeypatch):
    monkeypatch.setattr(pt, "build_model", lambda spec: eos_biased(ORIGINAL_BUILD(spec)))


def config(checkpoint, out, **kw):
    cfg = pt.PostTrainConfig(
        model=checkpoint, envs=kw.pop("envs", ("reasoning/add", "clrs/insertion_sort")), steps=2, prompts_per_step=2,
        samples_per_prompt=2,
        rollout=pt.RolloutOptions(max_new_tokens=12, max_len=300),
        objective=pt.Objective(overlong="soft", overlong_cache=8, **kw.pop("objective", {})),
        run=pt.PostTrainRunConfig(out_dir=str(out), eval_problems=1, ckpt_every=1, plots=False), **kw)
    cfg.validate()
    return cfg


def rows(run):
    skip = ("time", "charts/rollout_tokens_per_sec", "charts/trainer_tokens_per_sec")
    return [{k: v for k, v in r.items() if k not in skip} for r in run.metrics()]


class Killed(Exception):
    pass


def test_run_is_seeded_and_resumes_exactly_after_a_kill(checkpoint, tmp_path):
    cfg = config(checkpoint, tmp_path)
    full = pt.train(cfg, log=lambda s: None)
    assert (full.path / "config.json").exists() and (full.path / "model" / "config.json").exists()
    got = rows(full)
    train_rows = [r for r in got if "charts/reward/reasoning/add" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for key in ("charts/reward/clrs/insertion_sort", "charts/pass_rate/reasoning/add",
                "charts/response_tokens/clrs/insertion_sort", "charts/truncated/reasoning/add",
                "curriculum/pass_rate/clrs/insertion_sort",
                "mismatch/token_mult_prob_error", "losses/policy_loss", "charts/frac_reward_zero_std"):
        assert key in train_rows[0], key
    assert train_rows[0]["losses/ratio_dev"] < 1e-5  # the pre-update scoring equals the first gradient pass
    assert abs(train_rows[0]["mismatch/token_mult_prob_error"] - 1.0) < 1e-3  # engine and trainer agree
    assert "eval/pass_rate/reasoning/add" in got[0] and got[0]["step"] == 0
    assert HybridLM.from_pretrained(full.path / "model").config.pattern == get_config("tiny-moe").pattern

    def kill_at_step_2(line):  # after step 2 is logged, before its checkpoint is written
        if line.startswith("step     2/2"):
            raise Killed

    with pytest.raises(Killed):
        pt.train(config(checkpoint, tmp_path / "b"), log=kill_at_step_2)
    (killed,) = (tmp_path / "b").iterdir()
    assert sorted(p.name for p in (killed / "checkpoints").glob("step_*.pt"))[-1] == "step_00000001.pt"
    resumed = pt.train(config(checkpoint, tmp_path / "b"), resume=str(killed), log=lambda s: None)
    assert rows(resumed) == got
    a = pt.HybridLM.from_pretrained(full.path / "model").state_dict()
    b = pt.HybridLM.from_pretrained(resumed.path / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = pt.HybridLM.from_pretrained(checkpoint).state_dict()
    biases = [k for k in a if k.endswith("e_score_correction_bias")]
    assert biases and any(not torch.equal(a[k], start[k]) for k in biases)  # MoE balancing ran during RL


def test_espo_stops_its_epochs_past_delta(checkpoint, tmp_path):
    cfg = config(checkpoint, tmp_path, objective={"algo": "espo", "epochs": 8, "minibatches": 2, "espo_delta": 0.01,
                                                  "kl_beta": 0.05})
    cfg.steps, cfg.optim.lr = 1, 3e-2
    run = pt.train(cfg, log=lambda s: None)
    (row,) = [r for r in run.metrics() if "losses/grad_steps" in r]
    assert 1 <= row["losses/grad_steps"] < 16 and row["losses/ratio_dev_at_stop"] > 0.01
    assert row["losses/kl_ref"] == pytest.approx(0.0, abs=1e-6)  # the frozen reference is the starting policy


def test_dynamic_sampling_drops_groups_with_equal_rewards(checkpoint, tmp_path):
    cfg = config(checkpoint, tmp_path, objective={"algo": "dapo", "dynamic_sampling": True}, envs=("tools/lookup",))
    cfg.objective.overlong = "none"  # rewards are all 0 for a random model: every group is dropped
    cfg.steps = 1
    run = pt.train(cfg, log=lambda s: None)
    (row,) = [r for r in run.metrics() if "charts/groups_kept" in r]
    assert row["charts/groups_kept"] == 0.0 and row["charts/frac_reward_zero_std"] == 1.0
    assert row["losses/grad_steps"] == 0.0
    assert row["charts/tool_calls/tools/lookup"] == 0.0 and row["charts/turns/tools/lookup"] == 1.0
    assert row["charts/info/tool_errors/tools/lookup"] == 0.0


def test_config_errors_name_the_problem(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown id 'tools/calc'"):
        pt.PostTrainConfig(model=checkpoint, envs=("tools/calc",)).validate()
    with pytest.raises(ValueError, match="env_weights"):
        pt.PostTrainConfig(model=checkpoint, env_weights=(1.0,)).validate()
    with pytest.raises(ValueError, match="temperature"):
        pt.PostTrainConfig(model=checkpoint, rollout=pt.RolloutOptions(temperature=0.0)).validate()
    with pytest.raises(ConfigError, match="algo"):
        from chimera.config import from_dict
        from_dict(pt.PostTrainConfig, {"objective": {"algo": "ppo"}})


def test_cli_post_train_runs_a_preset(checkpoint, tmp_path, capsys):
    rc = main(["post-train", "--preset", "configs/posttrain-quick.json", "--model", checkpoint, "--steps", "1",
               "--envs", "reasoning/add", "--run.out-dir", str(tmp_path), "--run.no-plots", "--sft.steps", "2",
               "--sft.batch-size", "2", "--rollout.max-new-tokens", "16"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "step     1/1" in out and "tok/s" in out and "eta" in out and "sft       2/2" in out
    assert "warning: reasoning/add's solver needs" in out and "max_new_tokens=16" in out  # 16 is too few to answer
    (run,) = tmp_path.iterdir()
    assert json.loads((run / "config.json").read_text())["envs"] == ["reasoning/add"]


def test_sft_on_demonstrations_lowers_the_loss_and_masks_env_turns():
    from chimera.posttrain.envs import make
    from chimera.posttrain.sft import IGNORE, demonstration, sft, sft_batch

    tok = ByteTokenizer()
    env = make("tools/lookup")
    tokens, mask = demonstration(env, tok, seed=3)
    text = tok.decode([t for t, m in zip(tokens, mask) if m])
    total = sum(env.store[k] for k in env.keys)
    assert text.count("<tool_call>") == len(env.keys) and text.endswith(f"</think>{total}<eos>")
    assert "<tool_response>" in tok.decode(tokens) and "<tool_response>" not in text
    envs = {"reasoning/add": make("reasoning/add"), "tools/lookup": env}
    x, y = sft_batch(envs, (1.0, 1.0), tok, 4, 64, seed=0, step=0)
    assert torch.equal(x, sft_batch(envs, (1.0, 1.0), tok, 4, 64, seed=0, step=0)[0])
    inside = x[:, 1:] != tok.pad_id  # targets are the next inputs wherever the next input is not padding
    assert ((y[:, :-1] == IGNORE) | (y[:, :-1] == x[:, 1:]) | ~inside).all() and (y != IGNORE).sum() > 20
    assert "<tool_response>" not in tok.decode(y[y != IGNORE].tolist())
    torch.manual_seed(0)
    model = HybridLM(get_config("tiny"))
    losses = sft(model, {"reasoning/add": envs["reasoning/add"]}, (1.0,), tok, steps=6, batch_size=4, lr=1e-2,
                 pool_size=64, seed=0, log=lambda s: None)
    assert losses[-1] < 0.8 * losses[0]


def test_demonstrations_run_per_environment_with_the_gradient_of_one_mixed_batch():
    from chimera.posttrain.envs import make
    from chimera.posttrain.sft import IGNORE, backward_demonstrations, pad_batch, sft_sequences

    tok = ByteTokenizer()
    envs = {"reasoning/add": make("reasoning/add"), "tools/calculator": make("tools/calculator")}
    seqs = sft_sequences(envs, (1.0, 1.0), tok, 6, 64, seed=0, step=0)
    assert {e for e, _, _ in seqs} == set(envs)
    torch.manual_seed(0)
    model = HybridLM(get_config("tiny"))
    x, y = pad_batch([(t, m) for _, t, m in seqs], tok.pad_id)  # every row padded to the longest (a calculator's)
    want_loss = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    want_loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    loss = backward_demonstrations(model, seqs, tok.pad_id)
    assert loss == pytest.approx(want_loss.item(), rel=1e-5)
    assert want and all(n in want for n, p in model.named_parameters() if p.grad is not None)
    for n, p in model.named_parameters():
        if n in want:
            torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-7)


def test_demonstration_sft_warms_up_then_decays_its_learning_rate():
    import math

    from chimera.posttrain.sft import lr_factor

    assert [lr_factor(s, 10, 2, 0.1) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(6, 10, 2, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(10, 10, 2, 0.1) == pytest.approx(0.1)
    assert [lr_factor(s, 10, 0, 1.0) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]  # the defaults: constant
    with pytest.raises(ValueError, match=r"sft\.env_weights"):
        pt.PostTrainConfig(envs=("reasoning/add", "tools/calculator"), sft=pt.SFTOptions(env_weights=(1.0,))).validate()
    with pytest.raises(ValueError, match=r"sft\.min_lr_ratio"):
        pt.PostTrainConfig(sft=pt.SFTOptions(min_lr_ratio=2.0)).validate()
