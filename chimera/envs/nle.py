"""NetHack / MiniHack wrappers that fix the sharp edges which silently corrupt training.

- ``max_episode_steps`` reaches the environment's own step limit (``gym.make`` would add an
  outer limit only);
- a time-limit end (``end_status == ABORTED``) is reported as a truncation, not a termination;
- ``reset(seed=s)`` really seeds NetHack (``env.unwrapped.seed(core, disp, reseed=False)``);
- the egocentric crop is cut from one padded buffer instead of padding every key every step;
- a des-file with an error raises, naming the line, instead of NetHack building another level.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np

ABORTED = -1


@contextmanager
def capture_fds():
    """Capture what C code writes to file descriptors 1 and 2 (NetHack prints des errors there)."""
    with tempfile.TemporaryFile() as tmp:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        out: list[str] = []
        try:
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


_DES_ERROR = re.compile(r"line (\d+), pos (\d+): (.*)")


def check_des_output(text: str, des: str) -> None:
    """Raise ValueError if NetHack's des-file compiler reported an error."""
    m = _DES_ERROR.search(text)
    if m:
        line = int(m.group(1))
        lines = des.splitlines()
        src = lines[line - 1] if 0 < line <= len(lines) else ""
        raise ValueError(f"des-file error at line {line}, column {m.group(2)}: {m.group(3).strip()} "
                         f"(line {line}: {src!r}); fix the level description")


class NLEWrapper(gym.Wrapper):
    """Seeding, truncation and crop handling for NLE-based environments (see module docstring)."""

    def __init__(self, env: gym.Env, crop_size: int = 0):
        super().__init__(env)
        self.crop_size = crop_size
        self._unseedable = False
        spaces = dict(env.observation_space.spaces)
        if crop_size:
            if "glyphs" not in spaces or "blstats" not in spaces:
                raise ValueError("crop_size needs the 'glyphs' and 'blstats' observation keys")
            r = crop_size // 2
            h, w = spaces["glyphs"].shape
            self._pad = np.zeros((h + 2 * r, w + 2 * r), dtype=spaces["glyphs"].dtype)
            spaces["glyphs_crop"] = gym.spaces.Box(0, spaces["glyphs"].high.max(), (crop_size, crop_size),
                                                   dtype=spaces["glyphs"].dtype)
            self.observation_space = gym.spaces.Dict(spaces)

    def _crop(self, obs: dict[str, Any]) -> dict[str, Any]:
        if self.crop_size:
            r = self.crop_size // 2
            g = obs["glyphs"]
            self._pad[r:r + g.shape[0], r:r + g.shape[1]] = g  # borders stay zero: no np.pad per step
            x, y = int(obs["blstats"][0]), int(obs["blstats"][1])
            obs = dict(obs)
            obs["glyphs_crop"] = self._pad[y:y + self.crop_size, x:x + self.crop_size].copy()
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None and not self._unseedable:
            try:
                self.env.unwrapped.seed(core=seed, disp=seed + 1, reseed=False)
            except Exception as e:  # NetHackChallenge refuses seeding by design: its games are random
                self._unseedable = True
                warnings.warn(f"{self.env.unwrapped.__class__.__name__} cannot be seeded ({e}); its episodes "
                              f"are not reproducible, as the challenge protocol intends", stacklevel=2)
        obs, info = self.env.reset()  # reset(seed=...) would not seed NetHack; options={} raises
        return self._crop(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated and int(info.get("end_status", 0)) == ABORTED:
            terminated, truncated = False, True  # the step limit ended it: bootstrap the value
        return self._crop(obs), reward, terminated, truncated, info
