"""Lint: every ``torch.load`` in the package passes ``weights_only=True``.

The one exception is the dataset's restricted unpickler, which runs only inside
the sandbox; its call must carry the comment ``# sandboxed restricted unpickler``.
``torch.export.load`` unpickles and evaluates parts of a ``.pt2`` whatever it is
told, so every call must say it runs in the sandbox: ``# sandboxed: .pt2 is code``.
Run as ``python -m tests.check_torch_load edgeai``; exits 1 listing offenders.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

MARK = "# sandboxed restricted unpickler"
PT2_MARK = "# sandboxed: .pt2 is code"


def _is_torch(node: ast.AST | None, *path: str) -> bool:
    """``node`` is the attribute chain ``torch.<path...>``."""
    for name in reversed(path):
        if not (isinstance(node, ast.Attribute) and node.attr == name):
            return False
        node = node.value
    return isinstance(node, ast.Name) and node.id == "torch"


def offenders(root: Path) -> list[str]:
    """Return ``path:line`` for each unsafe ``torch.load`` call under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, str(path))):
            if not isinstance(node, ast.Call):
                continue
            span = lines[node.lineno - 1:(node.end_lineno or node.lineno)]
            if _is_torch(node.func, "export", "load"):
                if not any(PT2_MARK in line for line in span):
                    found.append(f"{path}:{node.lineno}: torch.export.load without the "
                                 f"comment {PT2_MARK!r} (it runs code from the file)")
                continue
            if not _is_torch(node.func, "load"):
                continue
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                       and k.value.value is True for k in node.keywords)
            if not safe and not any(MARK in line for line in span):
                found.append(f"{path}:{node.lineno}: torch.load without weights_only=True "
                             "(unpickling runs code)")
    return found


def main(argv: list[str]) -> int:
    """Check the folders in ``argv``; return 1 if any unsafe call is found."""
    bad = [hit for folder in argv or ["edgeai"] for hit in offenders(Path(folder))]
    for hit in bad:
        print(hit)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
