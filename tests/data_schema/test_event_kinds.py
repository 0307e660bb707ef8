"""data_schema.tables.EVENT_KINDS names every event kind the project's own code emits.

The kinds are found in the source: the first argument of `writer.event("...")` / `_emit("...")`,
the value of a `"kind": "..."` entry of an event row, and strings assigned to a variable `kind`
(both branches of `"a" if c else "b"` count)."""

from __future__ import annotations

import ast
from pathlib import Path

from data_schema.tables import EVENT_KINDS

ROOT = Path(__file__).resolve().parents[2]
EMITTERS = ("telemetry", "trainer_hooks")


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def _event_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls `x.event(kind, ...)` / `_emit(kind, ...)`."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args and (
        (isinstance(n.func, ast.Attribute) and n.func.attr in ("event", "_emit"))
        or (isinstance(n.func, ast.Name) and n.func.id == "_emit"))]


def emitted_kinds() -> dict[str, str]:
    """{kind: where} for every event kind written as a literal in the emitting packages."""
    found: dict[str, str] = {}
    for package in EMITTERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            values: list[ast.AST] = [c.args[0] for c in _event_calls(tree)]
            for node in ast.walk(tree):
                if isinstance(node, ast.Dict):  # an event row: {"kind": ..., ...}
                    values += [v for k, v in zip(node.keys, node.values, strict=True)
                               if isinstance(k, ast.Constant) and k.value == "kind"]
                elif isinstance(node, ast.FunctionDef) and any(
                        isinstance(c.args[0], ast.Name) and c.args[0].id == "kind" for c in _event_calls(node)):
                    values += [a.value for a in ast.walk(node) if isinstance(a, ast.Assign)
                               and any(isinstance(t, ast.Name) and t.id == "kind" for t in a.targets)]
            for value in values:
                for kind in _strings(value):
                    found.setdefault(kind, f"{path.relative_to(ROOT)}:{value.lineno}")
    return found

def test_every_event_kind_the_code_emits_is_listed_in_event_kinds():
    kinds = emitted_kinds()
    assert {"storage_recovered", "loss_spike", "nan", "gpu_xid", "restart"} <= set(kinds)  # the scan finds them
    missing = {k: where for k, where in kinds.items() if k not in EVENT_KINDS}
    assert missing == {}, f"event kinds emitted but not in data_schema.tables.EVENT_KINDS: {missing}"
