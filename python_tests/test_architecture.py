"""The package's import graph, read from the source: no cycles between modules, and no
module importing one of a higher layer (train -> nn, optim, bayes, data -> kernels)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sgmcmc_fused"

#: Layer of each top-level part of the package; a module may import its own layer or lower.
LAYERS = {
    "kernels": 0,
    "atomic_file": 0,
    "_build_info": 0,
    "_C": 0,
    "optim": 1,
    "nn": 1,
    "bayes": 1,
    "data": 1,
    "train": 2,
    "__init__": 3,
    "__main__": 3,
}
#: Parts of one layer that must not import each other.
INDEPENDENT = [("optim", "nn"), ("optim", "data"), ("nn", "data"), ("nn", "bayes"), ("optim", "bayes")]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The sgmcmc_fused modules `path` imports (absolute names), at any depth of the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("sgmcmc_fused"):
                # `from pkg import mod` imports the module pkg.mod; `from mod import name`, the module mod
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sgmcmc_fused"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        # keep only targets that are modules (an imported function resolves to its module)
        targets = set()
        for t in imports_of(path):
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                targets.add(t)
        edges[name] = targets
    return edges


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def test_the_graph_is_read():
    edges = graph()
    assert "sgmcmc_fused.kernels.registry" in edges["sgmcmc_fused.optim._langevin"]
    assert "sgmcmc_fused.kernels.lstm.reference" in edges["sgmcmc_fused.nn.functional"]


def test_no_module_imports_a_higher_layer():
    bad = [
        f"{a} -> {b}"
        for a, targets in graph().items()
        for b in targets
        if LAYERS[part(b)] > LAYERS[part(a)]
        or tuple(sorted((part(a), part(b)))) in map(tuple, map(sorted, INDEPENDENT))
    ]
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
