"""The architecture's import rules, enforced by static analysis.

Every `.py` file is parsed with `ast`; nothing under test is imported, so this runs in well
under a second and needs neither torch nor Blender. EVERY import statement counts: module
level, inside functions and methods, in try/except blocks, and literal dynamic imports
(`importlib.import_module("pkg.mod")`, `__import__("pkg.mod")`). Only the body of
`if TYPE_CHECKING:` is left out of the cycle graph (it never runs); the layer rules below
still apply to it (see `LAYER_RULES_SEE_TYPE_CHECKING`).

Rules:
1. The Blender add-on (blender_addon/) never imports `ADDON_FORBIDDEN` (torch, mfnet_core,
   training): it drives the backend as a subprocess.
2. mfnet_core never imports `CORE_FORBIDDEN` (bpy, bmesh, mathutils, training).
3. No import cycles among the modules of mfnet_core, nor among those of training.
4. The wings of mfnet_core follow `WING_RULES`.

Resolution: `from . import x` and `from ..camera import y` are resolved against the
importing module's package; `from pkg import name` is an edge to the submodule `pkg.name`
when that module exists, else to `pkg` itself; an edge to a package is an edge to its
`__init__.py`. `import a.b.c` is one edge, to `a.b.c`.

The checker's functions take (root folder, package name), so the self-tests at the bottom run
them on small fake trees in tmp_path to prove they can fail.
"""

from __future__ import annotations

import ast
import shutil
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = "mfnet_core"
ADDON = "blender_addon"
TRAINING = "training"

# --------------------------------------------------------------------------------------
# The rules. A forbidden name also forbids everything under it ("torch" forbids torch.nn).
# --------------------------------------------------------------------------------------

# 1. The add-on talks to the backend through a subprocess, never by importing it.
ADDON_FORBIDDEN = ("torch", "mfnet_core", "training")

# 2. The backend is bpy-free and does not depend on the training package.
CORE_FORBIDDEN = ("bpy", "bmesh", "mathutils", "training")

# 4. Groups of mfnet_core:
#    "floor": these modules directly in mfnet_core/ (plus mfnet_core/__init__.py),
#    a wing:  a subpackage (head/, inputs/, fit/, outputs/, network/), named after its folder,
#    "top":   every other module directly in mfnet_core/ (cli, reconstruct, doctor, synthetic,
#             __main__ and any new one).
FLOOR_MODULES = frozenset({"__init__", "errors", "camera", "render", "metrics"})

# Group of the importing module -> groups of mfnet_core it must NOT import (inside a group,
# and to any group not listed, imports are allowed). A new subpackage needs a row here.
# Importing training from anywhere in mfnet_core (network included) is rule 2.
WING_RULES: dict[str, frozenset[str]] = {
    "floor": frozenset({"head", "inputs", "fit", "outputs", "network", "track", "top"}),
    "head": frozenset({"fit", "outputs", "network", "track", "top"}),
    "inputs": frozenset({"head", "fit", "outputs", "network", "track", "top"}),
    "fit": frozenset({"outputs", "network", "track", "top"}),
    "outputs": frozenset({"network", "track", "top"}),  # may use fit's public modules
    "network": frozenset({"fit", "outputs", "track", "top"}),
    # video tracking (`mfnet track`): uses head, inputs and fit's solver; only the top uses it
    "track": frozenset({"outputs", "network", "top"}),
    "top": frozenset(),  # may import anything in mfnet_core
}

# Whether imports under `if TYPE_CHECKING:` count for rules 1, 2 and 4 (they never count for
# cycles). True: an annotation-only dependency on a higher layer is still a layering breach.
LAYER_RULES_SEE_TYPE_CHECKING = True

# --------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. "mfnet_core.fit.dense"; a package is named without ".__init__"
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module's dotted name
    path: Path  # the importing file
    line: int
    source: str  # the statement as written for this name, e.g. "from .. import camera"
    target: str  # absolute dotted name imported (a module, or the package a symbol comes from)
    type_checking: bool  # under `if TYPE_CHECKING:`
    function: str | None  # the enclosing function, None at module/class level

    def where(self, root: Path) -> str:
        try:
            shown = self.path.relative_to(root)
        except ValueError:
            shown = self.path
        scope = f" (in {self.function}())" if self.function else ""
        tc = " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{shown.as_posix()}:{self.line}{scope}{tc}: `{self.source}`"


