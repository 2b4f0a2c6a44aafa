"""The per-host Puppet run of a deploy: one ``puppet agent --test`` carrying several components, read back.

A deploy step is (host, component). Puppet holds one run lock per node, so the
components of one host that are ready together go into ONE run,
``puppet agent --test --detailed-exitcodes --tags a,b,c``. Its exit code says
how the run went (0 nothing to do, 2 changed, 4 failures, 6 changes and
failures, 1 the run itself failed); its output says which components failed:
every ``Error:`` line (and Puppet's "Skipping because of failed dependencies"
warning) names the resource path, ``/Stage[main]/.../Product::Component[x]/...``
for the product's type or ``/Stage[main]/Acme::Zeo/...`` for a component
declared by its own class, and is attributed to that component. A failure
that names no carried component fails every component of the run.

"Run already in progress" (another run holds the lock) is ``PuppetRunBusy``,
retryable: the runner tries again with backoff.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..errors import DeployError, RemoteCommandError
from ..outcome import CHANGED, FAILED, UNCHANGED
from ..transports.wincmd import argv_line, cmd_line

#: where a Windows agent keeps its run lock and its last run's summary (Puppet's defaults on Windows)
LOCK_FILE = r"C:\ProgramData\PuppetLabs\puppet\cache\state\agent_catalog_run.lock"
SUMMARY_FILE = r"C:\ProgramData\PuppetLabs\puppet\cache\state\last_run_summary.yaml"

SUCCESS_CODES = (0, 2)
BUSY_TEXT = "already in progress"


class PuppetRunBusy(DeployError):
    """Another Puppet run holds the node's run lock: try again later."""

    retryable = True


def puppet_argv(components: Sequence[str]) -> List[str]:
    """The agent run carrying ``components`` (tags are lower case, as Puppet compares them)."""
    return ["puppet", "agent", "--test", "--detailed-exitcodes", "--tags", ",".join(c.lower() for c in components)]


def puppet_command(components: Sequence[str]) -> str:
    """That run as a Windows command line, quoted by Windows' rules (the program is started without cmd.exe)."""
    return argv_line(puppet_argv(components))


@dataclass
class ComponentOutcome:
    status: str  # changed / unchanged / failed
    error: str = ""  # Puppet's lines about this component when it failed


@dataclass
class PuppetRun:
    """One agent run on a host and what it meant for each component it carried."""

    host: str
    components: List[str]
    command: str
    exit_code: Optional[int] = None
    output: str = ""
    seconds: float = 0.0
    outcomes: Dict[str, ComponentOutcome] = field(default_factory=dict)
    error: str = ""  # the run-level reason, when the run failed as a whole


_PRODUCT = re.compile(r"Product::Component\[([A-Za-z0-9_]+)\]", re.IGNORECASE)
_TIMING = re.compile(r"\bcomponent '?([a-z][a-z0-9_]*)'?", re.IGNORECASE)


def _is_problem(line: str) -> bool:
    return line.startswith("Error:") or "Skipping because of failed dependencies" in line


def attribute(output: str, components: Sequence[str], classes: Optional[Dict[str, str]] = None) -> Dict[str, List[str]]:
    """The problem lines of Puppet's ``output`` per carried component; key ``""`` for lines naming none.

    ``classes``: component -> its Puppet class (Components sheet), for components declared by a class.
    """
    carried = {c.lower(): c for c in components}
    by_class = {}
    for comp, cls in (classes or {}).items():
        if cls and comp.lower() in carried:
            by_class["::".join(p.capitalize() for p in cls.split("::")).lower()] = carried[comp.lower()]
    found: Dict[str, List[str]] = {}
    for line in output.splitlines():
        line = line.strip()
        if not _is_problem(line):
            continue
        names = [carried[m.lower()] for m in _PRODUCT.findall(line) if m.lower() in carried]
        if not names:
            low = line.lower()
            names = [comp for cls, comp in by_class.items() if f"/{cls}/" in low or f"class[{cls}]" in low]
        if not names:
            names = [carried[m.lower()] for m in _TIMING.findall(line) if m.lower() in carried]
        if not names:
            words = set(re.findall(r"[a-z][a-z0-9_]*", line.lower()))
            names = [comp for low, comp in carried.items() if low in words]
        for name in (names[:1] or [""]):
            found.setdefault(name, []).append(line)
    return found


def _changed_components(output: str, components: Sequence[str]) -> set:
    carried = {c.lower(): c for c in components}
    changed = set()
    for line in output.splitlines():
        if line.startswith("Notice:"):
            for m in _PRODUCT.findall(line) + _TIMING.findall(line):
                if m.lower() in carried:
                    changed.add(carried[m.lower()])
    return changed


