"""A small test double for the Windows persona: just enough commands to exercise the WinRM endpoint.

It stands in for deploy_tasks.rehearsal.persona.WindowsPersona in the endpoint's
own tests and benchmark, so that protocol tests do not depend on the persona's
behaviour. It implements the seam of deploy_tasks/rehearsal/base.py.

Commands: ``echo TEXT``, ``cmd /c exit N``, ``sleep SECONDS`` (terminable),
``more`` (echoes stdin until end of input), ``bigout BYTES``, ``hostname``, ``explode`` (the persona raises),
``shutdown /r /t 0`` (host down for 1 s, 0.3 s after it returns), ``nosuch.exe`` under
WINRS_SKIP_CMD_SHELL (ProgramNotFound), ``powershell -encodedcommand B64``
(prints the script; a script containing ``throw`` writes CLIXML to stderr and
exits 1); anything else answers as cmd.exe does (exit 9009).
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Optional, Tuple

from deploy_tasks.rehearsal.base import ProgramNotFound


class FakeHandle:
    def __init__(self):
        self._cond = threading.Condition()
        self._out = bytearray()
        self._err = bytearray()
        self._exit: Optional[int] = None
        self._stdin = bytearray()
        self._eof = False
        self.terminated = False

    # producer side
    def emit(self, out: bytes = b"", err: bytes = b"", exit_code: Optional[int] = None) -> None:
        with self._cond:
            self._out += out
            self._err += err
            if exit_code is not None and self._exit is None:
                self._exit = exit_code
            self._cond.notify_all()

    # the seam
    def read(self, timeout: float) -> Tuple[bytes, bytes, Optional[int]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._out and not self._err and self._exit is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            out, err = bytes(self._out), bytes(self._err)
            self._out.clear()
            self._err.clear()
            return out, err, self._exit

    def send_input(self, data: bytes, eof: bool = False) -> None:
        with self._cond:
            self._stdin += data
            self._eof = self._eof or eof
            self._cond.notify_all()

    def terminate(self) -> None:
        with self._cond:
            self.terminated = True
            if self._exit is None:
                self._exit = 1
            self._cond.notify_all()

    def wait_input(self, timeout: float) -> Tuple[bytes, bool]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stdin and not self._eof and not self.terminated and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            data = bytes(self._stdin)
            self._stdin.clear()
            return data, self._eof or self.terminated


class FakePersona:
    def __init__(self, hostname: str, address: str, sandbox: Path, faults, spec, on_reboot):
        self.hostname = hostname
        self.address = address
        self.sandbox = sandbox
        self.faults = faults
        self.on_reboot = on_reboot
        self.started = []  # every command line, in order
        self.options = []  # (ShellOptions, skip_cmd_shell) of every start, in the same order
        self.handles = []

    def start(self, command_line: str, options=None, skip_cmd_shell: bool = False) -> FakeHandle:
        if skip_cmd_shell and command_line.split()[:1] == ["nosuch.exe"]:
            raise ProgramNotFound("nosuch.exe")
        self.started.append(command_line)
        self.options.append((options, skip_cmd_shell))
        handle = FakeHandle()
        self.handles.append(handle)
        words = command_line.split()
        exe = words[0].lower() if words else ""
        args = words[1:]
        if exe == "explode":
            raise RuntimeError("the persona broke")
        if exe == "echo":
            handle.emit((" ".join(args) + "\r\n").encode(), exit_code=0)
        elif exe == "cmd" and [a.lower() for a in args[:2]] == ["/c", "exit"]:
            handle.emit(exit_code=int(args[2]))
        elif exe == "hostname":
            handle.emit((self.hostname + "\r\n").encode(), exit_code=0)
        elif exe == "bigout":
            handle.emit(b"x" * int(args[0]), exit_code=0)
        elif exe == "sleep":
            threading.Thread(target=self._sleep, args=(handle, float(args[0])), daemon=True).start()
        elif exe == "more":
            threading.Thread(target=self._more, args=(handle,), daemon=True).start()
        elif exe == "shutdown":
            handle.emit(exit_code=0)
            # like Windows, the host goes away shortly after the command returned, not mid-reply
            threading.Timer(0.3, self.on_reboot, args=(1.0,)).start()
        elif exe == "powershell" and len(args) == 2 and args[0].lower() == "-encodedcommand":
            script = base64.b64decode(args[1]).decode("utf-16-le")
            if "throw" in script:
                clixml = ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
                          f'<S S="Error">{script}_x000D__x000A_</S></Objs>')
                handle.emit(err=clixml.encode(), exit_code=1)
            else:
                handle.emit(script.encode() + b"\r\n", exit_code=0)
        else:
            handle.emit(err=(f"'{words[0] if words else ''}' is not recognized as an internal or external command,\r\n"
                             "operable program or batch file.\r\n").encode(), exit_code=9009)
        return handle

    @staticmethod
    def _sleep(handle: FakeHandle, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not handle.terminated:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if not handle.terminated:
            handle.emit(b"slept\r\n", exit_code=0)

    @staticmethod
    def _more(handle: FakeHandle) -> None:
        while True:
            data, eof = handle.wait_input(30)
            if data:
                handle.emit(data)
            if eof:
                handle.emit(exit_code=0)
                return
