"""A component's health check on a Windows host, after its deploy: ``sc query``, ``netstat -an`` or a command.

The check comes from the Components sheet (``deploy_tasks.inventory.health``).
``run(transport, component, check)`` runs it over the host's transport and
returns a ``StepResult`` (status ``unchanged``: a check reads, it never
changes the host) or raises ``HealthCheckFailed`` with the check's output.

Reading Windows' output, in any display language:

* ``sc query <name>`` prints the service's ``SERVICE_STATUS``; the labels
  (``STATE``) are translated on localized Windows (German prints ``STATUS``),
  but the state is printed as its numeric ``dwCurrentState`` and its constant
  name (``4  RUNNING``), which are not. So the state is the first ``<digit>
  <NAME>`` pair whose name is one of the seven ``SERVICE_*`` states (Microsoft:
  "SERVICE_STATUS structure (winsvc.h)", dwCurrentState: 1 STOPPED,
  2 START_PENDING, 3 STOP_PENDING, 4 RUNNING, 5 CONTINUE_PENDING,
  6 PAUSE_PENDING, 7 PAUSED). A service that does not exist makes ``sc`` exit
  with 1060 (ERROR_SERVICE_DOES_NOT_EXIST, "System Error Codes (1000-1299)").
* ``netstat -an`` prints one row per socket: ``Proto  Local Address  Foreign
  Address  State`` (Microsoft: "netstat", Windows Commands). A TCP row listens
  when its state is LISTENING; on a localized Windows the state word is
  translated (German ``ABHÖREN``), so a row whose foreign address is the
  wildcard ``0.0.0.0:0`` / ``[::]:0`` counts too: only a listening socket has
  no peer. IPv6 rows are ``[::]:80`` (the port is after the last colon, outside
  the brackets). UDP rows have no state and are not "listening" in this sense:
  ``port:`` checks TCP.
* ``cmd:``: the command line is run through cmd.exe as typed; exit 0 passes.

A check that is not yet true may become true shortly after Puppet started a
service (START_PENDING, a port not bound yet, a command that waits for
something): ``settle_s`` keeps asking every ``interval_s`` until it passes or the time is
up. A definite answer (the service does not exist, is STOPPED or PAUSED) fails at once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import HealthCheckFailed
from ..inventory.health import PORT, SERVICE, HealthCheck
from ..transports.wincmd import cmd_line
from . import UNCHANGED, StepResult

#: dwCurrentState of SERVICE_STATUS (winsvc.h)
SERVICE_STATES = {1: "STOPPED", 2: "START_PENDING", 3: "STOP_PENDING", 4: "RUNNING", 5: "CONTINUE_PENDING",
                  6: "PAUSE_PENDING", 7: "PAUSED"}
ERROR_SERVICE_DOES_NOT_EXIST = 1060
_STATE_LINE = re.compile(r":\s*([1-7])\s+(" + "|".join(SERVICE_STATES.values()) + r")\b")
#: the State column's word for a listening socket in English; other languages are caught by the wildcard peer
LISTENING_WORDS = {"LISTENING"}
WILDCARD_PEERS = {"0.0.0.0:0", "[::]:0", "*:*"}


@dataclass(frozen=True)
class Verdict:
    """What one look found: passed, or not (and whether waiting could change that), in a few words."""

    passed: bool
    summary: str
    final: bool = True  # False: the answer may change soon (pending state, port not bound yet)


def command(check: HealthCheck) -> str:
    """The Windows command line that asks the host (read-only for service: and port:)."""
    if check.kind == SERVICE:
        return cmd_line(["sc", "query", check.target])
    if check.kind == PORT:
        return cmd_line(["netstat", "-an"])
    return check.target  # cmd: the command line as the workbook has it; cmd.exe reads it


def read_service(name: str, exited: int, output: str) -> Verdict:
    """Interpret ``sc query <name>``."""
    if exited == ERROR_SERVICE_DOES_NOT_EXIST:
        return Verdict(False, f"service {name} does not exist on this host (sc exit 1060): check the "
                              f"Health Check column, or the Puppet class that should install it")
    if exited != 0:
        return Verdict(False, f"sc query {name} failed with exit code {exited}")
    match = _STATE_LINE.search(output)
    if match is None:
        return Verdict(False, f"sc query {name} printed no service state")
    code, state = int(match.group(1)), match.group(2)
    named = re.search(r"^\s*SERVICE_NAME:\s*(\S.*?)\s*$", output, re.MULTILINE)
    name = named.group(1) if named else name  # Windows' spelling: service names ignore case
    if state == "RUNNING":
        return Verdict(True, f"service {name} is RUNNING")
    return Verdict(False, f"service {name} is {state} ({code}), not RUNNING", final=not state.endswith("_PENDING"))


def _port_of(endpoint: str) -> Optional[int]:
    host, colon, port = endpoint.rpartition(":")
    if not colon or not port.isdigit():
        return None
    return int(port)


def listening_rows(output: str, port: int) -> list:
    """The ``netstat -an`` rows of TCP sockets listening on ``port`` (IPv4 and IPv6)."""
    rows = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[0].upper().startswith("TCP"):
            continue
        if _port_of(parts[1]) != port:
            continue
        state = " ".join(parts[3:]).upper()
        if state in LISTENING_WORDS or (parts[2] in WILDCARD_PEERS and state not in ("TIME_WAIT", "CLOSED")):
            rows.append(line.strip())
    return rows


def read_port(port: int, exited: int, output: str) -> Verdict:
    """Interpret ``netstat -an`` for a TCP port."""
    if exited != 0:
        return Verdict(False, f"netstat -an failed with exit code {exited}")
    rows = listening_rows(output, port)
    if rows:
        return Verdict(True, f"TCP port {port} is listening ({', '.join(r.split()[1] for r in rows)})")
    others = [line.strip() for line in output.splitlines()
              if line.split()[1:2] and _port_of(line.split()[1]) == port]
    seen = f"; its sockets: {'; '.join(' '.join(r.split()) for r in others[:5])}" if others else ""
    return Verdict(False, f"nothing listens on TCP port {port}{seen}", final=False)


def read_cmd(exited: int) -> Verdict:
    if exited == 0:
        return Verdict(True, "the command exited 0")
    return Verdict(False, f"the command exited {exited}", final=False)


def interpret(check: HealthCheck, exited: int, output: str) -> Verdict:
    if check.kind == SERVICE:
        return read_service(check.target, exited, output)
    if check.kind == PORT:
        return read_port(check.port, exited, output)
    return read_cmd(exited)


def _relevant_output(check: HealthCheck, output: str) -> str:
    """What a report shows: sc's and the command's output whole, netstat's rows for the port only."""
    if check.kind != PORT:
        return output
    rows = [line for line in output.splitlines() if line.split()[1:2] and _port_of(line.split()[1]) == check.port]
    return "\n".join(rows) if rows else f"(netstat -an shows no socket on port {check.port})"


