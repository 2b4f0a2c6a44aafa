"""extract-artifacts in the one vocabulary: what each extraction status means as an outcome, and its console line.

The adapter between ``deploy_tasks.artifacts`` (which keeps its own words:
extracted, unchanged, would-extract, not-mapped, failed) and the reporters,
which know only ``deploy_tasks.outcome``. ``run_result`` turns a whole
extraction into a ``RunResult``, so it gets the same report files as
every other task.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Tuple

from .. import outcome
from ..runner import RunResult, UnitResult

#: extraction status -> outcome
STATUS = {
    "extracted": outcome.CHANGED,
    "would-extract": outcome.WOULD_CHANGE,
    "unchanged": outcome.UNCHANGED,
    "not-mapped": outcome.SKIPPED,  # no host needs it and its artifact is absent: not an error
    "failed": outcome.FAILED,
}
HOST = "controller"  # extraction runs on the controller, into its repository


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def status(item) -> str:
    """The outcome of one component's extraction (an unknown status reads as failed, never as success)."""
    return STATUS.get(item.status, outcome.FAILED)


def line(item) -> str:
    """One line for one component (the text Jenkins logs show)."""
    head = f"{item.status:<13} {item.component} {item.version}"
    if item.status == "extracted":
        return (f"{head}: {item.files} files, {_mib(item.size)} from {_mib(item.artifact_size)} "
                f"in {item.seconds:.1f}s ({item.reason})")
    if item.status == "failed":
        return f"{head}: {item.error}" if item.error else f"{head}: {item.reason}"
    return f"{head}: {item.reason}" if item.reason else head


def describe(item) -> Tuple[str, str]:
    """(outcome, line) for ``report.progress.ComponentProgress``."""
    return status(item), line(item)


def run_result(result, dry_run: bool = False, task: str = "extract-artifacts") -> RunResult:
    """An extraction's ``Result`` as a ``RunResult``: one unit per component, host ``controller``."""
    ended = datetime.now(timezone.utc)
    started = ended - timedelta(seconds=result.seconds)  # the extraction measured its length, not its start
    run = RunResult(task, dry_run=dry_run, seconds=result.seconds, started=_iso(started), ended=_iso(ended))
    for item in result.outcomes:
        unit = UnitResult(f"{HOST}/{item.component}", HOST, item.component, status=status(item),
                          seconds=item.seconds, attempts=1)
        unit.details = [line(item)]
        if unit.status == outcome.FAILED:
            unit.error = str(item.error) if item.error else item.reason
            unit.error_type = type(item.error).__name__ if item.error else "ArtifactError"
        elif unit.status == outcome.SKIPPED:
            unit.error = item.reason
        run.units.append(unit)
    return run
