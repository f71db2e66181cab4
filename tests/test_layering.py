"""The layering rules of ARCHITECTURE.md ("## Never"), checked against the real imports.

The rules are read from the repository's ARCHITECTURE.md, so the document and the check cannot
drift apart: a rule sentence the parser does not understand fails the test. Imports are every
``import``/``from`` statement of every module under ``wsproxy/`` (also inside functions and
under ``TYPE_CHECKING``). Cycles are looked for between modules among the imports that run
(``TYPE_CHECKING`` blocks excluded: they never execute). The checker itself is tested on
synthetic trees, so a forbidden import provably fails it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "wsproxy"


@dataclass(frozen=True)
class Rule:
    text: str
    importers: frozenset[str] | None  # parts the rule binds; None: every part
    forbidden: frozenset[str]
    exempt: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]
    no_cycles: bool


_NAMES = r"((?:`[\w.]+`(?:,\s*)?)+)"
_NEVER = re.compile(rf"^{_NAMES}\s+never imports?\s+{_NAMES}\.?$")
_NOTHING = re.compile(rf"^nothing(?: but {_NAMES})? imports?\s+{_NAMES}\.?$")
_CYCLES = re.compile(r"^no import cycles between modules\.?$")


def _names(group: str | None) -> frozenset[str]:
    return frozenset(re.findall(r"`([\w.]+)`", group or ""))


def parse_rules(markdown: str) -> Rules:
    """The bullet list under ``## Never``. Raises ValueError on a bullet it cannot read."""
    match = re.search(r"^## Never\s*$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    if match is None:
        raise ValueError("no '## Never' section")
    rules: list[Rule] = []
    no_cycles = False
    for line in match.group(1).splitlines():
        line = line.strip()
        if not line.startswith("- "):
            continue
        text = line[2:].strip()
        if m := _NEVER.match(text):
            rules.append(Rule(text, _names(m.group(1)), _names(m.group(2))))
        elif m := _NOTHING.match(text):
            rules.append(Rule(text, None, _names(m.group(2)), _names(m.group(1))))
        elif _CYCLES.match(text):
            no_cycles = True
        else:
            raise ValueError(f"cannot read the rule {text!r}")
    if not rules:
        raise ValueError("the '## Never' section has no rules")
    return Rules(tuple(rules), no_cycles)


@dataclass(frozen=True)
class Import:
    target: str  # a module of the package (the deepest one that exists)
    runtime: bool  # False under ``if TYPE_CHECKING:``
    line: int


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, list[Import]]:
    """Every module of ``package`` -> the modules of ``package`` it imports."""
    modules = _modules(root, package)

    def resolve(name: str) -> str | None:
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    return {module: _imports_of(module, path, resolve) for module, path in modules.items()}


