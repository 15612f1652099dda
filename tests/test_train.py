"""Training: gradients reach every parameter, tiny models overfit, MoE bias balancing evens the load."""

import pytest
import torch
import torch.nn.functional as F

from chimera.models import HybridLM, get_config
from chimera.models.moe import MoE


@pytest.mark.parametrize("size", ["tiny", "tiny-moe", "tiny-latent-moe"])
def test_tiny_model_overfits_a_fixed_batch(size):
    torch.manual_seed(0)
    model = HybridLM(get_config(size)).train()
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=1e-2)
    ids = torch.randint(3, 272, (4, 33))
    x, y = ids[:, :-1], ids[:, 1:]
    losses = []
    for _ in range(300):
        loss = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        model.update_moe_bias()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_gradients_reach_every_parameter():
    cfg = get_config("tiny-latent-moe").replace(pattern="M*-E", moe_aux_loss_coeff=0.01)
    model = HybridLM(cfg).train()
    out = model(torch.randint(0, 272, (2, 24)))
    (out.logits.logsumexp(-1).mean() + out.aux_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_no_weight_decay_on_ssm_parameters_norms_and_biases():
    model = HybridLM(get_config("tiny"))
    decay, no_decay = model.param_groups(0.1)
    ids = {id(p) for p in no_decay["params"]}
    mixer = model.backbone.layers[0].mixer
    for p in (mixer.A_log, mixer.D, mixer.dt_bias, mixer.norm.weight, mixer.conv1d.bias,
              model.backbone.layers[0].norm.weight, model.backbone.norm_f.weight):
        assert id(p) in ids
    assert id(mixer.in_proj.weight) in {id(p) for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_bias_balancing_evens_out_expert_load_on_skewed_input():
    torch.manual_seed(0)
    cfg = get_config("tiny-moe")
    moe = MoE(cfg).train()
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.02)
        moe.gate.weight[0] += 0.5  # expert 0 scores high on inputs along the all-ones direction
        moe.experts.up_proj.normal_(0, 0.02)
        moe.experts.down_proj.normal_(0, 0.02)
    x = torch.randn(4, 64, cfg.hidden_size) * 0.5 + 1.0  # skewed: mostly along the all-ones direction

    def imbalance() -> float:
        with torch.no_grad():
            _, _, idx = moe.gate(x.reshape(-1, cfg.hidden_size))
        load = torch.bincount(idx.flatten(), minlength=cfg.n_routed_experts).float()
        return (load.max() / load.mean()).item()

    before = imbalance()
    late_load = torch.zeros(cfg.n_routed_experts)
    for step in range(300):
        with torch.no_grad():
            moe(x)
        if step >= 250:  # sign updates oscillate around balance: judge the load averaged over the last 50
            late_load += moe.expert_load
        moe.update_bias(rate=1e-2)
    after = (late_load.max() / late_load.mean()).item()
    assert before > 3.0 and after < 1.25, (before, after)


def test_sequence_aux_loss_matches_hand_computed_values():
    cfg = get_config("tiny-moe").replace(moe_aux_loss_coeff=1.0, n_routed_experts=4, num_experts_per_tok=1)
    moe = MoE(cfg)
    E, l = 4, 8
    # balanced: token t picks expert t % 4 and scores it 0.9 (others 0.1): f_i = 1, P_i = 1/4 -> loss 1
    idx = torch.arange(l).remainder(E).view(1, l, 1)
    scores = torch.full((1, l, E), 0.1).scatter(2, idx, 0.9)
    assert moe._sequence_aux_loss(scores, idx).item() == pytest.approx(1.0)
    # collapsed: every token picks expert 0: f = (4, 0, 0, 0), P_0 = 0.9 / 1.2 -> loss 3
    skew = torch.zeros(1, l, 1, dtype=torch.long)
    scores = torch.full((1, l, E), 0.1).scatter(2, skew, 0.9)
    assert moe._sequence_aux_loss(scores, skew).item() == pytest.approx(3.0)


def test_backbone_alone_initialises_every_parameter():
    """The RL agents build HybridBackbone without HybridLM: no tensor may stay uninitialised memory."""
    from chimera.models import HybridBackbone

    net = HybridBackbone(get_config("tiny-latent-moe"))
    for name, p in net.named_parameters():
        assert torch.isfinite(p).all(), name
    experts = net.layers[1].mixer.experts
    assert 0.015 < experts.up_proj.std().item() < 0.025 and 0.015 < experts.down_proj.std().item() < 0.025
    assert net.layers[1].mixer.gate.weight.std().item() > 0.015


def _rows(batcher, steps=4):
    """Decoded assistant turns (the loss targets) of a few batches."""
    from chimera.data.batching import IGNORE

    rows = []
    for step in range(steps):
        x, y = batcher.batch(step)
        for i in range(x.shape[0]):
            keep = y[i] != IGNORE
            first = int(keep.nonzero()[0])
            rows.append((batcher.tok.decode(x[i, : first + 1].tolist()), batcher.tok.decode(y[i][keep].tolist())))
    return rows


def test_thinking_off_and_cut_trace_fractions_make_the_examples_they_name():
    from chimera.data.batching import TaskBatcher

    plain = TaskBatcher(("add", "sort"), 96, 16, seed=3)
    assert plain.batch(0)[0].equal(
        TaskBatcher(("add", "sort"), 96, 16, seed=3, thinking_off=0.0, thinking_cut=0.0).batch(0)[0])
    off = TaskBatcher(("add", "sort"), 96, 16, seed=3, thinking_off=1.0)
    for prompt, target in _rows(off):  # an empty think segment in the prompt, then the answer only
        assert prompt.endswith("<think></think>") and "</think>" not in target, (prompt, target)
    cut = TaskBatcher(("add",), 96, 16, seed=3, thinking_cut=1.0)
    traces = [target.split("</think>")[0] for _, target in _rows(cut)]
    full = [target.split("</think>")[0] for _, target in _rows(plain)]
    assert all(t.count("</think>") == 0 for t in traces)
    assert sum(len(t) for t in traces) < 0.8 * sum(len(t) for t in full)  # cut at a uniform point on average
    mixed = _rows(TaskBatcher(("add", "sort"), 96, 64, seed=3, thinking_off=0.25, thinking_cut=0.25), steps=8)
    frac_off = sum(p.endswith("<think></think>") for p, _ in mixed) / len(mixed)
    assert 0.17 < frac_off < 0.33, frac_off


@pytest.mark.parametrize("kw, msg", [({"thinking_off": 1.5}, "in \\[0, 1\\]"),
                                     ({"thinking_off": 0.6, "thinking_cut": 0.6}, "> 1"),
                                     ({"thinking": False, "thinking_cut": 0.2}, "already thinking-off")])
def test_bad_thinking_fractions_are_refused(kw, msg):
    from chimera.data.batching import TaskBatcher

    with pytest.raises(ValueError, match=msg):
        TaskBatcher(("add",), 96, 4, seed=0, **kw)


def test_thinking_off_data_is_evaluated_with_thinking_off_too():
    from chimera.data.batching import TaskBatcher
    from chimera.train.lm import evaluate

    model = HybridLM(get_config("tiny")).eval()
    metrics = evaluate(model, TaskBatcher(("add",), 96, 4, seed=0, thinking_off=0.5), 2, max_new_tokens=4)
    assert {"eval/accuracy/add", "eval/accuracy_no_thinking/add", "eval/loss"} <= set(metrics)
    assert "eval/accuracy_no_thinking/add" not in evaluate(model, TaskBatcher(("add",), 96, 4, seed=0), 2,
                                                           max_new_tokens=4)
