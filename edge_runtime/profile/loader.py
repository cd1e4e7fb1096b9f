"""Finding and reading profiles: the search dirs, TOML reading, the ``extends`` chain and the merge.

Profiles may ``extends = "other"`` a parent. Tables merge key by key, arrays and scalars in the child replace
the parent's, and the merged result is validated once against schema.py. The merge records which file set
each key (its provenance), so problems.py can blame every problem on the right file of the chain.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_runtime.errors import ProfileError
from edge_runtime.profile.problems import PROFILE_HINT, Provenance, display_names, invalid_profile_error
from edge_runtime.profile.schema import EXTENDS_KEY, DeviceProfile

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


PROFILES_ENV = "EDGE_PROFILES_DIR"
DEFAULT_PROFILE = "dev-cpu"
PROFILE_SUFFIX = ".toml"

# <repo root>/device_profiles, where the repo root is the parent of the edge_runtime package.
_REPO_PROFILES_DIR = Path(__file__).resolve().parents[2] / "device_profiles"


# --------------------------------------------------------------------------- finding profiles


def _env_dirs() -> list[Path]:
    raw = os.environ.get(PROFILES_ENV, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def _dedupe_dirs(dirs: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    seen: set[Path] = set()
    for d in dirs:
        if not d.is_dir():
            continue
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


# Where a wheel install puts the shipped profiles (pyproject.toml's data-files).
_INSTALLED_PROFILES_DIR = Path(sys.prefix) / "share" / "edge_runtime" / "device_profiles"


def profile_search_dirs() -> list[Path]:
    """$EDGE_PROFILES_DIR (os.pathsep-separated), ./device_profiles, <repo>/device_profiles, then the copies a
    wheel install ships under <prefix>/share; existing ones only."""
    return _dedupe_dirs([*_env_dirs(), Path.cwd() / "device_profiles", _REPO_PROFILES_DIR, _INSTALLED_PROFILES_DIR])


def list_profiles() -> list[str]:
    """Names of the profiles in the search dirs, sorted (a name in an earlier dir shadows later ones)."""
    names: set[str] = set()
    for d in profile_search_dirs():
        names.update(p.stem for p in d.glob(f"*{PROFILE_SUFFIX}") if p.is_file())
    return sorted(names)


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.endswith(PROFILE_SUFFIX)


def _searched_lines() -> list[str]:
    lines = [f"searched: {d}" for d in profile_search_dirs()]
    lines += [f"${PROFILES_ENV} entry is not a directory: {d}" for d in _env_dirs() if not d.is_dir()]
    return lines or ["no profile directory exists (set $EDGE_PROFILES_DIR or create ./device_profiles)"]


def resolve_profile_path(name_or_path: str) -> Path:
    """A path (contains '/', ends in .toml, or is an existing file) -> that file; else NAME.toml in the search dirs."""
    text = str(name_or_path)
    if not text.strip():
        raise ProfileError("empty device profile name", hint=f"available profiles: {', '.join(list_profiles())}")
    candidate = Path(text).expanduser()
    if _looks_like_path(text) or candidate.is_file():
        if not candidate.is_file():
            raise ProfileError(f"device profile file not found: {candidate}", hint="check the path")
        return candidate
    for d in profile_search_dirs():
        path = d / f"{text}{PROFILE_SUFFIX}"
        if path.is_file():
            return path
    available = list_profiles()
    raise ProfileError(
        f"unknown device profile {text!r}",
        problems=[f"available profiles: {', '.join(available) if available else '(none)'}", *_searched_lines()],
        hint=f"pass one of the available names, a path to a .toml file, or set ${PROFILES_ENV}",
    )


# --------------------------------------------------------------------------- reading and merging


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"cannot read device profile {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"device profile {path} is not UTF-8 text", problems=[f"{path.name}: invalid byte at offset {exc.start}"]
        ) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc)
        line, col = getattr(exc, "lineno", None), getattr(exc, "colno", None)
        if line is not None and "line" not in detail:
            detail += f" (at line {line}, column {col})"
        raise ProfileError(
            f"TOML syntax error in device profile {path}: {detail}",
            problems=[f"{path.name}: {detail}"],
            hint="fix the TOML syntax at the position shown",
        ) from exc


def _resolve_extends(value: str, from_file: Path) -> Path:
    base_dir = from_file.parent
    if _looks_like_path(value):
        target = Path(value).expanduser()
        if not target.is_absolute():
            target = base_dir / target
        if target.is_file():
            return target.resolve()
        raise ProfileError(
            f"device profile {from_file.name} extends {value!r}, which does not exist",
            problems=[f"{from_file.name}: extends: file not found: {target}"],
            hint="a path in `extends` is relative to the file that contains it",
        )
    dirs = _dedupe_dirs([base_dir, *profile_search_dirs()])
    for d in dirs:
        target = d / f"{value}{PROFILE_SUFFIX}"
        if target.is_file():
            return target.resolve()
    available = sorted({p.stem for d in dirs for p in d.glob(f"*{PROFILE_SUFFIX}")})
    raise ProfileError(
        f"device profile {from_file.name} extends {value!r}, which was not found",
        problems=[
            f"{from_file.name}: extends: no profile named {value!r}",
            *(f"searched: {d}" for d in dirs),
            f"available profiles: {', '.join(available) if available else '(none)'}",
        ],
        hint="name a profile in the same directory or a search dir, or give a relative path to a .toml file",
    )


def _load_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """[(file, data without `extends`)], most-derived first."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    current = path.resolve()
    while True:
        seen = [p for p, _ in chain]
        if current in seen:
            names = display_names([*seen, current])
            cycle = " -> ".join(names[p] for p in [*seen[seen.index(current) :], current])
            raise ProfileError(
                f"extends cycle: {cycle}",
                problems=[f"{names[seen[-1]]}: extends: leads back to {names[current]}"],
                hint="remove `extends` from one of the files in the cycle",
            )
        data = _read_toml(current)
        parent = data.pop(EXTENDS_KEY, None)
        chain.append((current, data))
        if parent is None:
            return chain
        if not isinstance(parent, str) or not parent.strip():
            raise ProfileError(
                f"invalid device profile {current.name} (1 problem)",
                problems=[f"{current.name}: extends: must be a profile name or a relative path to a .toml file"],
                hint=PROFILE_HINT,
            )
        current = _resolve_extends(parent.strip(), current)


