"""The one status vocabulary every task reports in: steps, extraction, the runner, the reports.

A leaf (no project imports), at the bottom of the layers beside ``errors``,
so that steps, artifacts, the runner and the reporters can all use it
without an upward arrow.

=============  ===============================================================
``changed``     the unit changed something (a file written, a service started)
``unchanged``   the unit checked and found nothing to do
``would-change`` a dry run found something to change and changed nothing
``failed``      the unit raised (its error and output are kept)
``skipped``     the unit did not run: its host failed earlier, a unit it
                depends on did not succeed, or the run was cancelled
=============  ===============================================================
"""

from __future__ import annotations

CHANGED = "changed"
UNCHANGED = "unchanged"
WOULD_CHANGE = "would-change"
FAILED = "failed"
SKIPPED = "skipped"

STATUSES = (CHANGED, UNCHANGED, WOULD_CHANGE, FAILED, SKIPPED)
#: a unit in one of these did its job; units that depend on it may start
SUCCEEDED = frozenset({CHANGED, UNCHANGED, WOULD_CHANGE})


def for_dry_run(status: str, dry_run: bool) -> str:
    """``changed`` reads ``would-change`` in a dry run; every other status is itself."""
    return WOULD_CHANGE if dry_run and status == CHANGED else status


def label(status: str) -> str:
    """The words a person reads: ``would-change`` prints as ``would change``."""
    return status.replace("-", " ")
