"""The emulated Windows persona: one rehearsal host, put together from the modules that each do one job.

This is an emulation of Windows Server 2012 R2 at the level of its command
lines, not Windows. It exists so that the real pywinrm client, through the
rehearsal endpoint, meets the behaviour the product depends on. The parts:

* ``process.py``: processes, sessions (environment, current directory, code
  page), output encoding, and the ``Host`` API programs use (the leaf);
* ``paths.py``: the host's ``C:\\`` (its ``sandbox`` directory);
* ``state.py``: its recorded state (``<sandbox>.state/state.json``);
* ``power.py``: its one reboot timer; ``network.py``: hosts file and HTTP;
* ``cmdshell.py``: cmd.exe, which runs every command line unless the
  client asks WINRS_SKIP_CMD_SHELL;
* the programs, registered in ``PROGRAMS`` below: ``msiexec.py``,
  ``puppet.py`` (with ``catalog.py``), ``powershell.py``, ``programs.py``.

``WindowsPersona`` wires them together, implements ``process.Host`` for the
programs and ``base.Persona`` for the endpoint.
"""

from __future__ import annotations

import os
import stat
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .base import ProgramNotFound, RebootHook, ShellOptions
from .cmdline import split_argv
from .cmdshell import CmdShell, not_recognized
from .faults import FleetSpec, HostFaults
from .msiexec import MsiExec
from .network import HOSTS_FILE, Network
from .paths import Sandbox
from .power import RebootTimer
from .powershell import PowerShell
from .process import (DEFAULT_PROFILE_DIR, EXIT_NOT_RECOGNIZED, EXIT_TERMINATED, PROFILE_DIR, Command,  # noqa: F401
                      Environment, Host, Process, Program, Session, codec_for, decode, now)
from .programs import CertUtil, CScript, Hostname, Netstat, ServiceControl, Shutdown, Whoami, Wmic
from .puppet import PuppetAgent
from .state import HostState

#: every program an emulated host has, by the name its executable answers to
PROGRAMS: Dict[str, Callable[[Host], Program]] = {
    "cmd": CmdShell, "hostname": Hostname, "whoami": Whoami, "msiexec": MsiExec, "sc": ServiceControl,
    "shutdown": Shutdown, "cscript": CScript, "wmic": Wmic, "powershell": PowerShell, "puppet": PuppetAgent,
    "certutil": CertUtil, "netstat": Netstat,
}

SYSTEM32 = r"C:\Windows\System32"
POWERSHELL_DIR = r"C:\Windows\System32\WindowsPowerShell\v1.0"
_BASE_PATH = [SYSTEM32, r"C:\Windows", r"C:\Windows\System32\Wbem", POWERSHELL_DIR]
_MAPPED = "\0unmapped"  # in a search's folders: a path could not be mapped (the answer is not kept)
_RACY_NS = 2_000_000_000


def _stamps(folders: List[str]) -> List[Optional[int]]:
    """Each folder's mtime_ns, None for one that does not exist (or is not a folder)."""
    out: List[Optional[int]] = []
    for folder in folders:
        try:
            st = os.stat(folder)
        except OSError:
            out.append(None)
            continue
        out.append(st.st_mtime_ns if stat.S_ISDIR(st.st_mode) else None)
    return out


_SYSTEM_EXES = {
    SYSTEM32: ("cmd.exe", "hostname.exe", "whoami.exe", "msiexec.exe", "sc.exe", "shutdown.exe", "cscript.exe",
               "certutil.exe", "netstat.exe"),
    SYSTEM32 + r"\Wbem": ("wmic.exe",),
    POWERSHELL_DIR: ("powershell.exe",),
}
_PATHEXT = ("", ".com", ".exe", ".bat", ".cmd")
EXIT_DIRECTORY_INVALID = 267  # ERROR_DIRECTORY: a working directory that is not a directory


