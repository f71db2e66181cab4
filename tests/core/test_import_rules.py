"""ARCHITECTURE.md: nothing in core, dialects or policy awaits, reads the clock or the environment,
or imports an edge. Checked on the source (every import statement, also inside functions) and on a
fresh interpreter (what importing these packages actually loads). The layering between all the
parts is tests/test_layering.py's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE_PACKAGES = ("core", "dialects", "policy")
FORBIDDEN = frozenset(
    {"starlette", "httpx2", "httpx", "uvicorn", "asyncio", "time", "os", "socket", "sqlite3", "redis"}
)
# wsproxy modules the pure packages may reach (directly or through each other).
EDGES = (
    "wsproxy.asgi",
    "wsproxy.upstream",
    "wsproxy.local",
    "wsproxy.settings",
    "wsproxy.cli",
    "wsproxy.server",
    "wsproxy.service",
    "wsproxy.store",
)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module imported by the file, resolving relative imports."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("<dynamic __import__>")
    return names


def pure_files() -> list[Path]:
    files = [f for pkg in PURE_PACKAGES for f in sorted((ROOT / "wsproxy" / pkg).glob("*.py"))]
    assert len(files) >= 10, files
    return files


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_forbidden_imports(path: Path) -> None:
    imported = imported_modules(path)
    bad = sorted(m for m in imported if m.split(".")[0] in FORBIDDEN or m.startswith("<"))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    edges = sorted(m for m in imported if m.startswith(EDGES))
    assert not edges, f"{path.relative_to(ROOT)} imports edge modules {edges}"


def test_no_awaits_in_pure_packages() -> None:
    for path in pure_files():
        for node in ast.walk(ast.parse(path.read_text())):
            assert not isinstance(node, ast.AsyncFunctionDef | ast.Await | ast.AsyncFor | ast.AsyncWith), (
                f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')} is async"
            )


def test_importing_the_pure_packages_loads_no_edge() -> None:
    modules = [
        f"wsproxy.{pkg}.{f.stem}" for pkg in PURE_PACKAGES for f in (ROOT / "wsproxy" / pkg).glob("*.py")
    ]
    # time and os are loaded by the interpreter itself; the source check above covers them.
    watched = sorted(FORBIDDEN - {"time", "os"}) + list(EDGES)
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print([w for w in {watched!r} if any(k == w or k.startswith(w + '.') for k in sys.modules)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
