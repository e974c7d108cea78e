"""Deleting a tree a job may have shaped (stand-in until the fd-based walker lands)."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Removal:
    """What :func:`remove_tree` did."""

    removed: bool
    moved_to: str | None = None
    problems: list[str] = field(default_factory=list)


def remove_tree(path: str | os.PathLike, *, quarantine: str | os.PathLike | None = None,
                ) -> Removal:
    """Remove ``path``; what cannot be removed is moved under ``quarantine``. Never raises."""
    path = Path(path)
    problems: list[str] = []
    try:
        shutil.rmtree(path, onerror=lambda _f, p, e: problems.append(f"{p}: {e[1]}"))
    except (RecursionError, OSError) as error:
        problems.append(f"{path}: {error!r}")
    if not os.path.lexists(path):
        return Removal(True, None, problems)
    if quarantine is not None:
        target = Path(quarantine) / f"{path.name}-{time.time_ns()}"
        try:
            os.rename(path, target)
            return Removal(False, str(target), problems)
        except OSError as error:
            problems.append(f"moving aside: {error.strerror}")
    return Removal(False, None, problems)
