"""post-train's environments in Ray actors: a proxied environment answers as the local one, a seeded run logs
the in-process metrics, a dead actor stops the run naming its environment, and without Ray the command says
which extra to install."""

import os
import signal
import sys
import time

import pytest
import torch

ray = pytest.importorskip("ray")
pytest.importorskip("minihack")

import chimera.posttrain.train as pt  # noqa: E402
from chimera.models import HybridLM, get_config  # noqa: E402
from chimera.posttrain.envs import call_all, make  # noqa: E402
from chimera.posttrain.envs.game import GameEnv  # noqa: E402
from chimera.posttrain.envs.remote import EnvHosts, RemoteEnv  # noqa: E402
from chimera.tokenizer import ByteTokenizer  # noqa: E402

ORIGINAL_BUILD = pt.build_model


pytestmark = pytest.mark.usefixtures("local_ray")  # tests/conftest.py


def _script(env, seed, held_out, turns):
    """A scripted episode: the solver's turns, an invalid one and a wrong one mixed in; every StepResult."""
    out = [env.reset(seed, held_out)]
    for t in range(turns):
        text = "</think>sideways<eos>" if t == 1 else "</think>north<eos>" if t == 2 else env.solve()
        got = env.step(text)
        out.append(got)
        if got.done:
            break
    return out


def test_proxied_env_answers_as_the_local_env_and_is_an_instance_of_its_class():
    hosts = EnvHosts(["game/Room-5x5", "tools/calculator"], workers=1)
    try:
        for env_id in ("game/Room-5x5", "tools/calculator"):
            local, remote = make(env_id), hosts.make(env_id)
            assert isinstance(remote, RemoteEnv) and isinstance(remote, type(local)) and type(remote) is RemoteEnv
            assert (remote.id, remote.max_turns) == (local.id, local.max_turns)
            for seed, held_out in ((3, False), (5, True)):
                a, b = _script(local, seed, held_out, 6), _script(remote, seed, held_out, 6)
                assert a == b and len(a) > 2
    finally:
        hosts.close()


def test_a_turn_sends_one_call_to_every_actor_before_it_waits(monkeypatch):
    hosts = EnvHosts(["game/Room-5x5"], workers=2)
    waits, wait = [], hosts.wait
    monkeypatch.setattr(hosts, "wait", lambda refs, actors, method: waits.append((len(refs), method)) or
                        wait(refs, actors, method))
    try:
        games = [hosts.make("game/Room-5x5") for _ in range(5)]  # 3 on actor 0, 2 on actor 1
        local = [make("game/Room-5x5") for _ in range(5)]
        seeds = [(s, s == 4) for s in range(5)]
        assert call_all(games, "reset", seeds) == [e.reset(*a) for e, a in zip(local, seeds)]
        texts = [(f"</think>{d}<eos>",) for d in ("south", "east", "??", "northwest", "s")]
        assert call_all(games, "step", texts) == [e.step(*t) for e, t in zip(local, texts)]
        assert call_all(games, "solve", [()] * 5) == [e.solve() for e in local]
        assert waits == [(2, "reset"), (2, "step"), (2, "solve")]
        assert isinstance(games[0], GameEnv) and waits[-1] == (1, "make")  # the class: one question to its actor
    finally:
        hosts.close()


def test_a_dead_actor_stops_the_episode_with_an_error_naming_its_environment():
    hosts = EnvHosts(["game/Room-5x5"], workers=1)
    try:
        env = hosts.make("game/Room-5x5")
        env.reset(0)
        ray.kill(hosts.actors["game/Room-5x5"][0].handle, no_restart=True)
        with pytest.raises(RuntimeError, match=r"Ray actor 0 of game/Room-5x5 died during step\(\)"):
            env.step("</think>south<eos>")
    finally:
        hosts.close()


def test_a_silent_actor_stops_the_episode_after_the_timeout():
    hosts = EnvHosts(["tools/calculator"], workers=1, timeout=1.0)
    actor = hosts.actors["tools/calculator"][0].handle
    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    try:
        env = hosts.make("tools/calculator")
        env.reset(0)
        os.kill(pid, signal.SIGSTOP)  # the actor's process stops answering
        t0 = time.time()
        with pytest.raises(RuntimeError, match=r"Ray actor 0 of tools/calculator did not answer step\(\) within 1 s"):
            env.step("</think>4<eos>")
        assert time.time() - t0 < 10
    finally:
        os.kill(pid, signal.SIGCONT)
        hosts.close()


def _eos_biased(spec):
    model, eos = ORIGINAL_BUILD(spec), ByteTokenizer().eos_id
    model.lm_head.register_forward_hook(lambda m, i, out: out + 4.0 * torch.nn.functional.one_hot(
        torch.tensor(eos), out.size(-1)).to(out.dtype))  # short turns from a random model
    return model


def test_post_train_with_ray_envs_logs_what_in_process_logs(tmp_path, monkeypatch):
    torch.manual_seed(0)
    HybridLM(get_config("tiny-moe")).save_pretrained(tmp_path / "model")
    monkeypatch.setattr(pt, "build_model", _eos_biased)
    played = {}

    def spy(*args, **kw):  # every rollout's episodes, token for token
        eps = rollout(*args, **kw)
        played.setdefault(type(args[2][0]) is RemoteEnv, []).extend(
            (ep.env_id, ep.tokens, ep.mask, ep.reward, ep.info, ep.truncated) for ep in eps)
        return eps

    rollout = pt.rollout
    monkeypatch.setattr(pt, "rollout", spy)

    def run(backend):
        cfg = pt.PostTrainConfig(
            model=str(tmp_path / "model"), envs=("game/Room-5x5", "tools/calculator"), steps=2, prompts_per_step=2,
            samples_per_prompt=2, rollout=pt.RolloutOptions(max_new_tokens=12), envs_backend=backend,
            sft=pt.SFTOptions(steps=1, batch_size=2),
            run=pt.PostTrainRunConfig(out_dir=str(tmp_path / backend), eval_problems=1, plots=False))
        cfg.validate()
        skip = ("time", "charts/rollout_tokens_per_sec", "charts/trainer_tokens_per_sec")
        return [{k: v for k, v in r.items() if k not in skip} for r in pt.train(cfg, log=lambda *_: None).metrics()]

    ref, got = run("inprocess"), run("ray")
    assert got == ref
    assert set(played) == {False, True} and played[True] == played[False]  # the ray run's envs were proxies
    steps = [r for r in ref if "charts/turns/game/Room-5x5" in r]
    assert len(steps) == 2 and any(r["charts/turns/game/Room-5x5"] > 1 for r in steps)  # multi-turn games ran
    assert any("eval/random_policy/game/Room-5x5" in r for r in ref)  # the isinstance(env, GameEnv) check held


def test_without_ray_post_train_says_to_install_the_extra(monkeypatch, capsys):
    from chimera.cli import main
    from chimera.config import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[dist\]'"):
        pt.PostTrainConfig(envs_backend="ray").validate()
    assert main(["post-train", "--envs-backend", "ray", "--steps", "1"]) == 2
    assert "pip install -e '.[dist]'" in capsys.readouterr().err
