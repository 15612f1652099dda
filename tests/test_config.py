import json

import pytest

from chimera.config import ConfigError, from_dict, load_preset
from chimera.models import HybridConfig, count_parameters, get_config
from chimera.train.lm import TrainLMConfig


def test_unknown_layer_kind_names_position():
    with pytest.raises(ValueError, match=r"unknown layer kind 'X' at position 1 \(expected M, \*, -, E\)"):
        HybridConfig(pattern="MX*")


def test_heads_not_divisible_by_kv_heads():
    with pytest.raises(ValueError, match="num_attention_heads=6 is not divisible by num_key_value_heads=4"):
        HybridConfig(num_attention_heads=6, num_key_value_heads=4)


def test_mamba_heads_not_divisible_by_groups():
    with pytest.raises(ValueError, match="mamba_num_heads=6 is not divisible by n_groups=4"):
        HybridConfig(mamba_num_heads=6, n_groups=4)


def test_hf_round_trip_keeps_every_field():
    cfg = HybridConfig(pattern="ME*-M", moe_latent_size=16, routed_scaling_factor=2.5, tie_word_embeddings=True)
    back = HybridConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict())))
    assert back == cfg.replace(extra=back.extra)
    assert back.pattern == "ME*-M"


def test_reads_legacy_keys_and_pattern_string():
    d = {"hybrid_override_pattern": "M-M*", "mamba_n_groups": 2, "mamba_d_conv": 3, "mamba_chunk_size": 32,
         "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "mamba_num_heads": 4}
    cfg = HybridConfig.from_hf_dict(d)
    assert (cfg.pattern, cfg.n_groups, cfg.conv_kernel, cfg.chunk_size) == ("M-M*", 2, 3, 32)


def test_reads_legacy_block_type_names():
    d = {"layers_block_type": ["mamba", "attention", "mlp", "moe"]}
    assert HybridConfig.from_hf_dict(d).pattern == "M*-E"
    with pytest.raises(ValueError, match=r"layers_block_type\[1\]='conv'"):
        HybridConfig.from_hf_dict({"layers_block_type": ["mamba", "conv"]})


def test_released_shapes_count_parameters_on_meta_device():
    counts = count_parameters(get_config("nemotron-3-nano-30b-a3b"))
    assert 31.0e9 < counts["total"] < 32.0e9  # "31.6B total"
    assert 3.0e9 < counts["active"] < 4.0e9  # "A3B"
    assert 8.0e9 < count_parameters(get_config("nemotron-h-8b"))["total"] < 8.3e9
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        get_config("huge")


def test_preset_unknown_key_is_named(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"optim": {"lrr": 0.1}}))
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' \(allowed in OptimConfig: lr, "):
        load_preset(TrainLMConfig, p)


def test_preset_wrong_type_names_key_value_and_expected():
    with pytest.raises(ConfigError, match=r"key 'steps' has value 'many'; expected an integer"):
        from_dict(TrainLMConfig, {"steps": "many"})
    with pytest.raises(ConfigError, match=r"key 'data.mode' has value 'rl'; allowed: 'sft' \| 'pretrain'"):
        from_dict(TrainLMConfig, {"data": {"mode": "rl"}})


def test_presets_in_configs_load():
    from pathlib import Path

    from chimera.clrs.train import TrainCLRSConfig
    from chimera.flagship import FlagshipConfig
    from chimera.posttrain.train import PostTrainConfig
    from chimera.rl.train import TrainRLConfig

    presets = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.json"))
    assert presets
    kinds = {"rl-": TrainRLConfig, "demo.json": TrainRLConfig, "clrs-": TrainCLRSConfig, "posttrain": PostTrainConfig,
             "flagship": FlagshipConfig}
    for p in presets:
        cls = next((c for prefix, c in kinds.items() if p.name.startswith(prefix)), TrainLMConfig)
        load_preset(cls, p).validate()


def test_every_synthetic_task_verifies_its_own_answers_and_rejects_wrong_ones():
    import random

    from chimera.data.synthetic import TASKS, is_held_out, sample_split

    for name, cls in TASKS.items():
        task = cls()
        rng = random.Random(0)
        for _ in range(50):
            ex = task.sample(rng)
            assert task.verify(ex.prompt, ex.answer), (name, ex)
            assert not task.verify(ex.prompt, ex.answer + "9"), (name, ex)
        held = sample_split(task, random.Random(1), held_out=True)
        assert is_held_out(held.prompt) and not is_held_out(sample_split(task, random.Random(1), False).prompt)
