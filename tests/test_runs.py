"""Run directories: atomic checkpoints survive a kill, and a resumed run continues exactly."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from chimera.config import to_dict
from chimera.runs import CheckpointManager, Run, read_metrics
from chimera.train.lm import DataConfig, RunConfig, TrainLMConfig, train


def test_kill_while_writing_checkpoint_leaves_previous_loadable(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, torch
        from chimera.runs import CheckpointManager
        ckpts = CheckpointManager({str(tmp_path)!r}, keep=3)
        ckpts.save(1, {{"w": torch.ones(1000)}})
        real_save = torch.save
        def dying_save(obj, f):
            f.write(b"partial checkpoint bytes")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        ckpts.save(2, {{"w": torch.zeros(1000)}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    ckpts = CheckpointManager(tmp_path)
    state = ckpts.load_latest()
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(1000))
    assert [p.name for p in ckpts.list()] == ["step_00000001.pt"]


def test_corrupt_newest_checkpoint_falls_back_to_older(tmp_path, capsys):
    ckpts = CheckpointManager(tmp_path, keep=5)
    ckpts.save(1, {"x": 1})
    ckpts.save(2, {"x": 2})
    ckpts.path_for(2).write_bytes(b"garbage")
    assert ckpts.load_latest()["x"] == 1
    assert "step_00000002.pt is unreadable" in capsys.readouterr().out


def test_only_last_n_checkpoints_are_kept(tmp_path):
    ckpts = CheckpointManager(tmp_path, keep=2)
    for s in range(1, 6):
        ckpts.save(s, {})
    assert [p.name for p in ckpts.list()] == ["step_00000004.pt", "step_00000005.pt"]
    assert (tmp_path / "latest").read_text() == "step_00000005.pt"


def test_metrics_are_jsonl_and_truncated_on_resume(tmp_path):
    run = Run.create(tmp_path, "t", {"a": 1})
    for s in range(1, 6):
        run.log(s, {"losses/train_loss": 1.0 / s})
    run.truncate_metrics(3)
    assert [r["step"] for r in read_metrics(run.metrics_path)] == [1, 2, 3]
    assert json.loads((run.path / "config.json").read_text()) == {"a": 1}


def _tiny_cfg(out_dir) -> TrainLMConfig:
    return TrainLMConfig(model="tiny", steps=24, data=DataConfig(tasks=("add",), seq_len=48, batch_size=4),
                         run=RunConfig(out_dir=str(out_dir), log_every=1, eval_every=1000, eval_samples=2,
                                       ckpt_every=4, threads=1))


def _losses(run_dir):
    return {r["step"]: r["losses/train_loss"] for r in read_metrics(run_dir / "metrics.jsonl")
            if "losses/train_loss" in r}


def test_resume_after_kill_continues_exactly(tmp_path):
    reference = train(_tiny_cfg(tmp_path / "ref"), log=lambda *_: None)
    ref = _losses(reference.path)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "chimera.cli", "train-lm", "--model", "tiny", "--steps", "24",
           "--data.tasks", "add", "--data.seq-len", "48", "--data.batch-size", "4", "--run.out-dir", str(out),
           "--run.log-every", "1", "--run.eval-every", "1000", "--run.eval-samples", "2", "--run.ckpt-every", "4",
           "--run.threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    latest = None
    while time.time() < deadline and proc.poll() is None:
        found = list(out.glob("*/checkpoints/latest"))
        if found and found[0].read_text() >= "step_00000008.pt":
            latest = found[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if latest is None:
        pytest.fail(f"the run never wrote checkpoint 8: {proc.stderr.read().decode()[-2000:]}")
    run_dir = latest.parents[1]
    killed_at = max(_losses(run_dir))
    assert killed_at < 24, "the process finished before it could be killed"

    train(_tiny_cfg(tmp_path / "unused"), resume=str(run_dir), log=lambda *_: None)
    resumed = _losses(run_dir)
    assert sorted(resumed) == list(range(1, 25))
    assert resumed == ref  # bit-identical losses: model, optimizer, scheduler, RNG and data all restored


class _RunsCodeWhenUnpickled:
    """What a malicious checkpoint holds: unpickling it calls open(marker, "w"), creating the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    from chimera.runs import UnsafeCheckpointError

    run = Run.create(tmp_path, "sent", {"a": 1})
    marker = tmp_path / "created_by_unpickling"
    torch.save({"agent": {}, "payload": _RunsCodeWhenUnpickled(marker), "step": 1}, run.checkpoints.path_for(1))
    with pytest.raises(UnsafeCheckpointError, match=r"refused to load .*step_00000001.pt: it needs io.open"):
        run.checkpoints.load_latest()
    with pytest.raises(UnsafeCheckpointError):
        Run.start(RunConfig(), {"a": 1}, resume=run.path)
    assert not marker.exists()
    assert run.checkpoints.list() == [run.checkpoints.path_for(1)]  # refused, not moved or deleted


