"""Bad input, fuzzed from seeds: presets, model config.json, the tokenizers, checkpoints and des-files.

Every case ends either in a working object or in a named error (one of the types the CLI reports,
with the offending key, value, tensor or line in its message); a failed load writes nothing and
leaves the files it read as they were.
"""

import hashlib
import json
import random
import re
from pathlib import Path

import pytest
import torch

from chimera.clrs.train import TrainCLRSConfig
from chimera.config import ConfigError, load_preset, to_dict
from chimera.models import HybridLM, get_config
from chimera.models.config import HybridConfig
from chimera.rl.train import TrainRLConfig
from chimera.runs import CheckpointError, CheckpointManager
from chimera.tokenizer import SPECIAL_TOKENS, ByteTokenizer
from chimera.train.lm import TrainLMConfig


def _garbage(rng: random.Random, depth: int = 0):
    """A random JSON value: scalars of every type, and lists / objects nested up to three deep."""
    kinds = ["int", "float", "str", "bool", "null", "big"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-3, 70)
    if kind == "float":
        return rng.uniform(-1e3, 1e3)
    if kind == "str":
        return rng.choice(["", "x", "gym/CartPole", "ppo", "relu2", "\x00", "../../etc"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "big":
        return 10**30
    if kind == "list":
        return [_garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["a", "lr", "run", "seed", "pattern"]
    return {rng.choice(keys): _garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _key_paths(d: dict, prefix: tuple = ()):
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _key_paths(v, (*prefix, k))


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("cls", [TrainRLConfig, TrainLMConfig, TrainCLRSConfig])
def test_fuzzed_presets_load_or_name_the_bad_key(tmp_path, cls):
    rng = random.Random(cls.__name__)
    base = to_dict(cls())
    paths = list(_key_paths(base))
    preset = tmp_path / "preset.json"
    for case in range(150):
        data = json.loads(json.dumps(base))
        path = rng.choice(paths)
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        op = rng.choice(["replace", "replace", "unknown", "delete"])
        key = path[-1] + "_typo" if op == "unknown" else path[-1]
        if op == "delete":
            del parent[key]
        else:
            parent[key] = _garbage(rng)
        preset.write_text(json.dumps(data))
        try:
            cfg = load_preset(cls, preset)
        except ConfigError as e:
            dotted = ".".join((*path[:-1], key))
            assert f"'{dotted}" in str(e), (case, op, dotted, str(e))  # the key, or one below it
            assert op != "delete"  # a missing key takes its default
            continue
        assert op != "unknown", (case, dotted)
        assert to_dict(cfg) == {**base, **to_dict(cfg)}  # a loaded config is a complete one
    assert [p.name for p in tmp_path.iterdir()] == ["preset.json"]  # loading writes nothing


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"[1, 2]", b'"a string"', b"{", b""])
def test_preset_that_is_not_a_json_object_is_named(tmp_path, content):
    preset = tmp_path / "preset.json"
    preset.write_bytes(content)
    with pytest.raises(ConfigError, match=r"preset .*preset.json (is not valid JSON|holds a JSON)"):
        load_preset(TrainRLConfig, preset)


@pytest.mark.parametrize("name", ["tiny", "tiny-moe", "tiny-mtp"])
def test_fuzzed_model_config_json_builds_or_names_the_key(name):
    rng = random.Random(name)
    base = get_config(name).to_hf_dict()
    for case in range(200):
        d = json.loads(json.dumps(base))
        key = rng.choice(list(d))
        d[key] = _garbage(rng)
        try:
            cfg = HybridConfig.from_hf_dict(d)
        except ValueError as e:
            assert key in str(e) or "pattern" in str(e) or "must" in str(e), (case, key, d[key], str(e))
            continue
        with torch.device("meta"):
            HybridLM(cfg)  # a config that loads builds a model


def test_checkpoint_config_with_another_activation_is_refused():
    d = get_config("tiny").to_hf_dict()
    for key, act in (("mlp_hidden_act", "gelu"), ("mamba_hidden_act", "relu")):
        with pytest.raises(ValueError, match=f"{key}='{act}' is not supported"):
            HybridConfig.from_hf_dict({**d, key: act})
    assert HybridConfig.from_hf_dict(d).replace(extra={}) == get_config("tiny")


def test_byte_tokenizer_round_trips_random_text_and_names_bad_ids():
    tok = ByteTokenizer()
    rng = random.Random(0)
    pieces = [*SPECIAL_TOKENS, "<|unknown|>", "<think", "</", "\n", "é", "日本", "\x00"]
    for _ in range(300):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))).decode("utf-8", errors="replace")
        text = "".join(rng.choice([raw, *pieces]) for _ in range(rng.randint(1, 5)))
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    for bad in (-1, tok.vocab_size, 10**9):
        with pytest.raises(ValueError, match=f"token id {bad} is outside"):
            tok.decode([20, bad])
    with pytest.raises(KeyError, match=re.escape("'<|unknown|>' is not a special token")):
        tok.token_id("<|unknown|>")
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate has no UTF-8 bytes
        tok.encode("\udcff")