def _imports_of(module: str, path: Path, resolve: Callable[[str], str | None]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    imports: list[Import] = []

    def visit(node: ast.AST, runtime: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, runtime)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent[: len(parent) - node.level + (1 if is_package else 0)]
                base = ".".join([*parent, base] if base else parent)
            # ``from a import b``: b may be a module of its own.
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for name in names:
            target = resolve(name)
            if target is not None and target != module:
                imports.append(Import(target, runtime, getattr(node, "lineno", 0)))
        for child in ast.iter_child_nodes(node):
            visit(child, runtime)

    visit(tree, True)
    return imports


def part_of(module: str) -> str:
    """``wsproxy.asgi.ws`` -> ``asgi``; ``wsproxy.cli`` -> ``cli``; ``wsproxy`` -> ``wsproxy``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def violations(rules: Rules, graph: dict[str, list[Import]]) -> list[str]:
    found = []
    for module, imports in graph.items():
        source = part_of(module)
        for rule in rules.rules:
            if rule.importers is not None and source not in rule.importers:
                continue
            if source in rule.exempt or source in rule.forbidden:
                continue  # (a part may import itself)
            for imp in imports:
                if part_of(imp.target) in rule.forbidden:
                    found.append(f"{module}:{imp.line} imports {imp.target} (rule: {rule.text})")
    if rules.no_cycles:
        found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return found


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Cycles among the imports that run (one per strongly connected set of modules)."""
    edges = {m: sorted({i.target for i in imports if i.runtime}) for m, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:  # Tarjan's algorithm
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, []):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


# -- the real tree -------------------------------------------------------------------------


def test_architecture_rules_hold_for_every_module() -> None:
    rules = parse_rules((ROOT / "ARCHITECTURE.md").read_text())
    assert rules.no_cycles
    graph = import_graph(ROOT)
    assert len(graph) > 40 and "wsproxy.asgi.sink" in graph
    # The graph sees real edges (else an empty graph would pass every rule).
    assert any(
        i.target == "wsproxy.service.engine" for i in graph["wsproxy.asgi.ws"] + graph["wsproxy.asgi.sink"]
    )
    assert violations(rules, graph) == []


def test_every_part_of_the_tree_is_named_in_the_parts_map() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    parts_section = text[text.index("## Parts") : text.index("## Never")]
    for part in sorted({part_of(m) for m in import_graph(ROOT)} - {PACKAGE}):
        assert re.search(rf"\b{re.escape(part)}(/|\.py)", parts_section), f"{part} is not in the parts map"


# -- the checker, on synthetic trees -------------------------------------------------------

RULES = """
## Never

- `core` never imports `asgi`, `service`.
- `service` never imports `asgi`.
- nothing but `__main__` imports `cli`.
- no import cycles between modules.

## Something else
- `asgi` never imports `core`.
"""


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, source in {"pkg/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return tmp_path


def test_parser_reads_each_sentence_shape_and_only_the_never_section() -> None:
    rules = parse_rules(RULES)
    assert rules.no_cycles
    assert [(r.importers, r.forbidden, r.exempt) for r in rules.rules] == [
        (frozenset({"core"}), frozenset({"asgi", "service"}), frozenset()),
        (frozenset({"service"}), frozenset({"asgi"}), frozenset()),
        (None, frozenset({"cli"}), frozenset({"__main__"})),
    ]


def test_parser_refuses_a_rule_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="cannot read"):
        parse_rules("## Never\n\n- `core` should preferably avoid `asgi`.\n")
    with pytest.raises(ValueError):
        parse_rules("## Parts\n- nothing\n")


def test_checker_finds_a_forbidden_import_anywhere_in_a_module(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/core/__init__.py": "",
            "pkg/core/events.py": "def f():\n    from pkg.asgi import sink\n",  # inside a function
            "pkg/asgi/__init__.py": "",
            "pkg/asgi/sink.py": "from pkg.core import events\n",
            "pkg/service/__init__.py": "",
            "pkg/service/engine.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.asgi.sink import X\n"
            ),
            "pkg/cli.py": "",
            "pkg/__main__.py": "from pkg.cli import main\n",
            "pkg/settings.py": "from . import cli\n",  # relative: still an import of cli
        },
    )
    found = violations(parse_rules(RULES), import_graph(root, "pkg"))
    assert len(found) == 4, found
    assert any(f.startswith("pkg.core.events:2 imports pkg.asgi.sink") for f in found)
    # (an import inside a function runs too: with sink's own import of events, a cycle)
    assert "import cycle: pkg.asgi.sink -> pkg.core.events" in found
    assert any(f.startswith("pkg.service.engine:3 imports pkg.asgi.sink") for f in found)
    assert any(f.startswith("pkg.settings:1 imports pkg.cli") for f in found)  # __main__ is exempt


def test_checker_finds_an_import_cycle_but_not_one_under_type_checking(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/asgi/__init__.py": "",
            "pkg/asgi/http.py": "from pkg.asgi.runs import start\n",
            "pkg/asgi/runs.py": "from pkg.asgi import http\n",
            "pkg/asgi/ws.py": "from pkg.asgi.formats import F\n",
            "pkg/asgi/formats.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.asgi.ws import S\n"
            ),
        },
    )
    found = violations(parse_rules(RULES), import_graph(root, "pkg"))
    assert found == ["import cycle: pkg.asgi.http -> pkg.asgi.runs"]


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/core/__init__.py": "",
            "pkg/core/events.py": "import json\n",
            "pkg/asgi/__init__.py": "",
            "pkg/asgi/sink.py": "from pkg.core.events import x\nfrom ..core import events\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert [i.target for i in graph["pkg.asgi.sink"]] == ["pkg.core.events", "pkg.core.events"]
    assert violations(parse_rules(RULES), graph) == []