def test_eval_rl_refuses_a_run_whose_checkpoint_would_run_code(tmp_path, capsys):
    from chimera.cli import main
    from chimera.rl.train import TrainRLConfig

    run = Run.create(tmp_path, "sent", to_dict(TrainRLConfig()))
    marker = tmp_path / "created_by_unpickling"
    torch.save({"agent": _RunsCodeWhenUnpickled(marker), "step": 1}, run.checkpoints.path_for(1))
    assert main(["eval-rl", str(run.path), "--episodes", "1"]) == 2
    assert "weights-only load does not allow" in capsys.readouterr().err
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from chimera.runs import rng_state, set_rng_state

    ckpts = CheckpointManager(tmp_path)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    ckpts.save(1, {"rng": rng_state()})
    expect = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    set_rng_state(torch.load(ckpts.path_for(1), weights_only=True)["rng"])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expect


def test_saving_a_value_a_weights_only_load_refuses_names_it(tmp_path):
    import numpy as np

    ckpts = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match=r"checkpoint state.rng.numpy\[1\] is a numpy.ndarray"):
        ckpts.save(1, {"rng": {"numpy": ("MT19937", np.zeros(3))}})
    assert ckpts.list() == []


def _corrupt(path, data=b"PK\x03\x04 truncated"):
    path.write_bytes(data)
    return data


def test_resume_moves_unreadable_newer_checkpoints_aside(tmp_path):
    run = Run.create(tmp_path, "r", {})
    for s in (1, 2, 3):
        run.checkpoints.save(s, {"x": torch.tensor(s)})
    bad = _corrupt(run.checkpoints.path_for(3))
    _, state = Run.start(RunConfig(), {}, resume=run.path)
    assert state["step"] == 2
    assert (run.checkpoints.folder / "unreadable" / "step_00000003.pt").read_bytes() == bad
    run.checkpoints.save(3, {"x": torch.tensor(30)})  # training on writes a new step 3 beside the kept one
    assert (run.checkpoints.folder / "unreadable" / "step_00000003.pt").read_bytes() == bad


def _trainer_cli(kind, out):
    if kind == "train-lm":
        return ["train-lm", "--model", "tiny", "--steps", "2", "--data.tasks", "add", "--data.seq-len", "48",
                "--data.batch-size", "2", "--run.out-dir", str(out), "--run.eval-every", "1000",
                "--run.eval-samples", "1", "--run.ckpt-every", "1", "--run.threads", "1", "--run.no-plots"]
    if kind == "train-rl":
        return ["train-rl", "--tasks", "gym/CartPole", "--num-envs", "2", "--total-steps", "32",
                "--ppo.num-steps", "8", "--ppo.minibatches", "1", "--ppo.epochs", "1", "--agent.core", "mlp",
                "--agent.hidden", "8", "--run.out-dir", str(out), "--run.ckpt-every", "1", "--run.no-plots"]
    return ["clrs", "train", "--algorithms", "insertion_sort", "--processor", "mpnn", "--hidden", "8",
            "--steps", "2", "--batch-size", "2", "--eval-every", "1000", "--val-samples", "2", "--test-samples",
            "2", "--test-size", "6", "--run.out-dir", str(out), "--run.ckpt-every", "1"]


@pytest.mark.parametrize("kind", ["train-rl", "train-lm", "clrs"])
def test_resume_refuses_when_no_checkpoint_can_be_read_and_changes_nothing(tmp_path, kind, capsys):
    from chimera.cli import main

    assert main(_trainer_cli(kind, tmp_path)) == 0
    run_dir = next(tmp_path.iterdir())
    ckpts = CheckpointManager(run_dir / "checkpoints")
    files = ckpts.list()
    assert len(files) == 2
    for i, f in enumerate(files):
        _corrupt(f, b"PK\x03\x04 truncated %d" % i)
    before = {f.name: f.read_bytes() for f in (run_dir / "checkpoints").iterdir()}
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    resume = ["clrs", "train", "--resume", str(run_dir)] if kind == "clrs" else [kind, "--resume", str(run_dir)]
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert "none of its 2 checkpoint(s) can be read" in err and "--run.restart-if-unreadable" in err
    assert {f.name: f.read_bytes() for f in (run_dir / "checkpoints").iterdir()} == before
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics

    assert main([*resume, "--run.restart-if-unreadable"]) == 0  # asked for: trains again from step 0
    kept = {f.name: f.read_bytes() for f in (run_dir / "checkpoints" / "unreadable").iterdir()}
    assert kept == {f.name: before[f.name] for f in files}  # the unreadable files, byte for byte
    assert [p.name for p in ckpts.list()] == [f.name for f in files]
    assert ckpts.load_latest()["step"] == int(files[-1].stem.split("_")[1])
