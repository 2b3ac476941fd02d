"""The package's layers: studies compose the library and never import each other; the library layers below them
never import a study or the rendering layer (:mod:`cxrgen.render`). Read from the source (ast), function-level
imports included, so a lazy import cannot hide an edge."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cxrgen"
LOWER_LAYERS = ("metrics", "data", "models", "sampling", "classify", "text", "cheff", "adapt")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module a file imports anywhere in it (``from a import b`` counts as ``a`` and ``a.b``)."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def layer_violations(root: Path = PACKAGE) -> list[str]:
    """``"<module> imports <module>"`` for each import that crosses the layers the wrong way."""
    top = root.name
    studies, render = f"{top}.studies", f"{top}.render"

    def within(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    found = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        for imported in sorted(imported_modules(path, root)):
            if within(module, studies) and within(imported, studies) and imported not in (studies, module):
                found.append(f"{module} imports {imported} (a study imports another study)")
            elif any(within(module, f"{top}.{layer}") for layer in LOWER_LAYERS) and (
                    within(imported, studies) or within(imported, render)):
                found.append(f"{module} imports {imported} (a library layer imports a study or the rendering layer)")
    return found


def test_no_study_imports_another_and_no_layer_imports_upwards():
    assert layer_violations() == []


def test_layer_check_finds_each_kind_of_upward_import(tmp_path):
    pkg = tmp_path / "cxrgen"
    files = {
        "__init__.py": "",
        "studies/__init__.py": "",
        "studies/a.py": "def f():\n    from cxrgen.studies.b import g  # a lazy import is an edge too\n",
        "studies/b.py": "from . import c\n",
        "studies/c.py": "import numpy\nfrom cxrgen.metrics.fid import fid\n",
        "metrics/__init__.py": "",
        "metrics/fid.py": "from cxrgen.render.tables import write_table\n",
        "data/__init__.py": "",
        "data/x.py": "from cxrgen.studies import a\n",
        "render/__init__.py": "",
        "render/tables.py": "from cxrgen.studies.a import f\n",  # rendering may read what studies wrote
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    found = layer_violations(pkg)
    assert found == [
        "cxrgen.data.x imports cxrgen.studies (a library layer imports a study or the rendering layer)",
        "cxrgen.data.x imports cxrgen.studies.a (a library layer imports a study or the rendering layer)",
        "cxrgen.metrics.fid imports cxrgen.render.tables (a library layer imports a study or the rendering layer)",
        "cxrgen.metrics.fid imports cxrgen.render.tables.write_table (a library layer imports a study or the "
        "rendering layer)",
        "cxrgen.studies.a imports cxrgen.studies.b (a study imports another study)",
        "cxrgen.studies.a imports cxrgen.studies.b.g (a study imports another study)",
        "cxrgen.studies.b imports cxrgen.studies.c (a study imports another study)",
    ]
