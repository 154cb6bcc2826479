"""The package's layers hold: every module imports only its own layer or lower ones, at the top.

Layers, lowest first (README, "Architecture"):

    core -> data, models, llm -> retrieval, training -> signals -> pipelines -> cli

A function-local import of agentrec is allowed only where it keeps ``import agentrec`` and
``agentrec --help`` light: the package root's lazy ``__getattr__`` and the CLI commands, which import
their pipeline when they run.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agentrec"

# layer -> the layers it may import (itself included)
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "models": {"core", "models"},
    "llm": {"core", "llm"},
    "retrieval": {"core", "data", "retrieval"},
    "training": {"core", "data", "models", "training"},
    "signals": {"core", "data", "llm", "retrieval", "signals"},
    "pipelines": {"core", "data", "models", "llm", "retrieval", "training", "signals", "pipelines"},
    "cli": {"core", "data", "models", "llm", "retrieval", "training", "signals", "pipelines", "cli"},
}
LAZY_OK = {"root", "cli"}  # may import agentrec inside functions, to stay light


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return "root"
    return parts[1]


def agentrec_imports(tree: ast.Module, module: str):
    """(imported module, line, is_top_level) for every import of agentrec in a module's syntax tree."""
    top = {id(node) for node in tree.body}
    # an `if TYPE_CHECKING:` block at the top counts as top level
    for node in tree.body:
        if isinstance(node, ast.If):
            top.update(id(child) for child in node.body)
    package = module if (PACKAGE / Path(*module.split(".")[1:]) / "__init__.py").exists() else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix]
            if prefix == "agentrec":
                names = [f"agentrec.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name == "agentrec" or name.startswith("agentrec."):
                yield name, node.lineno, id(node) in top


def test_the_package_has_the_layers():
    for layer in ALLOWED:
        assert (PACKAGE / layer / "__init__.py").exists(), f"missing layer package agentrec/{layer}"


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_go_down_the_layers_only(module, path):
    layer = layer_of(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for imported, line, at_top in agentrec_imports(tree, module):
        target = layer_of(imported)
        if layer == "root":
            continue  # the package root offers the API, lazily
        if target == "root" and imported in ("agentrec", "agentrec.__version__"):
            continue
        if target not in ALLOWED[layer]:
            problems.append(f"{path.name}:{line}: {layer} imports {imported} ({target} is above it)")
        if not at_top and layer not in LAZY_OK:
            problems.append(f"{path.name}:{line}: function-local import of {imported}; import it at the top")
    assert not problems, "\n".join(problems)


IMPORT_EACH_ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    # forget every agentrec module, keep third-party ones: each module is imported as if alone,
    # so an import cycle inside agentrec shows, without paying torch's import 50 times
    for loaded in [m for m in sys.modules if m == "agentrec" or m.startswith("agentrec.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    names = [m for m, _ in modules() if not m.endswith("__main__")]  # __main__ runs the CLI
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *names], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_import_agentrec_and_help_stay_light():
    code = ("import sys, agentrec; from agentrec.cli.main import app; "
            "heavy = [m for m in ('torch', 'vllm', 'chromadb', 'transformers', 'sentence_transformers', 'ray') "
            "if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_api_names_resolve_lazily():
    agentrec = importlib.import_module("agentrec")
    for name in agentrec.__all__:
        assert getattr(agentrec, name) is not None
