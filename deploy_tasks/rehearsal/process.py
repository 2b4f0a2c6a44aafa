"""What every emulated program shares: a running process, its session, its output encoding, and the host API.

This is the leaf of the persona (it imports nothing from its sibling modules),
so the programs (``cmdshell.py``, ``msiexec.py``, ``puppet.py``...) and the
persona that registers them (``persona.py``) all build on it without a circle:

* ``Session``: what a Windows process inherits: environment (case-insensitive
  names), current directory, console code page, whether stdin is a console.
* ``Process``: what a program writes to (``out``/``err`` text, encoded in the
  session's code page, or raw ``write_bytes``) and reads from (``read_line``);
  ``Command`` is the one the endpoint polls (``base.CommandHandle``),
  ``Redirected`` the view cmd.exe gives a program whose streams are redirected.
* ``Host`` and ``Program``: the small API programs use and the shape of a
  program in the persona's table.
* Console code pages (``encode``/``decode``): output arrives in the shell's
  code page (437 unless the client asks; 65001 = UTF-8) as Windows'
  ``WideCharToMultiByte`` with default flags writes it: exact for every
  character the code page has, a best fit (``ő`` -> ``o``, ``“`` -> ``"``)
  or ``?`` for the others. EMULATED LOOSELY: Microsoft's best-fit tables
  are approximated by Unicode decomposition plus typographic quotes/dashes.
"""

from __future__ import annotations

import codecs
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterator, List, MutableMapping, Optional, Protocol, Tuple

EXIT_NOT_RECOGNIZED = 9009
EXIT_TERMINATED = 0xC000013A  # STATUS_CONTROL_C_EXIT, what a command killed by Signal reports
WINDOWS_VERSION = "6.3.9600"
PROFILE_DIR = r"C:\Users\Administrator"
DEFAULT_PROFILE_DIR = r"C:\Users\Default"  # what a process sees when its user's profile is not loaded
UTF8 = 65001


