"""The package's import direction (DESIGN.md, *Rooms*), checked on the source with the AST.

    types/errors -> profile/bundle/preprocess/features/memory -> backends, head -> builder, run -> bench, review -> cli

A room imports only from lower layers or from inside itself; ``demo`` is imported only by builder, bench and
the CLI; ``review`` (the back office) reuses run/ but never builder/ or bench/; torch only inside ``builder/train``;
nobody imports another module's private (underscore) names.
Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edge_runtime"

LAYERS = {
    "__init__": 0,
    "errors": 0,
    "types": 0,
    "profile": 1,
    "bundle": 1,
    "preprocess": 1,
    "features": 1,
    "memory": 1,
    "demo": 1,
    "backends": 2,
    "head": 2,
    "builder": 3,
    "run": 3,
    "bench": 4,
    # The back office reuses the device's messages, outbox and MQTT session (run/), never the packaging host's code.
    "review": 4,
    "cli": 5,
}
DEMO_USERS = {"builder", "bench", "cli", "demo"}
NOT_FROM = {"review": {"builder", "bench"}}  # rooms a room must not import although they sit below it
TORCH_ROOM = ("builder", "train")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, module: str, is_package: bool) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import in ``source``, the text of ``module``."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base, [alias.name for alias in node.names]))
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``source`` (the text of ``module``) that breaks the design's direction."""
    my_room = _room(module)
    problems = []
    for line, target, names in _imports(source, module, is_package):
        where = f"{module}:{line}"
        top = target.split(".")[0]
        if top == "torch" and tuple(module.split(".")[1:3]) != TORCH_ROOM:
            problems.append(f"{where} imports torch outside builder/train (the device never has it)")
        if top != "edge_runtime":
            continue
        if target == "edge_runtime" and names:
            # `from edge_runtime import x`: x is a room, or __version__, which lives in the package root
            targets = [f"edge_runtime.{n}" if n in LAYERS else "edge_runtime" for n in names]
        else:
            targets = [target]
        for t in targets:
            room = _room(t)
            if room in (my_room, "__init__"):
                continue
            if room not in LAYERS:
                problems.append(f"{where} imports {t}: room {room!r} has no layer in this test")
            elif room == "demo" and my_room not in DEMO_USERS:
                problems.append(f"{where} imports {t}: demo is for builder, bench and cli only")
            elif room in NOT_FROM.get(my_room, set()):
                problems.append(f"{where} imports {t}: {my_room} must not import {room}")
            elif LAYERS[room] >= LAYERS[my_room]:
                problems.append(f"{where} imports {t} (layer {LAYERS[room]}) from layer {LAYERS[my_room]}")
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private and target != module:
            problems.append(f"{where} imports private {', '.join(private)} from {target}")
    return problems


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_room_has_a_layer() -> None:
    rooms = {_room(_module_name(p)) for p in _sources()}
    assert rooms <= set(LAYERS), f"rooms without a layer in this test: {sorted(rooms - set(LAYERS))}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_follow_the_design(path: Path) -> None:
    problems = violations(_module_name(path), path.read_text(), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("edge_runtime.run.x", "from edge_runtime.builder import pipeline", "layer 3) from layer 3"),
        ("edge_runtime.run.x", "import edge_runtime.demo", "demo is for builder, bench and cli only"),
        ("edge_runtime.head.x", "from ..builder.pipeline import run_build", "layer 3) from layer 2"),
        ("edge_runtime.profile.x", "from edge_runtime import head", "layer 2) from layer 1"),
        ("edge_runtime.head.x", "def f():\n    import torch", "imports torch outside builder/train"),
        ("edge_runtime.builder.x", "from edge_runtime.head.fit import _cos", "imports private _cos"),
        ("edge_runtime.review.x", "from edge_runtime.builder import catalogue", "review must not import builder"),
        ("edge_runtime.bench.x", "from edge_runtime.review import store", "layer 4) from layer 4"),
    ],
)
def test_the_checker_catches(module: str, source: str, expected: str) -> None:
    found = violations(module, source)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("edge_runtime.builder.x", "from edge_runtime.head.fit import fit_head"),
        ("edge_runtime.cli", "from edge_runtime.demo import generate_demo_video"),
        ("edge_runtime.builder.train.model", "import torch"),
        ("edge_runtime.run.stages", "from edge_runtime.run.queues import StageQueue"),
        ("edge_runtime.builder.x", "from edge_runtime import __version__"),
        ("edge_runtime.review.collector", "from edge_runtime.run.mqtt import MqttPublisher"),
    ],
)
def test_the_checker_allows(module: str, source: str) -> None:
    assert violations(module, source) == []
