"""The house's layering, checked on the source: no module imports one of a higher layer, not even
inside a function, and modules of one layer (targets; report, profiles, ...) do not import each
other. Every ``import``/``from ... import`` anywhere in a file counts (ast.walk)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "snnconvert"

# component (dotted path under snnconvert, longest prefix wins) -> layer
LAYERS = {
    "errors": 0, "graph": 0, "ir": 0, "results": 0, "onnxrt": 0, "data": 0,
    "datasets": 0, "distributed": 0, "events": 0,
    "ops": 1, "ir_reference": 1.5,
    "frontend": 2,
    "runtime": 3,
    "passes": 4,
    "targets": 5,
    "targets.torch": 6, "targets.lava": 6, "targets.nir": 6,
    "report": 7, "profiles": 7, "plots": 7, "finetune": 7, "evaluation": 7,
    "api": 8, "": 8,   # "" is the package's __init__ (it re-exports the API)
    "cli": 9, "__main__": 10,
}
SHARED = {0}  # the base layer's modules may import each other


def component(module: str) -> str:
    """The LAYERS key of ``module`` (dotted, relative to snnconvert)."""
    parts = module.split(".") if module else []
    for n in range(len(parts), -1, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key
    raise KeyError(f"module snnconvert.{module} has no layer in test_layering.LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module under snnconvert) of every import of the package in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".") if module_name(path) else []
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "snnconvert" or alias.name.startswith("snnconvert."):
                    out.append((node.lineno, alias.name[len("snnconvert."):] if "." in alias.name else ""))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "snnconvert" or node.module.startswith("snnconvert.")):
                mod = node.module[len("snnconvert"):].lstrip(".")
            else:
                continue
            # "from . import x" / "from .. import ir" imports submodules
            names = [alias.name for alias in node.names]
            for name in names:
                full = f"{mod}.{name}" if mod else name
                try:
                    component(full)
                    sub = (PACKAGE / full.replace(".", "/")).with_suffix(".py").exists() or \
                        (PACKAGE / full.replace(".", "/")).is_dir()
                except KeyError:
                    sub = False
                out.append((node.lineno, full if sub else mod))
    return out


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = component(module_name(path))
        for line, target in imports(path):
            dst = component(target)
            if dst == src or src.startswith(dst + ".") and LAYERS[dst] < LAYERS[src]:
                continue
            a, b = LAYERS[src], LAYERS[dst]
            if b < a or (a == b and a in SHARED):
                continue
            found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {src or 'snnconvert'} "
                         f"(layer {a}) imports {target} (layer {b})")
    return found


def test_no_module_imports_a_higher_or_sibling_layer():
    assert violations() == []


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    bad = PACKAGE / "ops" / "_layering_probe.py"
    bad.write_text("def f():\n    from ..targets import get_target\n    return get_target\n")
    try:
        assert any("_layering_probe" in v and "targets" in v for v in violations())
    finally:
        bad.unlink()


@pytest.mark.parametrize("module", ["report", "profiles"])
def test_report_and_profiles_do_not_import_each_other(module):
    other = "profiles" if module == "report" else "report"
    paths = [PACKAGE / f"{module}.py"] if (PACKAGE / f"{module}.py").exists() else \
        list((PACKAGE / module).rglob("*.py"))
    assert not [t for p in paths for _, t in imports(p) if component(t) == other]
