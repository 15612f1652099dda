"""train-lm under torchrun with 2 processes on gloo: DDP and FSDP2 log the losses of one process at the same
global batch, write the same model/, and a checkpoint from 2 processes resumes in one; the same for distill,
clrs train and post-train (each rank rolling out its block of the prompt groups)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chimera.train import distributed
from chimera.train.lm import TrainLMConfig, train

STEPS = 10
FLAGS = ["--model", "tiny-moe", "--steps", str(STEPS), "--data.batch-size", "2", "--data.grad-accum", "2",
         "--data.seq-len", "96", "--optim.warmup-steps", "2", "--run.log-every", "1", "--run.eval-every", "1000",
         "--run.eval-samples", "2", "--run.ckpt-every", "5", "--run.no-plots", "--run.threads", "1"]
REPO = Path(__file__).resolve().parents[1]


def _torchrun(args: list[str], out: Path, command: tuple[str, ...] = ("train-lm",)) -> Path:
    """Run a chimera command in 2 processes (torchrun --standalone picks a free port); the run folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "chimera", *command, *args, "--run.out-dir", str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = [p for p in out.iterdir() if (p / "config.json").exists()]
    return run


def _in_process(config_cls, train_fn, prog: str, args: list[str], resume: str | None = None) -> Path:
    """The same command in this process (one process: no torch.distributed)."""
    from chimera.config import parse_cli

    threads = torch.get_num_threads()
    try:
        cfg, flags = parse_cli(config_cls, ["--resume", resume, *args] if resume else args, prog=prog,
                               description="", preset_flags=("--resume",))
        return train_fn(cfg, resume=flags.get("--resume"), log=lambda *a: None).path
    finally:
        torch.set_num_threads(threads)


def _single(args: list[str], resume: str | None = None) -> Path:
    return _in_process(TrainLMConfig, train, "train-lm", args, resume)