def now() -> str:
    """The host clock, as every record of the persona writes it (UTC, ISO 8601, milliseconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def exit_status(code: int) -> int:
    """An exit code as Windows reports it: a 32-bit unsigned DWORD (``exit -1`` reads 4294967295)."""
    return int(code) & 0xFFFFFFFF


def crlf(text: str) -> str:
    """Line ends as a Windows console writes them."""
    return re.sub(r"\r?\n", "\r\n", text)


# -- console code pages ----------------------------------------------------------------------------
_CODECS = {UTF8: "utf-8", 20127: "ascii", 28591: "latin-1", 28592: "iso8859-2", 28605: "iso8859-15"}
_TYPOGRAPHIC = {"\u2018": "'", "\u2019": "'", "\u201a": ",", "\u201b": "'", "\u201c": '"', "\u201d": '"',
                "\u201e": '"', "\u2032": "'", "\u2033": '"', "\u2010": "-", "\u2011": "-", "\u2012": "-",
                "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2002": " ", "\u2003": " ", "\u2009": " "}


def codec_for(codepage: int) -> str:
    """The Python codec of a Windows code page; ValueError when the emulated host has none for it."""
    name = _CODECS.get(codepage, f"cp{codepage}")
    try:
        codecs.lookup(name)
    except LookupError:
        raise ValueError(f"code page {codepage} is not installed on the emulated host") from None
    return name


def encode(text: str, codepage: int) -> bytes:
    """``text`` as ``WideCharToMultiByte(codepage, 0, ...)`` writes it (see the module docstring)."""
    codec = codec_for(codepage)
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        pass
    out = bytearray()
    for ch in text:
        try:
            out += ch.encode(codec)
        except UnicodeEncodeError:
            out += _best_fit(ch, codec)
    return bytes(out)


def decode(data: bytes, codepage: int) -> str:
    """Bytes in ``codepage`` (stdin, captured output) as text; undecodable bytes become U+FFFD."""
    return data.decode(codec_for(codepage), errors="replace")


def _best_fit(ch: str, codec: str) -> bytes:
    if codec == "utf-8":
        return "\ufffd".encode(codec)  # a lone surrogate: Windows writes U+FFFD for invalid UTF-16
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    for fit in (_TYPOGRAPHIC.get(ch, ""), base if base != ch else ""):
        if fit:
            try:
                return fit.encode(codec)
            except UnicodeEncodeError:
                continue
    return b"?"


# -- a process's session ------------------------------------------------------------------------------
class Environment(MutableMapping[str, str]):
    """Environment variables as Windows keeps them: names compare case-insensitively and keep their case."""

    def __init__(self, items: Optional[Dict[str, str]] = None):
        self._items: Dict[str, Tuple[str, str]] = {}
        for k, v in (items or {}).items():
            self[k] = v

    def __getitem__(self, name: str) -> str:
        return self._items[name.upper()][1]

    def __setitem__(self, name: str, value: str) -> None:
        self._items[name.upper()] = (name, value)

    def __delitem__(self, name: str) -> None:
        del self._items[name.upper()]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> "Environment":
        return Environment(dict(self.items()))


@dataclass
class Session:
    """What a process inherits from its parent: environment, current directory, console code page, stdin kind."""

    env: Environment = field(default_factory=Environment)
    cwd: str = PROFILE_DIR
    codepage: int = 437
    console_stdin: bool = True
    errorlevel: int = 0  # cmd.exe's ERRORLEVEL: the exit code of the last command it ran
    echo: bool = True  # cmd.exe's ECHO state: prompts (and lines read from a pipe) are shown

    def child(self) -> "Session":
        """The session a started program gets: a copy, so its ``cd``/``set`` never reach its parent."""
        return Session(self.env.copy(), self.cwd, self.codepage, self.console_stdin)


# -- processes ----------------------------------------------------------------------------------------------
class Process:
    """What a running program writes to and reads from (concrete: ``Command``, ``Redirected``)."""

    session: Session

    def write_bytes(self, data: bytes, stderr: bool = False) -> None:
        raise NotImplementedError

    def read_line(self) -> Optional[str]:
        """The next line of stdin without its line end; None at end of input (or when terminated)."""
        raise NotImplementedError

    @property
    def cancelled(self) -> bool:
        raise NotImplementedError

    def sleep(self, seconds: float) -> bool:
        """Sleep unless terminated; True when the command was terminated meanwhile."""
        raise NotImplementedError

    def encode(self, text: str) -> bytes:
        return encode(crlf(text), self.session.codepage)

    def decode(self, data: bytes) -> str:
        return decode(data, self.session.codepage)

    def out(self, text: str) -> None:
        self.write_bytes(self.encode(text))

    def err(self, text: str) -> None:
        self.write_bytes(self.encode(text), stderr=True)


class Command(Process):
    """One running command: the ``base.CommandHandle`` the endpoint polls, running ``body`` in a thread."""

    def __init__(self, session: Session, body: Callable[["Command"], int], name: str = "persona",
                 delay_s: float = 0.0):
        self.session = session
        self._body = body
        self._delay_s = delay_s
        self._cond = threading.Condition()
        self._out = bytearray()
        self._err = bytearray()
        self._stdin = bytearray()
        self._stdin_eof = False
        self._exit: Optional[int] = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    # -- CommandHandle ---------------------------------------------------------
    def read(self, timeout: float) -> Tuple[bytes, bytes, Optional[int]]:
        with self._cond:
            self._cond.wait_for(lambda: self._out or self._err or self._exit is not None, timeout)
            out, err = bytes(self._out), bytes(self._err)
            self._out.clear()
            self._err.clear()
            return out, err, self._exit

    def send_input(self, data: bytes, eof: bool = False) -> None:
        with self._cond:
            self._stdin += data
            self._stdin_eof = self._stdin_eof or eof
            self._cond.notify_all()

    def terminate(self) -> None:
        self._cancel.set()
        with self._cond:
            if self._exit is None:
                self._exit = EXIT_TERMINATED
            self._cond.notify_all()

    # -- Process -----------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def sleep(self, seconds: float) -> bool:
        return self._cancel.wait(max(0.0, seconds))

    def write_bytes(self, data: bytes, stderr: bool = False) -> None:
        with self._cond:
            if self._exit is None:
                (self._err if stderr else self._out).extend(data)
                self._cond.notify_all()

    def read_line(self) -> Optional[str]:
        with self._cond:
            self._cond.wait_for(lambda: b"\n" in self._stdin or self._stdin_eof or self._cancel.is_set())
            if self._cancel.is_set():
                return None
            end = self._stdin.find(b"\n")
            if end < 0:
                if not self._stdin:
                    return None
                end = len(self._stdin) - 1
            raw = bytes(self._stdin[: end + 1])
            del self._stdin[: end + 1]
        if self.session.console_stdin and raw.startswith(b"\x1a"):
            # a console read that starts with Ctrl+Z returns no bytes: end of input; a pipe has no such rule
            with self._cond:
                self._stdin_eof = True
            return None
        return self.decode(raw).rstrip("\r\n")

    def _main(self) -> None:
        code = 1
        try:
            if self._delay_s and self.sleep(self._delay_s):
                return
            code = self._body(self)
        except Exception as exc:  # an emulator bug must not hang the client: report it as the command's failure
            self.err(f"emulated persona internal error: {type(exc).__name__}: {exc}\n")
            code = 1
        finally:
            with self._cond:
                if self._exit is None:
                    self._exit = exit_status(code)
                self._cond.notify_all()


class Redirected(Process):
    """A process's streams after cmd.exe redirection (to a file, to NUL, into each other), or a child's own session."""

    def __init__(self, parent: Process, session: Optional[Session] = None):
        self._parent = parent
        self.session = session or parent.session
        self._route = {1: ("parent", 1), 2: ("parent", 2)}
        self._buffers = {1: bytearray(), 2: bytearray()}
        self._stdin_lines: Optional[List[str]] = None

    def capture(self, stream: int) -> None:
        self._route[stream] = ("buf", stream)

    def discard(self, stream: int) -> None:
        self._route[stream] = ("nul", stream)

    def join(self, stream: int, into: int) -> None:
        self._route[stream] = self._route[into]

    def captured(self, stream: int) -> bytes:
        return bytes(self._buffers[stream])

    def stdin_from(self, data: bytes) -> None:
        """``< file``: stdin is the file's content."""
        self._stdin_lines = self.decode(data).splitlines()

    def write_bytes(self, data: bytes, stderr: bool = False) -> None:
        kind, where = self._route[2 if stderr else 1]
        if kind == "parent":
            self._parent.write_bytes(data, stderr=where == 2)
        elif kind == "buf":
            self._buffers[where].extend(data)

    def read_line(self) -> Optional[str]:
        if self._stdin_lines is None:
            return self._parent.read_line()
        return self._stdin_lines.pop(0) if self._stdin_lines else None

    @property
    def cancelled(self) -> bool:
        return self._parent.cancelled

    def sleep(self, seconds: float) -> bool:
        return self._parent.sleep(seconds)


