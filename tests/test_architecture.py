"""The package's shape: the subpackages import one another without a circle, dataset facts stay in
the dataset registry, and an extension is one place, tests included (every per-variant test picks
up a newly registered attention block, loss or dataset: tests/toys/)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "caco_jax"


def _unit(module: str) -> str | None:
    """The unit of the import graph a ``caco_jax...`` module belongs to: its subpackage, or the
    top-level module (``caco_jax.errors``); None outside the package."""
    parts = module.split(".")
    if parts[0] != "caco_jax" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions (relative imports resolved)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}  # `from caco_jax import data`
    return out


def import_graph() -> dict[str, set[str]]:
    """Unit -> the other units its modules import."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = _unit(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if source is None or source == "__init__":
            continue
        targets = {_unit(m) for m in _imports(path)} - {None, source, "__init__"}
        graph.setdefault(source, set()).update(t for t in targets if t is not None)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_subpackages_import_one_another_without_a_circle():
    graph = import_graph()
    assert {"models", "data", "training", "interop", "evaluation", "cli", "errors", "registry"} <= set(graph)
    assert "interop" in graph["training"]  # function-level imports count (the losses' PyTorch formulas)
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph) or [])}"


def _name_comparisons(path: pathlib.Path, name: str) -> list[int]:
    """Lines of ``path`` that compare something with the string ``name`` (==, !=, in, not in)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                elements = operand.elts if isinstance(operand, ast.Tuple | ast.List | ast.Set) else [operand]
                if any(isinstance(e, ast.Constant) and e.value == name for e in elements):
                    lines.append(node.lineno)
    return lines


def test_no_module_outside_data_tests_for_the_ham10000_dataset():
    """HAM10000's facts (class names, the paper's rows, what its images are, whether a prior build
    opens it) are its registry entry's: elsewhere a dataset is asked, never named."""
    found = {
        f"{path.relative_to(ROOT)}:{line}"
        for path in PACKAGE.rglob("*.py")
        if "data" not in path.relative_to(PACKAGE).parts[:1]
        for line in _name_comparisons(path, "ham10000")
    }
    assert found == set()
    # the check sees a comparison where there is one
    assert _name_comparisons(PACKAGE / "data" / "ham10000.py", "ham10000")