def _rows(run: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def _assert_close(ours: dict[int, float], ref: dict[int, float], rel: float) -> None:
    assert sorted(ours) == sorted(ref)
    worst = max(abs(ours[s] - ref[s]) / abs(ref[s]) for s in ref)
    assert worst <= rel, {s: (ours[s], ref[s]) for s in ref}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    return _single([*FLAGS, "--run.out-dir", str(tmp_path_factory.mktemp("ws1"))])


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    return _torchrun([*FLAGS, "--parallel", "fsdp"], tmp_path_factory.mktemp("fsdp"))


def _check_matches(run: Path, ref: Path) -> None:
    for key in ("losses/train_loss", "losses/grad_norm"):
        _assert_close(_rows(run, key), _rows(ref, key), rel=1e-4)
    assert len(_rows(run, "losses/train_loss")) == STEPS
    ours, theirs = load_file(run / "model" / "model.safetensors"), load_file(ref / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-5, msg=name)
    assert (run / "model" / "config.json").read_text() == (ref / "model" / "config.json").read_text()


def test_ddp_in_two_processes_logs_the_losses_and_writes_the_model_of_one(one_process, tmp_path):
    _check_matches(_torchrun([*FLAGS, "--parallel", "ddp"], tmp_path), one_process)


def _two_nodes(args: list[str], out: Path) -> Path:
    """Run train-lm as two torchrun agents on this host, as on two nodes: --nnodes 2, one process each,
    meeting at a c10d rendezvous on a free local port (the launch docs/SCALING.md gives for real nodes)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
                                "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                                f"127.0.0.1:{port}", "--rdzv-id", "chimera-test", "-m", "chimera", "train-lm", *args,
                                "--run.out-dir", str(out / f"node{r}")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
              for r in (0, 1)]
    try:
        logs = [a.communicate(timeout=300)[0] for a in agents]
    finally:
        for a in agents:
            a.kill()
    assert [a.returncode for a in agents] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert not (out / "node1").exists() or not any((out / "node1").iterdir())  # only rank 0 writes a run
    (run,) = [p for p in (out / "node0").iterdir() if (p / "config.json").exists()]
    return run


def test_two_nodes_by_c10d_rendezvous_log_the_losses_and_write_the_model_of_one(one_process, tmp_path):
    _check_matches(_two_nodes([*FLAGS, "--parallel", "ddp"], tmp_path), one_process)


def test_fsdp2_in_two_processes_logs_the_losses_and_writes_the_model_of_one(one_process, fsdp_run):
    _check_matches(fsdp_run, one_process)


def test_checkpoint_from_two_processes_resumes_in_one_with_the_same_next_losses(one_process, fsdp_run, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(fsdp_run, run)
    (run / "checkpoints" / f"step_{STEPS:08d}.pt").unlink()
    (run / "checkpoints" / "latest").write_text("step_00000005.pt")
    _single([], resume=str(run))
    resumed, ref = _rows(run, "losses/train_loss"), _rows(one_process, "losses/train_loss")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    _assert_close({s: v for s, v in resumed.items() if s > 5}, {s: v for s, v in ref.items() if s > 5}, rel=1e-5)


def test_each_rank_runs_its_own_block_of_micro_batches_and_a_remainder_is_refused():
    blocks = [distributed.micro_steps(6, distributed.World(rank=r, size=3)) for r in range(3)]
    assert [list(b) for b in blocks] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match=r"grad_accum=3 does not divide among 2 processes.*--data.batch-size 8 "
                                         r"--data.grad-accum 6"):
        distributed.micro_steps(3, distributed.World(rank=0, size=2), batch_size=16)


def test_ranks_after_the_first_draw_their_own_random_numbers_and_rank_0_keeps_the_single_process_ones():
    draws = []
    for rank in (0, 1, 2):
        torch.manual_seed(5)
        distributed.decorrelate_rng(distributed.World(rank=rank, size=3, parallel="ddp"), seed=5, step=0)
        draws.append(torch.rand(4))
    torch.manual_seed(5)
    assert torch.equal(draws[0], torch.rand(4))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_clrs_train_in_two_processes_splits_the_algorithms_and_logs_the_losses_of_one(tmp_path):
    from chimera.clrs.train import TrainCLRSConfig, train_clrs
    from chimera.config import parse_cli

    flags = ["--algorithms", "insertion_sort", "bfs", "--processor", "mpnn", "--hidden", "16", "--steps", "10",
             "--batch-size", "4", "--eval-every", "100", "--val-samples", "4", "--test-samples", "4", "--test-size",
             "8", "--run.log-every", "1", "--run.threads", "1"]
    cfg, _ = parse_cli(TrainCLRSConfig, [*flags, "--run.out-dir", str(tmp_path / "one")], prog="clrs", description="")
    threads = torch.get_num_threads()
    try:
        ref, results = train_clrs(cfg, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    two = _torchrun(flags, tmp_path / "two", command=("clrs", "train"))
    for key in ("train/loss", "train/loss/insertion_sort", "train/loss/bfs"):
        _assert_close(_rows(two, key), _rows(ref.path, key), rel=1e-4)
    assert json.loads((two / "results.json").read_text())["scores"] == results  # the same weights, evaluated


def test_learners_without_a_data_parallel_path_refuse_torchrun(monkeypatch, tmp_path):
    from chimera.config import ConfigError
    from chimera.rl.train import RLRunConfig, TrainRLConfig, train_rl

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train-rl does not run data-parallel yet, and torchrun started 2"):
        train_rl(TrainRLConfig(run=RLRunConfig(out_dir=str(tmp_path))))
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


def test_distill_in_two_processes_logs_the_kl_of_one(one_process, tmp_path):
    from chimera.compress.distill import DistillConfig, distill
    from chimera.config import parse_cli

    flags = ["--teacher", str(one_process / "model"), "--student", "tiny", "--steps", "6", "--data.batch-size",
             "2", "--data.grad-accum", "2", "--optim.warmup-steps", "2", "--run.log-every", "1",
             "--run.eval-every", "100", "--run.eval-samples", "2", "--run.no-plots", "--run.threads", "1"]
    cfg, _ = parse_cli(DistillConfig, [*flags, "--run.out-dir", str(tmp_path / "one")], prog="distill",
                       description="")
    threads = torch.get_num_threads()
    try:
        ref = distill(cfg, log=lambda *a: None)
    finally:
        torch.set_num_threads(threads)
    two = _torchrun(flags, tmp_path / "two", command=("distill",))
    _assert_close(_rows(two, "losses/train_loss"), _rows(ref.path, "losses/train_loss"), rel=1e-4)
    _assert_close(_rows(two, "eval/kl"), _rows(ref.path, "eval/kl"), rel=1e-4)


# post-train: SFT on demonstrations (so that turns end and lengths differ), then ESPO with DAPO's dynamic sampling
# and soft overlong shaping over 2 minibatches x up to 3 epochs, stopped at delta mid-step; 5 groups (3 + 2
# per rank), an MoE model (bias balancing), held-out evaluation before and after, checkpoints at steps 2 and 3
PT_STEPS = 3
PT_FLAGS = ["--model", "tiny-moe", "--envs", "reasoning/add", "json/record", "--steps", str(PT_STEPS),
            "--prompts-per-step", "5", "--samples-per-prompt", "3", "--rollout.max-new-tokens", "40",
            "--rollout.max-len", "400", "--objective.algo", "espo", "--objective.espo-delta", "0.05",
            "--objective.dynamic-sampling", "--objective.overlong", "soft", "--objective.overlong-cache", "40",
            "--objective.minibatches", "2", "--objective.epochs", "3", "--optim.lr", "2e-4", "--sft.steps", "40",
            "--sft.batch-size", "8", "--sft.lr", "3e-3", "--run.eval-problems", "2", "--run.ckpt-every", "2",
            "--run.no-plots", "--run.threads", "1"]
TIMING = ("time", "charts/rollout_tokens_per_sec", "charts/trainer_tokens_per_sec")


def _post_train_single(args: list[str], resume: str | None = None) -> Path:
    from chimera.posttrain.train import PostTrainConfig
    from chimera.posttrain.train import train as post_train

    return _in_process(PostTrainConfig, post_train, "post-train", args, resume)


def _metric_rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


# statistics of how far the policy moved in a step: the first AdamW steps of RL move every weight by about lr
# times the sign of its gradient, so a weight whose gradient cancels to float noise moves either way; one process
# with 2 BLAS threads instead of 1 differs from itself by up to 3e-3 relatively in these (5e-4 in ratio_dev)
DRIFT = ("losses/ratio_dev", "losses/ratio_dev_at_stop", "losses/approx_kl", "losses/grad_norm")


def _assert_same_metrics(ours: list[dict], ref: list[dict]) -> float:
    """Row by row the same keys and values: relative 1e-4 (counts, rewards and lengths exactly; the drift
    statistics 1e-2, see DRIFT); the rollout-vs-trainer mismatch statistics, float noise around their ideal
    (1e-9 .. 1e-6), absolutely within 1e-5. Returns the largest relative difference of the losses."""
    assert [sorted(r) for r in ours] == [sorted(r) for r in ref]
    worst = 0.0
    for a, b in zip(ours, ref):
        for k, v in b.items():
            if k.startswith("mismatch/"):
                assert abs(a[k] - v) <= 1e-5, (a["step"], k, a[k], v)
                continue
            assert a[k] == pytest.approx(v, rel=1e-2 if k in DRIFT else 1e-4, abs=1e-9), (a["step"], k, a[k], v)
            if k in ("losses/policy_loss", "sft/loss_first", "sft/loss_last") and v:
                worst = max(worst, abs(a[k] - v) / abs(v))
    return worst


@pytest.fixture(scope="module")
def post_train_one(tmp_path_factory) -> Path:
    return _post_train_single([*PT_FLAGS, "--run.out-dir", str(tmp_path_factory.mktemp("pt1"))])


@pytest.fixture(scope="module")
def post_train_two(tmp_path_factory) -> Path:
    return _torchrun(PT_FLAGS, tmp_path_factory.mktemp("pt2"), command=("post-train",))


def test_post_train_in_two_processes_logs_the_metrics_and_writes_the_model_of_one(post_train_one, post_train_two):
    ours, ref = _metric_rows(post_train_two), _metric_rows(post_train_one)
    train_rows = [r for r in ref if "losses/policy_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, PT_STEPS + 1))
    assert any(0 < r["losses/epochs_used"] < 3 for r in train_rows)  # ESPO stopped mid-step, on the global drift
    assert len({r["charts/response_tokens/reasoning/add"] for r in train_rows}) > 1  # the rollouts differ by step
    assert _assert_same_metrics(ours, ref) < 1e-4
    mine, theirs = load_file(post_train_two / "model" / "model.safetensors"), \
        load_file(post_train_one / "model" / "model.safetensors")
    assert mine.keys() == theirs.keys()
    for name in theirs:  # a few weights moved the other way (see DRIFT); 2 BLAS threads: 3e-4 at most
        assert (mine[name] - theirs[name]).norm() <= 2e-3 * theirs[name].norm(), name


def test_post_train_checkpoint_from_two_processes_resumes_in_one_with_the_same_next_metrics(
        post_train_one, post_train_two, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(post_train_two, run)
    (run / "checkpoints" / f"step_{PT_STEPS:08d}.pt").unlink()
    (run / "checkpoints" / "latest").write_text("step_00000002.pt")
    _post_train_single([], resume=str(run))
    _assert_same_metrics(_metric_rows(run), _metric_rows(post_train_one))


def test_post_train_with_fewer_groups_and_demonstrations_than_processes_runs_as_one_process(tmp_path):
    """One prompt group and SFT batches of one: rank 1 rolls out, scores and trains nothing, yet takes part in
    every collective (a skipped one deadlocks or mismatches), so the run is rank 0's, i.e. one process's."""
    flags = ["--model", "tiny-moe", "--envs", "reasoning/add", "--steps", "2", "--prompts-per-step", "1",
             "--samples-per-prompt", "3", "--rollout.max-new-tokens", "40", "--rollout.max-len", "400",
             "--objective.algo", "dr_grpo", "--objective.kl-beta", "0.05", "--objective.overlong", "soft",
             "--objective.overlong-cache", "40", "--sft.steps", "10", "--sft.batch-size", "1", "--sft.lr", "3e-3",
             "--run.eval-problems", "1", "--run.no-plots", "--run.threads", "1"]
    ref = _post_train_single([*flags, "--run.out-dir", str(tmp_path / "one")])
    two = _torchrun(flags, tmp_path / "two", command=("post-train",))
    rows = _metric_rows(ref)
    assert any(r.get("losses/policy_loss") for r in rows)  # a real update happened
    assert _assert_same_metrics(_metric_rows(two), rows) < 1e-6
