"""Run units through the runner with the console reporter, then write the reports and raise the one error."""

from __future__ import annotations

from typing import Optional, Sequence

from ..report import summary
from ..report.live import ConsoleReporter
from ..runner import RunResult, Runner, Unit


def run_units(task: str, units: Sequence[Unit], settings, *, title: str, dry_run: bool = False,
              unit_header: str = "step", reports_dir: Optional[str] = None, **runner_options) -> RunResult:
    """Run ``units`` (events on the console as they happen), print the summary table, write
    ``<reports_dir>/<task>.json`` and ``junit-<task>.xml``, and raise ``RunFailed`` if any unit did not succeed.

    ``max_parallel`` and ``retries`` come from the settings unless given.
    """
    reporter = ConsoleReporter()
    options = {"max_parallel": settings.max_parallel, "retries": settings.retries}
    options.update(runner_options)
    runner = Runner(task, listeners=[reporter], dry_run=dry_run, **options)
    try:
        result = runner.run(units)
    finally:
        reporter.close()
    summary.finish(result, title, reports_dir if reports_dir is not None else settings.reports_dir, unit_header)
    return result