# -- the host API programs use, and the shape of a program ------------------------------------------------
class Program(Protocol):
    """One emulated executable of a host (an entry of the persona's program table)."""

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        """Run with ``argv`` (``CommandLineToArgvW`` of ``line``, the command line as given); the exit code."""


class Host(Protocol):
    """What a program may ask of the host it runs on (``persona.WindowsPersona`` implements it)."""

    hostname: str
    address: str
    user: str
    sandbox: Path
    state_dir: Path
    faults: object  # faults.HostFaults (read here as plain attributes; the fleet owns the type)
    spec: object  # faults.FleetSpec

    def to_sandbox(self, win_path: str, cwd: str = PROFILE_DIR) -> Path: ...

    def to_windows(self, path: Path) -> str: ...

    def state(self) -> dict: ...

    def state_value(self, key: str, default=None): ...

    def update_state(self, fn: Callable[[dict], None]) -> None: ...

    def installed_products(self) -> Dict[str, dict]: ...

    def services(self) -> Dict[str, dict]: ...

    @property
    def boot_time(self) -> str: ...

    def resolve(self, name: str) -> str: ...

    def http_get(self, url: str, timeout: float = 60) -> Tuple[Optional[bytes], str]: ...

    def schedule_reboot(self, delay: float, exclusive: bool = False) -> bool: ...

    def abort_reboot(self) -> bool: ...

    def find_program(self, name: str, cwd: str = PROFILE_DIR, path: Optional[str] = None) -> Optional[Program]:
        """The program ``name`` starts, searched in ``cwd`` and then on ``path`` (the process's PATH)."""

    def run_process(self, proc: Process, command_line: str) -> int: ...
