"""The package's import graph, read with `ast` from every .py under viewpoint_jax/ (nothing is run).

Rules:
(a) No import cycles between the package's modules. Module-level and function-local imports both
    count: a lazy import hides a cycle from the interpreter, not from the design. A package's
    `__init__` importing its own submodules is not a cycle by itself: `from pkg import sub` is an
    edge to the submodule `pkg.sub` (not to `pkg/__init__.py`), and the implicit import of a
    parent package that Python does before a submodule is not an edge. Imports under
    `if TYPE_CHECKING:` never run and are left out of the graph.
(b) `viewpoint_jax.convert` (PyTorch checkpoints -> Orbax) is offline only: no module outside
    viewpoint_jax/convert/ imports it or its submodules, in any form, except its command
    (`viewpoint_jax.convert_wan`).
(d) Floors (docs/architecture.md): the library's folders stand in `FLOORS`, lowest first; a module
    imports only from its own floor or the floors below. The package top holds the commands
    (`python -m viewpoint_jax.<command>`): a command may import any floor, never another command.
(c) A function-local import of one of the package's own modules says why it is local: a comment
    `# lazy: <reason>` on the import's line (any line of a multi-line import) or on the line
    directly above it, e.g.

        def load_checkpoint(path):
            from viewpoint_jax import convert  # lazy: offline tool, pulls in torch

    Third-party imports inside functions are not checked.

Imports are resolved both absolute (`import viewpoint_jax.a.b`, `from viewpoint_jax.a import b`)
and relative (`from . import b`, `from ..a import b`); `from X import name` is an edge to the
submodule `X.name` when that is a module of the package, else to `X`. Dynamic imports
(`importlib.import_module`, a package's module `__getattr__`) are not seen.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import tokenize
from collections import defaultdict, deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "viewpoint_jax"
OFFLINE = "viewpoint_jax.convert"
OFFLINE_COMMAND = "viewpoint_jax.convert_wan"
# The library's folders, lowest first (docs/architecture.md). `convert` is offline and reads the
# models' layouts; nothing but its command imports it (rule b).
FLOORS = (
    "common",
    "geometry",
    "models",
    "diffusion",
    "data",
    "setup",
    "training",
    "generation",
    "evaluation",
    "studies",
    "convert",
)
LAZY_COMMENT = re.compile(r"#\s*lazy:\s*\S")


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str  # dotted module name; a package is its __init__
    target: str  # dotted name of the imported module of the package
    path: Path
    line: int
    local: bool  # inside a function
    justified: bool  # carries a `# lazy: <reason>` comment
    resolved: bool  # `target` is a module file of the package

    def __str__(self) -> str:
        where = "function-local" if self.local else "module-level"
        return f"{self.path}:{self.line}: {self.importer} -> {self.target} ({where})"


def package_modules(src_root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py of `src_root/package` (a package is its __init__)."""
    modules = {}
    for path in sorted((src_root / package).rglob("*.py")):
        parts = list(path.relative_to(src_root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _comment_lines(source: str) -> set[int]:
    """Line numbers that carry a `# lazy: <reason>` comment (real comments, not strings)."""
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and LAZY_COMMENT.match(token.string):
            lines.add(token.start[0])
    return lines


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.Module):
    """(node, inside a function) of every import that runs, skipping `if TYPE_CHECKING:` blocks."""

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, local
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                yield from visit(ast.Module(body=child.orelse, type_ignores=[]), local)
            else:
                inner = local or isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
                )
                yield from visit(child, inner)

    yield from visit(tree, False)


def _targets(node, importer: str, is_package: bool, package: str, modules) -> list[str]:
    """Dotted names of the package's modules that one import statement imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return [n for n in names if n == package or n.startswith(package + ".")]
    if node.level:
        base = importer if is_package else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    if not (base == package or base.startswith(package + ".")):
        return []
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        target = sub if sub in modules else base
        if target not in targets:
            targets.append(target)
    return targets


def package_imports(src_root: Path, package: str) -> list[Import]:
    """Every import of the package's own modules made by the package's modules."""
    modules = package_modules(src_root, package)
    imports = []
    for importer, path in modules.items():
        source = path.read_text()
        tree = ast.parse(source, filename=str(path))
        comments = _comment_lines(source)
        is_package = path.name == "__init__.py"
        shown = path.relative_to(src_root)
        for node, local in _import_nodes(tree):
            lines = set(range(node.lineno - 1, (node.end_lineno or node.lineno) + 1))
            for target in _targets(node, importer, is_package, package, modules):
                imports.append(
                    Import(
                        importer=importer,
                        target=target,
                        path=shown,
                        line=node.lineno,
                        local=local,
                        justified=bool(lines & comments),
                        resolved=target in modules,
                    )
                )
    return imports


@dataclasses.dataclass(frozen=True)
class Cycle:
    edges: list[Import]  # a shortest cycle, importer -> target -> ... -> importer
    tangle: list[Import]  # every import among the modules of its strongly connected group


def find_cycles(imports: list[Import]) -> list[Cycle]:
    """One shortest cycle of every strongly connected group of modules, with the group's edges."""
    edges: dict[str, dict[str, Import]] = defaultdict(dict)
    for imp in imports:
        # A module importing itself is harmless (it is already in sys.modules).
        if imp.importer != imp.target:
            edges[imp.importer].setdefault(imp.target, imp)
    cycles = []
    for group in _strongly_connected(edges):
        if len(group) < 2:
            continue
        best = None
        for start in sorted(group):
            path = _shortest_path_back(edges, start, group)
            if path and (best is None or len(path) < len(best)):
                best = path
        tangle = [imp for imp in imports if imp.importer in group and imp.target in group]
        cycles.append(Cycle(best, tangle))
    return cycles


