"""The flagship pipeline (chimera flagship / make demo) end to end at toy size, through the CLI's own parsing:
every stage runs, the table and results have their structure, a rerun reuses finished stages, and a stage
interrupted mid-way resumes from its last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chimera.config import parse_cli
from chimera.flagship import ENVS, STAGES, FlagshipConfig, run_flagship

ROOT = Path(__file__).resolve().parents[1]

# a few steps per stage; the same flags shrink the README's `chimera flagship` line (tests/test_readme.py)
TOY = ["--pretrain.steps", "4", "--pretrain.data.batch-size", "4", "--pretrain.data.seq-len", "64",
       "--pretrain.run.eval-every", "4", "--pretrain.run.eval-samples", "2", "--pretrain.run.ckpt-every", "2",
       "--pretrain.run.log-every", "2",
       "--sft.steps", "4", "--sft.data.batch-size", "4", "--sft.data.seq-len", "64", "--sft.run.eval-every", "4",
       "--sft.run.eval-samples", "2", "--sft.run.ckpt-every", "2", "--sft.run.log-every", "2",
       "--rl.steps", "2", "--rl.prompts-per-step", "5", "--rl.samples-per-prompt", "2", "--rl.sft.steps", "2",
       "--rl.sft.batch-size", "4", "--rl.rollout.max-new-tokens", "24", "--rl.run.ckpt-every", "1",
       "--compress.distill-steps", "4", "--compress.batch-size", "2", "--compress.calib-samples", "4",
       "--compress.log-every", "2", "--compress.ckpt-every", "2",
       "--serve.budget-problems", "2", "--serve.speed-prompts", "1", "--serve.max-new-tokens", "8",
       "--run.eval-problems", "1"]


class Interrupt(Exception):
    """Stands for Ctrl-C in the middle of a stage."""


def toy_config(out: Path, results: Path | None = None) -> FlagshipConfig:
    argv = ["--preset", str(ROOT / "configs" / "flagship.json"), *TOY, "--run.out-dir", str(out),
            "--run.results", str(results or "")]
    cfg, _ = parse_cli(FlagshipConfig, argv, prog="chimera flagship", description="")
    return cfg


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy pipeline interrupted in the SFT stage after its step-2 checkpoint, then run again to the end."""
    out = tmp_path_factory.mktemp("flagship") / "pipe"
    results = out.parent / "demo.json"
    first: list[str] = []

    def interrupting(line, *a, **k):
        first.append(str(line))
        if "step      4/4" in str(line) and any("stage 2/5 sft" in seen for seen in first):
            raise Interrupt

    with pytest.raises(Interrupt):
        run_flagship(toy_config(out, results), log=interrupting)
    second: list[str] = []
    result = run_flagship(toy_config(out, results), log=lambda line, *a, **k: second.append(str(line)))
    return out, results, first, second, result


def test_toy_pipeline_runs_every_stage_and_writes_the_table(toy):
    out, results, _, second, result = toy
    assert json.loads(results.read_text()) == json.loads((out / "flagship.json").read_text())
    assert [r["stage"] for r in result["table"]] == ["pretrain", "sft", "rl start (demos SFT)", "rl", "student"]
    for row in result["table"]:
        assert set(row["accuracy"]) == set(ENVS)
        assert all(0.0 <= v <= 1.0 for v in row["accuracy"].values())
        assert 0 < row["params"]["active"] <= row["params"]["total"]
    student, rl = result["table"][-1], result["table"][-2]
    assert student["params"]["total"] <= 0.6 * rl["params"]["total"]
    assert student["decode_tok_s"]["plain"] > 0 and student["decode_tok_s"]["speculative"] > 0
    assert set(result["accuracy_vs_budget"]["student"]) == {"0%", "25%", "50%", "100%"}
    assert set(result["stage_seconds"]) == set(STAGES)
    for p in [*result["plots"]["accuracy_per_stage"], *result["plots"]["accuracy_vs_budget"],
              *[q for ps in result["plots"]["learning_curves"].values() for q in ps]]:
        assert Path(p).is_file(), p
    assert all(result["plots"]["learning_curves"][s] for s in ("pretrain", "sft", "rl", "compress"))
    # one line per environment after each stage, and the final table
    assert sum(line.startswith("[student] held-out") for line in second) == 1
    saved = json.loads((out / "config.json").read_text())  # the models the stages really started from
    assert saved["pretrain"]["model"] == "tiny-mtp" and "pretrain stage's model" in saved["sft"]["model"]
    assert "sft stage's model" in saved["rl"]["model"] and saved["rl"]["envs"] == list(ENVS)
    assert any("== flagship: held-out success per environment" in line for line in second)


def test_interrupted_stage_resumes_from_its_last_checkpoint(toy):
    out, _, first, second, _ = toy
    assert any("step      4/4" in line for line in first)  # the interruption came after step 4's log line
    assert any("pretrain: finished before" in line for line in second)
    assert any(line.startswith("[sft] resuming") for line in second)
    assert any("resumed" in line and "at step 2" in line for line in second)
    sft_runs = list((out / "sft").glob("sft-*"))
    assert len(sft_runs) == 1  # the same run folder continued, not a new one


def test_rerun_reuses_every_finished_stage(toy):
    out, _, _, _, result = toy
    before = {s: (out / s / "stage.json").read_text() for s in STAGES}
    lines: list[str] = []
    again = run_flagship(toy_config(out), log=lambda line, *a, **k: lines.append(str(line)))
    assert sum("finished before" in line for line in lines) == len(STAGES)
    assert {s: (out / s / "stage.json").read_text() for s in STAGES} == before
    assert again["table"] == result["table"]


def test_a_model_without_mtp_layers_is_refused():
    cfg = toy_config(Path("unused"))
    cfg.model = "tiny-moe"
    with pytest.raises(ValueError, match="has no MTP layers"):
        cfg.validate()


def test_a_finished_stage_with_other_options_is_refused_not_silently_reused(toy):
    out = toy[0]
    cfg = toy_config(out)
    cfg.sft.steps = 5
    with pytest.raises(ValueError, match=r"stage sft .* was finished with other options"):
        run_flagship(cfg, log=lambda *a, **k: None)


@pytest.mark.parametrize("flag, value, by", [
    ("--pretrain.model", "small", "--model"), ("--sft.model", "runs/x/model", "previous stage"),
    ("--rl.model", "runs/x/model", "previous stage"), ("--rl.envs", "reasoning/add", "--envs"),
    ("--sft.run.seed", "3", "--run.seed"), ("--rl.run.eval-problems", "3", "--run.eval-problems")])
def test_a_stage_option_the_pipeline_sets_is_refused_not_silently_overwritten(flag, value, by):
    argv = ["--preset", str(ROOT / "configs" / "flagship.json"), flag, value]
    with pytest.raises(ValueError, match=rf"the pipeline sets this field \(.*{by}.*\); leave {flag} out"):
        parse_cli(FlagshipConfig, argv, prog="chimera flagship", description="")


def test_the_preset_and_the_pipelines_own_options_pass():
    argv = ["--preset", str(ROOT / "configs" / "flagship.json"), "--model", "small-mtp", "--envs", "reasoning/add",
            "--run.seed", "3", "--sft.steps", "5"]
    cfg, _ = parse_cli(FlagshipConfig, argv, prog="chimera flagship", description="")
    assert (cfg.model, cfg.envs, cfg.run.seed, cfg.sft.steps) == ("small-mtp", ("reasoning/add",), 3, 5)
