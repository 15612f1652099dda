import json

import pytest

from chimera.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_explains_itself(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"chimera {name}" in out and len(out) > 200


def test_unknown_command_is_refused(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_bad_preset_key_gives_named_error(tmp_path, capsys):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"stepz": 3}))
    assert main(["train-lm", "--preset", str(p)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'stepz'" in err and "allowed in TrainLMConfig: model, steps" in err


def test_bad_model_name_gives_named_error(capsys):
    assert main(["train-lm", "--model", "gigantic"]) == 2
    assert "model='gigantic' is neither a named size" in capsys.readouterr().err


def test_models_lists_released_shapes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "nemotron-3-nano-30b-a3b" in out and "31.58B" in out


def test_train_then_generate_then_report(tmp_path, capsys):
    assert main(["train-lm", "--model", "tiny", "--steps", "6", "--data.seq-len", "64", "--data.batch-size", "4",
                 "--run.out-dir", str(tmp_path), "--run.eval-samples", "2", "--run.log-every", "2"]) == 0
    run = next(tmp_path.iterdir())
    assert (run / "model" / "config.json").exists() and (run / "plots" / "losses.png").exists()
    assert len([line for line in (run / "metrics.jsonl").read_text().splitlines() if line]) == 4
    capsys.readouterr()
    assert main(["generate", str(run / "model"), "--prompt", "1+1=", "--max-new-tokens", "5"]) == 0
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "losses/train_loss" in out and "eval/accuracy/add" in out


def test_generate_on_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_generate_with_thinking_budget_and_speculative_refusal(tmp_path, capsys):
    from chimera.models import HybridLM, get_config

    HybridLM(get_config("tiny")).save_pretrained(tmp_path / "m")
    assert main(["generate", str(tmp_path / "m"), "--prompt", "hi", "--thinking-budget", "4",
                 "--temperature", "1.0", "--max-new-tokens", "30", "--show-special"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<think>") and "</think>" in out  # the budget closed the thinking segment
    assert main(["generate", str(tmp_path / "m"), "--speculative"]) == 2
    assert "has no MTP layers" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "m"), "--temperature", "-1"]) == 2
    assert "check --temperature" in capsys.readouterr().err


def test_generate_shows_thinking_apart_and_refuses_what_it_cannot_do(tmp_path, capsys):
    """The trace and the answer print apart; --answer-budget works alone; an empty prompt and a run
    directory given for a model are refused naming the fix."""
    from chimera.models import HybridLM, get_config

    HybridLM(get_config("tiny")).save_pretrained(tmp_path / "m")
    m = str(tmp_path / "m")
    assert main(["generate", m, "--prompt", "hi", "--thinking-budget", "3", "--answer-budget", "2",
                 "--temperature", "1.0", "--max-new-tokens", "30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("thinking: ") and lines[1].startswith("answer: ")
    assert main(["generate", m, "--prompt", "hi", "--answer-budget", "0", "--thinking-budget", "0",
                 "--show-special", "--max-new-tokens", "30"]) == 0
    assert capsys.readouterr().out.rstrip("\n").endswith("</think>")  # nothing after </think>
    assert main(["generate", m, "--prompt", "  "]) == 2
    assert "--prompt is empty" in capsys.readouterr().err
    (tmp_path / "run" / "model").mkdir(parents=True)
    HybridLM(get_config("tiny")).save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    assert main(["generate", str(tmp_path / "run")]) == 2
    assert f"did you mean {tmp_path / 'run' / 'model'}?" in capsys.readouterr().err
    assert main(["train-lm", "--resume", str(tmp_path / "run" / "model")]) == 2
    assert "is a model checkpoint, not a run directory" in capsys.readouterr().err


def test_generate_speculative_sampling(tmp_path, capsys):
    from chimera.models import HybridLM, get_config

    HybridLM(get_config("tiny-mtp")).save_pretrained(tmp_path / "m")
    args = ["generate", str(tmp_path / "m"), "--prompt", "hi", "--max-new-tokens", "12", "--speculative",
            "--temperature", "0.9", "--top-p", "0.95", "--seed", "3", "--no-chat"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "[speculative:" in first.err and "acceptance" in first.err
    assert main(args) == 0
    assert capsys.readouterr().out == first.out  # the seed fixes the draws
    chat = ["generate", str(tmp_path / "m"), "--prompt", "hi", "--max-new-tokens", "30", "--speculative",
            "--thinking-budget", "4", "--show-special"]
    assert main(chat) == 0
    out = capsys.readouterr().out
    assert out.startswith("<think>") and out.count("</think>") == 1
    import re

    from chimera.tokenizer import SPECIAL_TOKENS

    thinking = re.sub("|".join(map(re.escape, SPECIAL_TOKENS)), "#", out.split("</think>")[0].removeprefix("<think>"))
    assert len(thinking) <= 4 + 1  # a token is a byte (at most one character) or a special token; grace 1


def test_tensorboard_logging_is_optional(tmp_path):
    pytest.importorskip("tensorboard")
    from chimera.runs import Run

    run = Run.create(tmp_path, "tb", {}, tensorboard=True)
    run.log(1, {"losses/train_loss": 1.0})
    run.close()
    assert list((run.path / "tb").iterdir())


def test_clrs_subcommands(capsys):
    assert main(["clrs", "list"]) == 0
    assert "graphs" in capsys.readouterr().out
    assert main(["clrs", "sample", "bfs", "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "-- input node s (mask_one, 4)" in out and "-- output node pi (pointer, 4)" in out
    assert main(["clrs", "fly"]) == 2
    assert "unknown clrs action 'fly'" in capsys.readouterr().err


def test_ctrl_c_prints_one_line_with_the_resume_command(tmp_path, capsys, monkeypatch):
    """Ctrl-C during training: no traceback, the step, the last checkpoint and the command that resumes."""
    import chimera.train.lm as lm

    real_log = lm.Run.log

    def log_then_interrupt(self, step, metrics):
        real_log(self, step, metrics)
        if step >= 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(lm.Run, "log", log_then_interrupt)
    code = main(["train-lm", "--model", "tiny", "--steps", "8", "--data.seq-len", "64", "--data.batch-size", "2",
                 "--run.out-dir", str(tmp_path), "--run.eval-samples", "1", "--run.log-every", "2",
                 "--run.ckpt-every", "2"])
    err = capsys.readouterr().err
    run = next(tmp_path.iterdir())
    assert code == 130 and "Traceback" not in err
    assert f"interrupted at step 4; last checkpoint {run / 'checkpoints'}" in err
    assert err.strip().endswith(f"continue with: chimera train-lm --resume {run}")


def test_a_seq_len_too_short_for_a_task_is_refused_before_the_run_starts(tmp_path, capsys):
    """Every task's longest example is checked before step 1; a refused start leaves no run directory."""
    code = main(["train-lm", "--preset", "configs/lm-quick.json", "--data.tasks", "add", "search",
                 "--data.seq-len", "80", "--run.out-dir", str(tmp_path)])
    assert code == 2
    assert "data.seq_len=80 is too short for task 'search'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_misspelt_clrs_algorithm_suggests_the_close_match(capsys):
    assert main(["clrs", "sample", "insertion-sort"]) == 2
    assert "did you mean 'insertion_sort'?" in capsys.readouterr().err


def test_making_minihack_and_halfcheetah_prints_no_dependency_noise():
    """minihack's pkg_resources warning and MuJoCo 4's `settotalmass` line used to open every command."""
    import subprocess
    import sys

    code = ("from chimera.envs import make\n"
            "for i in ('minihack/Room-5x5', 'mujoco/HalfCheetah', 'mujoco/HalfCheetah'):\n"
            "    make(i).reset(seed=0)\n")
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pkg_resources" not in out.stderr and "settotalmass" not in out.stderr + out.stdout, out.stderr


def test_report_aligns_long_metric_names(tmp_path, capsys):
    import json

    rows = [{"step": 150000, "charts/episodic_return/minihack/Room-Random-5x5": 0.5, "charts/SPS": 1234.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["report", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "(step" in line]
    assert len(lines) == 2 and len({line.index("(step") for line in lines}) == 1, lines
    assert (tmp_path / "plots" / "charts.png").exists()


def test_run_headers_name_the_precision_and_the_core_cleanly(tmp_path, capsys):
    """The first line of a run says what trains: train-lm names dtype and GEMM precision, train-rl the core
    without a stray space before the comma."""
    assert main(["train-lm", "--model", "tiny", "--steps", "1", "--data.seq-len", "64", "--data.batch-size", "2",
                 "--precision", "nvfp4", "--run.out-dir", str(tmp_path / "lm"), "--run.eval-samples", "1",
                 "--run.no-plots"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run "))
    assert "1 steps, float32 with nvfp4 GEMMs" in header
    assert main(["train-rl", "--tasks", "gym/CartPole", "--num-envs", "2", "--total-steps", "32",
                 "--ppo.num-steps", "16", "--ppo.minibatches", "2", "--agent.core", "mlp",
                 "--run.out-dir", str(tmp_path / "rl"), "--run.no-plots"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("run "))
    assert "core mlp, 1 iterations" in header and " ," not in header


def test_under_torchrun_a_config_error_is_printed_by_rank_0_alone(tmp_path, capsys, monkeypatch):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"stepz": 3}))
    monkeypatch.setenv("RANK", "1")
    assert main(["train-lm", "--preset", str(p)]) == 2
    assert capsys.readouterr().err == ""  # the same error on every rank: only rank 0 prints it
    assert main(["generate", str(tmp_path / "missing"), "--prompt", "1+1="]) == 2
    assert "chimera generate (rank 1): error:" in capsys.readouterr().err  # may be this rank's own: printed
    monkeypatch.setenv("RANK", "0")
    assert main(["train-lm", "--preset", str(p)]) == 2
    assert "unknown key 'stepz'" in capsys.readouterr().err
