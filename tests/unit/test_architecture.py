"""The package's shape, checked: layers as sub-packages, no import cycles (function-level
imports included), and the public API reachable from ``batchq`` alone."""

from __future__ import annotations

import re
from pathlib import Path

import grimp

import batchq

PACKAGE = Path(batchq.__file__).parent
README = PACKAGE.parent / "README.md"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.find_modules_directly_imported_by(node):
            if not other.startswith("batchq"):
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for module in sorted(graph.modules):
        if module.startswith("batchq") and module not in index:
            visit(module)
    return found


def test_no_import_cycles_counting_function_level_imports() -> None:
    graph = grimp.build_graph("batchq", include_external_packages=False)
    assert _cycles(graph) == []


def test_layers_are_sub_packages_and_the_top_level_stays_small() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert len(top) <= 12, top
    assert len(packages) >= 5, packages
    assert {"core", "files", "store", "transport", "executor", "agents", "run", "local"} <= set(
        packages
    )
    assert (PACKAGE / "py.typed").is_file()


def _type_checking_lines(lines: list[str]) -> set[int]:
    """The indices of the lines inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    block_indent: int | None = None
    for number, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if not line.strip() or indent > block_indent:
                inside.add(number)
                continue
            block_indent = None
        if re.match(r"^\s*if TYPE_CHECKING:", line):
            block_indent = indent
    return inside


def test_type_checking_blocks_are_recognised() -> None:
    lines = ["if TYPE_CHECKING:", "    from a import (", "        b,", "    )", "", "x = 1"]
    assert _type_checking_lines(lines) == {1, 2, 3, 4}


def test_every_function_level_import_says_why() -> None:
    """A function-level import is allowed only to keep start-up fast, with a comment."""
    unexplained = []
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text(encoding="utf-8").splitlines()
        typing_only = _type_checking_lines(lines)
        for number, line in enumerate(lines):
            if number in typing_only:
                continue  # never executed: costs no start-up and needs no comment
            if re.match(r"^\s{4,}(from batchq[\w.]* import|import batchq)", line):
                above = lines[number - 1].strip()
                if not (
                    above.startswith(("# lazy", "if TYPE_CHECKING"))
                    or above.startswith(("from batchq", "import batchq"))
                ):
                    unexplained.append(f"{path.relative_to(PACKAGE)}:{number + 1}")
    assert unexplained == []


def test_the_readme_python_api_imports_only_from_batchq() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    imported: set[str] = set()
    pattern = re.compile(r"^from (batchq[\w.]*) import (?:\(([^)]*)\)|([\w, ]+)$)", re.M)
    for block in blocks:
        for module, grouped, inline in pattern.findall(block):
            assert module == "batchq", f"README imports from {module}"
            names = (grouped or inline).replace("\n", ",").split(",")
            imported |= {n.strip() for n in names if n.strip()}
    assert imported, "the README shows no Python API"
    assert imported <= set(batchq.__all__), imported - set(batchq.__all__)
    for name in batchq.__all__:
        assert getattr(batchq, name) is not None
