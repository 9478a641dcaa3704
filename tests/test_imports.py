"""The dependency rule between vldata's sides, read from the source (AST), and the imports that the
read path and validation must not pull in, observed in a fresh interpreter.

Sides: ``errors`` and ``layout`` are leaves; ``describe`` (schema, card, Croissant), ``ingest`` (the
kit builders use), ``write`` (builder contract, engine, writers), ``read`` (sources, plan, torch),
``tools`` (validate, inspect, publish, demo) and ``cli``. Every import counts, also those inside
functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "vldata"

# side -> the sides it may import (besides itself)
ALLOWED = {
    "errors": set(),
    "layout": {"errors"},
    "describe": {"errors", "layout"},
    "ingest": {"errors", "layout", "describe"},
    "write": {"errors", "layout", "describe", "ingest"},
    "read": {"errors", "layout"},
    "tools": {"errors", "layout", "describe", "read", "write", "ingest"},
    "cli": {"errors", "layout", "write", "tools", "read"},  # read: ``vldata index`` (plain tars)
    "": {"errors", "layout", "describe", "ingest", "write", "read", "tools"},  # vldata/__init__.py
}
# tools that only read a build: they must not depend on building
READ_ONLY_TOOLS = {"vldata.tools.validate", "vldata.tools.inspect", "vldata.tools.contact_sheet", "vldata.tools.publish"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The vldata and builders modules that ``path`` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # "from pkg import module"
    modules = {m for m in found if m.split(".")[0] in ("vldata", "builders")}
    return {m for m in modules if _is_module(m)} - {name}


def _is_module(dotted: str) -> bool:
    if dotted.split(".")[0] == "builders":
        return True
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def side(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(root.rglob("*.py"))}


def violations(g: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, deps in g.items():
        for dep in sorted(deps):
            if dep.split(".")[0] == "builders":
                problems.append(f"{module} imports {dep}: vldata never imports a dataset's builder")
                continue
            s, d = side(module), side(dep)
            if d != s and d not in ALLOWED[s] and not (s == "" and dep == "vldata"):
                problems.append(f"{module} ({s or 'vldata'}) imports {dep} ({d or 'vldata'})")
            if module in READ_ONLY_TOOLS and d in ("write", "ingest"):
                problems.append(f"{module} only reads builds but imports {dep}")
    return problems


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (package ``__init__`` files are part of the graph too)."""
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d == "vldata" or d not in g:
                continue  # the top-level package imports lazily, by name
            if state.get(d) == "open":
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in g:
        if m not in state:
            visit(m)
    return found


def test_every_module_belongs_to_a_side():
    assert {side(m) for m in graph()} <= set(ALLOWED)


def test_sides_import_only_what_the_rule_allows():
    assert violations(graph()) == []


def test_there_are_no_import_cycles():
    assert cycles(graph()) == []


def test_the_rule_catches_a_forbidden_import(tmp_path):
    """The checker itself: a read module importing the fetcher, and a cycle, are both reported."""
    g = graph()
    g["vldata.read.source"] = g["vldata.read.source"] | {"vldata.ingest.fetch"}
    assert violations(g) == ["vldata.read.source (read) imports vldata.ingest.fetch (ingest)"]
    g["vldata.layout"] = g["vldata.layout"] | {"vldata.read.source"}
    g["vldata.read.source"] = g["vldata.read.source"] | {"vldata.layout"}
    assert any("vldata.layout" in c and "vldata.read.source" in c for c in cycles(g))


_PROBE = """
import json, sys
{code}
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("vldata", "builders", "torch")))))
"""


@pytest.mark.parametrize("code", [
    "import vldata; vldata.open",
    "import vldata; vldata.Mix",
    "from vldata.tools.validate import validate",
    "from vldata.tools.inspect import summary, read_samples",
    "import sys; sys.argv = ['vldata', 'validate', '/nonexistent']\nimport vldata.cli\n"
    "try:\n    vldata.cli.main()\nexcept SystemExit:\n    pass",
])
def test_reading_and_validating_do_not_load_the_build_side(code):
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(code=code)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith(("vldata.ingest", "vldata.write", "builders"))], loaded
    assert "torch" not in loaded


def test_every_public_name_resolves():
    """What README.md shows (``vldata.build``, ``open``, ``Mix``, ``TorchDataset``, ``decode_batch``,
    ``publish``, ``Builder``, ``Record``, ``Image``, ...) is reachable from the top-level package."""
    import vldata

    shown = {"build", "open", "Mix", "TorchDataset", "decode_batch", "decode_loader_batch", "publish", "Builder",
             "Record", "Image", "Config", "Failed", "Filtered", "Partition", "Pending", "RowContext",
             "StructuralError", "ShardError", "get_builder", "list_builders"}
    assert shown <= set(vldata.__all__)
    for name in vldata.__all__:
        assert getattr(vldata, name) is not None, name
    assert callable(vldata.build) and callable(vldata.open) and callable(vldata.publish)
