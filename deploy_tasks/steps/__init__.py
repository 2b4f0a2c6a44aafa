"""Idempotent steps on hosts: read state, decide, act only where it differs, report what changed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from ..outcome import CHANGED, FAILED, SKIPPED, UNCHANGED  # the one vocabulary (re-exported for steps)

__all__ = ["CHANGED", "FAILED", "SKIPPED", "UNCHANGED", "StepResult", "Timer"]


@dataclass
class StepResult:
    """The outcome of one step on one host: what the summary table shows."""

    host: str
    step: str
    status: str = UNCHANGED  # changed / unchanged / failed / skipped
    seconds: float = 0.0
    details: list = field(default_factory=list)  # what changed (or would change in a dry run)
    error: Optional[str] = None

    @property
    def changed(self) -> bool:
        return self.status == CHANGED

    def note(self, changed: bool, what: str) -> bool:
        """Record one sub-action; ``changed`` marks the step changed. Returns ``changed``."""
        if changed:
            self.status = CHANGED
            self.details.append(what)
        return changed


class Timer:
    def __init__(self):
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start
