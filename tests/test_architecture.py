"""The package's shape: neither its subpackages nor its modules import one another in a circle, no
command module holds what another package imports, dataset facts stay in the dataset registry, and an
extension is one place, tests included (every per-variant test picks up a newly registered attention
block, loss or dataset: tests/toys/)."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

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


def _module(path: pathlib.Path) -> str:
    """``caco_jax/runs/best.py`` -> ``caco_jax.runs.best`` (a package's ``__init__.py`` is the package)."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def module_graph() -> dict[str, set[str]]:
    """Module -> the other modules of the package it imports (a package's ``__init__`` counts as a module)."""
    modules = {_module(path) for path in PACKAGE.rglob("*.py")}
    return {
        _module(path): {m for m in _imports(path) if m in modules} - {_module(path)} for path in PACKAGE.rglob("*.py")
    }


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


def test_the_modules_import_one_another_without_a_circle():
    """Inside a subpackage too (the package-level graph cannot see a circle there)."""
    graph = module_graph()
    assert {"caco_jax.runs.weights", "caco_jax.runs.best", "caco_jax.runs.loading"} <= set(graph)
    assert "caco_jax.runs.best" in graph["caco_jax.runs.loading"]
    assert "caco_jax.training.losses" in graph["caco_jax.training.steps"]  # `from caco_jax.training.losses import`
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_module_outside_the_commands_imports_a_command():
    """The commands (caco_jax/cli/) sit on top: what another package or a test needs lives below them.
    Tests and scripts run a command through its ``main``; nothing else of a command is imported."""
    inside = {
        f"{path.relative_to(ROOT)} imports {m}"
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] not in ("cli", "__main__.py")
        for m in _imports(path)
        if m.startswith("caco_jax.cli")
    }
    assert inside == set()
    tests = {
        f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{alias.name}"
        for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("caco_jax.cli.")
        for alias in node.names
        if alias.name not in ("main", "COMMANDS")
    }
    assert tests == set()


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


# ----------------------------------------------------------------------------- an extension is one place

# Tests that run chosen variants on purpose rather than every registered one (with why).
CHOSEN = {
    "tests/test_train_parity.py::test_adamw_trajectory_is_as_close_to_float64_as_pytorch_float32": (
        "the paper's model and its SE baseline from the real ImageNet backbone, a minute each"
    ),
}

_COLLECT = """
import json, os, sys
import pytest
os.environ["CACO_JAX_TEST_TOYS"] = "1"
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"])
from caco_jax.data.registry import DATASETS
from caco_jax.models.attention import ATTENTION_BLOCKS
from caco_jax.training.losses import LOSSES
def defined_in(entry):  # a dataset entry is defined where its opener is; attention "none" is the package's None
    return "caco_jax" if entry is None else getattr(entry, "open", entry).__module__
registries = {"attention": ATTENTION_BLOCKS, "loss": LOSSES, "data": DATASETS}
names = {kind: {name: defined_in(entry) for name, entry in r.items()} for kind, r in registries.items()}
print("REGISTERED " + json.dumps(names))
sys.exit(int(code))
"""


def built_in(module: str) -> bool:
    """Whether a registry entry defined in ``module`` is one of the package's own (else a test's toy)."""
    return module == "caco_jax" or module.startswith("caco_jax.")


def per_variant_gaps(collected: list[str], builtin: dict[str, set[str]], toys: dict[str, set[str]]) -> list[str]:
    """Tests parametrised over a registry's entries (their ids name two or more of its built-in entries)
    whose ids miss one of its toys."""
    ids: dict[str, set[str]] = {}
    for line in collected:
        match = re.fullmatch(r"(tests/\S+?::\S+?)\[(.*)\]", line.strip())
        if match:
            ids.setdefault(match.group(1), set()).update(re.split(r"[-\[\]]", match.group(2)))
    gaps = []
    for test, tokens in sorted(ids.items()):
        for kind, names in builtin.items():
            if len(tokens & names) >= 2 and test not in CHOSEN and not toys[kind] <= tokens:
                gaps.append(f"{test} misses {sorted(toys[kind] - tokens)}")
    return gaps


def test_an_entry_is_built_in_where_the_package_defines_it():
    from caco_jax.data.registry import DATASETS
    from caco_jax.models.attention import ATTENTION_BLOCKS

    assert built_in(ATTENTION_BLOCKS["caco"].__module__) and built_in(DATASETS["folder"].open.__module__)
    assert not built_in("toys.attention_block") and not built_in("caco_jax_user_config")


def test_the_gap_finder_sees_a_per_variant_test_without_the_toy():
    builtin, toys = {"loss": {"ce", "focal", "ldam"}}, {"loss": {"toy_brier"}}
    collected = ["tests/t.py::test_a[ce]", "tests/t.py::test_a[focal]", "tests/t.py::test_b[ldam-x]"]
    assert per_variant_gaps(collected, builtin, toys) == ["tests/t.py::test_a misses ['toy_brier']"]
    assert per_variant_gaps([*collected, "tests/t.py::test_a[toy_brier]"], builtin, toys) == []


@pytest.mark.slow
def test_every_per_variant_test_collects_a_newly_registered_toy():
    """tests/toys/ registers a toy attention block (with its PyTorch twin), a toy loss and a toy dataset,
    one file each; with them registered, every test of the default suite that is parametrised over a
    registry collects the toy too, without a test file knowing it. (Running the whole suite over them
    is left out of CI for time; the toys were run through the cheap per-variant tests by hand.) An
    entry is built in when the package defines it, so the check holds whether or not this process has
    registered the toys already (CACO_JAX_TEST_TOYS=1)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", _COLLECT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    *collected, registered = run.stdout.strip().splitlines()
    where = json.loads(registered.removeprefix("REGISTERED "))
    builtin = {kind: {name for name, module in entries.items() if built_in(module)} for kind, entries in where.items()}
    toys = {kind: set(entries) - builtin[kind] for kind, entries in where.items()}
    assert all(toys.values()), toys  # one toy of each kind was registered
    assert not per_variant_gaps(collected, builtin, toys)
    # and the check has something to check: each kind has per-variant tests that collected its toy
    for kind, toy in toys.items():
        assert any(re.search(rf"[\[-]{re.escape(name)}[\]-]", line) for line in collected for name in toy), kind