def discover_modules(root: Path, package: str) -> dict[str, Module]:
    """Every .py file of root/package, by dotted module name."""
    pkg_dir = root / package
    assert pkg_dir.is_dir(), f"no package folder {pkg_dir}"
    modules: dict[str, Module] = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """All imports of one module, with their line, scope and TYPE_CHECKING status."""

    def __init__(self, module: Module, known: dict[str, Module]) -> None:
        self.module = module
        self.known = known
        self.imports: list[Import] = []
        self._type_checking = False
        self._functions: list[str] = []

    def _add(self, node: ast.AST, source: str, target: str) -> None:
        self.imports.append(
            Import(
                importer=self.module.name,
                path=self.module.path,
                line=node.lineno,
                source=source,
                target=target,
                type_checking=self._type_checking,
                function=".".join(self._functions) or None,
            )
        )

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions.append(node.name)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        outer = self._type_checking
        self._type_checking = True
        for stmt in node.body:
            self.visit(stmt)
        self._type_checking = outer
        for stmt in node.orelse:  # the else branch of `if TYPE_CHECKING:` does run
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, f"import {alias.name}", alias.name)

    def _from_base(self, node: ast.ImportFrom) -> str:
        if node.level == 0:
            assert node.module is not None
            return node.module
        name = self.module.name
        package = name if self.module.is_package else name.rpartition(".")[0]
        parts = package.split(".") if package else []
        up = node.level - 1
        if up >= len(parts):
            raise AssertionError(
                f"{self.module.path}:{node.lineno}: relative import beyond the top-level package"
            )
        base = parts[: len(parts) - up]
        if node.module:
            base.append(node.module)
        return ".".join(base)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._from_base(node)
        written = "." * node.level + (node.module or "")
        for alias in node.names:
            source = f"from {written} import {alias.name}"
            if alias.name == "*":
                self._add(node, source, base)
                continue
            submodule = f"{base}.{alias.name}"
            self._add(node, source, submodule if submodule in self.known else base)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        is_dynamic_import = (
            isinstance(func, ast.Name) and func.id in ("__import__", "import_module")
        ) or (isinstance(func, ast.Attribute) and func.attr == "import_module")
        if (
            is_dynamic_import
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            self._add(node, ast.unparse(node), node.args[0].value)
        self.generic_visit(node)


@cache
def load_package(root: Path, package: str) -> tuple[dict[str, Module], tuple[Import, ...]]:
    """The modules of root/package and every import they make."""
    modules = discover_modules(root, package)
    imports: list[Import] = []
    for module in modules.values():
        source = module.path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(source, filename=str(module.path))
        except SyntaxError as exc:
            raise AssertionError(f"{module.path}:{exc.lineno}: cannot parse: {exc.msg}") from exc
        collector = _Collector(module, modules)
        collector.visit(tree)
        imports.extend(collector.imports)
    return modules, tuple(imports)


def _under(name: str, prefixes: Iterable[str]) -> str | None:
    """The prefix `name` is, or is under (`torch.nn` is under `torch`), else None."""
    for prefix in prefixes:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


def forbidden_imports(
    root: Path,
    package: str,
    forbidden: Iterable[str],
    *,
    see_type_checking: bool = LAYER_RULES_SEE_TYPE_CHECKING,
) -> list[str]:
    """One message per import in root/package of a forbidden name (or anything under it)."""
    forbidden = tuple(forbidden)
    _, imports = load_package(root, package)
    out = []
    for imp in imports:
        if imp.type_checking and not see_type_checking:
            continue
        hit = _under(imp.target, forbidden)
        if hit is not None:
            out.append(f"{imp.where(root)} imports {imp.target}: {package} must not import {hit}")
    return out


def _owner(target: str, modules: dict[str, Module]) -> str | None:
    """The module of the package that an import target lands in (longest known prefix)."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in modules:
            return name
    return None


def import_graph(root: Path, package: str) -> dict[str, dict[str, list[Import]]]:
    """importer -> imported module -> the imports making that edge, within root/package.
    Imports under `if TYPE_CHECKING:` never run and are left out."""
    modules, imports = load_package(root, package)
    graph: dict[str, dict[str, list[Import]]] = {name: {} for name in modules}
    for imp in imports:
        if imp.type_checking:
            continue
        target = _owner(imp.target, modules)
        if target is None or target == imp.importer:
            continue
        graph[imp.importer].setdefault(target, []).append(imp)
    return graph


def _strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _shortest_cycle(graph: dict[str, dict[str, list[Import]]], members: list[str]) -> list[str]:
    """A shortest cycle through the first member, inside the component: [a, b, ..., a]."""
    start = members[0]
    inside = set(members)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt not in inside:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {members}")  # not for an SCC


def find_cycles(root: Path, package: str) -> list[list[str]]:
    """One shortest cycle per group of mutually importing modules, as [a, b, ..., a]."""
    graph = import_graph(root, package)
    return [_shortest_cycle(graph, members) for members in _strongly_connected(graph)]


MAX_CYCLE_EDGES_SHOWN = 40


def cycle_messages(root: Path, package: str) -> list[str]:
    """Per import cycle: the modules involved, one shortest cycle, and every import (file,
    line, statement) between the modules involved."""
    graph = import_graph(root, package)
    out = []
    for members in _strongly_connected(graph):
        cycle = _shortest_cycle(graph, members)
        lines = [
            f"import cycle among {members}",
            "  shortest: " + " -> ".join(cycle),
            "  imports between these modules:",
        ]
        inside = set(members)
        edges = [
            f"    {importer} -> {target}: {where}"
            for importer in members
            for target, imps in sorted(graph[importer].items())
            if target in inside
            for where in _statements(root, imps)
        ]
        if len(edges) > MAX_CYCLE_EDGES_SHOWN:
            more = len(edges) - MAX_CYCLE_EDGES_SHOWN
            edges = [*edges[:MAX_CYCLE_EDGES_SHOWN], f"    ... and {more} more"]
        out.append("\n".join(lines + edges))
    return out


def _statements(root: Path, imps: list[Import]) -> list[str]:
    """`Import.where` once per statement: the names one `from m import a, b` brings are
    joined again."""
    by_line: dict[int, list[Import]] = {}
    for imp in imps:
        by_line.setdefault(imp.line, []).append(imp)
    out = []
    for same in by_line.values():
        first = same[0]
        head, sep, _ = first.source.partition(" import ")
        if sep and head.startswith("from ") and len(same) > 1:
            names = ", ".join(imp.source.partition(" import ")[2] for imp in same)
            first = replace(first, source=f"{head} import {names}")
        out.append(first.where(root))
    return out


def group_of(name: str, package: str, modules: dict[str, Module], floor: frozenset[str]) -> str:
    """'floor', 'top' or the wing (subpackage folder name) of a module of `package`."""
    rel = name.split(".")[1:] if name != package else []
    if not rel:
        return "floor" if "__init__" in floor else "top"
    if len(rel) > 1 or modules[name].is_package:
        return rel[0]
    return "floor" if rel[0] in floor else "top"


def wing_violations(
    root: Path,
    package: str,
    rules: dict[str, frozenset[str]] = WING_RULES,
    floor: frozenset[str] = FLOOR_MODULES,
    *,
    see_type_checking: bool = LAYER_RULES_SEE_TYPE_CHECKING,
) -> list[str]:
    """One message per import inside root/package that its group's rule forbids, and one per
    module in a group (a new subpackage) that has no rule."""
    modules, imports = load_package(root, package)
    out = []
    for name in sorted(modules):
        group = group_of(name, package, modules, floor)
        if group not in rules:
            out.append(f"{name}: group {group!r} has no row in WING_RULES (add one)")
    for imp in imports:
        if imp.type_checking and not see_type_checking:
            continue
        target = _owner(imp.target, modules)
        if target is None:
            continue
        group = group_of(imp.importer, package, modules, floor)
        target_group = group_of(target, package, modules, floor)
        if target_group in rules.get(group, frozenset()):
            out.append(
                f"{imp.where(root)} imports {target}: {group} ({imp.importer}) "
                f"must not import {target_group}"
            )
    return out


def _report(title: str, messages: list[str]) -> str:
    return f"{title} ({len(messages)}):\n" + "\n".join(messages)


# --------------------------------------------------------------------------------------
# The rules, on the real tree
# --------------------------------------------------------------------------------------


def _assert_found(package: str, *expected: str) -> None:
    """Guard against a silently empty scan (wrong root or package name)."""
    modules, imports = load_package(REPO, package)
    missing = [name for name in expected if name not in modules]
    assert not missing, f"the scan of {package} misses {missing}"
    assert imports, f"no imports found in {package}"


def test_addon_never_imports_torch_or_backend():
    _assert_found(ADDON, ADDON, f"{ADDON}.backend")
    bad = forbidden_imports(REPO, ADDON, ADDON_FORBIDDEN)
    assert not bad, _report("the Blender add-on imports what it must not", bad)


def test_core_never_imports_blender_or_training():
    _assert_found(CORE, CORE, f"{CORE}.errors", f"{CORE}.fit")
    bad = forbidden_imports(REPO, CORE, CORE_FORBIDDEN)
    assert not bad, _report("mfnet_core imports what it must not", bad)


@pytest.mark.parametrize("package", [CORE, TRAINING])
def test_no_import_cycles(package):
    _assert_found(package, package)
    cycles = cycle_messages(REPO, package)
    assert not cycles, _report(f"import cycles in {package}", cycles)


def test_every_core_subpackage_has_a_wing_rule():
    modules, _ = load_package(REPO, CORE)
    wings = {group_of(name, CORE, modules, FLOOR_MODULES) for name in modules}
    assert wings - set(WING_RULES) == set(), "subpackages of mfnet_core without a WING_RULES row"


def test_core_wing_rules():
    _assert_found(CORE, CORE, f"{CORE}.errors", f"{CORE}.fit")
    bad = wing_violations(REPO, CORE)
    assert not bad, _report("mfnet_core wing rule violations", bad)


# --------------------------------------------------------------------------------------
# Self-tests: the checker finds violations planted in fake trees
# --------------------------------------------------------------------------------------

FAKE_TREE = {
    "__init__.py": "",
    "errors.py": "class E(Exception):\n    pass\n",
    # floor importing a wing, inside a function
    "camera.py": "def g():\n    from fakepkg.outputs import o\n    return o\n",
    # x <-> y: x only imports y inside a function, y imports x relatively
    "x.py": (
        "thing = 1\n\n\n"
        "def f():\n"
        "    from fakepkg import y\n"
        "    from fakepkg.y import A, B\n\n"
        "    return y, A, B\n"
    ),
    "y.py": "from . import x\n\nA = B = 1\n",
    "head/__init__.py": "",
    # head importing fit, inside a function
    "head/a.py": "def load():\n    import fakepkg.fit.b\n    return fakepkg.fit.b\n",
    "fit/__init__.py": "SYMBOL = 1\n",
    # b -> c only under TYPE_CHECKING, c -> b for real: no cycle
    "fit/b.py": (
        "from typing import TYPE_CHECKING\n\n"
        "from ..errors import E\n\n"
        "if TYPE_CHECKING:\n"
        "    from fakepkg.fit import c\n"
        "else:\n"
        "    from .. import errors\n"
    ),
    "fit/c.py": "from fakepkg.fit import b\n",
    "outputs/__init__.py": "",
    # allowed: fit's module b (edge to fakepkg.fit.b) and a symbol of fit (edge to fakepkg.fit)
    "outputs/o.py": "from fakepkg.fit import SYMBOL, b\n",
    "inputs/__init__.py": "",
    # inputs importing a top module, relatively, and a wing under TYPE_CHECKING
    "inputs/i.py": (
        "import typing\n\n"
        "from ..x import thing\n\n"
        "if typing.TYPE_CHECKING:\n"
        "    from ..head import a\n"
    ),
    "network/__init__.py": "",
    # network importing fit dynamically, and training
    "network/n.py": (
        "import importlib\n\n\n"
        "def load():\n"
        "    import training.toy\n"
        "    return importlib.import_module('fakepkg.fit.c')\n"
    ),
}


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    for rel, text in FAKE_TREE.items():
        path = tmp_path / "fakepkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def _edges(root: Path, package: str) -> set[tuple[str, str]]:
    graph = import_graph(root, package)
    return {(a, b) for a, targets in graph.items() for b in targets}


def test_selftest_resolves_relative_submodule_and_symbol_imports(fake_root):
    edges = _edges(fake_root, "fakepkg")
    assert ("fakepkg.y", "fakepkg.x") in edges  # from . import x
    assert ("fakepkg.x", "fakepkg.y") in edges  # from fakepkg import y, in a function
    assert ("fakepkg.head.a", "fakepkg.fit.b") in edges  # import a.b.c, in a function
    assert (
        "fakepkg.fit.b",
        "fakepkg.errors",
    ) in edges  # from ..errors import E / from .. import errors
    assert ("fakepkg.inputs.i", "fakepkg.x") in edges  # from ..x import thing
    assert ("fakepkg.outputs.o", "fakepkg.fit.b") in edges  # from pkg import submodule
    assert ("fakepkg.outputs.o", "fakepkg.fit") in edges  # from pkg import symbol: __init__
    assert ("fakepkg.network.n", "fakepkg.fit.c") in edges  # importlib.import_module("...")
    assert ("fakepkg.fit.b", "fakepkg.fit.c") not in edges  # TYPE_CHECKING only
    assert ("fakepkg.inputs.i", "fakepkg.head.a") not in edges  # typing.TYPE_CHECKING only
    assert ("fakepkg.fit.c", "fakepkg.fit.b") in edges


def test_selftest_finds_cycle_made_with_function_level_import(fake_root):
    assert find_cycles(fake_root, "fakepkg") == [["fakepkg.x", "fakepkg.y", "fakepkg.x"]]
    (message,) = cycle_messages(fake_root, "fakepkg")
    assert "fakepkg/x.py:5 (in f()): `from fakepkg import y`" in message
    assert "fakepkg/x.py:6 (in f()): `from fakepkg.y import A, B`" in message
    assert "fakepkg/y.py:1: `from . import x`" in message


def test_selftest_finds_wing_violations(fake_root):
    found = wing_violations(fake_root, "fakepkg")
    expected = [
        "fakepkg/camera.py:2 (in g()): `from fakepkg.outputs import o` imports fakepkg.outputs.o: "
        "floor (fakepkg.camera) must not import outputs",
        "fakepkg/head/a.py:2 (in load()): `import fakepkg.fit.b` imports fakepkg.fit.b: "
        "head (fakepkg.head.a) must not import fit",
        "fakepkg/inputs/i.py:3: `from ..x import thing` imports fakepkg.x: "
        "inputs (fakepkg.inputs.i) must not import top",
        "fakepkg/inputs/i.py:6 (under TYPE_CHECKING): `from ..head import a` imports "
        "fakepkg.head.a: inputs (fakepkg.inputs.i) must not import head",
        "fakepkg/network/n.py:6 (in load()): `importlib.import_module('fakepkg.fit.c')` imports "
        "fakepkg.fit.c: network (fakepkg.network.n) must not import fit",
    ]
    assert sorted(found) == sorted(expected)
    # outputs -> fit, fit -> floor, top -> anything: allowed, so not reported
    assert not [m for m in found if "outputs/o.py" in m or "fit/b.py" in m or "y.py" in m]


def test_selftest_flags_wing_without_rule(fake_root):
    (fake_root / "fakepkg" / "extra").mkdir()
    (fake_root / "fakepkg" / "extra" / "__init__.py").write_text("", encoding="utf-8")
    found = wing_violations(fake_root, "fakepkg")
    assert "fakepkg.extra: group 'extra' has no row in WING_RULES (add one)" in found


def test_selftest_finds_forbidden_imports_in_functions(fake_root):
    found = forbidden_imports(fake_root, "fakepkg", CORE_FORBIDDEN)
    assert found == [
        "fakepkg/network/n.py:5 (in load()): `import training.toy` imports training.toy: "
        "fakepkg must not import training"
    ]


def test_selftest_addon_copy_with_torch_in_a_function(tmp_path):
    """A copy of the real add-on with `import torch` (and mfnet_core) added inside a function
    of one file: exactly those imports are reported, on top of whatever the real one has."""
    shutil.copytree(
        REPO / ADDON, tmp_path / ADDON, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    target = tmp_path / ADDON / "rigdata.py"
    text = target.read_text(encoding="utf-8").rstrip("\n")
    n = text.count("\n") + 1  # the last line of the original
    target.write_text(
        text + "\n\n\ndef _sneaky():\n"
        "    import torch\n"
        "    from mfnet_core import reconstruct\n"
        "    return torch, reconstruct\n",
        encoding="utf-8",
    )
    before = forbidden_imports(REPO, ADDON, ADDON_FORBIDDEN)
    after = forbidden_imports(tmp_path, ADDON, ADDON_FORBIDDEN)
    added = (f"{ADDON}/rigdata.py:{n + 4} ", f"{ADDON}/rigdata.py:{n + 5} ")
    new = [m for m in after if m.startswith(added)]
    assert new == [
        f"{ADDON}/rigdata.py:{n + 4} (in _sneaky()): `import torch` imports torch: "
        f"{ADDON} must not import torch",
        f"{ADDON}/rigdata.py:{n + 5} (in _sneaky()): `from mfnet_core import reconstruct` "
        f"imports mfnet_core: {ADDON} must not import mfnet_core",
    ]
    assert len(after) == len(before) + 2
