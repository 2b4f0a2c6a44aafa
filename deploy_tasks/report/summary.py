"""The end of a run on the console and on disk: the summary table, the report files, the one aggregate error."""

from __future__ import annotations

from typing import Optional, Tuple

from .. import outcome
from ..runner import RunResult
from . import console, files


def rows(result: RunResult) -> list:
    """One row per unit: host, unit, result, time, what (the error's first line, or what changed)."""
    table = []
    for u in result.units:
        what = u.error.splitlines()[0] if u.error else ("; ".join(u.details) or "-")
        table.append((u.host, u.name, outcome.label(u.status), f"{u.seconds:.1f}s", what))
    return table


def table(result: RunResult, title: str, unit_header: str = "step") -> None:
    console.say()
    console.table(title, ["host", unit_header, "result", "time", "what"], rows(result))


def finish(result: RunResult, title: str, reports_dir: Optional[str], unit_header: str = "step") -> Tuple[str, str]:
    """Write the reports (when ``reports_dir``), print the summary table, then raise ``RunFailed`` if any unit
    did not succeed. Returns the report paths (empty when not written)."""
    paths: Tuple[str, str] = ("", "")
    if reports_dir:
        paths = files.write(result, reports_dir)
    table(result, title, unit_header)
    if reports_dir:
        console.say(f"reports: {paths[0]}, {paths[1]}")
    result.raise_for_failures()
    return paths
