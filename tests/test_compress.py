"""Minitron pruning: planted dead units go first, identity targets change nothing, every pruned
checkpoint loads in transformers with equal logits, bad targets are refused by flag."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from chimera.cli import main
from chimera.compress import Targets, calibration_batches, collect_importance, prune
from chimera.compress.distill import DistillConfig, LogitKL, distill, kl_loss
from chimera.compress.prune import choose_layers
from chimera.compress.search import Budget, candidates, decode_ms, shortlist, sizes
from chimera.data.batching import TaskBatcher
from chimera.models import HybridLM, count_parameters, get_config
from chimera.models.config import HybridConfig
from chimera.runs import read_metrics
from chimera.train.lm import DataConfig, OptimConfig, RunConfig

transformers = pytest.importorskip("transformers")

DEAD_HIDDEN, DEAD_FFN, DEAD_MAMBA_HEAD, DEAD_MAMBA_DIM, DEAD_EXPERT, DEAD_EXPERT_NEURON = 5, 3, 1, 7, 2, 4
WEAK_HEADS = (1, 2)  # query heads with q = 0 (uniform attention): one in each GQA group of two
IDENTITY_LAYER = 4  # an M layer whose out_proj is zero: x + 0


def config(**kw) -> HybridConfig:
    base = dict(pattern="M*-EM-", mtp_pattern="*E", mtp_depths=1, hidden_size=32, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, intermediate_size=48, mamba_num_heads=4, mamba_head_dim=8,
                n_groups=2, ssm_state_size=8, chunk_size=8, n_routed_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=16, moe_shared_expert_intermediate_size=24, initializer_range=0.2)
    base.update(kw)
    return HybridConfig(**base)


@torch.no_grad()
def planted_model() -> HybridLM:
    """A model with one dead unit on every axis and one layer that is the identity."""
    torch.manual_seed(0)
    model = HybridLM(config()).eval()
    c, layers = DEAD_HIDDEN, model.backbone.layers
    model.backbone.embeddings.weight[:, c] = 0  # nothing ever writes hidden channel c
    for block in [*layers, *model.mtp.layers]:
        m = block.mixer
        for name in ("out_proj", "o_proj", "down_proj"):
            if hasattr(m, name):
                getattr(m, name).weight[c] = 0
        if block.kind == "E":
            m.experts.down_proj[:, c] = 0
            m.shared_experts.down_proj.weight[c] = 0
        if hasattr(block, "eh_proj"):
            block.eh_proj.weight[c] = 0
    att = layers[1].mixer
    att.q_proj.weight.mul_(20)  # sharp attention for the live heads
    for h in WEAK_HEADS:
        att.q_proj.weight[h * 8:(h + 1) * 8] = 0
    layers[2].mixer.up_proj.weight[DEAD_FFN] = 0
    mamba = layers[0].mixer  # in_proj rows [z | x B C | dt]; x starts at d_inner = 32
    mamba.in_proj.weight[32 + DEAD_MAMBA_HEAD * 8:32 + (DEAD_MAMBA_HEAD + 1) * 8] = 0
    mamba.in_proj.weight[32 + DEAD_MAMBA_DIM:64:8] = 0  # head dim 7 of every head
    moe = layers[3].mixer
    moe.experts.down_proj[DEAD_EXPERT] = 0
    moe.gate.e_score_correction_bias[DEAD_EXPERT] = 1.0  # chosen for every token, contributes nothing
    moe.experts.up_proj[:, DEAD_EXPERT_NEURON] = 0
    moe.shared_experts.up_proj.weight[DEAD_FFN] = 0
    layers[IDENTITY_LAYER].mixer.out_proj.weight.zero_()
    return model


@pytest.fixture(scope="module")
def planted():
    model = planted_model()
    batches = calibration_batches(task="add,sort", samples=8, seq_len=40, batch_size=4)
    return model, batches, collect_importance(model, batches, depth_loss=True)


def test_importance_scores_planted_dead_units_zero(planted):
    _, _, imp = planted
    assert imp.hidden.argmin() == DEAD_HIDDEN and imp.hidden[DEAD_HIDDEN] == 0
    assert imp.layers[2].ffn.argmin() == DEAD_FFN and imp.layers[2].ffn[DEAD_FFN] == 0
    mamba = imp.layers[0].mamba  # (heads, head_dim)
    assert mamba[DEAD_MAMBA_HEAD].abs().max() == 0 and mamba[:, DEAD_MAMBA_DIM].abs().max() == 0
    assert (mamba[torch.arange(4) != DEAD_MAMBA_HEAD][:, :DEAD_MAMBA_DIM] > 0).all()
    heads = imp.layers[1].heads
    assert heads[list(WEAK_HEADS)].max() < heads[[0, 3]].min()
    moe = imp.layers[3]
    assert moe.experts[DEAD_EXPERT] == 0 and (moe.experts[torch.arange(4) != DEAD_EXPERT] > 0).all()
    live = [e for e in range(4) if e != DEAD_EXPERT]
    assert (moe.expert_ffn[live].argmin(1) == DEAD_EXPERT_NEURON).all()
    assert moe.shared_ffn.argmin() == DEAD_FFN
    assert imp.depth_cosine.argmin() == IDENTITY_LAYER and imp.depth_cosine[IDENTITY_LAYER] < 1e-6
    assert abs(float(imp.depth_loss[IDENTITY_LAYER])) < 1e-6  # removing the identity changes nothing
    assert choose_layers(imp, 1, "cosine") == [0, 1, 2, 3, 5]


def _keep(n: int, *dead: int) -> torch.Tensor:
    return torch.tensor([i for i in range(n) if i not in dead])


def test_pruning_removes_the_planted_units_and_copies_the_rest(planted):
    model, _, imp = planted
    small = prune(model, imp, Targets(hidden_size=31, ffn_size=47, attention_heads=2, mamba_heads=2,
                                      mamba_head_dim=7, experts=3, moe_ffn_size=15, shared_expert_size=23,
                                      drop_layers=1))
    assert small.config.pattern == "M*-E-" and small.config.mtp_pattern == "*E"
    H = _keep(32, DEAD_HIDDEN)
    old, new = model.state_dict(), small.state_dict()
    assert torch.equal(new["backbone.embeddings.weight"], old["backbone.embeddings.weight"][:, H])
    # MLP: neuron DEAD_FFN gone; hidden channel DEAD_HIDDEN gone
    assert torch.equal(new["backbone.layers.2.mixer.up_proj.weight"],
                       old["backbone.layers.2.mixer.up_proj.weight"][_keep(48, DEAD_FFN)][:, H])
    # attention: heads 0 (group 0) and 3 (group 1) stay; K and V untouched but for the hidden slice
    q = old["backbone.layers.1.mixer.q_proj.weight"]
    assert torch.equal(new["backbone.layers.1.mixer.q_proj.weight"], torch.cat([q[0:8], q[24:32]])[:, H])
    assert torch.equal(new["backbone.layers.1.mixer.k_proj.weight"], old["backbone.layers.1.mixer.k_proj.weight"][:, H])
    # Mamba: one head per group; group 0 keeps head 0 (head 1 is dead); head dim 7 gone everywhere
    mam = imp.layers[0].mamba[:, :7].norm(dim=1)
    g1 = 2 + int(mam[2:].argmax())
    x_rows = torch.cat([h * 8 + torch.arange(7) for h in (0, g1)])
    w = old["backbone.layers.0.mixer.in_proj.weight"]
    got = new["backbone.layers.0.mixer.in_proj.weight"]
    assert torch.equal(got[:14], w[x_rows][:, H])  # z
    assert torch.equal(got[14:28], w[32 + x_rows][:, H])  # x
    assert torch.equal(got[28:60], w[64:96][:, H])  # B, C
    assert torch.equal(got[60:], w[96 + torch.tensor([0, g1])][:, H])  # dt
    for name in ("A_log", "D", "dt_bias"):
        assert torch.equal(new[f"backbone.layers.0.mixer.{name}"], old[f"backbone.layers.0.mixer.{name}"][[0, g1]])
    # MoE: the dead expert and each expert's dead neuron are gone, router rows and bias with them
    E = _keep(4, DEAD_EXPERT)
    up = old["backbone.layers.3.mixer.experts.up_proj"][E][:, _keep(16, DEAD_EXPERT_NEURON)][:, :, H]
    assert torch.equal(new["backbone.layers.3.mixer.experts.up_proj"], up)
    assert torch.equal(new["backbone.layers.3.mixer.gate.e_score_correction_bias"],
                       old["backbone.layers.3.mixer.gate.e_score_correction_bias"][E])
    # depth: the identity layer (4) left; the old layer 5 is the new layer 4
    ffn5 = _keep(48, int(imp.layers[5].ffn.argmin()))
    assert torch.equal(new["backbone.layers.4.mixer.up_proj.weight"],
                       old["backbone.layers.5.mixer.up_proj.weight"][ffn5][:, H])


def test_identity_targets_leave_logits_unchanged(planted):
    model, batches, imp = planted
    cfg = model.config
    same = prune(model, imp, Targets(hidden_size=cfg.hidden_size, ffn_size=cfg.intermediate_size,
                                     attention_heads=cfg.num_attention_heads, mamba_heads=cfg.mamba_num_heads,
                                     mamba_head_dim=cfg.mamba_head_dim, experts=cfg.n_routed_experts,
                                     moe_ffn_size=cfg.moe_intermediate_size,
                                     shared_expert_size=cfg.moe_shared_expert_intermediate_size)).eval()
    x = batches[0][0]
    with torch.no_grad():
        a, b = model(x, return_mtp=True), same(x, return_mtp=True)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.mtp_logits[0], b.mtp_logits[0])


PRUNES = {
    "hidden": dict(hidden_size=24),
    "ffn": dict(ffn_size=20),
    "heads": dict(attention_heads=2),
    "mamba-heads": dict(mamba_heads=2),
    "mamba-head-dim": dict(mamba_head_dim=5),
    "experts": dict(experts=2),
    "moe-ffn": dict(moe_ffn_size=8),
    "shared": dict(shared_expert_size=10),
    "depth": dict(drop_layers=2),
    "all-and-mtp-dropped": dict(hidden_size=20, ffn_size=16, attention_heads=2, mamba_heads=2, mamba_head_dim=6,
                                experts=3, moe_ffn_size=8, shared_expert_size=12, drop_layers=1, drop_mtp=True),
}


@pytest.mark.parametrize("case", list(PRUNES))
def test_pruned_checkpoint_loads_in_transformers_with_equal_logits(planted, case, tmp_path):
    model, batches, imp = planted
    small = prune(model, imp, Targets(**PRUNES[case])).eval()
    small.save_pretrained(tmp_path)
    ref = transformers.NemotronHForCausalLM.from_pretrained(tmp_path).eval()
    again = HybridLM.from_pretrained(tmp_path)
    x = batches[0][0][:2, :23]
    with torch.no_grad():
        ours = small(x).logits
        torch.testing.assert_close(ref(x, use_cache=False).logits, ours, atol=1e-4, rtol=0)
        assert torch.equal(again(x).logits, ours)
    n_ref = sum(p.numel() for n, p in ref.named_parameters())
    n_ours = sum(p.numel() for n, p in small.named_parameters() if not n.startswith("mtp."))
    assert n_ref == n_ours


def test_latent_moe_and_grouped_routing_prune_with_parity(tmp_path):
    torch.manual_seed(1)
    model = HybridLM(config(pattern="E*ME", mtp_depths=0, mtp_pattern="", moe_latent_size=12,
                            n_routed_experts=8, n_group=2, topk_group=1)).eval()
    batches = calibration_batches(task="add", samples=4, seq_len=24, batch_size=4)
    small = prune(model, collect_importance(model, batches), Targets(hidden_size=20, experts=4, moe_ffn_size=8))
    small.save_pretrained(tmp_path)
    ref = transformers.NemotronHForCausalLM.from_pretrained(tmp_path).eval()
    x = batches[0][0][:, :17]
    with torch.no_grad():
        torch.testing.assert_close(ref(x, use_cache=False).logits, small(x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("targets, match", [
    (dict(hidden_size=64), r"--hidden-size=64 is larger than the current size 32.*1\.\.32"),
    (dict(attention_heads=3), r"--attention-heads=3 is not a multiple of num_key_value_heads=2"),
    (dict(mamba_heads=3), r"--mamba-heads=3 is not a multiple of n_groups=2"),
    (dict(experts=1), r"--experts=1 is fewer than num_experts_per_tok=2"),
    (dict(drop_layers=6), r"--drop-layers=6 must be in 0\.\.5"),
    (dict(ffn_size=0), r"--ffn-size=0 must be a positive integer"),
    (dict(moe_ffn_size=17), r"--moe-ffn-size=17 is larger"),
])
def test_bad_targets_are_refused_naming_the_flag(planted, targets, match):
    model, _, imp = planted
    with pytest.raises(ValueError, match=match):
        prune(model, imp, Targets(**targets))


def test_prune_command_writes_a_checkpoint_and_report(planted, tmp_path, capsys):
    model = planted[0]
    model.save_pretrained(tmp_path / "teacher")
    ids = np.random.default_rng(0).integers(0, 272, size=(6, 33))
    np.save(tmp_path / "ids.npy", ids)
    rc = main(["prune", str(tmp_path / "teacher"), "--out", str(tmp_path / "small"), "--hidden-size", "24",
               "--drop-layers", "1", "--depth-metric", "loss", "--calib-ids", str(tmp_path / "ids.npy"),
               "--calib-samples", "4"])
    assert rc == 0
    report = json.loads((tmp_path / "small" / "prune.json").read_text())
    assert report["calibration"] == {"sequences": 4, "tokens": 4 * 32}
    assert report["after"]["hidden_size"] == 24 and len(report["dropped_layers"]) == 1
    assert report["after"]["params"] < report["before"]["params"]
    assert HybridLM.from_pretrained(tmp_path / "small").config.num_layers == 5
    rc = main(["prune", str(tmp_path / "teacher"), "--out", str(tmp_path / "narrow"), "--ffn-size", "40",
               "--depth-metric", "loss", "--calib-ids", str(tmp_path / "ids.npy"), "--calib-samples", "2"])
    assert rc == 0 and json.loads((tmp_path / "narrow" / "prune.json").read_text())["dropped_layers"] == []
    rc = main(["prune", str(tmp_path / "teacher"), "--out", str(tmp_path / "bad"), "--mamba-heads", "3",
               "--calib-task", "add"])
    assert rc == 2 and "--mamba-heads=3 is not a multiple of n_groups=2" in capsys.readouterr().err
    rc = main(["prune", str(tmp_path / "teacher"), "--out", str(tmp_path / "bad"), "--hidden-size", "8"])
    assert rc == 2 and "give exactly one calibration source" in capsys.readouterr().err


def test_heads_are_ranked_within_groups_not_globally(planted):
    model, _, imp = planted
    layers = list(imp.layers)
    # group 0 = heads {0, 1}, group 1 = {2, 3}: a global top-2 would take both heads of group 1
    layers[1] = dataclasses.replace(layers[1], heads=torch.tensor([1.0, 2.0, 10.0, 20.0]))
    mamba = torch.ones(4, 8)
    mamba[2:] *= 10  # the same for the Mamba heads' n_groups=2 blocks
    mamba[0] *= 2
    layers[0] = dataclasses.replace(layers[0], mamba=mamba)
    small = prune(model, dataclasses.replace(imp, layers=layers), Targets(attention_heads=2, mamba_heads=2))
    old, new = model.state_dict(), small.state_dict()
    q = old["backbone.layers.1.mixer.q_proj.weight"]
    assert torch.equal(new["backbone.layers.1.mixer.q_proj.weight"], torch.cat([q[8:16], q[24:32]]))
    assert torch.equal(new["backbone.layers.0.mixer.A_log"], old["backbone.layers.0.mixer.A_log"][[0, 2]])


def test_distillation_loss_equals_hand_computed_kl():
    student = torch.tensor([[[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.0, -2.0], [3.0, 0.0, 0.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 1.0, -1.0, 1.5], [2.0, -1.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])  # the last position is not a target

    def softmax(v):
        e = [math.exp(a) for a in v]
        return [a / sum(e) for a in e]

    def kl_by_hand(T, k):
        total = 0.0
        for pos in range(2):
            t = [a / T for a in teacher[0, pos].tolist()]
            q = softmax([a / T for a in student[0, pos].tolist()])
            top = sorted(range(4), key=lambda i: -t[i])[:k] if k else range(4)
            p = softmax([t[i] for i in top])
            total += sum(pi * math.log(pi / q[i]) for pi, i in zip(p, top))
        return T * T * total / 2

    for T, k in ((1.0, 0), (2.0, 0), (1.0, 2), (0.5, 3)):
        got = kl_loss(student, teacher, mask, temperature=T, top_k=k)
        assert abs(got.item() - kl_by_hand(T, k)) < 1e-6, (T, k)
    assert kl_loss(teacher, teacher, mask).item() == pytest.approx(0.0, abs=1e-7)


def _distill_cfg(tmp_path, teacher, student) -> DistillConfig:
    return DistillConfig(model=str(student), teacher=str(teacher), steps=4, top_k=16, temperature=2.0,
                         optim=OptimConfig(lr=1e-2, warmup_steps=1),
                         data=DataConfig(tasks=("add",), seq_len=48, batch_size=4),
                         run=RunConfig(out_dir=str(tmp_path / "runs"), log_every=1, eval_every=1000, eval_samples=1,
                                       ckpt_every=2, threads=1, plots=False))


def test_distillation_trains_the_student_toward_the_teacher_and_resumes_exactly(planted, tmp_path):
    model, _, imp = planted
    model.save_pretrained(tmp_path / "teacher")
    prune(model, imp, Targets(hidden_size=24, drop_layers=1, drop_mtp=True)).save_pretrained(tmp_path / "student")
    cfg = _distill_cfg(tmp_path, tmp_path / "teacher", tmp_path / "student")
    run = distill(cfg, log=lambda *_: None)
    rows = read_metrics(run.path / "metrics.jsonl")
    losses = {r["step"]: r["losses/train_loss"] for r in rows if "losses/train_loss" in r}
    kl = LogitKL(HybridLM.from_pretrained(tmp_path / "teacher"), temperature=2.0, top_k=16)
    x, y = TaskBatcher(("add",), 48, 8, seed=123).batch(0)
    with torch.no_grad():
        before = kl(x, y, HybridLM.from_pretrained(tmp_path / "student")(x)).item()
        after = kl(x, y, HybridLM.from_pretrained(run.path / "model")(x)).item()
    assert after < 0.9 * before  # the student moved toward the teacher on unseen batches
    assert "eval/kl" in rows[-1] and "eval/accuracy/add" in rows[-1]
    final = HybridLM.from_pretrained(run.path / "model").state_dict()
    # lose the last checkpoint, as if the run had died after step 2, and resume it
    (run.path / "checkpoints" / "step_00000004.pt").unlink()
    (run.path / "checkpoints" / "latest").write_text("step_00000002.pt")
    logs = []
    distill(cfg, resume=str(run.path), log=logs.append)
    assert any("resumed" in line and "step 2" in line for line in logs)
    again = {r["step"]: r["losses/train_loss"] for r in read_metrics(run.path / "metrics.jsonl")
             if "losses/train_loss" in r}
    assert again == losses  # bit-identical: student, optimizer, schedule, RNG, data and the frozen teacher
    for k, v in HybridLM.from_pretrained(run.path / "model").state_dict().items():
        assert torch.equal(v, final[k]), k


def test_distill_refuses_a_student_of_another_vocabulary(planted, tmp_path):
    model = planted[0]
    model.save_pretrained(tmp_path / "teacher")
    cfg = _distill_cfg(tmp_path, tmp_path / "teacher", "tiny")
    HybridLM(config(vocab_size=300)).save_pretrained(tmp_path / "other")
    cfg.model = str(tmp_path / "other")
    with pytest.raises(ValueError, match=r"vocab_size=300 but teacher .* has 272"):
        distill(cfg, log=lambda *_: None)


@pytest.mark.parametrize("name", ["tiny-mtp", "small-moe", "tiny-latent-moe", "nemotron-3-nano-30b-a3b"])
def test_search_sizes_match_the_model_counts(name):
    cfg = get_config(name)
    s = sizes(cfg, context=64, dtype="fp32")
    n = count_parameters(cfg)
    assert (s["params"], s["active_params"]) == (n["total"], n["active"])


def test_search_state_bytes_are_those_of_a_real_cache(planted):
    model = planted[0]
    cache = model.new_cache(1, 100)
    real = sum(t.numel() * t.element_size() for st in cache.layers if st is not None
               for t in vars(st).values() if isinstance(t, torch.Tensor))
    assert sizes(model.config, context=100, dtype="fp32")["state_bytes"] == real


def test_search_candidates_fit_the_budget_and_prune_to_their_sizes(planted):
    model, _, imp = planted
    total = sizes(model.config)["params"]
    budget = Budget(params=int(0.7 * total), memory_gib=1.0, context=256)
    cands = candidates(model.config, budget, lambda drop: choose_layers(imp, drop))
    assert cands and all(c[1]["params"] <= budget.params for c in cands)
    assert [c[1]["params"] for c in cands] == sorted((c[1]["params"] for c in cands), reverse=True)
    picked = shortlist(cands, 3)
    assert len({t.drop_layers for t, _ in picked}) == 3  # depth against width
    for t, size in picked:
        pruned = prune(model, imp, t)
        assert sum(p.numel() for p in pruned.parameters()) == size["params"] <= budget.params
        assert t.attention_heads % 2 == 0 and t.mamba_heads % 2 == 0  # whole GQA / Mamba groups
    with pytest.raises(ValueError, match="give a budget"):
        Budget().check()
    asked = []
    slow = {id(picked[0][0])}  # turned down (e.g. too slow to decode): the next shape takes its place
    again = shortlist(cands, 3, lambda t: asked.append(t) or id(t) not in slow)
    assert asked[0] is picked[0][0] and picked[0] not in again and len(again) == 3
    assert picked[1] in again and picked[2] in again


def test_decode_time_is_measured_on_the_inference_engine(planted):
    ms = decode_ms(planted[0], new_tokens=4, prompt_len=4)
    assert 0 < ms < 1000


def test_compress_command_searches_and_distils_the_winner(planted, tmp_path):
    model = planted[0]
    model.save_pretrained(tmp_path / "teacher")
    budget = int(0.75 * sizes(model.config)["params"])
    rc = main(["compress", str(tmp_path / "teacher"), "--out", str(tmp_path / "out"), "--target-params", str(budget),
               "--keep", "2", "--score-steps", "2", "--distill-steps", "3", "--seq-len", "48", "--batch-size", "2",
               "--eval-samples", "1", "--calib-samples", "4", "--calib-seq-len", "32", "--tasks", "add",
               "--threads", "1"])
    assert rc == 0
    result = json.loads((tmp_path / "out" / "search.json").read_text())
    assert len(result["candidates"]) == 2 and all("eval/kl" in r for r in result["candidates"])
    best = min(result["candidates"], key=lambda r: r["eval/kl"])
    assert result["winner"]["candidate"] == best["candidate"]
    final = HybridLM.from_pretrained(tmp_path / "out" / "model")
    assert sum(p.numel() for p in final.parameters()) == best["params"] <= budget
    assert "| candidate | pattern |" in (tmp_path / "out" / "search.md").read_text()


def test_distill_and_compress_commands_refuse_bad_input(planted, tmp_path, capsys):
    assert main(["distill", "--student", "tiny", "--teacher", str(tmp_path / "missing")]) == 2
    assert "--teacher=" in capsys.readouterr().err
    planted[0].save_pretrained(tmp_path / "teacher")
    assert main(["compress", str(tmp_path / "teacher"), "--out", str(tmp_path / "out"), "--target-params", "1000"]) == 2
    assert "no pruned shape" in capsys.readouterr().err
    assert main(["compress", str(tmp_path / "teacher"), "--out", str(tmp_path / "out")]) == 2
    assert "give a budget" in capsys.readouterr().err
