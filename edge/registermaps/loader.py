"""Loading register maps: built-in ones by name, an operator's own from a TOML file."""

from __future__ import annotations

import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from pydantic import ValidationError

from edge.registermaps.errors import RegisterMapError
from edge.registermaps.model import RegisterMap
from edge.tables import format_problems

__all__ = ["builtin_map_names", "load_register_map"]

_MAPS = "maps"
_SUFFIX = ".toml"


def _builtin_dir() -> Traversable:
    return resources.files(__package__ or "edge.registermaps").joinpath(_MAPS)


def builtin_map_names() -> list[str]:
    """Names of the maps shipped with the gateway, e.g. ``eastron_sdm630``."""
    return sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in _builtin_dir().iterdir()
        if entry.is_file() and entry.name.endswith(_SUFFIX)
    )


def load_register_map(name_or_path: str | Path) -> RegisterMap:
    """A built-in map (``str`` name) or a map file (``Path``); RegisterMapError lists problems.

    The gateway config decides which of the two a value is, so a name is never looked up as a
    file in the working directory and a path never shadows a built-in map.
    """
    if isinstance(name_or_path, Path):
        if name_or_path.suffix != _SUFFIX:
            raise RegisterMapError(
                str(name_or_path), [f"register map files are TOML; name it *{_SUFFIX}"]
            )
        return _parse(name_or_path, str(name_or_path))
    if name_or_path not in builtin_map_names():
        known = ", ".join(builtin_map_names())
        raise RegisterMapError(
            repr(name_or_path), [f"no built-in register map of that name; built-in maps: {known}"]
        )
    return _parse(_builtin_dir().joinpath(name_or_path + _SUFFIX), f"built-in {name_or_path}")


def _parse(source: Path | Traversable, label: str) -> RegisterMap:
    try:
        with source.open("rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError as exc:
        raise RegisterMapError(label, ["file not found"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise RegisterMapError(label, [f"TOML syntax error: {exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise RegisterMapError(label, [f"not UTF-8 text: {exc}"]) from exc
    except OSError as exc:
        raise RegisterMapError(label, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    try:
        return RegisterMap.model_validate(raw)
    except ValidationError as exc:
        raise RegisterMapError(label, format_problems(exc)) from exc
