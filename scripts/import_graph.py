"""The package's import graph, from the source (``ast``): which module imports which.

    python scripts/import_graph.py            # Mermaid flowchart of the packages (docs/design.md)
    python scripts/import_graph.py --modules  # one line per module: its hrstyle imports
    python scripts/import_graph.py --cycles   # import cycles between modules (exit 1 if any)

Every import counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_graph(package: Path = ROOT / "hrstyle") -> dict[str, set[str]]:
    """``{module: {hrstyle modules it imports}}`` for every module of ``package`` (``__init__`` as the package)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hrstyle"):
                for alias in node.names:  # `from hrstyle.inference import memory` imports a module
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("hrstyle")}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (each as a path that returns to its start), by depth-first search."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def package_of(module: str) -> str:
    """The folder a module lives in (``hrstyle.inference.onnx.backend`` → ``inference.onnx``); top-level
    modules (``hrstyle.checkpoint``) stand for themselves."""
    parts = module.split(".")[1:]
    path = ROOT / "hrstyle" / Path(*parts)
    if path.is_dir():
        return ".".join(parts)
    return ".".join(parts[:-1]) or parts[-1]


def mermaid(graph: dict[str, set[str]]) -> str:
    """A Mermaid flowchart of the dependencies between packages (an arrow: "imports")."""
    edges = sorted({(package_of(m), package_of(d)) for m, deps in graph.items() for d in deps
                    if package_of(m) != package_of(d) and package_of(m) != ""})
    ids = {name: name.replace(".", "_") for edge in edges for name in edge}
    lines = ["flowchart LR"]
    lines += [f"    {ids[a]}[{a}] --> {ids[b]}[{b}]" for a, b in edges]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", action="store_true")
    parser.add_argument("--cycles", action="store_true")
    args = parser.parse_args()
    graph = module_graph()
    if args.cycles:
        cycles = find_cycles(graph)
        for cycle in cycles:
            print(" -> ".join(cycle))
        print(f"{len(cycles)} import cycle(s) among {len(graph)} modules")
        sys.exit(1 if cycles else 0)
    if args.modules:
        for name in sorted(graph):
            print(f"{name}: {', '.join(sorted(graph[name])) or '-'}")
        return
    print(mermaid(graph))


if __name__ == "__main__":
    main()
