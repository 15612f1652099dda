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
