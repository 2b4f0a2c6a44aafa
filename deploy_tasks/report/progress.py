"""Progress of a run over components: a rich bar when interactive, one plain line per component otherwise.

It knows only the one vocabulary (``deploy_tasks.outcome``): ``describe(item)``
gives an item's outcome and its line; on a terminal, the lines of changed,
would-change and failed items are printed above the bar (unchanged and
skipped ones only move it). The default ``describe`` is extract-artifacts'
(``report.extraction``).
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Tuple

from .. import outcome
from . import console

SHOWN_ON_A_TERMINAL = frozenset({outcome.CHANGED, outcome.WOULD_CHANGE, outcome.FAILED})


class ComponentProgress:
    """Implements deploy_tasks.artifacts.Progress for the console."""

    def __init__(self, title: str = "extracting", stream=None, interactive=None,
                 describe: Optional[Callable[[object], Tuple[str, str]]] = None):
        self.stream = stream or sys.stdout
        self.title = title
        self.interactive = console.interactive(self.stream) if interactive is None else interactive
        if describe is None:
            from .extraction import describe
        self.describe = describe
        self._progress = None
        self._bar = None

    def begin(self, components: int, total_bytes: int) -> None:
        if not self.interactive:
            return
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TimeRemainingColumn(), console=Console(file=self.stream), transient=True)
        self._progress.start()
        self._bar = self._progress.add_task(self.title, total=max(total_bytes, 1))

    def advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._bar, nbytes)

    def finished(self, item) -> None:
        status, line = self.describe(item)
        if self._progress is not None:
            if status in SHOWN_ON_A_TERMINAL:
                self._progress.console.print(console.redact(line), markup=False, highlight=False)
            return
        console.say(line, err=False) if self.stream is sys.stdout else print(console.redact(line), file=self.stream)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