def _strongly_connected(edges) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    nodes = sorted(set(edges) | {t for targets in edges.values() for t in targets})
    index, low, on_stack, stack, groups = {}, {}, set(), [], []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def _shortest_path_back(edges, start: str, group: set[str]) -> list[Import] | None:
    """Edges of a shortest path start -> ... -> start inside `group` (breadth first)."""
    previous: dict[str, Import] = {}
    queue = deque([start])
    seen = {start}
    while queue:
        node = queue.popleft()
        for target, imp in sorted(edges.get(node, {}).items()):
            if target not in group:
                continue
            if target == start:
                path = [imp]
                while path[0].importer != start:
                    path.insert(0, previous[path[0].importer])
                return path
            if target not in seen:
                seen.add(target)
                previous[target] = imp
                queue.append(target)
    return None


def format_cycle(cycle: Cycle) -> str:
    chain = " -> ".join([cycle.edges[0].importer, *(imp.target for imp in cycle.edges)])
    lines = [f"cycle: {chain}", *(f"    {imp}" for imp in cycle.edges)]
    others = [imp for imp in cycle.tangle if imp not in cycle.edges]
    if others:
        modules = sorted({imp.importer for imp in cycle.tangle})
        lines.append(f"  other imports tangling {', '.join(modules)}:")
        lines += [f"    {imp}" for imp in others]
    return "\n".join(lines)


def offline_imports(imports: list[Import], offline: str) -> list[Import]:
    """Imports of `offline` (or its submodules) from modules outside it."""

    def inside(name):
        return name == offline or name.startswith(offline + ".")

    return [
        imp
        for imp in imports
        if inside(imp.target) and not inside(imp.importer) and imp.importer != OFFLINE_COMMAND
    ]


