"""The architecture, checked: the dependency rule of docs/ARCHITECTURE.md, no project import hidden
inside a function, no module over the style guide's 400 lines (tests and benchmarks aside), no broad
`except` that swallows silently, and ruff clean (line length 120)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_schema", "telemetry", "trainer_hooks", "app")
MAX_LINES = 400

# Which layers a layer may import (besides itself). The arrows of docs/ARCHITECTURE.md:
# data_schema <- telemetry.store <- telemetry.write / telemetry.read <- telemetry.maintain
#   <- telemetry.importers <- trainer_hooks / app
ALLOWED: dict[str, set[str]] = {
    "data_schema": set(),
    "telemetry.store": {"data_schema"},
    "telemetry.write": {"data_schema", "telemetry.store"},
    "telemetry.read": {"data_schema", "telemetry.store"},
    "telemetry.maintain": {"data_schema", "telemetry.store", "telemetry.write", "telemetry.read"},
    "telemetry.importers": {"data_schema", "telemetry.store", "telemetry.write", "telemetry.read",
                            "telemetry.maintain"},
    "telemetry": {"data_schema", "telemetry.store", "telemetry.write", "telemetry.read", "telemetry.maintain",
                  "telemetry.importers"},
    "trainer_hooks": {"data_schema", "telemetry"},
    "app": {"data_schema", "telemetry", "trainer_hooks"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "telemetry" and len(parts) > 1 and f"telemetry.{parts[1]}" in ALLOWED:
        return f"telemetry.{parts[1]}"
    return parts[0]


def may_import(importer: str, imported: str) -> bool:
    a, b = layer_of(importer), layer_of(imported)
    if a == b:
        return True
    allowed = ALLOWED[a]
    # a layer that may import `telemetry` may import all of it; `telemetry` itself means the public names
    return b in allowed or ("telemetry" in allowed and b.startswith("telemetry"))


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for each import statement of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                out.append((name, child.lineno, in_function))
            visit(child, inside)

    visit(tree, False)
    return [(name, line, inner) for name, line, inner in out if name.split(".")[0] in PACKAGES]


def test_every_import_follows_the_dependency_rule():
    wrong = [f"{path.relative_to(ROOT)}:{line}: {module} ({layer_of(module)}) imports {name} ({layer_of(name)})"
             for module, path in project_modules().items()
             for name, line, _ in imports_of(module, path) if not may_import(module, name)]
    assert wrong == [], "\n".join(wrong)


def test_no_project_module_is_imported_inside_a_function():
    # A project import inside a function hides a cycle; heavy third-party packages (torch, duckdb,
    # wandb, ...) may still be imported lazily, each with a one-line reason where it happens.
    hidden = [f"{path.relative_to(ROOT)}:{line}: imports {name} inside a function"
              for module, path in project_modules().items()
              for name, line, inside in imports_of(module, path) if inside]
    assert hidden == [], "\n".join(hidden)


def test_no_module_is_longer_than_the_style_guide_allows():
    long = {str(path.relative_to(ROOT)): n for path in project_modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines (split them by job): {long}"


def _is_broad(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return handler.type is None or any(isinstance(n, ast.Name) and n.id in ("Exception", "BaseException")
                                       for n in names)


def test_every_broad_except_says_why_or_reports_what_it_swallowed():
    # A broad except either re-raises, or carries a comment saying why silence is right (the comment
    # also names what it logs or counts): a bare `except Exception: pass` hides bugs.
    silent = []
    for path in project_modules().values():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ExceptHandler) and _is_broad(node):
                end = max(getattr(n, "end_lineno", node.lineno) for n in node.body)
                reraises = any(isinstance(n, ast.Raise) for n in ast.walk(node))
                if not reraises and not any("#" in line for line in lines[node.lineno - 1:end]):
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert silent == [], "broad excepts without a reason: " + ", ".join(silent)


def test_ruff_is_clean_with_lines_of_at_most_120_characters():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists() and shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (it comes with the [dev] extra)")
    cmd = [str(ruff) if ruff.exists() else "ruff", "check", "--no-cache", *PACKAGES, "tests", "bench"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
