"""Layers point down: every module's imports (inside functions too) are read with ast and checked against its layer."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("inference_service", "trainer_service")
CLIENT = "client/chargpt_client"
ONNX_EXPORT = "chargpt/formats/onnx_graph.py"


@dataclass(frozen=True)
class Layer:
    """A folder of the repository (less the sub-folders that are layers of their own) and what it must not import."""

    folder: str
    forbidden: tuple[str, ...]
    excluded: tuple[str, ...] = ()


LAYERS = (
    # The ground floor, shared by the client and both services: no torch, nothing above it.
    Layer("chargpt", ("torch", "chargpt.core", *SERVICES, "chargpt_client", "launchers"),
          excluded=("chargpt/core", ONNX_EXPORT)),
    Layer("chargpt/core", (*SERVICES, "chargpt_client", "launchers")),
    # The ONNX export traces the torch model: it stands on the core, beside the torch-free formats.
    Layer(ONNX_EXPORT, (*SERVICES, "chargpt_client", "launchers")),
    Layer("inference_service", ("trainer_service", "chargpt_client", "launchers")),
    Layer("trainer_service", ("inference_service", "chargpt_client", "launchers")),
    Layer(CLIENT, (*SERVICES, "launchers", "chargpt.core", "torch")),
)
# The only imports that point up: the demo, its CLI command and the notebook's connect() start both services through
# the local launcher when given no service addresses, inside a function, so importing the client never loads them.
LAZY_UPWARD_IMPORTS = frozenset({
    (f"{CLIENT}/cli/demo_cmd.py", "launchers.local"),
    (f"{CLIENT}/demo/__init__.py", "launchers.local"),
    (f"{CLIENT}/notebook.py", "launchers.local"),
    # chargpt.formats picks the ONNX writer (the one format that needs torch) only when asked for it.
    ("chargpt/formats/__init__.py", "torch"),
})


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repository root
    line: int
    module: str
    in_function: bool


class _ImportVisitor(ast.NodeVisitor):
    """Every module a file imports: `import a.b`, `from a import b` (as a and a.b: b may be a module), relative
    imports resolved against the file's package, and importlib.import_module / __import__ of a constant name."""

    def __init__(self, path: str, package: str) -> None:
        self.path, self.package, self.depth = path, package, 0
        self.found: list[Import] = []

    def _add(self, node: ast.AST, module: str) -> None:
        self.found.append(Import(self.path, getattr(node, "lineno", 0), module, self.depth > 0))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parent = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*parent, *([base] if base else [])])
        self._add(node, base)
        for alias in node.names:
            self._add(node, f"{base}.{alias.name}")

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            self._add(node, str(node.args[0].value))
        self.generic_visit(node)


def _package(relative: Path) -> str:
    """The dotted package a file sits in (the client lives under client/ on sys.path)."""
    parts = relative.parts[1:] if relative.parts[0] == "client" else relative.parts
    return ".".join(parts[:-1])


def imports(root: Path, folder: str, excluded: tuple[str, ...] = ()) -> Iterator[Import]:
    top = root / folder
    for path in [top] if top.is_file() else sorted(top.rglob("*.py")):
        relative = path.relative_to(root)
        if any(relative.is_relative_to(e) for e in excluded):
            continue
        visitor = _ImportVisitor(relative.as_posix(), _package(relative))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        yield from visitor.found


def _matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def upward_imports(root: Path) -> list[Import]:
    """Every import that breaks its layer's rule, less the lazy ones LAZY_UPWARD_IMPORTS allows."""
    return [i for layer in LAYERS for i in imports(root, layer.folder, layer.excluded)
            if _matches(i.module, layer.forbidden) and not _allowed(i)]


def _allowed(i: Import) -> bool:
    return i.in_function and any(i.path == path and _matches(i.module, (module,))
                                 for path, module in LAZY_UPWARD_IMPORTS)


def test_no_layer_imports_upward() -> None:
    scanned = {i.path for layer in LAYERS for i in imports(ROOT, layer.folder, layer.excluded)}
    assert len(scanned) > 100  # the rules did read the tree
    assert upward_imports(ROOT) == []


def test_every_allowed_upward_import_is_still_there_and_lazy() -> None:
    """A stale exception would silently allow a future import: each one names an import the tree really has."""
    found = {(i.path, i.module) for folder in (CLIENT, "chargpt/formats")
             for i in imports(ROOT, folder) if i.in_function}
    assert found >= LAZY_UPWARD_IMPORTS


PLANTED = {
    "chargpt/bad_torch.py": "def f():\n    import torch\n",  # torch in the ground floor, even lazily
    "chargpt/core/model.py": "import torch\nfrom inference_service.engine import Engine\n",
    "chargpt/wire/relative.py": "from ..core import model\n",  # chargpt.core through a relative import
    "chargpt/sneaky.py": "from chargpt import core\nimport importlib\nimportlib.import_module('trainer_service')\n",
    "inference_service/fetch.py": "from chargpt_client.errors import DataLoss\n",
    "trainer_service/servicer.py": "async def f():\n    import inference_service.server\n",
    "trainer_service/up.py": "from launchers.local import LocalServices\n",
    f"{CLIENT}/demo/__init__.py": "from launchers.local import LocalServices\n",  # allowed only inside a function
    f"{CLIENT}/notebook.py": "def connect():\n    from launchers.local import LocalServices\n",  # allowed
    f"{CLIENT}/ops.py": "from chargpt.core.tokenizer import CharTokenizer\nfrom chargpt.wire import lineage\n",
}


def test_the_checker_finds_planted_upward_imports(tmp_path: Path) -> None:
    for name, source in PLANTED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source, encoding="utf-8")
    found: dict[str, set[str]] = {}
    for i in upward_imports(tmp_path):
        found.setdefault(i.path, set()).add(i.module)
    engine, errors, local = "inference_service.engine", "chargpt_client.errors", "launchers.local"
    assert found == {
        "chargpt/bad_torch.py": {"torch"},
        "chargpt/core/model.py": {engine, f"{engine}.Engine"},
        "chargpt/wire/relative.py": {"chargpt.core", "chargpt.core.model"},
        "chargpt/sneaky.py": {"chargpt.core", "trainer_service"},
        "inference_service/fetch.py": {errors, f"{errors}.DataLoss"},
        "trainer_service/servicer.py": {"inference_service.server"},
        "trainer_service/up.py": {local, f"{local}.LocalServices"},
        f"{CLIENT}/demo/__init__.py": {local, f"{local}.LocalServices"},
        f"{CLIENT}/ops.py": {"chargpt.core.tokenizer", "chargpt.core.tokenizer.CharTokenizer"},
    }


@pytest.mark.parametrize("source", ["import launchers.local\n", "def f():\n    import launchers\n"])
def test_the_demos_exception_is_exactly_the_lazy_local_launcher(tmp_path: Path, source: str) -> None:
    (tmp_path / CLIENT / "cli").mkdir(parents=True)
    (tmp_path / CLIENT / "cli" / "demo_cmd.py").write_text(source, encoding="utf-8")
    assert len(upward_imports(tmp_path)) == 1
