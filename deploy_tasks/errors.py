"""The one error root of deploy_tasks and its domain subclasses.

Library code raises these; only the task layer (``deploy_tasks.tasks``) turns
them into ``invoke.exceptions.Exit(message, code)``. Messages are written for
the person at the terminal: they say where (sheet!cell, host, component,
command) and what to do next, and never carry a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional


class DeployError(Exception):
    """Root of every error this project raises on purpose."""

    #: exit code the task layer uses for this error
    exit_code = 1
    #: a transient failure (another MSI install running, a dropped connection): the runner may retry
    #: the unit that raised it; an instance may set its own ``retryable`` to override the class's
    retryable = False


@dataclass(frozen=True)
class Problem:
    """One located finding about the inventory (an error or a warning)."""

    where: str  # "Servers!B7", "Mapping row 12", "workbook"
    message: str
    hint: Optional[str] = None
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def as_dict(self) -> dict:
        return {
            "where": self.where,
            "message": self.message,
            "hint": self.hint,
            "severity": self.severity,
        }


class InventoryError(DeployError, ValueError):
    """The workbook cannot be used; carries every problem found, located."""

    def __init__(self, problems: Iterable[Problem], source: str = "", warnings: Iterable[Problem] = ()):
        self.problems = tuple(problems)
        self.warnings = tuple(warnings)
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        n = len(self.problems)
        head = f"{self.source}: " if self.source else ""
        lines = [f"{head}{n} problem{'s' if n != 1 else ''} found in the inventory:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class WorkbookFormatError(InventoryError):
    """The file is not a readable .xlsx or .xls workbook."""

    def __init__(self, source: str, message: str):
        super().__init__([Problem("workbook", message)], source=source)
        self.args = (f"{source}: {message}",)

    def __str__(self) -> str:
        return self.args[0]


class ConfigError(DeployError, ValueError):
    """A setting, template or generated file is wrong."""


class TransportError(DeployError, ConnectionError):
    """A host could not be reached or the connection broke (SSH or WinRM)."""

    def __init__(self, host: str, message: str):
        self.host = host
        super().__init__(f"{host}: {message}")


class RemoteCommandError(DeployError):
    """A command ran on a host and failed."""

    def __init__(self, host: str, command: str, exit_code: int, output: str = "", hint: str = ""):
        self.host = host
        self.command = command
        self.exit_code_remote = exit_code
        self.output = output
        text = f"{host}: command failed with exit code {exit_code}: {command}"
        if output:
            tail = "\n".join(output.strip().splitlines()[-15:])
            text += "\n" + "\n".join("    " + line for line in tail.splitlines())
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class StepFailed(DeployError):
    """A deployment step (host, step name) failed; wraps the cause."""

    def __init__(self, host: str, step: str, cause: BaseException):
        self.host = host
        self.step = step
        self.cause = cause
        super().__init__(f"{host}: step {step} failed: {cause}")


class ArtifactError(DeployError):
    """A component's artifact is missing, does not match its checksum, or is unsafe or broken.

    Names the component and, when one is at fault, the archive member.
    """

    def __init__(self, component: str, message: str, member: Optional[str] = None, hint: str = ""):
        self.component = component
        self.member = member
        self.reason = message
        self.hint = hint
        where = f"component {component}"
        if member is not None:
            where += f", member {member!r}"
        text = f"{where}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)

    def __reduce__(self):  # survives a process pool
        return (type(self), (self.component, self.reason, self.member, self.hint))


class ExtractionFailed(DeployError):
    """Some components could not be extracted; the others' results stand."""

    def __init__(self, failures: Iterable[ArtifactError], done: int = 0):
        self.failures = tuple(failures)
        self.done = done
        n = len(self.failures)
        lines = [f"{n} component{'s' if n != 1 else ''} failed ({done} done; their results are kept):"]
        lines += [f"  - {f}" for f in self.failures]
        super().__init__("\n".join(lines))


class RunFailed(DeployError):
    """Some units of a run failed or were skipped; every unit finished first (Fabric's GroupException shape).

    ``result`` is the runner's ``RunResult``; the message is its per-host summary.
    """

    def __init__(self, message: str, result=None, exit_code: int = 1):
        self.result = result
        self.exit_code = exit_code
        super().__init__(message)


# -- WinRM (deploy_tasks/transports/winrm.py) ------------------------------------
# ``retryable`` tells the runner whether trying the same step again later can
# help; an error class without it is not retryable.


class HostUnreachable(TransportError):
    """The host did not answer, refused the connection, dropped it or timed out: try again later."""

    retryable = True


class CertificateRejected(TransportError):
    """The host's TLS certificate did not validate against the configured CA: never retried."""

    retryable = False


class AuthenticationRejected(TransportError):
    """The host refused the credential; it is not used again in this process (accounts lock out)."""

    retryable = False

    def __init__(self, host: str, message: str, user: str = "", transport: str = ""):
        self.user = user
        self.transport = transport
        super().__init__(host, message)


class WSManFault(TransportError):
    """The WinRM service answered with a WS-Management fault: its code and Windows' own message."""

    retryable = False

    def __init__(self, host: str, message: str, code: Optional[int] = None, subcode: str = "",
                 windows_message: str = "", retryable: Optional[bool] = None):
        self.code = code
        self.subcode = subcode
        self.windows_message = windows_message
        if retryable is not None:
            self.retryable = retryable
        super().__init__(host, message)


class QuotaExceeded(WSManFault):
    """A WinRM quota (shells per user, w:QuotaLimit 2150859173) was hit: retry after shells close."""

    retryable = True


class CommandTimedOut(RemoteCommandError):
    """A command ran past its timeout and was terminated (WS-Man Signal terminate)."""

    retryable = False

    def __init__(self, host: str, command: str, timeout: float, output: str = ""):
        self.timeout = timeout
        super().__init__(host, command, -1, output,
                         f"did not finish within {timeout:g} s and was terminated; raise command_timeout_s "
                         f"or the step's timeout if it needs longer")


class HealthCheckFailed(DeployError):
    """A component's health check (Components sheet, Health Check) did not pass on a host after its deploy.

    ``output`` is what the check printed (``sc query``, the ``netstat`` rows for the port, the command's
    output), so a report can show it beside the step.
    """

    def __init__(self, host: str, component: str, check: str, reason: str, output: str = "", command: str = ""):
        self.host = host
        self.component = component
        self.check = check
        self.reason = reason
        self.output = output
        self.command = command
        text = f"{host}: component {component}: health check {check} failed: {reason}"
        if output.strip():
            tail = "\n".join(output.strip().splitlines()[-15:])
            text += "\n" + "\n".join("    " + line for line in tail.splitlines())
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.host, self.component, self.check, self.reason, self.output, self.command))


class PreflightFailed(DeployError):
    """The pre-flight of a deploy found problems; nothing was changed. Carries every problem (and what was skipped)."""

    def __init__(self, problems, skipped=()):
        self.problems = tuple(problems)
        self.skipped = tuple(skipped)
        n = len(self.problems)
        lines = [f"pre-flight found {n} problem{'s' if n != 1 else ''}; nothing was changed:"]
        lines += [f"  - {p}" for p in self.problems]
        if self.skipped:
            lines.append("not checked:")
            lines += [f"  - {s}" for s in self.skipped]
        super().__init__("\n".join(lines))
