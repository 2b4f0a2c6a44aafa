"""The end of a deploy: the host x component summary, ``deploy.json`` (+ a timestamped copy), JUnit, per-host logs.

``reports/deploy.json``: ``{"steps": [{"host", "component", "group", "status",
"started", "ended", "exit_code", ...}]}``, status ``succeeded``, ``failed`` or
``skipped`` (``outcome`` keeps the finer word: changed/unchanged), ISO 8601
UTC times; a copy named ``deploy-<UTC time>.json`` is written beside it.
``reports/junit-deploy.xml``: one testcase per step (classname
``deploy.<host>``, name the component), a failure carrying Puppet's output.
``reports/hosts/deploy/<host>.log``: every Puppet command run on the host and
its output.
"""

from __future__ import annotations

import json
import os
import re
from typing import List, Tuple

from .. import outcome
from ..redact import redact
from ..runner import RunResult
from ..runner.deploy import DeployResult, StepRecord
from ..runner.model import UnitResult
from . import console, files


def status_word(rec: StepRecord) -> str:
    if rec.status in outcome.SUCCEEDED:
        return "succeeded"
    if rec.status == outcome.SKIPPED:
        return "skipped"
    return "failed"  # failed, or still "running" when the controller gave up on it


def report_dict(result: DeployResult) -> dict:
    return {
        "task": "deploy",
        "schedule": result.schedule,
        "ok": result.ok,
        "dry_run": result.dry_run,
        "cancelled": result.cancelled,
        "started": result.started,
        "ended": result.ended,
        "seconds": round(result.seconds, 3),
        "steps": [{"host": r.host, "component": r.component, "group": r.group, "status": status_word(r),
                   "outcome": r.status, "started": r.started, "ended": r.ended, "exit_code": r.exit_code,
                   "seconds": round(r.seconds, 3), "attempts": r.attempts, "error": r.error or None,
                   "details": r.details, "command": r.run or None}
                  for r in result.steps],
    }


def as_run_result(result: DeployResult) -> RunResult:
    """The steps as a runner ``RunResult`` (one unit per step), for the JUnit writer."""
    units = []
    for r in result.steps:
        status = r.status if r.status in outcome.STATUSES else outcome.FAILED
        units.append(UnitResult(r.id, r.host, r.component, status=status, started=r.started, ended=r.ended,
                                seconds=r.seconds, attempts=r.attempts, details=list(r.details),
                                error=r.error or None, error_type="PuppetRunFailed" if status == outcome.FAILED else None,
                                error_output="\n".join(r.output) if status == outcome.FAILED else "",
                                output=list(r.output) if status != outcome.FAILED else []))
    return RunResult("deploy", units, started=result.started, ended=result.ended, seconds=result.seconds,
                     dry_run=result.dry_run, cancelled=result.cancelled)


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def write(result: DeployResult, reports_dir: str) -> Tuple[str, str]:
    """Write every report file; return (deploy.json, junit-deploy.xml)."""
    text = redact(json.dumps(report_dict(result), indent=2, ensure_ascii=False)) + "\n"
    json_path = os.path.join(reports_dir, "deploy.json")
    stamp = (result.ended or "").replace("-", "").replace(":", "").split(".")[0] + "Z"
    files._write(json_path, text.encode("utf-8"))
    files._write(os.path.join(reports_dir, f"deploy-{stamp}.json"), text.encode("utf-8"))
    junit_path = os.path.join(reports_dir, "junit-deploy.xml")
    files._write(junit_path, files.junit_xml(as_run_result(result)))
    logs: dict = {}
    seen_runs: dict = {}
    for r in result.steps:
        if not r.output or not r.started:
            continue
        key = (r.host, r.started, r.run)
        if key in seen_runs:
            continue
        seen_runs[key] = True
        logs.setdefault(r.host, []).append(f"== {r.started} group {r.group}: {r.run}\n" + "\n".join(r.output)
                                           + f"\n== exit {r.exit_code}\n")
    for host, chunks in logs.items():
        files._write(os.path.join(reports_dir, "hosts", "deploy", f"{_SAFE.sub('-', host)}.log"),
                     redact("\n".join(chunks)).encode("utf-8"))
    return json_path, junit_path


def rows(result: DeployResult) -> List[tuple]:
    table = []
    for r in result.steps:
        what = (r.error.splitlines() or [""])[0] if r.error else ("; ".join(r.details) or "-")
        table.append((r.host, r.component, r.group, outcome.label(r.status), f"{r.seconds:.1f}s",
                      "-" if r.exit_code is None else r.exit_code, what))
    return table


def summary(result: DeployResult) -> str:
    """What went wrong, per host and component, with Puppet's own error lines."""
    lines = []
    if result.cancelled:
        lines.append(f"deploy: cancelled by {result.cancelled}; what finished is in the state file, "
                     f"run again with --resume to go on")
    failed = result.failed
    skipped = [r for r in result.steps if r.status == outcome.SKIPPED]
    unknown = [r for r in result.steps if r.status not in outcome.STATUSES]
    if failed or skipped or unknown:
        lines.append(f"deploy: {len(failed) + len(unknown)} of {len(result.steps)} step(s) failed, "
                     f"{len(skipped)} skipped:")
    for r in failed + unknown:
        text = (r.error or r.status).splitlines() or [r.status]
        lines.append(f"  {r.host} {r.component} (group {r.group}) failed: {text[0]}")
        lines += [f"      {line}" for line in text[1:8]]
    if failed:
        lines.append("  fix the cause, then run the same command with --resume: succeeded steps are not run again")
    return redact("\n".join(lines))


def finish(result: DeployResult, title: str, reports_dir: str) -> Tuple[str, str]:
    """Reports on disk, the summary table on the console; returns the report paths."""
    paths = write(result, reports_dir) if reports_dir else ("", "")
    console.say()
    console.table(title, ["host", "component", "group", "result", "time", "exit", "what"], rows(result))
    counts = ", ".join(f"{n} {outcome.label(s)}" for s, n in sorted(result.counts().items()))
    console.say(f"{len(result.steps)} step(s): {counts} in {result.seconds:.1f} s ({result.schedule})")
    if reports_dir:
        console.say(f"reports: {paths[0]}, {paths[1]}")
    return paths
