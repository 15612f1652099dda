"""Dataclass configs: strict loading of JSON presets, CLI overrides through tyro, and errors that
name the offending key, its value and what is allowed."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A preset or override that does not fit the config dataclass."""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if len(args) == 2 and args[1] is Ellipsis else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists -> tuples)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"key '{key}' has value {value!r}; expected a table of {tp.__name__} fields")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"key '{key}' has value {value!r}; expected {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"key '{key}' has value {value!r}; allowed: {_type_name(tp)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"key '{key}' has value {value!r}; expected {_type_name(tp)}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"key '{key}' has value {value!r}; expected {len(args)} items")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"key '{key}' has value {value!r}; expected null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"key '{key}' has value {value!r}; expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"key '{key}' has value {value!r}; expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"key '{key}' has value {value!r}; expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"key '{key}' has value {value!r}; expected a string")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a dict, refusing unknown keys and values of the wrong type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints or key not in names:
            raise ConfigError(f"unknown key '{prefix}{key}' (allowed in {cls.__name__}: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{cls.__name__}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def load_preset(cls: type[T], path: str | Path) -> T:
    """Read a JSON preset into ``cls``; errors name the file, the key and the value."""
    path = Path(path)
    if not path.exists():
        presets = sorted(p.name for p in Path("configs").glob("*.json")) if Path("configs").is_dir() else []
        raise ConfigError(f"preset {path} does not exist (presets live in configs/"
                          + (f": {', '.join(presets)})" if presets else ")"))
    if path.name == "config.json" and (path.parent / "model.safetensors").exists():
        raise ConfigError(f"{path.parent} is a model checkpoint, not a run directory; pass the run directory "
                          f"that holds it (did you mean {path.parent.parent}?)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"preset {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} holds a JSON {type(data).__name__}; expected an object of "
                          f"{cls.__name__} fields")
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


PRESET_FLAG_HELP = {  # flag: (metavar, help)
    "--preset": ("PATH", "A JSON preset (configs/*.json) that gives the defaults; later flags override it."),
    "--resume": ("RUN_DIR", "A run directory (runs/NAME-TIMESTAMP) to continue from its latest checkpoint, with "
                            "its saved config; later flags override it (e.g. --steps to train longer)."),
}


def _with_preset_flags(cls: type[T], preset_flags: tuple[str, ...]) -> type[T]:
    """``cls`` with a string field per preset flag, so that --help lists them beside the options. They are
    read before tyro parses (they set its defaults), so tyro never sees them and they stay empty."""
    import tyro

    extra = [(f.lstrip("-").replace("-", "_"),
              Annotated[str, tyro.conf.arg(metavar=PRESET_FLAG_HELP[f][0], help=PRESET_FLAG_HELP[f][1])],
              dataclasses.field(default=""))
             for f in preset_flags]
    return dataclasses.make_dataclass(cls.__name__, extra, bases=(cls,))


def parse_cli(cls: type[T], argv: list[str], prog: str, description: str,
              preset_flags: tuple[str, ...] = ("--preset",)) -> tuple[T, dict[str, str]]:
    """Parse ``argv`` into ``cls``: ``--preset PATH`` (and other ``preset_flags``) are read first and
    give the defaults, the remaining flags override them (tyro checks their types)."""
    import tyro

    rest, flags = [], {}
    it = iter(argv)
    for arg in it:
        name, eq, val = arg.partition("=")
        if name in preset_flags:
            flags[name] = val if eq else next(it, "")
            if not flags[name]:
                raise ConfigError(f"{name} needs a value")
        else:
            rest.append(arg)
    default = load_preset(cls, flags["--preset"]) if flags.get("--preset") else None
    if "--resume" in flags:
        default = load_preset(cls, Path(flags["--resume"]) / "config.json")
    shown = _with_preset_flags(cls, preset_flags)  # the same fields, plus the preset flags for --help
    if default is not None:
        default = shown(**{f.name: getattr(default, f.name) for f in dataclasses.fields(cls) if f.init})
    parsed = tyro.cli(shown, args=rest, prog=prog, description=description, default=default)
    cfg = cls(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(cls) if f.init})
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return cfg, flags