def test_broken_tokenizer_files_are_named(tmp_path):
    pytest.importorskip("tokenizers")
    from chimera.tokenizer import load_tokenizer

    (tmp_path / "tokenizer.json").write_bytes(b'{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match=r"tokenizer\.json is not a valid tokenizer\.json"):
        load_tokenizer(tmp_path)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    torch.manual_seed(0)
    HybridLM(get_config("tiny")).save_pretrained(path)
    return path


def _copy(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def _load_fails(path: Path, match: str) -> None:
    before = _snapshot(path)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        HybridLM.from_pretrained(path)
    assert _snapshot(path) == before  # nothing written, nothing changed


def test_truncated_or_corrupt_safetensors_are_named(saved_model, tmp_path):
    data = (saved_model / "model.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    rng = random.Random(0)
    cuts = [0, 4, 8, 8 + header // 2, 8 + header, len(data) - 1, *rng.sample(range(9, len(data)), 5)]
    for i, cut in enumerate(cuts):
        path = _copy(saved_model, tmp_path / f"cut{i}")
        (path / "model.safetensors").write_bytes(data[:cut])
        _load_fails(path, "model.safetensors: .*the file is corrupt or not safetensors")
    path = _copy(saved_model, tmp_path / "huge_header")
    (path / "model.safetensors").write_bytes((2**60).to_bytes(8, "little") + data[8:])
    _load_fails(path, "corrupt or not safetensors")


def test_tensor_of_the_wrong_dtype_is_named(saved_model, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _copy(saved_model, tmp_path / "dtype")
    tensors = load_file(path / "model.safetensors")
    name = "backbone.layers.0.mixer.in_proj.weight"
    tensors[name] = tensors[name].to(torch.int32)
    save_file(tensors, path / "model.safetensors")
    _load_fails(path, r"'backbone.layers.0.mixer.in_proj.weight' .* has dtype torch.int32, expected a floating-point")


@pytest.mark.parametrize("other", ["tiny-moe", "tiny-mamba", "small-moe"])
def test_weights_of_another_model_are_named(saved_model, tmp_path, other):
    path = _copy(saved_model, tmp_path / other)
    torch.manual_seed(0)
    HybridLM(get_config(other)).save_pretrained(tmp_path / "other")
    (path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    _load_fails(path, r"(lacks tensor|has shape .* expected|has tensor .* no place for)")


def test_config_json_with_wrong_types_is_named(saved_model, tmp_path):
    for i, (key, value) in enumerate([("hidden_size", "64"), ("chimera", 3), ("layers_block_type", "M*M-"),
                                      ("layer_norm_epsilon", [1e-5]), ("tie_word_embeddings", 1)]):
        path = _copy(saved_model, tmp_path / f"cfg{i}")
        cfg = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**cfg, key: value}))
        _load_fails(path, key)
    path = _copy(saved_model, tmp_path / "notjson")
    (path / "config.json").write_bytes(b"{\x00")
    _load_fails(path, "is not valid JSON")


def test_truncated_run_checkpoints_are_unreadable_never_half_loaded(tmp_path):
    ckpts = CheckpointManager(tmp_path / "ckpts")
    good = ckpts.save(1, {"model": HybridLM(get_config("tiny")).state_dict(), "rng": [1, 2], "config": {"a": 1}})
    data = good.read_bytes()
    rng = random.Random(0)
    for cut in sorted(rng.sample(range(len(data)), 12)):
        good.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"step_00000001.pt is unreadable"):
            ckpts.load(good)
    good.write_bytes(data)
    assert ckpts.load(good)["config"] == {"a": 1}


GOOD_DES = """MAZE: "mylevel", ' '
FLAGS:premapped
GEOMETRY:center,center
MAP
|||||
|...|
|...|
|||||
ENDMAP
STAIR:(2,2),down
BRANCH:(1,1,1,1),(0,0,0,0)
"""


def test_fuzzed_des_files_build_or_name_the_line():
    pytest.importorskip("minihack")
    from chimera.envs import make

    rng = random.Random(0)
    alphabet = "():,'\"|.-+ \n0123456789abcxyzMAPENDSTAIR\x00é"
    built = 0
    for case in range(30):
        chars = list(GOOD_DES)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(chars))
            op = rng.choice(["delete", "insert", "replace"])
            if op == "delete":
                del chars[i]
            elif op == "insert":
                chars.insert(i, rng.choice(alphabet))
            else:
                chars[i] = rng.choice(alphabet)
        des = "".join(chars)
        try:
            env = make("minihack/Custom", des_file=des)
        except ValueError as e:
            assert str(e).startswith(("des-file error at line", "des_file declares no level")), (case, des, e)
            continue
        obs, _ = env.reset(seed=0)
        assert obs["glyphs"].shape == (21, 79)
        env.close()
        built += 1
    assert built < 30  # most single-character edits break a des-file


@pytest.mark.parametrize("des,error,match", [
    ("", ValueError, "is not a file"), ("levels/missing.des", ValueError, "'levels/missing.des' is not a file"),
    ("\n\n", ValueError, "declares no level"), ("\x00\x01\n", ValueError, "declares no level"),
    ("MAP\n...\nENDMAP\n", ValueError, "declares no level"), (42, TypeError, "des_file is a int"),
    (b"MAZE: \"x\", ' '\n", TypeError, "des_file is a bytes")])
def test_des_file_that_is_no_level_is_named(des, error, match):
    pytest.importorskip("minihack")
    from chimera.envs import make

    with pytest.raises(error, match=match):
        make("minihack/Custom", des_file=des)


@pytest.mark.parametrize("flag,value,match", [("--num-envs", "0", "num_envs=0 must be a positive integer"),
                                              ("--ppo.lr", "nan", "ppo.lr=nan must be a positive finite"),
                                              ("--ppo.gamma", "1.5", r"ppo.gamma=1.5 must lie in \[0, 1\]"),
                                              ("--aggregator", "mgda_ub", "use --aggregator mgda")])
def test_train_rl_settings_that_cannot_train_are_named(flag, value, match):
    from chimera.config import parse_cli

    with pytest.raises(ConfigError, match=match):
        parse_cli(TrainRLConfig, [flag, value], prog="chimera train-rl", description="")
