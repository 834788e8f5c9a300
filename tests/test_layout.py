"""The package reads top-down: every module belongs to a stage, no module imports a later stage's
and none imports in a circle (imports inside functions count), no module reaches into another's
`_private` names, and every package folder ships (pyproject.toml's `packages`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "attnexp"
# the stages, first to last: a module may import its own stage's and earlier ones' (`attnexp` itself,
# the lazy facade over api, is api's stage)
STAGES = (
    "errors", "schedules", "layers", "data", "models", "callbacks",  # the pieces
    "config", "assemble", "train", "pack", "sweep", "api", "tools", "cli",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def imports(tree: ast.Module, known: set[str]) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import anywhere in the tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            for a in node.names:  # `from attnexp.sweep import plan` imports the module attnexp.sweep.plan
                sub = f"{node.module}.{a.name}"
                found.append((sub, None) if sub in known else (node.module, a.name))
    return found


def graph() -> dict[str, set[str]]:
    trees = modules()
    return {name: {m for m, _ in imports(tree, set(trees))} - {name} for name, tree in trees.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every circle found by a depth-first walk (one per back edge)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def stage(module: str) -> int:
    """The place of a module's stage in STAGES (a folder or module not listed there fails here)."""
    parts = module.split(".")
    return STAGES.index(parts[1] if len(parts) > 1 else "api")


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} imports {b}" for a, targets in edges.items() for b in targets if stage(b) > stage(a))


def private_defs(tree: ast.AST) -> set[str]:
    return {
        n.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name.startswith("_") and not n.name.startswith("__")
    }


def private_reaches() -> list[str]:
    """`from other import _name`, `other._name` on a module imported from attnexp, or `obj._name()`
    where only another attnexp module defines `_name` (a method of one of its classes)."""
    trees, bad = modules(), []
    defined = {name: private_defs(tree) for name, tree in trees.items()}
    for name, tree in trees.items():
        elsewhere = set().union(*(d for m, d in defined.items() if m != name)) - defined[name]
        bound = {}  # local name → attnexp module it holds
        for module, taken in imports(tree, set(trees)):
            if taken is None:
                bound[module.rsplit(".", 1)[-1]] = module
            elif taken.startswith("_") and not taken.startswith("__"):
                bad.append(f"{name}: from {module} import {taken}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and bound.get(node.value.id, name) != name
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{name}: {node.value.id}.{node.attr}")
            elif (  # a subclass may use its base's protected names through self
                isinstance(node, ast.Attribute)
                and node.attr in elsewhere
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                bad.append(f"{name}: .{node.attr} (defined in another module)")
    return bad


def test_no_import_circle():
    edges = graph()
    assert len(edges) > 40 and "attnexp.train.modes" in edges["attnexp.sweep.launch"]  # the walk sees lazy imports
    assert cycles(edges) == []


def test_no_stage_imports_a_later_one():
    edges = graph()
    assert {stage(m) for m in edges} == set(range(len(STAGES)))  # every stage has modules, every module a stage
    assert upward_imports(edges) == []


def test_every_package_folder_ships():
    """An editable install finds a folder missing from `packages`; a wheel leaves it out."""
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    listed = set(re.findall(r'"([\w.]+)"', re.search(r"^packages = \[(.*?)\]", text, re.M | re.S).group(1)))
    folders = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("*.py")}
    assert folders | {"attnexp.conf"} == listed


def test_no_module_writes_model_checkpoints_state():
    """attnexp's own Checkpoints callback writes every checkpoint: no module spells the internal state
    keys of Lightning's ModelCheckpoint (a release renaming one would break resumes silently)."""
    keys = ("best_model_score", "best_k_models", "kth_value", "kth_best_model_path")
    assert [(p.name, k) for p in PACKAGE.rglob("*.py") for k in keys if k in p.read_text()] == []


def test_no_module_reaches_into_anothers_private_names():
    assert private_reaches() == []


def test_the_checks_find_what_they_look_for():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    later = {"attnexp.assemble.objects": {"attnexp.train.module", "attnexp.errors"}, "attnexp": {"attnexp.api"}}
    assert upward_imports(later) == ["attnexp.assemble.objects imports attnexp.train.module"]
    tree = ast.parse("from attnexp.train.module import _hidden\nfrom attnexp.sweep import plan\nplan._x()\n")
    known = {"attnexp.train.module", "attnexp.sweep", "attnexp.sweep.plan"}
    assert imports(tree, known) == [("attnexp.train.module", "_hidden"), ("attnexp.sweep.plan", None)]
    assert private_defs(ast.parse("class A:\n    def _losses(self): ...\n    def __init__(self): ...")) == {"_losses"}
