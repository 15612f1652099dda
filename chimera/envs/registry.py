"""Environment ids by family: ``gym/<Id>``, ``mujoco/<Id>``, ``minihack/<Task>``, ``nethack/<Task>``.

``minihack/Room-Random-5x5`` is MiniHack's ``MiniHack-Room-Random-5x5-v0``; ``minihack/Custom``
takes ``des_file=`` (a string, a path, or a MiniHack ``LevelGenerator``); ``nethack/NetHackScore``
is NLE's ``NetHackScore-v0``; ``mujoco/Centipede-N`` is chimera's generated N-legged walker (even N,
4..40). MiniHack's Boxoban and Crossing tasks are left out (see
``_UNSUPPORTED``); MultiRoom needs the ``minigrid`` package (in the envs extra).
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym

FAMILIES = ("gym", "mujoco", "minihack", "nethack")
CENTIPEDE_LISTED = (4, 6, 8, 10, 12, 20, 30, 40)  # any even N from 4 to 40 is accepted
NLE_DEFAULT_KEYS = ("glyphs", "blstats", "message")


def _import_nle() -> None:
    try:
        with warnings.catch_warnings():  # minihack 1.0.2 imports pkg_resources, which warns on every command
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            import minihack  # noqa: F401  (registers MiniHack ids)
        import nle  # noqa: F401  (registers NetHack ids)
    except ImportError as e:
        raise ImportError("NetHack / MiniHack environments need the envs extra: "
                          "pip install -e '.[envs]'") from e


def list_ids(family: str | None = None) -> list[str]:
    """Every id ``make`` accepts (NLE families only when nle / minihack are installed)."""
    ids = []
    if family in (None, "gym"):
        ids += [f"gym/{k.removesuffix('-v1').removesuffix('-v0')}" for k in
                ("CartPole-v1", "Acrobot-v1", "MountainCar-v0", "Pendulum-v1", "LunarLander-v3")
                if k in gym.registry and not k.startswith("LunarLander")]
    if family in (None, "mujoco"):
        ids += [f"mujoco/{k}" for k in ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Humanoid")]
        ids += [f"mujoco/Centipede-{n}" for n in CENTIPEDE_LISTED]
    if family in (None, "minihack", "nethack"):
        try:
            _import_nle()
        except ImportError:
            return ids
        if family in (None, "minihack"):
            ids += sorted(f"minihack/{k.removeprefix('MiniHack-').removesuffix('-v0')}"
                          for k in gym.registry if k.startswith("MiniHack-") and not _unsupported(k))
            ids.append("minihack/Custom")
        if family in (None, "nethack"):
            ids += sorted(f"nethack/{k.removesuffix('-v0')}" for k in gym.registry if k.startswith("NetHack"))
    return ids


# MiniHack tasks this setup cannot build: Boxoban levels are a separate download, and the ports of
# MiniGrid's Crossing tasks pass width/height that minigrid 3 refuses (an upstream mismatch).
_UNSUPPORTED = {"Boxoban": "its levels are a separate download (minihack/scripts/download_boxoban_levels.py)",
                "Crossing": "minihack 1.0.2's port fails with minigrid 3 (upstream incompatibility)"}


def _unsupported(gym_id: str) -> str | None:
    if "Custom" in gym_id:
        return "listed as minihack/Custom"
    return next((why for key, why in _UNSUPPORTED.items() if key in gym_id), None)


def _gym_id(name: str) -> str:
    if name in gym.registry:
        return name
    versions = sorted(k for k in gym.registry if k.split("-v")[0] == name)
    if not versions:
        raise KeyError(name)
    return versions[-1]


def _unknown(env_id: str, family: str) -> ValueError:
    close = difflib.get_close_matches(env_id, list_ids(family), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `chimera envs` lists the known ids"
    return ValueError(f"unknown environment id {env_id!r}{hint}")


def _nle_env(gym_id: str, kwargs: dict[str, Any]) -> gym.Env:
    """Construct an NLE / MiniHack env from its entry point so that max_episode_steps reaches it."""
    spec = gym.spec(gym_id)
    module, _, cls = spec.entry_point.partition(":")
    env_cls = getattr(importlib.import_module(module), cls)
    return env_cls(**{**spec.kwargs, **kwargs})


_DES_LEVEL = re.compile(r"^\s*(MAZE|LEVEL)\s*:", re.MULTILINE)


def _des_text(des: Any) -> str:
    """The des-file text of ``des_file=``: a des-file string, a path to one, or a MiniHack LevelGenerator."""
    what = "minihack/Custom needs des_file= (a des-file string, a path to a .des file, or a LevelGenerator)"
    if des is None:
        raise ValueError(what)
    if hasattr(des, "get_des"):
        des = des.get_des()
    elif isinstance(des, Path) or (isinstance(des, str) and "\n" not in des):
        if not Path(des).is_file():
            raise ValueError(f"des_file {str(des)!r} is not a file (and, one line long, not a des-file); {what}")
        try:
            des = Path(des).read_text()
        except UnicodeDecodeError as e:
            raise ValueError(f"des_file {str(des)!r} is not a text file ({e})") from e
    if not isinstance(des, str):
        raise TypeError(f"des_file is a {type(des).__name__}; {what}")
    if not _DES_LEVEL.search(des):  # NetHack would build some default level instead of failing
        raise ValueError("des_file declares no level: a des-file starts with a MAZE: or LEVEL: line")
    return des


_MUJOCO_NOISE = "compiler attribute 'settotalmass' is deprecated"


def _quiet_make(gid: str, **kwargs: Any) -> gym.Env:
    """gym.make for a MuJoCo env without the C-level deprecation line MuJoCo 4 prints for gymnasium's XML
    (HalfCheetah's `settotalmass`) once per env; anything else it prints is passed on."""
    from chimera.envs.nle import capture_fds

    with capture_fds() as out:
        env = gym.make(gid, **kwargs)
    rest = [line for line in out[0].splitlines(keepends=True) if _MUJOCO_NOISE not in line and line.strip()]
    if rest:
        sys.stderr.write("".join(rest))
    return env


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """A gymnasium env for a chimera id (see module docstring). NLE families accept
    ``max_episode_steps``, ``observation_keys`` and ``crop_size`` (an egocentric glyph crop)."""
    family, _, name = env_id.partition("/")
    if family not in FAMILIES or not name:
        raise ValueError(f"environment id {env_id!r} must look like FAMILY/NAME with FAMILY one of "
                         f"{', '.join(FAMILIES)} (e.g. gym/CartPole, minihack/Room-5x5)")
    if family == "mujoco" and name.startswith("Centipede"):
        from chimera.envs.centipede import make_centipede

        return make_centipede(name, **kwargs)
    if family in ("gym", "mujoco"):
        try:
            gid = _gym_id(name)
        except KeyError:
            raise _unknown(env_id, family) from None
        if family == "mujoco":
            try:
                import mujoco  # noqa: F401
            except ImportError as e:
                raise ImportError("MuJoCo environments need the envs extra: pip install -e '.[envs]'") from e
            return _quiet_make(gid, **kwargs)
        return gym.make(gid, **kwargs)

    _import_nle()
    from chimera.envs.nle import NLEWrapper, capture_fds, check_des_output

    crop = kwargs.pop("crop_size", 0)
    kwargs.setdefault("observation_keys", NLE_DEFAULT_KEYS)
    if family == "minihack" and name == "Custom":
        des = _des_text(kwargs.pop("des_file", None))
        with capture_fds() as out:
            env = _nle_env("MiniHack-Navigation-Custom-v0", {**kwargs, "des_file": des})
        check_des_output(out[0], des)
        return NLEWrapper(env, crop)
    prefix = "MiniHack-" if family == "minihack" else ""
    try:
        gid = _gym_id(prefix + name)
    except KeyError:
        raise _unknown(env_id, family) from None
    why = _unsupported(gid) if family == "minihack" else None
    if why:
        raise ValueError(f"{env_id} is not supported here: {why}")
    return NLEWrapper(_nle_env(gid, kwargs), crop)
