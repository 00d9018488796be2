"""Imports point down: each module of `dashboard/` belongs to a layer (docs/ARCHITECTURE.md) and
imports at run time only from its own layer or those below; built-in feeds use only the public
faces. Read from the source, so a new upward import fails here with the line that makes it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dashboard"

# Lowest first. A module's layer is that of the longest prefix listed (`dashboard.relay.keys` is
# `dashboard.relay`'s). Within a layer imports go either way, except where FORBIDDEN says.
LAYERS: list[tuple[str, ...]] = [
    (  # the bottom: used by all, using none of the project
        "dashboard.events",
        "dashboard.errors",
        "dashboard.backoff",
        "dashboard.webhooks",
        "dashboard.security",
        "dashboard.plugins",
        "dashboard.tasks",
    ),
    ("dashboard.broker", "dashboard.feed", "dashboard.views"),  # storage and fan-out; what a feed is
    ("dashboard.config",),  # the schema, its YAML source and its checks
    (  # features on the broker and the config; no HTTP server code
        "dashboard.relay",
        "dashboard.auth",
        "dashboard.supervisor",
        "dashboard.presence",
        "dashboard.alerts",
        "dashboard.context",
    ),
    ("dashboard.web", "dashboard.runtime"),  # everything HTTP; the composition root
    (
        "dashboard",
        "dashboard.http",
        "dashboard.ai",
        "dashboard.cli",
        "dashboard.serving",
        "dashboard.__main__",
    ),  # faces
]
FORBIDDEN = [("dashboard.relay", "dashboard.auth")]  # the relay is told who pays, never asks
PUBLIC_FACES = {"dashboard", "dashboard.http", "dashboard.ai"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group_of(module: str) -> str:
    names = [name for layer in LAYERS for name in layer]
    matches = [n for n in names if module == n or module.startswith(n + ".")]
    assert matches, f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py"
    return max(matches, key=len)


def layer_of(module: str) -> int:
    group = group_of(module)
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every project import that runs (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found = []
    name = module_name(path) if path.is_relative_to(ROOT) else "dashboard.probe"
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            if not all(known_module(name) for name in submodules):
                found.append((node.lineno, base))  # names taken from `base` itself
            found += [(node.lineno, name) for name in submodules]
    return [(line, name) for line, name in found if name == "dashboard" or name.startswith("dashboard.")]


def known_module(name: str) -> str | None:
    """`name` if it is a module of the package (not an attribute imported from one)."""
    parts = name.split(".")
    path = ROOT.joinpath(*parts)
    return name if path.with_suffix(".py").exists() or (path / "__init__.py").exists() else None


def wrong_imports(importer: str, imports: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
    """(line, imported module, why) for each import of `importer` that breaks the layering."""
    wrong = []
    for line, imported in imports:
        target = known_module(imported)
        if target is None or target == importer:
            continue  # an attribute, or itself
        if importer.startswith(target + ".") and target != "dashboard":
            continue  # its own package (`dashboard` itself is a face, above everything)
        if layer_of(target) > layer_of(importer):
            wrong.append((line, target, "upward"))
        elif (group_of(importer), group_of(target)) in FORBIDDEN:
            wrong.append((line, target, "forbidden"))
    return wrong


def test_every_import_in_dashboard_points_down():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for line, target, why in wrong_imports(importer, runtime_imports(path)):
            found.append(f"{path.relative_to(ROOT)}:{line}: {importer} imports {target} ({why})")
    assert not found, "imports must point down (docs/ARCHITECTURE.md):\n" + "\n".join(found)


def test_built_in_feeds_use_only_the_public_faces():
    reached = []
    for path in sorted((ROOT / "feeds").glob("*.py")):
        for line, imported in runtime_imports(path):
            target = known_module(imported)
            if target is not None and target not in PUBLIC_FACES:
                reached.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
        if "app.state" in path.read_text():
            reached.append(f"{path.relative_to(ROOT)}: reaches into the app's state")
    assert not reached, "feeds use only dashboard, dashboard.http, dashboard.ai:\n" + "\n".join(reached)


def test_the_check_catches_an_upward_import_and_ignores_type_hints(tmp_path):
    assert wrong_imports("dashboard.events", [(1, "dashboard.web.app")]) == [
        (1, "dashboard.web.app", "upward")
    ]
    assert wrong_imports("dashboard.web.app", [(1, "dashboard.events")]) == []
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dashboard.web import app\n"
        "def f():\n    from dashboard.web import sse\n"
    )
    modules = [n for _, n in runtime_imports(source) if known_module(n)]
    assert modules == ["dashboard.web.sse"], "the TYPE_CHECKING import is left out"
    # A bottom module importing the faces' package is upward too.
    assert wrong_imports("dashboard.events", [(1, "dashboard")]) == [(1, "dashboard", "upward")]