def _record(prov: Provenance, value: Any, file: Path, path: tuple[str, ...]) -> None:
    prov[path] = file
    if isinstance(value, dict):
        for key, sub in value.items():
            _record(prov, sub, file, (*path, key))


def _merge_into(
    dst: dict[str, Any], src: dict[str, Any], file: Path, prov: Provenance, prefix: tuple[str, ...] = ()
) -> None:
    """Deep-merge ``src`` into ``dst``: tables merge recursively; arrays and scalars replace."""
    for key, value in src.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            prov[path] = file  # the table node: the latest file that touched it
            _merge_into(dst[key], value, file, prov, path)
            continue
        for stale in [p for p in prov if p[: len(path)] == path]:
            del prov[stale]
        dst[key] = copy.deepcopy(value)
        _record(prov, value, file, path)


def merge_chain(chain: list[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, Any], Provenance]:
    """Merge an extends chain (most-derived first) into one dict plus the file that set each key."""
    merged: dict[str, Any] = {}
    prov: Provenance = {}
    for file, data in reversed(chain):
        _merge_into(merged, data, file, prov)
    return merged, prov


# --------------------------------------------------------------------------- loading


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Resolve, read, follow ``extends``, merge and validate a device profile.

    ``name_or_path`` is a profile name looked up in ``profile_search_dirs()`` (``"cart-v2"``), or a path to a
    TOML file (a ``Path``, or text that contains ``/`` or ends in ``.toml``). Parents named by ``extends`` are
    merged key by key under the child. Raises ProfileError (exit code 2) listing every problem, each against
    the file in the chain that set the offending key. The result's ``source_files`` is the chain read.
    """
    path = Path(name_or_path) if isinstance(name_or_path, Path) else resolve_profile_path(name_or_path)
    if not path.is_file():
        raise ProfileError(f"device profile file not found: {path}", hint="check the path")
    chain = _load_chain(path)
    merged, prov = merge_chain(chain)
    files = [f for f, _ in chain]
    try:
        profile = DeviceProfile.model_validate(merged, strict=True)
    except ValidationError as exc:
        raise invalid_profile_error(exc, prov, files) from None
    profile._source_files = tuple(files)
    return profile
