"""The package's layering, enforced: every module lives in a layer folder and imports
only from layers below its own (or from its own folder), never tests, benchmarks or
notebooks, never a private name of another module; figures only in ``galjax.plot``.

The layer order is the one drawn in ``docs/architecture.md``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "galjax"

# Rank of each top-level folder of galjax; a module may import a folder of lower rank.
LAYERS = {
    "core": 0,
    "io": 2,
    "image": 1,
    "sim": 2,
    "scores": 3,
    "models": 4,
    "train": 5,
    "fit": 6,
    "detect": 6,
    "deblend": 7,
    "ood": 7,
    "experiments": 8,
    "plot": 9,
    "cli": 10,
}
FORBIDDEN_ROOTS = {"tests", "benchmarks", "notebooks", "conftest"}
MAX_LINES = 650

MODULES = sorted(p for p in ROOT.rglob("*.py") if "weights" not in p.parts)


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path):
    """``(lineno, module, names)`` of every import in ``path``, function-local ones too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield node.lineno, mod, [a.name for a in node.names]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_module_imports_look_down(path):
    own = _name(path)
    if own == "galjax":
        return  # the package root re-exports its subpackages
    layer = _layer(own)
    assert layer in LAYERS, f"{own}: not inside a layer folder {sorted(LAYERS)}"
    for line, mod, names in _imports(path):
        where = f"{own}:{line} imports {mod}"
        assert mod.split(".")[0] not in FORBIDDEN_ROOTS, where
        if mod.split(".")[0] == "matplotlib":
            assert layer == "plot", f"{where}: figures belong in galjax.plot"
        if mod == "galjax":
            assert names, f"{where}: the package root (import the module it comes from)"
            targets = [f"galjax.{n}" for n in names]
        elif mod.startswith("galjax."):
            targets = [mod]
        else:
            continue
        for target in targets:
            other = _layer(target)
            if other == layer:
                continue
            assert other in LAYERS, f"{where}: {target} is not in a layer folder"
            assert LAYERS[other] < LAYERS[layer], (
                f"{where}: layer {other!r} ({LAYERS[other]}) is not below {layer!r} "
                f"({LAYERS[layer]})"
            )
        if mod.startswith("galjax"):
            assert not any(p.startswith("_") and p != "__init__" for p in mod.split(".")), (
                f"{where}: a private module"
            )
            if mod != own:
                private = [n for n in names if n.startswith("_") and not n.endswith("__")]
                assert not private, f"{where}: private names {private}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_module_size(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.name}: {n} lines (at most {MAX_LINES}: split it by concern)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_public_api_declared(path):
    module = importlib.import_module(_name(path))
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{_name(path)}: no __all__"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{_name(path)}: __all__ names missing: {missing}"
