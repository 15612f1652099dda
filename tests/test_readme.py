"""Every command block of the README runs as written, at toy budgets.

The README is parsed here, so an example is tested the day it is written. Each ``.venv/bin/chimera``
line of a ```bash block runs, in README order, as ``python -m chimera`` in one scratch directory
(``configs/`` linked in), with flags appended that shrink its budget (later flags win). Run names
in the README (``runs/lm-quick-20261129-050000``, ``runs/demo-lm-*/model``) stand for the runs that
earlier lines made, so they are resolved to those. ``chimera serve`` is started, the README's client
block is run against it, and it is stopped. Lines that are not chimera commands must be in
``NOT_RUN`` with the reason; anything else fails, so an example cannot slip past.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PREFIX = ".venv/bin/chimera"

# lines of bash blocks that are not chimera commands, and why they are not run here
NOT_RUN = {
    "make demo": "the flagship run itself (minutes); CI runs `make test`",
    "make test": "this test suite",
    "make demo-agents": "the agents demo itself (minutes)",
    "pip install -e '.[serve]'": "CI installs the dev extra, which holds the serve packages",
}

# flags appended per command (argv prefix) so that every run is a few steps; later flags win
TOY = {
    ("train-lm",): ["--steps", "2", "--run.eval-every", "2", "--run.eval-samples", "4", "--run.log-every", "1"],
    ("post-train",): ["--steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
                      "--run.eval-problems", "2", "--sft.steps", "0"],
    ("train-rl",): ["--total-steps", "64", "--ppo.num-steps", "16", "--num-envs", "4", "--ppo.minibatches", "2"],
    ("eval-rl",): ["--episodes", "1"],
    ("envs", "check"): ["--steps", "50"],
    ("generate",): ["--max-new-tokens", "12"],
    ("prune",): ["--calib-samples", "8"],
    ("distill",): ["--steps", "2", "--run.eval-every", "2", "--run.eval-samples", "4"],
    ("compress",): ["--score-steps", "1", "--distill-steps", "1", "--calib-samples", "8", "--eval-samples", "4"],
    ("nethack", "eval"): ["--episodes", "2"],
    ("flagship",): ["--pretrain.steps", "4", "--pretrain.data.batch-size", "4", "--pretrain.data.seq-len", "64",
                    "--pretrain.run.eval-every", "4", "--pretrain.run.eval-samples", "2", "--sft.steps", "4",
                    "--sft.data.batch-size", "4", "--sft.data.seq-len", "64", "--sft.run.eval-every", "4",
                    "--sft.run.eval-samples", "2", "--rl.steps", "1", "--rl.prompts-per-step", "5",
                    "--rl.samples-per-prompt", "2", "--rl.sft.steps", "2", "--rl.sft.batch-size", "4",
                    "--rl.rollout.max-new-tokens", "24", "--compress.distill-steps", "2", "--compress.batch-size", "2",
                    "--compress.calib-samples", "4", "--serve.budget-problems", "2", "--serve.speed-prompts", "1",
                    "--serve.max-new-tokens", "8", "--run.eval-problems", "1", "--run.results", ""],
    ("clrs", "train"): ["--steps", "2", "--batch-size", "4", "--val-samples", "4", "--test-samples", "4",
                        "--eval-every", "2"],
}
RESUMED_STEPS = {"train-lm": "4", "post-train": "2"}  # a resumed toy run goes on past its first budget
RUN_NAME = re.compile(r"^runs/(?P<name>[a-z0-9-]+?)-\d{8}-\d{6}(?P<rest>/.*)?$")
TIMEOUT = 600


TORCHRUN = ".venv/bin/torchrun"


@dataclass(frozen=True)
class Command:
    line: int
    argv: tuple[str, ...]
    launcher: tuple[str, ...] = ()
    """torchrun's own flags, for a line that runs chimera under torchrun."""

    @property
    def id(self) -> str:
        return f"L{self.line}:" + ("torchrun " if self.launcher else "") + " ".join(self.argv)[:60]


