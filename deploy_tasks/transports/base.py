"""The transport interface every step talks to: SSH (``ssh.py``) and WinRM (``winrm.py``) implement it.

Shaped like pyinfra's connectors: a small surface (run a read-only command,
run a changing command, put bytes or a file, close) that steps use without
knowing which protocol or operating system is behind it. POSIX specifics
(sudo, ``sh -c``, ``mktemp``) stay on the SSH side; Windows specifics
(shells, code pages, WS-Man faults) stay on the WinRM side.

A command's exit status is data (``Result.exited``), not an exception;
``check=True`` turns a non-zero exit into ``RemoteCommandError``. A host
that cannot be reached raises ``TransportError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, runtime_checkable


@dataclass
class Result:
    """What one command returned, on any transport."""

    command: str
    exited: int
    stdout: str
    stderr: str
    duration: float = 0.0  # seconds the command took (0.0 when not measured, e.g. a dry run)

    @property
    def ok(self) -> bool:
        return self.exited == 0

    @property
    def output(self) -> str:
        return (self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr).strip()


@runtime_checkable
class Transport(Protocol):
    """Commands and files on one host of the inventory.

    ``name`` is the inventory hostname (what the user reads in messages).
    ``run`` reads state and always runs, also in a dry run; ``change`` alters
    the host and in a dry run is only printed (returning exit 0).
    """

    name: str
    dry_run: bool
    #: where the transport prints what a dry run would do; a runner points it at the unit's output
    echo: Callable[[str], None]

    def run(self, command: str, *, check: bool = True, hint: str = "",
            timeout: Optional[float] = None) -> Result:
        """Run a read-only command; ``check``: a non-zero exit raises RemoteCommandError."""

    def test(self, command: str) -> bool:
        """A yes/no check: exit 0 = yes, 1 = no; any other exit is an error, never a no."""

    def change(self, command: str, *, check: bool = True, hint: str = "",
               timeout: Optional[float] = None) -> Result:
        """Run a command that alters the host; in a dry run print it instead."""

    def put_bytes(self, data: bytes, path: str) -> None:
        """Write ``data`` to the file ``path`` on the host (printed only in a dry run)."""

    def put_file(self, local_path: str, path: str) -> None:
        """Copy the controller's file ``local_path`` to ``path`` on the host (printed only in a dry run)."""

    def close(self) -> None:
        """Release the connection (and, on WinRM, the shell). Idempotent."""
