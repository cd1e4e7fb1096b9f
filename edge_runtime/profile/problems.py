"""Problem reporting: pydantic's ValidationError turned into one ``FILE: key.path: reason`` line per problem.

Each line names the file in the ``extends`` chain that set the offending key (its provenance, recorded while
merging), unknown keys list the keys allowed at that place and suggest the closest one::

    cart-v2.toml: device.memory_budget_mib: Input should be greater than or equal to 16
    jetson-orin-base.toml: backend.precison: unknown key (allowed: prefer, precisions, ...); did you mean ...?
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from edge_runtime.errors import ProfileError
from edge_runtime.profile.schema import EXTENDS_KEY, DeviceProfile

PROFILE_HINT = (
    "compare with device_profiles/dev-cpu.toml (complete and commented); the schema is edge_runtime/profile/schema.py"
)

# Key path (table names then key) -> the file in the extends chain that set it last.
Provenance = dict[tuple[str, ...], Path]


def display_names(files: Iterable[Path]) -> dict[Path, str]:
    """Base names, or full paths where two files in the chain share a base name."""
    files = list(dict.fromkeys(files))
    counts: dict[str, int] = {}
    for f in files:
        counts[f.name] = counts.get(f.name, 0) + 1
    return {f: (f.name if counts[f.name] == 1 else str(f)) for f in files}


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    tp: Any = DeviceProfile
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            if typing.get_origin(tp) not in (list, tuple):
                return None
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _unknown_key_message(loc: tuple[Any, ...]) -> str:
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key"
    allowed = list(model.model_fields)
    if model is DeviceProfile:
        allowed.insert(0, EXTENDS_KEY)
    text = f"unknown key (allowed: {', '.join(allowed)})"
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    return f"{text}; did you mean {close[0]!r}?" if close else text


def _blame(loc: tuple[Any, ...], error_type: str, prov: Provenance, default: Path) -> Path:
    """The file that set the key at ``loc`` (or its nearest ancestor); missing keys -> the most-derived file."""
    if error_type == "missing":
        return default
    keys = tuple(loc)
    for n in range(len(keys), 0, -1):
        file = prov.get(keys[:n])
        if file is not None:
            return file
    return default


def problem_lines(exc: ValidationError, prov: Provenance, names: dict[Path, str], default: Path) -> list[str]:
    """One ``FILE: key.path: reason`` line per validation error; ``default`` takes the blame for missing keys."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            reason = _unknown_key_message(loc)
        else:
            reason = err["msg"].removeprefix("Value error, ")
        file = _blame(loc, err["type"], prov, default)
        lines.append(f"{names.get(file, file.name)}: {_format_loc(loc)}: {reason}")
    return lines


def invalid_profile_error(exc: ValidationError, prov: Provenance, files: list[Path]) -> ProfileError:
    """The ProfileError for a merged chain (``files`` most-derived first) that failed validation."""
    names = display_names(files)
    problems = problem_lines(exc, prov, names, files[0])
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return ProfileError(f"invalid device profile {names[files[0]]} ({count})", problems=problems, hint=PROFILE_HINT)
