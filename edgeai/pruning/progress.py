"""Where a running job is: its phase and, where known, the fraction of it done.

The pipeline announces how many steps it plans (:meth:`Tracker.plan`) and passes
each one through :func:`edgeai.pruning.pipeline.step`, which enters its phase here;
fine-tuning also reports the epochs it finished. The fraction is steps done over
steps planned (within fine-tuning, the epochs done count as part of a step), so it
only grows. Whoever runs the job chooses where the news goes with :func:`track`:
the sandbox child rewrites a small file that its supervisor reads; without a
listener nothing is reported. This module knows nothing of files or databases.
"""
from __future__ import annotations

from collections.abc import Callable

# Every phase a transaction shows, in the order a job meets them. "queued" and "done"
# are the queue's; the others are the pipeline's own steps (JOB_PHASES).
PHASES = ("queued", "loading", "evaluating", "analysing", "pruning", "verifying",
          "fine-tuning", "saving", "exporting", "measuring", "done")
JOB_PHASES = PHASES[1:-1]
# The pipeline's step names (its ``report.timings`` keys) and the phase each one is.
STEP_PHASES = {"load": "loading", "evaluate": "evaluating", "analyse": "analysing",
               "rewrite": "pruning", "verify": "verifying", "finetune": "fine-tuning",
               "save": "saving", "export": "exporting", "measure": "measuring"}

Listener = Callable[[str, "float | None"], None]


class Tracker:
    """The progress of the one job this process runs; tells its listener each change."""

    def __init__(self, listener: Listener | None = None):
        self.listener = listener
        self.planned = 0
        self.done = 0
        self.phase = ""

    def plan(self, steps: int) -> None:
        """Announce how many steps the job will take; the fraction is known from here."""
        self.planned, self.done = max(0, steps), 0

    def enter(self, step: str) -> None:
        """A step of the pipeline (a key of :data:`STEP_PHASES`) starts."""
        self.phase = STEP_PHASES[step]
        self._tell(0.0)

    def leave(self) -> None:
        """The current step is over."""
        self.done += 1

    def within(self, fraction: float) -> None:
        """Report how far the current step is, from 0 to 1 (fine-tuning's epochs)."""
        self._tell(min(1.0, max(0.0, fraction)))

    def fraction(self, within: float = 0.0) -> float | None:
        """Steps done over steps planned, in [0, 1]; None before a plan."""
        if not self.planned:
            return None
        return round(min(1.0, (self.done + within) / self.planned), 4)

    def _tell(self, within: float) -> None:
        if self.listener is not None and self.phase:
            self.listener(self.phase, self.fraction(within))


_current = Tracker()


def track(listener: Listener | None) -> Tracker:
    """Send this process's job progress to ``listener`` from now on (None: nowhere).
    Returns the new tracker."""
    global _current
    _current = Tracker(listener)
    return _current


def current() -> Tracker:
    """The tracker of the job this process runs."""
    return _current
