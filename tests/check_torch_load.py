"""Lint: every ``torch.load`` in the package passes ``weights_only=True``.

The one exception is the dataset's restricted unpickler, which runs only inside
the sandbox; its call must carry the comment ``# sandboxed restricted unpickler``.
Run as ``python -m tests.check_torch_load edgeai``; exits 1 listing offenders.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

MARK = "# sandboxed restricted unpickler"


def offenders(root: Path) -> list[str]:
    """Return ``path:line`` for each unsafe ``torch.load`` call under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source, str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func, "value", None)
            if name != "load" or not (isinstance(owner, ast.Name) and owner.id == "torch"):
                continue
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                       and k.value.value is True for k in node.keywords)
            span = lines[node.lineno - 1:(node.end_lineno or node.lineno)]
            if not safe and not any(MARK in line for line in span):
                found.append(f"{path}:{node.lineno}")
    return found


def main(argv: list[str]) -> int:
    """Check the folders in ``argv``; return 1 if any unsafe call is found."""
    bad = [hit for folder in argv or ["edgeai"] for hit in offenders(Path(folder))]
    for hit in bad:
        print(f"{hit}: torch.load without weights_only=True (unpickling runs code)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
