"""The seam between the WinRM endpoint (protocol) and the Windows persona (behaviour).

The endpoint (``server.py``) owns shells, commands, streams and auth; for each
WS-Man Command it calls ``Persona.start(command_line)`` and then polls the
returned ``CommandHandle``. The persona (``persona.py``) knows nothing of HTTP.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Tuple


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

    def start(self, command_line: str) -> CommandHandle:
        """Start ``command_line`` (the Command text and its Arguments joined by spaces, as Windows does)."""


#: The persona calls this to make its host go away: (seconds down) -> None.
RebootHook = Callable[[float], None]
