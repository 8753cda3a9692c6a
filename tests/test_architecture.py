"""The architecture contract: the package's folders are layers, and imports flow one way.

foundation (errors, shapes, artifacts) ← model ← data ← capture ← directions ← plane ← coupling ←
baselines ← attacks ← evaluation ← report ← cli (attacks: adaptive attacks on a defended model, which
evaluation may run but which never import it). A module may import from its own layer and the layers before it, never from
a later one (imports inside functions count too). `__init__` re-exports are the one exception at the
top: the package namespace gathers every stage.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "harc_interp"
FOUNDATION = ("errors", "shapes", "artifacts")
LAYERS = (
    "model", "data", "capture", "directions", "plane", "coupling", "baselines", "attacks", "evaluation",
    "report", "cli",
)  # fmt: skip


def layer_of(parts: tuple[str, ...]) -> int | None:
    """-1 for the foundation, the index in LAYERS for a stage folder, None for the package namespace."""
    if not parts:
        return None
    if parts[0] in FOUNDATION:
        return -1
    return LAYERS.index(parts[0]) if parts[0] in LAYERS else None


def imported_modules(path: Path, root: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, module path inside the package) of every harc_interp import in a file, relative or absolute."""
    here = path.relative_to(root).with_suffix("").parts
    package = here[:-1] if here[-1] != "__init__" else here[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = (*base, *(node.module.split(".") if node.module else ()))
                names = [(*target, a.name) for a in node.names] if not node.module else [target]
                out += [(node.lineno, t) for t in names]
            elif node.module and node.module.split(".")[0] == "harc_interp":
                out.append((node.lineno, tuple(node.module.split(".")[1:])))
        elif isinstance(node, ast.Import):
            out += [
                (node.lineno, tuple(a.name.split(".")[1:]))
                for a in node.names
                if a.name.startswith("harc_interp")
            ]
    return out


def upward_imports(root: Path) -> list[str]:
    """Every import of a later layer from an earlier one, as 'file:line: a -> b'."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts == ("__init__",):
            continue  # the package namespace re-exports every stage
        own = layer_of(parts)
        for line, target in imported_modules(path, root):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                problems.append(f"{path.relative_to(root)}:{line}: {parts[0]} -> {target[0]}")
    return problems


def test_imports_flow_one_way():
    assert upward_imports(PACKAGE) == []


def test_every_module_belongs_to_a_layer():
    stray = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts != ("__init__.py",)
        and layer_of(p.relative_to(PACKAGE).with_suffix("").parts) is None
    ]
    assert stray == []


def test_the_contract_fails_on_an_upward_import(tmp_path):
    copy = tmp_path / "harc_interp"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "directions" / "means.py"
    target.write_text(
        target.read_text() + "\n\ndef _late():\n    from ..coupling.maps import PlaneMap  # noqa\n"
    )
    absolute = copy / "model" / "edits.py"
    absolute.write_text(absolute.read_text() + "\nfrom harc_interp.report import figures  # noqa\n")
    found = upward_imports(copy)
    assert any(p.startswith("directions/means.py") and p.endswith("directions -> coupling") for p in found)
    assert any(p.startswith("model/edits.py") and p.endswith("model -> report") for p in found)
    assert len(found) == 2