class WindowsPersona:
    """One emulated Windows Server 2012 R2 host (see the module docstring for its parts)."""

    def __init__(self, hostname: str, address: str, sandbox: Path, faults: HostFaults, spec: FleetSpec,
                 on_reboot: RebootHook):
        self.hostname = hostname
        self.address = address
        self.sandbox = Path(sandbox)
        self.faults = faults
        self.spec = spec
        self.on_reboot = on_reboot
        self.state_dir = self.sandbox.parent / (self.sandbox.name + ".state")
        self.user = "administrator"
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.drive = Sandbox(self.sandbox)
        self.network = Network(self.drive)
        self._state = HostState(self.state_dir, _BASE_PATH)
        self._reboots = RebootTimer(self._reboot_now)
        self._state.update(lambda s: s.__setitem__("hostname", hostname))
        self._state.booted(now(), rebooted=False)
        self._lay_out_system()
        self.programs: Dict[str, Program] = {name: make(self) for name, make in PROGRAMS.items()}
        self._resolved: Dict[Tuple[str, str, str], tuple] = {}  # resolve_executable's answers (see there)

    @property
    def cmd(self) -> CmdShell:
        return self.programs["cmd"]  # type: ignore[return-value]

    @property
    def msiexec(self) -> MsiExec:
        return self.programs["msiexec"]  # type: ignore[return-value]

    @property
    def puppet(self) -> PuppetAgent:
        return self.programs["puppet"]  # type: ignore[return-value]

    def _lay_out_system(self) -> None:
        for d in (r"C:\Windows\Temp", r"C:\ProgramData", r"C:\Program Files", PROFILE_DIR, DEFAULT_PROFILE_DIR,
                  r"C:\Users\Public"):
            self.to_sandbox(d).mkdir(parents=True, exist_ok=True)
        self.network.lay_out()
        for folder, names in _SYSTEM_EXES.items():
            base = self.to_sandbox(folder)
            base.mkdir(parents=True, exist_ok=True)
            for name in names:
                (base / name).write_text("emulated executable (deploy_tasks rehearsal persona)\n")

    # -- state (state.py) ----------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self._state.file

    def state(self) -> dict:
        """A copy of the host's recorded state (products, services, boot times, pending reboot...)."""
        return self._state.snapshot()

    def state_value(self, key: str, default=None):
        """A copy of one entry of the host's recorded state (cheaper than ``state()`` for one entry)."""
        return self._state.get(key, default)

    def update_state(self, fn: Callable[[dict], None]) -> None:
        self._state.update(fn)

    @property
    def boot_time(self) -> str:
        return self._state.get("boot_time")

    def installed_products(self) -> Dict[str, dict]:
        return self._state.products

    def services(self) -> Dict[str, dict]:
        return self._state.services

    # -- C:\ (paths.py) and the network (network.py) ---------------------------------------------------
    def to_sandbox(self, win_path: str, cwd: str = PROFILE_DIR) -> Path:
        """Map a Windows path into the host's sandbox (``paths.Sandbox.to_sandbox``)."""
        return self.drive.to_sandbox(win_path, cwd)

    def to_windows(self, path: Path) -> str:
        return self.drive.to_windows(path)

    HOSTS_FILE = HOSTS_FILE

    def resolve(self, name: str) -> str:
        return self.network.resolve(name)

    def add_hosts_entry(self, name: str, address: str) -> None:
        """Add ``address name`` to the host's ``C:\\Windows\\System32\\drivers\\etc\\hosts``."""
        self.network.add_hosts_entry(name, address)

    def http_get(self, url: str, timeout: float = 60) -> Tuple[Optional[bytes], str]:
        return self.network.http_get(url, timeout)

    # -- reboots (power.py) -----------------------------------------------------------------------------
    def schedule_reboot(self, delay: float, exclusive: bool = False) -> bool:
        """Reboot the host after ``delay`` s (``shutdown /r /t N``, an MSI's 1641); see ``RebootTimer``."""
        return self._reboots.schedule(delay, exclusive)

    def abort_reboot(self) -> bool:
        return self._reboots.abort()

    def close(self) -> None:
        """Cancel a pending reboot (the fleet calls this when it stops)."""
        self._reboots.abort()

    def _reboot_now(self) -> None:
        down = float(self.faults.reboot_down_s)
        self._state.booted(datetime.fromtimestamp(time.time() + down, timezone.utc).isoformat(timespec="milliseconds"))
        self.on_reboot(down)

    # -- processes ----------------------------------------------------------------------------------------
    def environment(self, noprofile: bool = False) -> Environment:
        """The environment a new WinRM shell's processes get (without the client's Create variables)."""
        profile = DEFAULT_PROFILE_DIR if noprofile else PROFILE_DIR
        temp = profile + r"\AppData\Local\Temp" if noprofile else r"C:\Users\ADMINI~1\AppData\Local\Temp"
        return Environment({
            "ALLUSERSPROFILE": r"C:\ProgramData", "APPDATA": profile + r"\AppData\Roaming",
            "COMPUTERNAME": self.hostname.upper(), "ComSpec": SYSTEM32 + r"\cmd.exe",
            "LOCALAPPDATA": profile + r"\AppData\Local", "OS": "Windows_NT", "PATH": ";".join(self._path()),
            "PATHEXT": ".COM;.EXE;.BAT;.CMD", "PROCESSOR_ARCHITECTURE": "AMD64", "ProgramData": r"C:\ProgramData",
            "ProgramFiles": r"C:\Program Files", "PUBLIC": r"C:\Users\Public", "SystemDrive": "C:",
            "SystemRoot": r"C:\Windows", "TEMP": temp, "TMP": temp, "USERDOMAIN": self.hostname.upper(),
            "USERNAME": self.user, "USERPROFILE": profile, "windir": r"C:\Windows",
        })

    def _path(self) -> List[str]:
        return self._state.get("path", _BASE_PATH)

    def session(self, options: ShellOptions = ShellOptions()) -> Tuple[Session, str]:
        """The session a command of a shell with ``options`` starts in, and what is wrong with them ("" if nothing)."""
        codec_for(options.codepage)  # ValueError: the endpoint should have refused the Create
        env = self.environment(options.noprofile)
        for name, value in options.environment.items():
            env[name] = value
        session = Session(env, env["USERPROFILE"], options.codepage, options.consolemode_stdin)
        if options.working_directory:
            try:
                path = self.to_sandbox(options.working_directory)
            except FileNotFoundError:
                path = None
            if path is None or not path.is_dir():
                return session, "The directory name is invalid.\n"
            session.cwd = self.to_windows(path)
        return session, ""

    def start(self, command_line: str, options: ShellOptions = ShellOptions(),
              skip_cmd_shell: bool = False) -> Command:
        """Run ``command_line`` in a thread (see ``base.Persona.start``); poll the returned handle."""
        session, problem = self.session(options)
        if problem:
            def body(proc: Process) -> int:
                proc.err(problem)
                return EXIT_DIRECTORY_INVALID
        elif skip_cmd_shell:
            argv = split_argv(command_line)
            program = self.find_program(argv[0] if argv else "", session.cwd, session.env.get("PATH"))
            if program is None:
                raise ProgramNotFound(argv[0] if argv else "")

            def body(proc: Process) -> int:
                return program.run(proc, argv, command_line)
        else:
            def body(proc: Process) -> int:
                return self.cmd.run_line(proc, command_line)
        return Command(session, body, name=f"persona-{self.hostname}", delay_s=float(self.faults.slow_command_s or 0))

    def run(self, command_line: str, timeout: float = 120.0, options: ShellOptions = ShellOptions(),
            skip_cmd_shell: bool = False, stdin: Optional[bytes] = None) -> Tuple[str, str, int]:
        """Run a command to completion (for tests and the Python API): (stdout, stderr, exit code).

        ``stdin``: sent, then the end of input. Output is decoded from the shell's code page.
        """
        handle = self.start(command_line, options, skip_cmd_shell)
        if stdin is not None:
            handle.send_input(stdin, eof=True)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            o, e, code = handle.read(0.5)
            out += o
            err += e
            if code is not None:
                return decode(bytes(out), options.codepage), decode(bytes(err), options.codepage), code
            if time.monotonic() > deadline:
                handle.terminate()
                raise TimeoutError(f"{self.hostname}: {command_line!r} still running after {timeout}s")

    def run_process(self, proc: Process, command_line: str) -> int:
        """Start one program as CreateProcess does (no cmd.exe operators or built-ins); its exit code."""
        argv = split_argv(command_line)
        if argv and self.cmd.is_builtin(argv[0]):
            proc.err(f"Could not find command '{argv[0]}' (a cmd.exe built-in: run it as cmd.exe /c {argv[0]})\n")
            return EXIT_NOT_RECOGNIZED
        program = self.find_program(argv[0], proc.session.cwd, proc.session.env.get("PATH")) if argv else None
        if program is None:
            proc.err(not_recognized(argv[0] if argv else ""))
            return EXIT_NOT_RECOGNIZED
        return program.run(proc, argv, command_line)

    def find_program(self, name: str, cwd: str = PROFILE_DIR, path: Optional[str] = None) -> Optional[Program]:
        """The emulated program ``name`` starts, found as cmd.exe finds it (current directory, then PATH)."""
        stem = self.resolve_executable(name, cwd, path)
        return self.programs.get(stem) if stem else None

    def resolve_executable(self, name: str, cwd: str = PROFILE_DIR, path: Optional[str] = None) -> Optional[str]:
        """The name (``msiexec``, ``puppet``...) of the executable file ``name`` finds, or None.

        Every command line resolves its program through the current directory and the PATH
        (folders times PATHEXT's extensions: ~30 lookups, each matched case-insensitively). The
        answer is kept while the modification time of every folder the search walked through is
        unchanged (a file added, removed or renamed changes its folder's), and not kept when one
        of them changed within ``_RACY_NS`` of the search (git's "racy clean" rule, as ``Sandbox.find``).
        """
        if not name:
            return None
        if path is None:
            path = ";".join(self._path())
        key = (name, cwd, path)
        kept = self._resolved.get(key)
        if kept is not None and _stamps(kept[1]) == kept[2]:
            return kept[0]
        searched = time.time_ns()
        found, folders = self._search_executable(name, cwd, path)
        if folders is not None:
            stamps = _stamps(folders)
            if all(s is None or searched - s >= _RACY_NS for s in stamps):
                if len(self._resolved) > 256:
                    self._resolved.clear()
                self._resolved[key] = (found, folders, stamps)
        return found

    def _search_executable(self, name: str, cwd: str, path: str) -> Tuple[Optional[str], Optional[List[str]]]:
        """``resolve_executable``'s search: what it finds, and every folder it walked through (None when a
        path could not be mapped: such an answer is not kept)."""
        folders: Dict[str, None] = {}
        root = str(self.sandbox)
        for base in self._program_bases(name, cwd, path, folders):
            folder = str(base.parent)
            while True:  # the base's folder and each folder above it, up to C:\
                folders[folder] = None
                if len(folder) <= len(root):
                    break
                folder = os.path.dirname(folder)
            for ext in _PATHEXT:
                found = Sandbox.find(base.with_name(base.name + ext) if ext else base)
                if found is None or not found.is_file():
                    continue
                low = found.name.lower()
                for known in _PATHEXT[1:]:
                    if low.endswith(known):
                        return low[: -len(known)], (list(folders) if _MAPPED not in folders else None)
                return None, (list(folders) if _MAPPED not in folders else None)  # no executable extension
        return None, (list(folders) if _MAPPED not in folders else None)

    def _program_bases(self, name: str, cwd: str, path: Optional[str], unmapped: Optional[dict] = None) -> Iterator[Path]:
        """Where ``name`` may be, in search order: itself when it has a folder, else cwd and each PATH entry.

        A path that cannot be mapped (another drive, a link leading out) is skipped, and
        marked in ``unmapped`` when given."""
        try:
            if "\\" in name or "/" in name or name[1:2] == ":":
                yield self.to_sandbox(name, cwd)
                return
        except FileNotFoundError:
            if unmapped is not None:
                unmapped[_MAPPED] = None
            return
        for folder in [cwd] + [p for p in (path if path is not None else ";".join(self._path())).split(";") if p]:
            try:
                yield self.to_sandbox(folder, cwd) / name
            except FileNotFoundError:
                if unmapped is not None:
                    unmapped[_MAPPED] = None
                continue  # a PATH entry on another drive
