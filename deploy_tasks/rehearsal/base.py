"""The seam between the WinRM endpoint (protocol) and the Windows persona (behaviour).

The endpoint (``server.py``) owns shells, commands, streams and auth; for each
WS-Man Command it calls ``Persona.start(command_line, options, skip_cmd_shell)``
and then polls the returned ``CommandHandle``. The persona (``persona.py``)
knows nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Protocol, Tuple


@dataclass(frozen=True)
class ShellOptions:
    """What a WS-Man Create asked of the shell; the endpoint parses it, the persona honours it.

    ``codepage``: WINRS_CODEPAGE (437 unless the client asks; 65001 = UTF-8);
    the persona encodes every byte of output in it. ``environment``: the
    Create's ``rsp:Environment`` variables, over the host's own (and the ones
    ``%VAR%`` expands). ``working_directory``: ``rsp:WorkingDirectory`` (None =
    the user's profile directory; one that is not a directory fails each
    command with "The directory name is invalid.", exit 267).
    ``noprofile``: WINRS_NOPROFILE (the default profile's folders).
    ``consolemode_stdin``: WINRS_CONSOLEMODE_STDIN (stdin is a console: cmd
    does not echo what it reads, Ctrl+Z ends input; else a pipe).

    A code page the host has no codec for makes ``start`` raise ValueError;
    ``process.codec_for(codepage)`` answers the same question at Create time.
    """

    codepage: int = 437
    environment: Mapping[str, str] = field(default_factory=dict)
    working_directory: Optional[str] = None
    noprofile: bool = False
    consolemode_stdin: bool = True


class ProgramNotFound(Exception):
    """WINRS_SKIP_CMD_SHELL=True named a program that does not exist; the endpoint answers with the real fault."""

    def __init__(self, program: str):
        self.program = program
        super().__init__(program)


class CommandHandle(Protocol):
    """A command running on an emulated host."""

    def read(self, timeout: float) -> Tuple[bytes, bytes, Optional[int]]:
        """Wait up to ``timeout`` s for output or completion.

        Returns (stdout chunk, stderr chunk, exit code). The exit code is None
        while the command runs; it is set only once all output has been
        returned, so the caller sends CommandState Done with it.
        """

    def send_input(self, data: bytes, eof: bool = False) -> None:
        """Feed stdin (WS-Man Send)."""

    def terminate(self) -> None:
        """Stop the command (WS-Man Signal terminate / ctrl_c). Idempotent."""


class Persona(Protocol):
    """One emulated Windows host's behaviour."""

    hostname: str

    def start(self, command_line: str, options: ShellOptions = ShellOptions(),
              skip_cmd_shell: bool = False) -> CommandHandle:
        """Start ``command_line`` (the Command text and its Arguments joined by spaces, as Windows does).

        ``options``: the shell's Create options. ``skip_cmd_shell``
        (WINRS_SKIP_CMD_SHELL=True): run the program directly, without cmd.exe
        (no ``&&``, no built-ins); raises ``ProgramNotFound`` when there is no
        such program. Exit codes are reported as Windows does: 32-bit unsigned.
        """


#: The persona calls this to make its host go away: (seconds down) -> None.
RebootHook = Callable[[float], None]
