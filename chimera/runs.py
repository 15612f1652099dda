"""Run directories: resolved config, metrics (JSONL, optional TensorBoard), atomic checkpoints, resume.

Layout::

    runs/<name>-<timestamp>/
        config.json         the resolved config the run was started with
        metrics.jsonl       one JSON object per log step ({"step": ..., "losses/train_loss": ...})
        checkpoints/        step_00000100.pt ... (last N kept) and `latest` naming the newest
        plots/              PNGs written by `chimera report` and at the end of training

A checkpoint is written to a temporary file, flushed to disk and renamed, so a process killed
while writing leaves the previous checkpoint intact and `latest` pointing at it. Checkpoints hold
tensors, dicts, lists, tuples, strings and numbers only, and are read with
``torch.load(weights_only=True)``: a run directory someone sent you cannot run code when it is
resumed or evaluated, and a file that would need more is refused with an error saying what it
needs. Resuming never destroys what it cannot read: unreadable checkpoints are moved to
``checkpoints/unreadable/``, and a run none of whose checkpoints can be read is refused unless
``restart_if_unreadable`` asks to train it again from step 0.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class RunSettings:
    """Where a run lives and how it logs and checkpoints; each trainer extends it with its own fields."""

    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    keep_checkpoints: int = 3
    tensorboard: bool = False
    plots: bool = True
    """Write PNG plots of the logged metrics at the end of the run."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""
    restart_if_unreadable: bool = False
    """With --resume: when none of the run's checkpoints can be read, train it again from step 0 (the
    unreadable files are moved to checkpoints/unreadable/) instead of refusing."""


class CheckpointError(ValueError):
    """A checkpoint (or a run's set of them) that cannot be used; the message says why and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that a weights-only load refuses: unpickling it would call code outside the allow-list."""


def rng_state() -> dict[str, Any]:
    """The state of every random generator a run uses, as tensors, tuples and numbers (weights-only loadable)."""
    np_state = np.random.get_state(legacy=False)  # MT19937: key (624,) uint32, pos, cached Gaussian
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"bit_generator": np_state["bit_generator"],
                      "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    npst = state["numpy"]
    np.random.set_state({"bit_generator": npst["bit_generator"], "has_gauss": npst["has_gauss"],
                         "gauss": npst["gauss"],
                         "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": npst["pos"]}})
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _atomic_write_bytes(dest: Path, write) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)


_LEAVES = (torch.Tensor, str, bytes, int, float, bool, type(None), torch.dtype, torch.device)


