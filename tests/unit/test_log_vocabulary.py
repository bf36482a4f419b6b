"""Every log call in tlsgate/ names its event from the one vocabulary, `NoticeKind`.

Read from the source (AST), so a log line on a path no test reaches is checked too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tlsgate.observe.events import NoticeKind

ROOT = Path(__file__).resolve().parents[2] / "tlsgate"
LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
# Objects with a `warning`/`error` method that is not logging: config findings.
NOT_LOGGERS = frozenset({"walk", "report"})


def _receiver(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def event_names_outside_the_vocabulary() -> list[str]:
    vocabulary = {kind.value for kind in NoticeKind}
    found: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and _receiver(node.func.value) not in NOT_LOGGERS
                and node.args
            ):
                continue
            first = node.args[0]
            name = first.value if isinstance(first, ast.Constant) else None
            if isinstance(name, str) and name not in vocabulary:
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {name}")
    return found


def test_every_logged_event_name_is_a_notice_kind() -> None:
    assert event_names_outside_the_vocabulary() == []
