"""Numerical parity with transformers' NemotronHForCausalLM (the reference implementation)."""

import json

import pytest
import torch

from chimera.inference import SamplingConfig, generate
from chimera.models import HybridLM

transformers = pytest.importorskip("transformers")

TYPES = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
CASES = {
    "dense": dict(pattern="M*M-M"),
    "moe": dict(pattern="ME*ME", routed_scaling_factor=2.5),
    "latent-moe": dict(pattern="ME*ME", moe_latent_size=16),
    "mamba-only": dict(pattern="MMM"),
    "grouped-routing": dict(pattern="E*E", n_routed_experts=8, n_group=4, topk_group=2),
}


def hf_model(pattern, **kw):
    torch.manual_seed(0)
    base = dict(vocab_size=96, hidden_size=32, layers_block_type=[TYPES[c] for c in pattern],
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
                mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=8, chunk_size=8,
                n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                moe_shared_expert_intermediate_size=24)
    base.update(kw)
    model = transformers.NemotronHForCausalLM(transformers.NemotronHConfig(**base)).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.2)  # a nonzero bias changes which experts win
        for name, p in model.named_parameters():
            if name.endswith(("dt_bias", "D")) or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)  # move off the default init so every term matters
    return model


@pytest.fixture(params=list(CASES), scope="module")
def pair(request, tmp_path_factory):
    hf = hf_model(**CASES[request.param])
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, hf, HybridLM.from_pretrained(path)


def test_logits_match_reference(pair):
    _, hf, ours = pair
    ids = torch.randint(0, 96, (2, 37))  # longer than, and not a multiple of, chunk_size=8
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits
        got = ours(ids).logits
    assert got.shape == (2, 37, 96)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_greedy_tokens_match_reference(pair):
    _, hf, ours = pair
    prompt = torch.randint(0, 96, (1, 11))
    seq = prompt
    with torch.no_grad():
        for _ in range(12):  # the reference: full forward each step, no cache
            nxt = hf(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    got = generate(ours, [prompt[0].tolist()], SamplingConfig(max_new_tokens=12))[0]
    assert got == seq[0, 11:].tolist()


def test_our_save_loads_in_transformers(pair, tmp_path):
    ours = pair[2]
    ours.save_pretrained(tmp_path)
    back = transformers.NemotronHForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 96, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(back(ids, use_cache=False).logits, ours(ids).logits, atol=1e-5, rtol=0)


def test_sharded_checkpoint_round_trip(tmp_path):
    ours = HybridLM.from_pretrained(_saved(tmp_path / "hf", "ME*ME"))
    ours.save_pretrained(tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = HybridLM.from_pretrained(tmp_path / "sharded")
    for (k, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def _saved(path, pattern, **kw):
    hf_model(pattern, **kw).save_pretrained(path)
    return path


def test_mismatched_checkpoint_names_tensor_and_shapes(tmp_path):
    path = _saved(tmp_path, "M*")
    cfg = json.loads((path / "config.json").read_text())
    cfg["num_key_value_heads"] = 4
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"backbone.layers.1.mixer.k_proj.weight' .* has shape \(16, 32\), "
                                         r"expected \(32, 32\)"):
        HybridLM.from_pretrained(path)


def test_checkpoint_with_other_pattern_is_refused(tmp_path):
    path = _saved(tmp_path, "M*")
    cfg = json.loads((path / "config.json").read_text())
    cfg["layers_block_type"] = ["linear_attention", "mlp"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"lacks tensor 'backbone\.layers\.1\.mixer\.up_proj\.weight'"):
        HybridLM.from_pretrained(path)


def test_corrupt_safetensors_is_reported(tmp_path):
    path = _saved(tmp_path, "M*")
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt or not safetensors"):
        HybridLM.from_pretrained(path)