def check_loadable(state: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value a weights-only load would refuse (numpy arrays, objects)."""
    if isinstance(state, dict):
        for k, v in state.items():
            if not isinstance(k, str | int):
                raise TypeError(f"checkpoint {where} has a key {k!r} of type {type(k).__name__}; use str or int keys")
            check_loadable(v, f"{where}.{k}")
    elif isinstance(state, list | tuple):
        for i, v in enumerate(state):
            check_loadable(v, f"{where}[{i}]")
    elif not isinstance(state, _LEAVES):
        raise TypeError(f"checkpoint {where} is a {type(state).__module__}.{type(state).__qualname__}, which a "
                        f"weights-only load refuses; store tensors, dicts, lists, strings and numbers "
                        f"(e.g. torch.from_numpy(array), or .tolist())")


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a checkpoint's pickle names outside torch's weights-only allow-list ([] if none or unreadable)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint, or truncated: then it is unreadable, not unsafe
        return []


class CheckpointManager:
    """Atomic checkpoints in one folder, the last ``keep`` kept, with a ``latest`` pointer."""

    def __init__(self, folder: str | Path, keep: int = 3):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.folder / f"step_{step:08d}.pt"

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` (plus the step) for ``step`` atomically and point ``latest`` at it."""
        check_loadable(state)
        path = self.path_for(step)
        _atomic_write_bytes(path, lambda f: torch.save({**state, "step": step}, f))
        _atomic_write_bytes(self.folder / "latest", lambda f: f.write(path.name.encode()))
        for old in self.list()[:-self.keep] if self.keep > 0 else []:
            old.unlink(missing_ok=True)
        return path

    def list(self) -> list[Path]:
        return sorted(self.folder.glob("step_*.pt"))

    def load(self, path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
        """One checkpoint, read without running code from it (``torch.load(weights_only=True)``).

        Raises UnsafeCheckpointError for a file that needs more than tensors and plain containers,
        CheckpointError for one that is truncated or corrupt."""
        path = Path(path)
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # a truncated file raises from deep inside the unpickler
            unsafe = _unsafe_globals(path)
            if unsafe:
                raise UnsafeCheckpointError(
                    f"refused to load {path}: it needs {', '.join(unsafe)}, which a weights-only load does not "
                    f"allow (unpickling them can run code). Chimera's checkpoints hold tensors, dicts, lists and "
                    f"numbers only, so this file was written by something else or by an older chimera; if you "
                    f"trust its source, load it with torch.load(path, weights_only=False) and save its tensors "
                    f"again") from None
            reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
            raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {reason})") from e

    def _candidates(self) -> list[Path]:
        """Checkpoint files, oldest first, with the one ``latest`` names last."""
        candidates = self.list()
        pointer = self.folder / "latest"
        if pointer.exists():
            named = self.folder / pointer.read_text().strip()
            if named in candidates:
                candidates.remove(named)
                candidates.append(named)
        return candidates

    def load_newest(self, map_location: str = "cpu") -> tuple[dict[str, Any] | None, list[tuple[Path, str]]]:
        """The newest checkpoint that loads (None if none does), and the newer ones that could not be read
        with the reason. An unsafe checkpoint raises UnsafeCheckpointError: it is never skipped silently."""
        unreadable = []
        for path in reversed(self._candidates()):
            try:
                return self.load(path, map_location), unreadable
            except UnsafeCheckpointError:
                raise
            except CheckpointError as e:
                unreadable.append((path, str(e)))
        return None, unreadable

    def load_latest(self, map_location: str = "cpu") -> dict[str, Any] | None:
        """The newest checkpoint that loads; a corrupt or missing newest one falls back to older ones."""
        state, unreadable = self.load_newest(map_location)
        for _, why in unreadable:
            print(f"warning: checkpoint {why}; trying an older one")
        return state

    def set_aside(self, paths: list[Path]) -> Path:
        """Move unreadable checkpoints to ``unreadable/`` (where saving and rotation never touch them)."""
        dest = self.folder / "unreadable"
        dest.mkdir(exist_ok=True)
        for path in paths:
            target, n = dest / path.name, 1
            while target.exists():
                n += 1
                target = dest / f"{path.stem}.{n}{path.suffix}"
            os.replace(path, target)
        return dest


class Run:
    """A run directory with its config, metrics log and checkpoints."""

    active: Run | None = None
    """The run this process opened last (the CLI names it when a run is interrupted)."""

    def __init__(self, path: str | Path, keep_checkpoints: int = 3, tensorboard: bool = False):
        Run.active = self
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints = CheckpointManager(self.path / "checkpoints", keep_checkpoints)
        self.metrics_path = self.path / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("tensorboard=True needs the tensorboard package: pip install tensorboard") from e
            self._tb = SummaryWriter(str(self.path / "tb"))

    @classmethod
    def create(cls, out_dir: str | Path, name: str, config: dict[str, Any], **kw: Any) -> Run:
        """A new run folder ``<out_dir>/<name>-<timestamp>`` with ``config.json`` written."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(out_dir) / f"{name}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path(out_dir) / f"{name}-{stamp}-{n}"
        run = cls(path, **kw)
        (run.path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return run

    @classmethod
    def start(cls, settings: RunSettings, config: dict[str, Any],
              resume: str | Path | None = None) -> tuple[Run, dict[str, Any] | None]:
        """A new run folder, or the one to resume with its latest loadable checkpoint (None if it has none).

        Checkpoints newer than the one resumed from that cannot be read are moved to
        ``checkpoints/unreadable/``. When the run has checkpoints and none can be read, CheckpointError
        is raised and nothing is changed, unless ``settings.restart_if_unreadable``."""
        kw = dict(keep_checkpoints=settings.keep_checkpoints, tensorboard=settings.tensorboard)
        if not resume:
            return cls.create(settings.out_dir, settings.name, config, **kw), None
        run = cls.open(resume, **kw)
        state, unreadable = run.checkpoints.load_newest()
        if state is None and unreadable and not settings.restart_if_unreadable:
            reasons = "\n".join(f"  {why}" for _, why in unreadable)
            raise CheckpointError(
                f"cannot resume {run.path}: none of its {len(unreadable)} checkpoint(s) can be read:\n{reasons}\n"
                f"Nothing was changed. To train this run again from step 0 (keeping the unreadable files in "
                f"{run.checkpoints.folder / 'unreadable'}), add --run.restart-if-unreadable; or start a new run "
                f"without --resume.")
        if unreadable:
            dest = run.checkpoints.set_aside([p for p, _ in unreadable])
            print(f"warning: moved {len(unreadable)} unreadable checkpoint(s) of {run.path} to {dest}: "
                  + "; ".join(why for _, why in unreadable))
        return run, state

    @classmethod
    def open(cls, path: str | Path, **kw: Any) -> Run:
        """An existing run folder, for resuming."""
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a run directory (no config.json); pass the folder under runs/")
        return cls(path, **kw)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one JSON line of metrics for ``step`` (and to TensorBoard when enabled)."""
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}, "time": time.time()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), step)

    def truncate_metrics(self, after_step: int) -> None:
        """Drop logged rows past ``after_step`` (they are redone when a run resumes)."""
        if not self.metrics_path.exists():
            return
        rows = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= after_step]
        _atomic_write_bytes(self.metrics_path, lambda f: f.write("".join(r + "\n" for r in rows).encode()))

    def metrics(self) -> list[dict[str, float]]:
        return read_metrics(self.metrics_path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: str | Path, out_dir: str | Path, keys: list[str] | None = None) -> list[Path]:
    """One PNG per metric prefix (losses, charts, eval, ...) with a line per metric; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(metrics_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({k for r in rows for k in r if k not in ("step", "time")})
    if keys:
        names = [n for n in names if n in keys]
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.split("/")[0], []).append(n)
    paths = []
    for group, members in groups.items():
        cols = min(4, len(members))
        rows_n = -(-len(members) // cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
        for ax in axes.flat[len(members):]:
            ax.axis("off")
        for ax, name in zip(axes.flat, members):
            pts = [(r["step"], r[name]) for r in rows if name in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # long step numbers must not run together
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{group.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
