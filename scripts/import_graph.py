"""hubbub's import graph, drawn from the source: circles and imports hidden inside functions.

Every ``import`` of a hubbub module counts, wherever it is: at module level, inside a function,
or under ``if TYPE_CHECKING:`` (a circle there still ties the two modules together). Circles are
the strongly connected components of that graph.

    python scripts/import_graph.py            # summary, circles, function-local imports
    python scripts/import_graph.py --check    # exit 1 if there is a circle (tests/test_import_graph.py)
    python scripts/import_graph.py --dot      # the graph in Graphviz dot
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "hubbub"
SOURCE = Path(__file__).resolve().parent.parent / "src" / PACKAGE


@dataclass(frozen=True)
class Import:
    source: str      # the importing module
    target: str      # the imported module (a hubbub module, or a third-party top-level name)
    line: int
    where: str       # "module", "function" or "type-checking"


def module_names(root: Path = SOURCE) -> dict[str, Path]:
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _where(node: ast.AST, parents: dict[int, ast.AST]) -> str:
    where = "module"
    while id(node) in parents:
        node = parents[id(node)]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return "function"
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            where = "type-checking"
    return where


def imports(root: Path = SOURCE) -> list[Import]:
    modules = module_names(root)
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: up level - 1 packages from this one
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # `from hubbub.voices import lips` imports the module hubbub.voices.lips
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):
                if target.split(".")[0] == PACKAGE:
                    while target not in modules:  # `import hubbub.x.y` of a name: its module
                        target = target.rpartition(".")[0]
                else:
                    target = target.split(".")[0]
                found.append(Import(name, target, node.lineno, _where(node, parents)))
    return found


def circles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.target.startswith(PACKAGE) and e.target != e.source:
            graph.setdefault(e.source, set()).add(e.target)
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the package has an import circle")
    parser.add_argument("--dot", action="store_true", help="print the graph of hubbub modules in dot")
    args = parser.parse_args(argv)
    edges = imports()
    found = circles(edges)
    internal = [e for e in edges if e.target.startswith(PACKAGE)]
    if args.dot:
        print("digraph hubbub {")
        for e in sorted({(e.source, e.target, e.where) for e in internal}):
            style = {"module": "solid", "function": "dashed", "type-checking": "dotted"}[e[2]]
            print(f'  "{e[0]}" -> "{e[1]}" [style={style}];')
        print("}")
        return 0
    if not args.check:
        local = [e for e in edges if e.where == "function"]
        print(f"internal imports: {len(internal)}, inside functions: "
              f"{sum(e.where == 'function' for e in internal)}, under TYPE_CHECKING: "
              f"{sum(e.where == 'type-checking' for e in internal)}")
        print(f"third-party imports inside functions: {sum(not e.target.startswith(PACKAGE) for e in local)}")
        for e in sorted(local, key=lambda e: (e.source, e.line)):
            print(f"  {e.source}:{e.line} -> {e.target}")
    for component in found:
        print("circle: " + " <-> ".join(component))
        for e in internal:
            if e.source in component and e.target in component and e.source != e.target:
                print(f"  {e.source}:{e.line} -> {e.target} ({e.where})")
    if args.check and not found:
        print("no import circles")
    return 1 if (args.check and found) else 0


if __name__ == "__main__":
    sys.exit(main())
