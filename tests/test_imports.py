"""The package's structure, read from its own imports: no import circle, and no module imports one on a floor
above its own; and no file over 400 lines.

The floors, from the bottom (a module may import modules of its own floor or below, never above; the first
pattern a file matches gives its floor):

0. the runtime and what every op shares: ``kernels/_runtime.py`` (backend, tuning, checks),
   ``kernels/_interpreter.py`` (the Triton interpreter's fixes and fast paths; it imports only Triton and NumPy),
   ``kernels/spec.py`` (the OpSpec type), ``kernels/_custom_op.py`` (the custom-op registration),
   ``kernels/peer_libs.py`` (the peer libraries' import guard), ``kernels/common/`` (shared ``@triton.jit`` helpers);
1. an op's kernels: ``ops/<op>/kernel*.py``, ``blocks.py``;
2. an op's public function and custom ops (``api.py``, and ``varlen.py`` / ``dispatch.py`` where an op splits
   them), its reference (which shares the op's argument checks), its peers' adapters (``peers.py``), its package;
3. an op's description (``ops/<op>/spec.py``) and the list of ops (``kernels/registry.py``);
4. performance without a GPU: ``kernels/perf/`` (the counters hook into the runtime by registration);
5. ``kernels/__init__.py``, the public face of the kernels;
6. the static report: ``kernels/report/`` (it runs the public ops);
7. everything built on the kernels: models, sweeps, plots, validation, results, the command line.

Imports are read with ``ast`` (absolute and relative, at module level and inside functions); an import of a
package's name (``from triton_playground import kernels``) is an import of its ``__init__.py``.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "triton_playground"
MAX_LINES = 400

FLOORS = [  # (floor, patterns relative to triton_playground/), first match wins
    (0, ["kernels/_runtime.py", "kernels/_interpreter.py", "kernels/spec.py", "kernels/_custom_op.py",
         "kernels/peer_libs.py", "kernels/common/*", "kernels/ops/__init__.py"]),
    (1, ["kernels/ops/*/kernel*.py", "kernels/ops/*/blocks.py"]),
    (2, ["kernels/ops/*/api.py", "kernels/ops/*/varlen.py", "kernels/ops/*/dispatch.py", "kernels/ops/*/reference.py",
         "kernels/ops/*/torch_peers.py", "kernels/ops/*/strata.py",
         "kernels/ops/*/peers.py", "kernels/ops/*/__init__.py"]),
    (3, ["kernels/ops/*/spec.py", "kernels/registry.py"]),
    (4, ["kernels/perf/*"]),
    (5, ["kernels/__init__.py"]),
    (6, ["kernels/report/*"]),
    (7, ["*"]),
]


def floor_of(relative: str) -> int:
    return next(floor for floor, patterns in FLOORS if any(fnmatch.fnmatch(relative, p) for p in patterns))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports}."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                for alias in node.names:  # a submodule imported by name, else the module it is taken from
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _relative(name: str) -> str:
    return str(_modules()[name].relative_to(PACKAGE))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_upward_import():
    upward = []
    for name, targets in import_graph().items():
        mine = floor_of(_relative(name))
        upward += [f"{_relative(name)} (floor {mine}) imports {_relative(t)} (floor {floor_of(_relative(t))})"
                   for t in sorted(targets) if floor_of(_relative(t)) > mine]
    assert not upward, "\n".join(upward)


def test_floors_are_data_the_package_matches():
    """Every file of the package has a floor, and the lower floors are not empty (a renamed file would fall to 7)."""
    floors = {floor_of(_relative(name)) for name in _modules()}
    assert floors == set(range(8))


def test_no_file_over_400_lines():
    files = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    long = [f"{p.relative_to(ROOT)}: {n}" for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "over 400 lines: " + ", ".join(long)
