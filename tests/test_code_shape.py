"""The code stays readable: no function in ``fastopt/`` is longer than 60 lines (its docstring not counted) or has a
cyclomatic complexity above 15, and the kernel interface imports no implementation (one-way layering)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastopt"
if not PACKAGE.is_dir():  # the wheel test runs a copy of tests/ against the installed package: no source beside it
    pytest.skip(f"{PACKAGE} is not beside these tests (they run from an installed copy)", allow_module_level=True)
MAX_LINES, MAX_COMPLEXITY = 60, 15
# decision points of McCabe's cyclomatic complexity: each adds a path through the function
BRANCHES = (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.comprehension, ast.match_case)


def _own_nodes(function: ast.AST) -> list[ast.AST]:
    """The nodes of ``function``'s body, not those of the functions and classes defined inside it."""
    nodes, stack = [], list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def complexity(function: ast.AST) -> int:
    """1 + the decision points: if/elif, conditional expressions, loops, except clauses, comprehension clauses
    (their ``for`` and each ``if``), match cases, and each extra operand of ``and``/``or``."""
    total = 1
    for node in _own_nodes(function):
        if isinstance(node, BRANCHES):
            total += 1 + (len(node.ifs) if isinstance(node, ast.comprehension) else 0)
        elif isinstance(node, ast.BoolOp):
            total += len(node.values) - 1
    return total


def length(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the ``def`` to the end of the body, less the docstring's."""
    lines = function.end_lineno - function.lineno + 1  # type: ignore[operator]
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1  # type: ignore[operator]
    return lines


def python_functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}", node))
    return found


def test_python_functions_are_short_and_simple() -> None:
    functions = python_functions()
    assert len(functions) > 100  # the walk found the package
    too_long = [f"{name} ({length(node)} lines)" for name, node in functions if length(node) > MAX_LINES]
    too_complex = [f"{name} (complexity {complexity(node)})" for name, node in functions
                   if complexity(node) > MAX_COMPLEXITY]  # fmt: skip
    assert not too_long, f"functions longer than {MAX_LINES} lines: {too_long}"
    assert not too_complex, f"functions with cyclomatic complexity above {MAX_COMPLEXITY}: {too_complex}"


def test_cython_functions_are_short() -> None:
    """``.pyx`` files are not Python's syntax: a function runs from its ``def``/``cdef`` line to the next line at
    its indentation or less that is not blank, a comment or a continuation."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.pyx")):
        lines = path.read_text().splitlines()
        for start, line in enumerate(lines):
            # (a "cdef class" line with a base class in parentheses is not a function)
            match = re.match(r"(\s*)(?:cdef|cpdef|def)\s+(?!class\b)[^=]*\(", line)
            if not match:
                continue
            indent, end = len(match.group(1)), start + 1
            while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
                                        or lines[end].lstrip().startswith(("#", ")"))):  # fmt: skip
                end += 1
            while end > start and not lines[end - 1].strip():
                end -= 1
            if end - start > MAX_LINES:
                too_long.append(f"{path.name}:{start + 1} ({end - start} lines)")
    assert not too_long, f"Cython functions longer than {MAX_LINES} lines: {too_long}"


@pytest.mark.parametrize("module", ["backend.py", "_checks.py", "kernel_table.py"])
def test_the_kernel_interface_imports_no_implementation(module: str) -> None:
    """The interface names backends by module path and never imports a backend, a model, the training loop or
    the optimizers (they sit above it)."""
    tree = ast.parse((PACKAGE / module).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    forbidden = {"fastopt.numpy_backend", "fastopt.cython_backend", "fastopt.model", "fastopt.training",
                 "fastopt.optim", "fastopt.checkpoint", "fastopt._config"}  # fmt: skip
    assert not imported & forbidden, f"{module} imports {sorted(imported & forbidden)}"


def test_the_model_and_the_training_loop_import_one_way() -> None:
    """model -> training -> checkpoint -> history: none of the lower modules imports a higher one at run time
    (``if TYPE_CHECKING:`` imports, for annotations, do not count)."""
    order = ["model", "training", "checkpoint", "history"]
    for index, module in enumerate(order):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        runtime = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = {getattr(node, "module", None) or "" for node in runtime}
        names |= {f"fastopt.{alias.name}" for node in runtime if isinstance(node, ast.ImportFrom)
                  and node.module == "fastopt" for alias in node.names}  # fmt: skip
        higher = {f"fastopt.{name}" for name in order[:index]}
        assert not names & higher, f"fastopt/{module}.py imports {sorted(names & higher)}"
