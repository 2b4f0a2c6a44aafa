"""Progress of a run over components: a rich bar when interactive, one plain line per component otherwise."""

from __future__ import annotations

import sys

from . import console


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def outcome_line(outcome) -> str:
    """One line for one component (the text Jenkins logs show)."""
    head = f"{outcome.status:<13} {outcome.component} {outcome.version}"
    if outcome.status == "extracted":
        return (f"{head}: {outcome.files} files, {_mib(outcome.size)} from {_mib(outcome.artifact_size)} "
                f"in {outcome.seconds:.1f}s ({outcome.reason})")
    if outcome.status == "failed":
        return f"{head}: {outcome.error}" if outcome.error else f"{head}: {outcome.reason}"
    return f"{head}: {outcome.reason}" if outcome.reason else head


class ComponentProgress:
    """Implements deploy_tasks.artifacts.Progress for the console."""

    def __init__(self, title: str = "extracting", stream=None, interactive=None):
        self.stream = stream or sys.stdout
        self.title = title
        self.interactive = console.interactive(self.stream) if interactive is None else interactive
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

    def finished(self, outcome) -> None:
        line = outcome_line(outcome)
        if self._progress is not None:
            if outcome.status in ("extracted", "failed", "would-extract"):
                self._progress.console.print(console.redact(line), markup=False, highlight=False)
            return
        console.say(line, err=False) if self.stream is sys.stdout else print(console.redact(line), file=self.stream)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
