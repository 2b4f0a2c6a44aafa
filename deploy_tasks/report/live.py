"""The runner's events on the console: rich live progress on a terminal, one timestamped line per event otherwise.

``ConsoleReporter`` is a runner listener. Not on a terminal (Jenkins, a
pipe, a file) it writes plain lines, each starting with the event's UTC time
(``2026-11-29T19:48:44Z``), never a cursor movement or a colour. On a
terminal it shows a spinner per running unit and prints each finished unit
above it. Every line is redacted.
"""

from __future__ import annotations

import re
import sys
from typing import Dict, Optional

from .. import outcome
from ..runner import Event
from . import console


# a remote tool's colours and cursor moves (CSI/OSC sequences), and any other control character but tab
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def plain(text: str) -> str:
    """``text`` without escape sequences or control characters: what a log file or Jenkins can show."""
    return _CONTROL.sub("?", _ANSI.sub("", text))


def stamp(event: Event) -> str:
    """The event's time to the second, ISO 8601 UTC."""
    return event.time[:19] + "Z"


def finished_lines(event: Event) -> list:
    """A finished unit: ``host  name  status  (1.2s)``, then its details (``- ...``) and error (``! ...``)."""
    res = event.result
    lines = [f"{res.host}  {res.name}  {outcome.label(res.status)}  ({res.seconds:.1f}s)"]
    lines += [f"    - {d}" for d in res.details]
    if res.error and res.status in (outcome.FAILED, outcome.SKIPPED):
        lines += [f"    ! {line}" for line in res.error.splitlines()]
    return lines


def event_lines(event: Event) -> list:
    """The plain text of one event (without the timestamp)."""
    if event.kind == "started":
        again = f"  (attempt {event.attempt})" if event.attempt > 1 else ""
        return [f"{event.host}  {event.name}  started{again}"]
    if event.kind == "output":
        return [event.line]
    if event.kind == "retrying":
        first = (event.error.splitlines() or [""])[0]
        return [f"{event.host}  {event.name}  retrying in {event.delay:.1f}s (attempt {event.attempt} failed: {first})"]
    if event.kind == "finished":
        return finished_lines(event)
    return [f"{event.host}  {event.name}  {event.kind}"]


class ConsoleReporter:
    """A runner listener that prints events (see the module docstring)."""

    def __init__(self, stream=None, interactive: Optional[bool] = None, title: str = ""):
        self.stream = stream or sys.stdout
        self.interactive = console.interactive(self.stream) if interactive is None else interactive
        self.title = title
        self._progress = None
        self._tasks: Dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        if self.interactive:
            self._live(event)
        else:
            self._plain(event)

    # -- not a terminal ----------------------------------------------------------------
    def _plain(self, event: Event) -> None:
        lines = event_lines(event)
        text = "\n".join([f"{stamp(event)}  {lines[0]}"] + lines[1:])
        self._write(text)

    def _write(self, text: str) -> None:
        text = "\n".join(plain(line) for line in console.redact(text).split("\n"))
        with console._lock:
            print(text, file=self.stream, flush=True)

    # -- a terminal ----------------------------------------------------------------------
    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                  console=Console(file=self.stream), transient=True)
        self._progress.start()

    def _live(self, event: Event) -> None:
        if self._progress is None:
            self._start()
        progress = self._progress
        if event.kind == "started":
            if event.unit in self._tasks:
                progress.update(self._tasks[event.unit], description=event_lines(event)[0])
            else:
                self._tasks[event.unit] = progress.add_task(event_lines(event)[0], total=None)
            return
        if event.kind == "finished" and event.unit in self._tasks:
            progress.remove_task(self._tasks.pop(event.unit))
        for line in event_lines(event):
            progress.console.print(console.redact(line), markup=False, highlight=False)

    def close(self) -> None:
        """Stop the live display (idempotent); call it after the run."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()