def floor_of(module: str, package: str = PACKAGE) -> int | None:
    """The floor index of a library module (`FLOORS`), None for a command (a module at the
    package top) and for the package itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in FLOORS:
        return FLOORS.index(parts[1])
    if len(parts) == 2:
        return None
    raise AssertionError(f"{module} lives in a folder that FLOORS does not list")


def upward_imports(imports: list[Import]) -> list[Import]:
    """Library imports that run to a higher floor, and commands importing commands."""
    bad = []
    for imp in imports:
        importer, target = floor_of(imp.importer), floor_of(imp.target)
        if importer is None:  # a command: any floor, no other command
            if target is None and imp.target != PACKAGE and imp.target != imp.importer:
                bad.append(imp)
        elif target is None or target > importer:
            bad.append(imp)
    return bad


def unjustified_local_imports(imports: list[Import]) -> list[Import]:
    return [imp for imp in imports if imp.local and not imp.justified]


# The package ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imports():
    found = package_imports(ROOT, PACKAGE)
    assert len(found) > 20, "the parser found almost no imports: is the package where it was?"
    return found


def test_package_imports_resolve_to_modules(imports):
    broken = [imp for imp in imports if not imp.resolved]
    assert not broken, "imports of modules that do not exist:\n" + "\n".join(map(str, broken))


def test_no_import_cycles(imports):
    cycles = find_cycles(imports)
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(map(format_cycle, cycles))


def test_convert_is_imported_only_by_convert(imports):
    bad = offline_imports(imports, OFFLINE)
    assert not bad, f"{OFFLINE} is offline only, yet imported by:\n" + "\n".join(map(str, bad))


def test_imports_run_down_the_floors(imports):
    bad = upward_imports(imports)
    assert not bad, (
        "imports that run up a floor (FLOORS, lowest first) or from one command to another:\n"
        + "\n".join(map(str, bad))
    )


def test_every_folder_is_a_floor():
    folders = {p.parent.name for p in (ROOT / PACKAGE).glob("*/__init__.py")} - {"configs"}
    assert folders == set(FLOORS), "FLOORS and the package's folders differ"


def test_commands_are_thin_and_runnable():
    """Every module at the package top (but `__init__`) is a command: it has a `main` and runs
    as `python -m viewpoint_jax.<name>`."""
    for path in sorted((ROOT / PACKAGE).glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "main" in names, f"{path}: a command without main()"
        assert '__name__ == "__main__"' in path.read_text(), f"{path}: not runnable with -m"


def test_function_local_imports_say_why(imports):
    bad = unjustified_local_imports(imports)
    assert not bad, (
        "function-local imports of the package's own modules without a `# lazy: <reason>` "
        "comment (or move them to the top of the module):\n" + "\n".join(map(str, bad))
    )


# The checker itself, on synthetic packages ---------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_two_module_cycle(tmp_path):
    root = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import pkg.b\n",
            "pkg/b.py": "from . import a\n",
            "pkg/c.py": "from pkg import a\n",
        },
    )
    cycles = find_cycles(package_imports(root, "pkg"))
    assert len(cycles) == 1
    assert format_cycle(cycles[0]).splitlines()[0] == "cycle: pkg.a -> pkg.b -> pkg.a"
    assert [(imp.path.as_posix(), imp.line) for imp in cycles[0].edges] == [
        ("pkg/a.py", 1),
        ("pkg/b.py", 1),
    ]


def test_checker_passes_a_clean_package(tmp_path):
    """Parent -> child, siblings in one direction, `from pkg import sub` and relative forms,
    attributes of a package, a justified lazy import and a TYPE_CHECKING import: all clean."""
    root = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.geo import proj\nfrom .geo import sphere\n",
            "pkg/geo/__init__.py": "from pkg.geo.proj import project\nfrom . import sphere\n",
            "pkg/geo/proj.py": "from pkg.geo import sphere\nfrom .sampling import taps\n",
            "pkg/geo/sphere.py": "import numpy as np\n",
            "pkg/geo/sampling.py": "from . import sphere\n",
            "pkg/tool.py": (
                "from typing import TYPE_CHECKING\n"
                "from pkg.geo import project\n"
                "if TYPE_CHECKING:\n"
                "    from pkg import offline\n"
                "def run():\n"
                "    # lazy: heavy, only this command needs it\n"
                "    from pkg.geo import proj\n"
                "    import json\n"
                "    return proj, json\n"
            ),
            "pkg/offline/__init__.py": "from pkg.offline import core\n",
            "pkg/offline/core.py": "from pkg import tool\nfrom ..geo import sphere\n",
        },
    )
    imports = package_imports(root, "pkg")
    assert find_cycles(imports) == []
    assert all(imp.resolved for imp in imports)
    assert unjustified_local_imports(imports) == []
    assert offline_imports(imports, "pkg.offline") == []
    edges = {(imp.importer, imp.target) for imp in imports}
    assert ("pkg.geo.proj", "pkg.geo.sphere") in edges  # `from pkg.geo import sphere`
    assert ("pkg.geo.proj", "pkg.geo.sampling") in edges  # `from .sampling import taps`
    assert ("pkg.tool", "pkg.geo") in edges  # `from pkg.geo import project`: the __init__
    assert ("pkg.offline.core", "pkg.geo.sphere") in edges  # `from ..geo import sphere`
    assert ("pkg.tool", "pkg.offline") not in edges  # TYPE_CHECKING only
    assert ("pkg.tool", "pkg.geo.proj") in {
        (imp.importer, imp.target) for imp in imports if imp.local and imp.justified
    }


def test_checker_finds_child_to_parent_cycles_offline_imports_and_silent_lazy_imports(tmp_path):
    root = write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/geo/__init__.py": "from pkg.geo.proj import project\n",
            # The child imports a name from its parent's __init__: a real cycle.
            "pkg/geo/proj.py": "from pkg.geo import helper\ndef project(): pass\n",
            "pkg/geo/helpers.py": "",
            "pkg/offline/__init__.py": "",
            "pkg/offline/dit.py": "",
            "pkg/train.py": (
                "def load():\n"
                "    from pkg.offline import dit  # an optional step\n"
                "    from pkg import (\n"
                "        geo,  # lazy: heavy\n"
                "    )\n"
                "    x = '# lazy: in a string, not a comment'\n"
                "    import pkg.geo.helpers\n"
                "    return dit, geo, x\n"
            ),
        },
    )
    imports = package_imports(root, "pkg")
    cycles = find_cycles(imports)
    assert [format_cycle(c).splitlines()[0] for c in cycles] == [
        "cycle: pkg.geo -> pkg.geo.proj -> pkg.geo"
    ]
    assert [(imp.importer, imp.target) for imp in offline_imports(imports, "pkg.offline")] == [
        ("pkg.train", "pkg.offline.dit")
    ]
    silent = [(imp.target, imp.line) for imp in unjustified_local_imports(imports)]
    assert silent == [("pkg.offline.dit", 2), ("pkg.geo.helpers", 7)]


# Sizes: a function a reader takes in at once, a file a reader can hold -------------------------

MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 700


def test_no_long_functions_or_files():
    long = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        lines = path.read_text().count("\n")
        if lines > MAX_FILE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines (file)")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} {length}")
    assert not long, "over the size limits:\n" + "\n".join(long)