def run(transport, component: str, check: Optional[HealthCheck], *, settle_s: float = 30.0,
        interval_s: float = 2.0, timeout: Optional[float] = 60.0,
        sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> StepResult:
    """Check ``component``'s health on the transport's host; StepResult, or HealthCheckFailed with the output.

    No check (None): nothing to do, ``unchanged``. In a dry run the check is
    only printed: the component was not deployed, so asking proves nothing
    (and a ``cmd:`` may be anything).
    """
    step = f"health {component}"
    result = StepResult(transport.name, step)
    if check is None:
        return result
    line = command(check)
    if transport.dry_run:
        transport.echo(f"  [{transport.name}] would check {check}: {line}")
        result.details.append(f"would check {check}")
        return result
    started = clock()
    while True:
        outcome = transport.run(line, check=False, timeout=timeout)
        verdict = interpret(check, outcome.exited, outcome.output)
        if verdict.passed:
            result.status = UNCHANGED
            result.details.append(verdict.summary)
            result.seconds = clock() - started
            return result
        if verdict.final or clock() - started + interval_s > settle_s:
            waited = clock() - started
            reason = verdict.summary + (f" (still so after {waited:.0f} s)" if not verdict.final and waited >= 1 else "")
            raise HealthCheckFailed(transport.name, component, str(check), reason,
                                    _relevant_output(check, outcome.output), line)
        sleep(interval_s)