def readme_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of each fenced block."""
    blocks, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), i + 1, []
            else:
                blocks.append((lang, start, body))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, "README.md has an unclosed ``` block"
    return blocks


def readme_commands(text: str) -> list[Command]:
    commands = []
    for lang, start, body in readme_blocks(text):
        if lang != "bash":
            continue
        pending, first = "", 0
        for offset, line in enumerate(body):
            if not pending:
                first = start + offset
            pending += line.rstrip()
            if pending.endswith("\\"):  # continued on the next line
                pending = pending[:-1] + " "
                continue
            words, pending = shlex.split(pending, comments=True), ""
            if not words:
                continue
            if words[0] == TORCHRUN:
                assert "chimera" in words, (
                    f"README.md line {first}: a torchrun line must run `-m chimera ...`")
                at = words.index("chimera")
                assert words[at - 1] == "-m", f"README.md line {first}: expected `-m chimera`"
                commands.append(Command(first, tuple(words[at + 1:]), tuple(words[1:at - 1])))
                continue
            if words[0] != PREFIX:
                assert shlex.join(words) in NOT_RUN, (
                    f"README.md line {first}: {shlex.join(words)!r} is neither a `{PREFIX}` command nor listed in "
                    "NOT_RUN in tests/test_readme.py (say there why it is not run)")
                continue
            commands.append(Command(first, tuple(words[1:])))
    return commands


def client_block(text: str) -> str:
    """The Python block that talks to `chimera serve`."""
    blocks = [body for lang, _, body in readme_blocks(text) if lang == "python" and any("OpenAI(" in b for b in body)]
    assert len(blocks) == 1, "expected one README python block using the OpenAI client"
    return "\n".join(blocks[0])


COMMANDS = readme_commands(README.read_text())


def test_the_readme_has_commands_of_every_kind():
    kinds = {c.argv[0] for c in COMMANDS}
    assert {"train-lm", "train-rl", "eval-rl", "generate", "post-train", "serve", "clrs", "prune"} <= kinds
    for c in COMMANDS:  # every kind that trains or samples is shrunk here, or it would run for minutes
        assert c.argv[0] in {"envs", "models", "report", "serve", "clrs", "nethack"} or any(
            c.argv[: len(k)] == k for k in TOY), f"no toy budget for README line {c.line}: {c.argv[0]}"


def test_the_readme_names_every_model_size_and_preset():
    from chimera.models.config import SIZES

    text = README.read_text()
    sizes = re.search(r"^Sizes: (.*?)counted on the meta device", text, re.S | re.M)
    assert sizes, "README.md lost its 'Sizes: ...' paragraph"
    assert not [n for n in SIZES if f"`{n}`" not in sizes[1]], "sizes missing from the README's Sizes paragraph"
    assert not [p.name for p in (ROOT / "configs").glob("*.json") if f"configs/{p.name}" not in text]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    (work / "configs").symlink_to(ROOT / "configs")
    return work


def _resolve(arg: str, work: Path, line: int) -> str:
    """A README run name stands for the latest run of that name that an earlier line made."""
    m = RUN_NAME.match(arg)
    if m:
        pattern = f"runs/{m['name']}-*{m['rest'] or ''}"
    elif arg.startswith("runs/") and "*" in arg:
        pattern = arg
    else:
        return arg
    found = sorted(work.glob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"README line {line} uses {arg}, but no earlier README command made {pattern}"
    return str(found[-1].relative_to(work))


def _argv(cmd: Command, work: Path) -> list[str]:
    argv = [_resolve(a, work, cmd.line) for a in cmd.argv]
    for key, flags in TOY.items():
        if tuple(argv[: len(key)]) == key:
            argv += flags
    if "--resume" in argv and argv[0] in RESUMED_STEPS:
        argv += ["--steps", RESUMED_STEPS[argv[0]]]
    return argv


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MPLBACKEND="Agg", NO_COLOR="1")
    env.pop("CHIMERA_DEMO", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_ask(argv: list[str], work: Path) -> str:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "chimera", *argv, "--port", str(port)], cwd=work, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        import httpx

        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"chimera serve exited: {server.stdout.read()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "chimera serve did not answer /v1/models within 180 s"
            time.sleep(0.5)
        client = client_block(README.read_text()).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        out = subprocess.run([sys.executable, "-c", client], cwd=work, env=_env(), capture_output=True, text=True,
                             timeout=TIMEOUT)
        assert out.returncode == 0, f"the README's client block failed:\n{out.stdout}\n{out.stderr}"
        return out.stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.id)
def test_readme_command_runs_as_written(cmd: Command, workspace: Path):
    argv = _argv(cmd, workspace)
    if argv[0] == "serve":
        assert _serve_and_ask(argv, workspace).strip()
        return
    launch = [sys.executable, "-m", "torch.distributed.run", *cmd.launcher] if cmd.launcher else [sys.executable]
    out = subprocess.run([*launch, "-m", "chimera", *argv], cwd=workspace, env=_env(), capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert out.returncode == 0, (f"README line {cmd.line}: chimera {' '.join(argv)} exited {out.returncode}\n"
                                 f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}")
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