def interpret(run: PuppetRun, classes: Optional[Dict[str, str]] = None) -> PuppetRun:
    """Fill ``run.outcomes`` from its exit code and output (see the module docstring)."""
    code, output, comps = run.exit_code, run.output, run.components
    if code in SUCCESS_CODES or code in (4, 6):
        problems = attribute(output, comps, classes) if code in (4, 6) else {}
        changed = _changed_components(output, comps)
        unnamed = problems.pop("", [])
        if code in (4, 6) and not problems:
            # failures Puppet did not tie to one of our components: none of them can be called done
            run.error = (f"puppet exited {code} (failures) without naming a component:\n" + "\n".join(unnamed)).strip()
            run.outcomes = {c: ComponentOutcome(FAILED, run.error) for c in comps}
            return run
        for comp in comps:
            if comp in problems:
                run.outcomes[comp] = ComponentOutcome(FAILED, "\n".join(problems[comp]))
            elif code == 0:
                run.outcomes[comp] = ComponentOutcome(UNCHANGED)
            else:
                # with 2 or 6 Puppet changed something; a component it names in a Notice changed for sure
                fallback = CHANGED if (not changed and code in (2, 6)) else UNCHANGED
                run.outcomes[comp] = ComponentOutcome(CHANGED if comp in changed else fallback)
        return run
    errors = [l.strip() for l in output.splitlines() if l.strip().startswith("Error:")]
    if code == 9009:
        reason = "puppet is not installed on the host (run inv bootstrap --only agents first)"
    elif code == 1:
        reason = "the Puppet run failed before applying anything: " + ("; ".join(errors[-3:]) or "no Error: line")
    else:
        reason = f"puppet exited {code}: " + ("; ".join(errors[-3:]) or "no Error: line")
    run.error = reason
    run.outcomes = {c: ComponentOutcome(FAILED, reason) for c in comps}
    return run


def run_puppet(transport, components: Sequence[str], *, timeout: Optional[float] = None,
               classes: Optional[Dict[str, str]] = None, output=None) -> PuppetRun:
    """Run Puppet once for ``components`` on ``transport``'s host and say what happened to each.

    Raises ``PuppetRunBusy`` (retryable) when another run holds the lock; a transport
    error (unreachable, dropped) propagates with its own ``retryable``; a timeout
    (``CommandTimedOut``) fails every carried component with the output so far.
    """
    argv = puppet_argv(components)
    run = PuppetRun(transport.name, list(components), argv_line(argv))
    clock = time.monotonic()
    try:
        result = transport.change_argv(argv, check=False, timeout=timeout)
    except RemoteCommandError as exc:  # timed out and terminated: the run's outcome is a failure
        run.exit_code = getattr(exc, "exit_code_remote", -1)
        run.output = str(getattr(exc, "output", "") or "")
        run.seconds = time.monotonic() - clock
        run.error = str(exc).splitlines()[0] + (f" (timeout {timeout:g} s)" if timeout else "")
        run.outcomes = {c: ComponentOutcome(FAILED, run.error) for c in components}
        _emit(output, run)
        return run
    run.seconds = time.monotonic() - clock
    run.exit_code = result.exited
    run.output = result.output
    _emit(output, run)
    if result.exited == 1 and BUSY_TEXT in run.output:
        raise PuppetRunBusy(f"{transport.name}: another Puppet run is in progress (its run lock is held); "
                            f"trying again later")
    return interpret(run, classes)


def _emit(output, run: PuppetRun) -> None:
    if output is None:
        return
    output(f"$ {run.command}")
    for line in run.output.splitlines():
        output(line)
    output(f"(exit {run.exit_code}, {run.seconds:.1f} s)")


def node_state(transport) -> Dict[str, str]:
    """Whether a Puppet run is going on the node (its run lock) and its last run's summary, read-only.

    Used before re-running a step that was in flight when the controller stopped:
    that run may still be going, or may have finished; the node says which.
    """
    lock = transport.run(cmd_line(["type", LOCK_FILE]), check=False)
    summary = transport.run(cmd_line(["type", SUMMARY_FILE]), check=False)
    return {"running": "yes" if lock.exited == 0 else "no",
            "last_run_summary": summary.stdout if summary.exited == 0 else ""}


def wait_until_idle(transport, timeout: float, poll: float = 2.0, cancelled=lambda: False) -> Dict[str, str]:
    """Wait (up to ``timeout``) until no Puppet run holds the node's lock; return the node's state."""
    deadline = time.monotonic() + timeout
    state = node_state(transport)
    while state["running"] == "yes" and time.monotonic() < deadline and not cancelled():
        time.sleep(poll)
        state = node_state(transport)
    return state
