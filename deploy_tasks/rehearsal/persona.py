"""The emulated Windows persona: what one rehearsal host answers to the commands the tool sends.

This is an emulation of Windows Server 2012 R2 at the level of its command
lines, not Windows. It exists so that the real pywinrm client, through the
rehearsal endpoint, meets the behaviour the product depends on:

* command lines split by ``CommandLineToArgvW`` and run as cmd.exe runs them
  (``&&``, ``||``, ``&``, ``exit N``, ``cmd /c``); an unknown program answers
  ``'x' is not recognized as an internal or external command`` with exit 9009;
* ``msiexec`` (real HTTP download, OLE2 check, the per-host MSI mutex -> 1618,
  reboot codes), ``puppet`` (after the agent MSI; see ``puppet.py``),
  ``shutdown /r``, ``sc query``, ``hostname``, ``whoami``, ``ver``, ``echo``,
  ``type`` and a tiny honest subset of ``powershell -EncodedCommand``.

A host's ``C:\\`` is its ``sandbox`` directory; its persistent state (installed
products, services, emulated resources, the Puppet journal) lives in
``state_dir`` (``<sandbox>.state`` next to the sandbox).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple
from xml.sax.saxutils import escape as xml_escape

from . import msi as msilib
from .base import RebootHook
from .cmdline import cmd_strip_c, split_argv, split_cmd, split_redirections
from .faults import FleetSpec, HostFaults
from .puppet import PuppetAgent

ENCODING = "cp437"  # the OEM code page a WinRM shell's console output arrives in
EXIT_NOT_RECOGNIZED = 9009
EXIT_TERMINATED = 0xC000013A  # STATUS_CONTROL_C_EXIT, what a command killed by Signal reports
WINDOWS_VERSION = "6.3.9600"
PUPPET_BIN = r"C:\Program Files\Puppet Labs\Puppet\bin"
SYSTEM32 = r"C:\Windows\System32"
POWERSHELL_DIR = r"C:\Windows\System32\WindowsPowerShell\v1.0"
_BASE_PATH = [SYSTEM32, r"C:\Windows", r"C:\Windows\System32\Wbem", POWERSHELL_DIR]
_SYSTEM_EXES = {
    SYSTEM32: ("cmd.exe", "hostname.exe", "whoami.exe", "msiexec.exe", "sc.exe", "shutdown.exe"),
    POWERSHELL_DIR: ("powershell.exe",),
}
_PATHEXT = ("", ".com", ".exe", ".bat", ".cmd")
_CMD_BUILTINS = ("echo", "exit", "type", "ver")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def crlf(text: str) -> str:
    """Line ends as a Windows console writes them."""
    return re.sub(r"\r?\n", "\r\n", text)


class Command:
    """One running command: the ``CommandHandle`` the endpoint polls, and the context command code writes to."""

    def __init__(self, persona: "WindowsPersona", command_line: str):
        self.persona = persona
        self.command_line = command_line
        self._cond = threading.Condition()
        self._out = bytearray()
        self._err = bytearray()
        self._stdin = bytearray()
        self._stdin_eof = False
        self._exit: Optional[int] = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"persona-{persona.hostname}", daemon=True)
        self._thread.start()

    # -- CommandHandle -------------------------------------------------------
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

    # -- for command code ------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def out(self, text: str) -> None:
        self._write(self._out, text)

    def err(self, text: str) -> None:
        self._write(self._err, text)

    def write_bytes(self, data: bytes, stderr: bool = False) -> None:
        with self._cond:
            if self._exit is None:
                (self._err if stderr else self._out).extend(data)
                self._cond.notify_all()

    def _write(self, buf: bytearray, text: str) -> None:
        with self._cond:
            if self._exit is None:
                buf.extend(crlf(text).encode(ENCODING, errors="replace"))
                self._cond.notify_all()

    def sleep(self, seconds: float) -> bool:
        """Sleep unless terminated; True when the command was terminated meanwhile."""
        return self._cancel.wait(max(0.0, seconds))

    def _main(self) -> None:
        code = 1
        try:
            slow = self.persona.faults.slow_command_s
            if slow and self.sleep(slow):
                return
            code = self.persona._run_cmd_line(self, self.command_line)
        except Exception as exc:  # an emulator bug must not hang the client: report it as the command's failure
            self.err(f"emulated persona internal error: {type(exc).__name__}: {exc}\n")
            code = 1
        finally:
            with self._cond:
                if self._exit is None:
                    self._exit = code
                self._cond.notify_all()


class WindowsPersona:
    """One emulated Windows Server 2012 R2 host (see the module docstring for what it answers)."""

    #: seconds between ``shutdown /r /t 0`` answering and the host going away (lets the reply get out)
    reboot_grace_s = 0.2

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
        self._lock = threading.RLock()
        self._msi_mutex = threading.Lock()
        self._reboot_timer: Optional[threading.Timer] = None
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state = self._load_state()
        self._state["hostname"] = hostname
        self._state["boot_time"] = _now()
        self._state.setdefault("boots", []).append(self._state["boot_time"])
        self._lay_out_system()
        self._save_state()
        self.puppet = PuppetAgent(self)

    # -- state -----------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {"products": {}, "services": {}, "path": list(_BASE_PATH), "pending_reboot": False}

    def _save_state(self) -> None:
        with self._lock:
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._state, indent=2, sort_keys=True))
            os.replace(tmp, self.state_file)

    def update_state(self, fn: Callable[[dict], None]) -> None:
        with self._lock:
            fn(self._state)
            self._save_state()

    def state(self) -> dict:
        """A copy of the host's recorded state (products, services, boot times, pending reboot...)."""
        with self._lock:
            return json.loads(json.dumps(self._state))

    @property
    def boot_time(self) -> str:
        return self._state["boot_time"]

    def installed_products(self) -> Dict[str, dict]:
        return self.state()["products"]

    def services(self) -> Dict[str, dict]:
        return self.state()["services"]

    def _lay_out_system(self) -> None:
        for d in (r"C:\Windows\Temp", r"C:\ProgramData", r"C:\Program Files", r"C:\Users\Administrator",
                  r"C:\Users\Public"):
            self.to_sandbox(d).mkdir(parents=True, exist_ok=True)
        hosts = self.to_sandbox(self.HOSTS_FILE)
        if not hosts.exists():
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_bytes(b"# Copyright (c) 1993-2009 Microsoft Corp.\r\n#\r\n# This is a sample HOSTS file used by "
                              b"Microsoft TCP/IP for Windows.\r\n#\r\n# localhost name resolution is handled within "
                              b"DNS itself.\r\n")
        for folder, names in _SYSTEM_EXES.items():
            base = self.to_sandbox(folder)
            base.mkdir(parents=True, exist_ok=True)
            for name in names:
                (base / name).write_text("emulated executable (deploy_tasks rehearsal persona)\n")

    # -- paths -----------------------------------------------------------------
    def to_sandbox(self, win_path: str, cwd: str = r"C:\Users\Administrator") -> Path:
        """Map a Windows path (``C:\\X\\Y``, ``C:/X/Y``, relative) to the sandbox; never outside it.

        Existing names match case-insensitively, as NTFS does. A path on another
        drive or a UNC path raises ``FileNotFoundError``.
        """
        p = win_path.strip().strip('"').replace("/", "\\")
        if p.startswith("\\\\"):
            raise FileNotFoundError(win_path)
        if re.match(r"^[A-Za-z]:", p):
            if p[0].upper() != "C":
                raise FileNotFoundError(win_path)
            p = p[2:]
            if not p.startswith("\\"):
                p = cwd[2:] + "\\" + p
        elif not p.startswith("\\"):
            p = cwd[2:] + "\\" + p
        parts: List[str] = []
        for part in p.split("\\"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()  # C:\.. is C:\ on Windows
                continue
            parts.append(part.rstrip(" ."))  # Windows drops trailing dots and spaces
        current = self.sandbox
        for part in parts:
            exact = current / part
            if not exact.exists() and current.is_dir():
                for entry in current.iterdir():
                    if entry.name.lower() == part.lower():
                        exact = entry
                        break
            current = exact
        root = os.path.realpath(self.sandbox)
        real = os.path.realpath(current)
        if real != root and not real.startswith(root + os.sep):
            raise FileNotFoundError(win_path)
        return current

    # -- name resolution -------------------------------------------------------------
    HOSTS_FILE = r"C:\Windows\System32\drivers\etc\hosts"

    def resolve(self, name: str) -> str:
        """The address the host's ``hosts`` file gives ``name`` (as Windows looks there before DNS), else ``name``."""
        try:
            text = self.to_sandbox(self.HOSTS_FILE).read_text(errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            return name
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2 and name.lower() in (f.lower() for f in fields[1:]):
                return fields[0]
        return name

    def add_hosts_entry(self, name: str, address: str) -> None:
        """Add ``address name`` to the host's ``C:\\Windows\\System32\\drivers\\etc\\hosts``."""
        path = self.to_sandbox(self.HOSTS_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(path, "a", newline="") as fh:
            fh.write(f"{address}\t{name}\r\n")

    def to_windows(self, path: Path) -> str:
        rel = Path(path).relative_to(self.sandbox)
        return "C:\\" + "\\".join(rel.parts)

    # -- command dispatch ------------------------------------------------------
    def start(self, command_line: str) -> Command:
        """Run ``command_line`` in a thread, as cmd.exe would; poll the returned handle."""
        return Command(self, command_line)

    def run(self, command_line: str, timeout: float = 120.0) -> Tuple[str, str, int]:
        """Run a command to completion (for tests and the Python API): (stdout, stderr, exit code)."""
        handle = self.start(command_line)
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            o, e, code = handle.read(0.5)
            out += o
            err += e
            if code is not None:
                return out.decode(ENCODING), err.decode(ENCODING), code
            if time.monotonic() > deadline:
                handle.terminate()
                raise TimeoutError(f"{self.hostname}: {command_line!r} still running after {timeout}s")

    def _run_cmd_line(self, ctx: Command, line: str) -> int:
        """cmd.exe semantics: ``a & b`` binds loosest, then ``||``, then ``&&``; ``exit`` ends everything."""
        parts = split_cmd(self.expand_variables(line))
        for i, (op, part) in enumerate(parts):
            if op == "|":
                ctx.err("The emulated persona does not support pipes.\n")
                return 255
            if not part and len(parts) > 1 and not (i == len(parts) - 1 and op == "&"):
                following = parts[i + 1][0] if i + 1 < len(parts) else op
                ctx.err(f"{following} was unexpected at this time.\n")
                return 255
        # sequences split at '&'; each is an '||' list of '&&' chains
        sequences: List[List[List[str]]] = [[[]]]
        for op, part in parts:
            if op == "&":
                sequences.append([[]])
            elif op == "||":
                sequences[-1].append([])
            sequences[-1][-1].append(part)
        code = 0
        for alternatives in sequences:
            for chain in alternatives:
                for part in chain:
                    if not part:
                        continue
                    result = self._run_simple(ctx, part)
                    if isinstance(result, _Exit):
                        return result.code
                    code = result
                    if ctx.cancelled:
                        return EXIT_TERMINATED
                    if code != 0:
                        break  # the rest of this && chain does not run
                if code == 0:
                    break  # an || alternative succeeded
        return code

    def expand_variables(self, line: str) -> str:
        """cmd's ``%NAME%`` expansion (case-insensitive); an undefined variable stays as written."""
        env = self.environment()
        return re.sub(r"%([^%\s]+)%", lambda m: env.get(m.group(1).upper(), m.group(0)), line)

    def environment(self) -> Dict[str, str]:
        """The environment variables a new WinRM shell sees (upper-case names)."""
        return {"COMPUTERNAME": self.hostname.upper(), "USERNAME": self.user, "USERDOMAIN": self.hostname.upper(),
                "USERPROFILE": r"C:\Users\Administrator", "SYSTEMROOT": r"C:\Windows", "WINDIR": r"C:\Windows",
                "SYSTEMDRIVE": "C:", "PROGRAMDATA": r"C:\ProgramData", "PROGRAMFILES": r"C:\Program Files",
                "TEMP": r"C:\Users\ADMINI~1\AppData\Local\Temp", "TMP": r"C:\Users\ADMINI~1\AppData\Local\Temp",
                "OS": "Windows_NT", "PROCESSOR_ARCHITECTURE": "AMD64", "PATHEXT": ".COM;.EXE;.BAT;.CMD",
                "PATH": ";".join(self._state.get("path", _BASE_PATH)), "ERRORLEVEL": "0"}

    def _run_simple(self, ctx: Command, text: str):
        text, redirs = split_redirections(text)
        if not redirs:
            return self._run_plain(ctx, text)
        sink = _Redirected(ctx)
        files: List[Tuple[int, str, Path]] = []
        for stream, mode, target in redirs:
            if mode == "<":
                sink.stdin_file = target
                continue
            if mode == ">&":
                if target not in ("1", "2"):
                    ctx.err("The handle could not be duplicated\nduring redirection of handle %d.\n" % stream)
                    return 1
                sink.join(stream, int(target))
                continue
            if not target:
                ctx.err("The syntax of the command is incorrect.\n")
                return 1
            if target.lower() in ("nul", "nul:"):
                sink.discard(stream)
                continue
            try:
                path = self.to_sandbox(target)
            except FileNotFoundError:
                ctx.err("The system cannot find the path specified.\n")
                return 1
            if not path.parent.is_dir():
                ctx.err("The system cannot find the path specified.\n")
                return 1
            if path.is_dir():
                ctx.err("Access is denied.\n")
                return 1
            files.append((stream, mode, path))
            sink.capture(stream)
        result = self._run_plain(sink, text)
        for stream, mode, path in files:
            with open(path, "ab" if mode == ">>" else "wb") as fh:
                fh.write(sink.captured(stream))
        return result

    def _run_plain(self, ctx: Command, text: str):
        argv = split_argv(text)
        if not argv or not argv[0]:
            return 0
        name = argv[0]
        key = name.lower()
        if key in _CMD_BUILTINS or re.match(r"^echo[.:]", key):
            return getattr(self, f"_builtin_{key if key in _CMD_BUILTINS else 'echo'}")(ctx, text, argv)
        exe = self.resolve_executable(name)
        if exe is None:
            ctx.err(f"'{name}' is not recognized as an internal or external command,\noperable program or batch file.\n")
            return EXIT_NOT_RECOGNIZED
        handler = getattr(self, f"_exe_{exe}", None)
        if handler is None:
            ctx.err(f"'{name}' is not recognized as an internal or external command,\noperable program or batch file.\n")
            return EXIT_NOT_RECOGNIZED
        if exe == "cmd":
            return handler(ctx, text, argv)
        return handler(ctx, argv)

    def resolve_executable(self, name: str) -> Optional[str]:
        """The emulated program ``name`` runs (``msiexec``, ``puppet``...), found as cmd.exe would, or None."""
        candidates: List[Path] = []
        try:
            if "\\" in name or "/" in name or re.match(r"^[A-Za-z]:", name):
                base = self.to_sandbox(name)
                candidates = [base.with_name(base.name + ext) if ext else base for ext in _PATHEXT]
            else:
                for folder in self._state.get("path", _BASE_PATH):
                    base = self.to_sandbox(folder) / name
                    candidates += [base.with_name(base.name + ext) if ext else base for ext in _PATHEXT]
        except FileNotFoundError:
            return None
        for cand in candidates:
            found = self._exists_ci(cand)
            if found is not None and found.is_file():
                stem = found.name.lower()
                for ext in _PATHEXT[1:]:
                    if stem.endswith(ext):
                        return stem[: -len(ext)]
                return None  # a file without an executable extension does not run
        return None

    @staticmethod
    def _exists_ci(path: Path) -> Optional[Path]:
        if path.exists():
            return path
        parent = path.parent
        if parent.is_dir():
            for entry in parent.iterdir():
                if entry.name.lower() == path.name.lower():
                    return entry
        return None

    # -- cmd.exe built-ins -----------------------------------------------------
    def _builtin_echo(self, ctx: Command, text: str, argv: List[str]) -> int:
        rest = text[4:]
        if rest[:1] in (".", ":", " ", "\t"):
            rest = rest[1:]
        if not rest.strip():
            ctx.out("ECHO is on.\n")
        else:
            ctx.out(rest + "\n")
        return 0

    def _builtin_exit(self, ctx: Command, text: str, argv: List[str]) -> "_Exit":
        args = [a for a in argv[1:] if a.lower() != "/b"]
        try:
            return _Exit(int(args[0]) if args else 0)
        except ValueError:
            return _Exit(0)  # cmd treats a non-number as 0

    def _builtin_ver(self, ctx: Command, text: str, argv: List[str]) -> int:
        ctx.out(f"\nMicrosoft Windows [Version {WINDOWS_VERSION}]\n")
        return 0

    def _builtin_type(self, ctx: Command, text: str, argv: List[str]) -> int:
        if len(argv) < 2:
            ctx.err("The syntax of the command is incorrect.\n")
            return 1
        code = 0
        for name in argv[1:]:
            try:
                path = self.to_sandbox(name)
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                ctx.err("The system cannot find the file specified.\n" if not self._is_dir(name)
                        else "Access is denied.\n")
                code = 1
                continue
            ctx.write_bytes(data)
        return code

    def _is_dir(self, name: str) -> bool:
        try:
            return self.to_sandbox(name).is_dir()
        except FileNotFoundError:
            return False

    # -- executables -------------------------------------------------------------
    def _exe_cmd(self, ctx: Command, text: str, argv: List[str]) -> int:
        # cmd [/Q] [/D] [/S] [/V:..] [/E:..] [/F:..] [/A|/U] /C|/K string: the string is the rest of the line
        m = re.match(r'^\s*(?:"[^"]*"|\S+)((?:\s+/(?:[qdsau]|[vef]:\w+))*)\s+/([ck])(.*)$', text,
                     re.IGNORECASE | re.DOTALL)
        if not m:
            if len(argv) == 1:
                ctx.out("Microsoft Windows [Version 6.3.9600]\n(c) 2013 Microsoft Corporation. All rights reserved.\n")
                return 0  # an interactive cmd with no stdin ends at once
            ctx.err("The emulated persona supports cmd only with /c (or /k) and a command.\n")
            return 1
        rest = m.group(3)
        if "/s" in m.group(1).lower():
            stripped = rest.lstrip()
            if stripped.startswith('"'):
                last = stripped.rfind('"')
                rest = stripped[1:last] + stripped[last + 1 :] if last > 0 else stripped[1:]
        else:
            rest = cmd_strip_c(rest)
        return self._run_cmd_line(ctx, rest)

    def _exe_hostname(self, ctx: Command, argv: List[str]) -> int:
        if len(argv) > 1:
            ctx.err("sethostname: Use the Network Control Panel Applet to set hostname.\n")
            return 1
        ctx.out(self.hostname + "\n")
        return 0

    def _exe_whoami(self, ctx: Command, argv: List[str]) -> int:
        ctx.out(f"{self.hostname.lower()}\\{self.user}\n")
        return 0

    def _exe_shutdown(self, ctx: Command, argv: List[str]) -> int:
        flags = [a.lower().replace("-", "/", 1) if a.startswith("-") else a.lower() for a in argv[1:]]
        if "/a" in flags:
            with self._lock:
                timer, self._reboot_timer = self._reboot_timer, None
            if timer is None:
                ctx.err("Unable to abort the system shutdown because no shutdown was in progress.(1116)\n")
                return 1116
            timer.cancel()
            return 0
        if "/r" not in flags:
            ctx.err("The emulated persona supports shutdown /r [/t N] and shutdown /a only.\n")
            return 87
        delay = 30.0  # Windows' default when /t is not given
        if "/t" in flags:
            try:
                delay = float(flags[flags.index("/t") + 1])
            except (IndexError, ValueError):
                ctx.err("The parameter is incorrect.(87)\n")
                return 87
        with self._lock:
            if self._reboot_timer is not None:
                ctx.err("A system shutdown has already been scheduled.(1190)\n")
                return 1190
            self._reboot_timer = threading.Timer(max(delay, self.reboot_grace_s), self._reboot_now)
            self._reboot_timer.daemon = True
            self._reboot_timer.start()
        return 0

    def close(self) -> None:
        """Cancel a pending reboot (the fleet calls this when it stops)."""
        with self._lock:
            timer, self._reboot_timer = self._reboot_timer, None
        if timer is not None:
            timer.cancel()

    def schedule_reboot(self, delay: float) -> None:
        """Reboot the host after ``delay`` s (what ``shutdown /r /t N`` and an MSI's 1641 do)."""
        with self._lock:
            if self._reboot_timer is None:
                self._reboot_timer = threading.Timer(max(delay, self.reboot_grace_s), self._reboot_now)
                self._reboot_timer.daemon = True
                self._reboot_timer.start()

    def _reboot_now(self) -> None:
        down = float(self.faults.reboot_down_s)
        with self._lock:
            self._reboot_timer = None

            def booted(state: dict) -> None:
                boot = datetime.fromtimestamp(time.time() + down, timezone.utc).isoformat(timespec="milliseconds")
                state["boot_time"] = boot
                state.setdefault("boots", []).append(boot)
                state["pending_reboot"] = False
                for svc in state["services"].values():  # after a boot, automatic services run, others do not
                    svc["state"] = "running" if svc.get("start_type") in ("automatic", "delayed") else "stopped"

            self.update_state(booted)
        self.on_reboot(down)

    def _exe_sc(self, ctx: Command, argv: List[str]) -> int:
        args = argv[1:]
        if args and args[0].startswith("\\\\"):
            args = args[1:]  # sc \\server query x: this host is the only server there is
        if len(args) < 2 or args[0].lower() not in ("query", "queryex"):
            ctx.out("DESCRIPTION:\n        SC is a command line program used for communicating with the\n"
                    "        Service Control Manager and services.\n"
                    "(the emulated persona supports: sc query <service>, sc queryex <service>)\n")
            return 1639 if args else 0
        name = args[1]
        svc = {k.lower(): (k, v) for k, v in self.services().items()}.get(name.lower())
        if svc is None:
            ctx.out("[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\n\n"
                    "The specified service does not exist as an installed service.\n\n")
            return 1060
        real_name, info = svc
        running = info.get("state", "stopped") == "running"
        state = "4  RUNNING" if running else "1  STOPPED"
        controls = "(STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)" if running else \
            "(NOT_STOPPABLE, NOT_PAUSABLE, IGNORES_SHUTDOWN)"
        text = (f"\nSERVICE_NAME: {real_name} \n        TYPE               : 10  WIN32_OWN_PROCESS  \n"
                f"        STATE              : {state} \n                                {controls}\n"
                "        WIN32_EXIT_CODE    : 0  (0x0)\n        SERVICE_EXIT_CODE  : 0  (0x0)\n"
                "        CHECKPOINT         : 0x0\n        WAIT_HINT          : 0x0\n")
        if args[0].lower() == "queryex":
            text += f"        PID                : {info.get('pid', 0) if running else 0}\n        FLAGS              : \n"
        ctx.out(text)
        return 0

    def _exe_puppet(self, ctx: Command, argv: List[str]) -> int:
        return self.puppet.main(ctx, argv[1:])

    # -- msiexec -------------------------------------------------------------------
    def _exe_msiexec(self, ctx: Command, argv: List[str]) -> int:
        opts = _parse_msiexec(argv[1:])
        if opts is None or not opts.get("package"):
            ctx.err(msilib.describe(msilib.ERROR_INVALID_COMMAND_LINE) + "\n")
            return msilib.ERROR_INVALID_COMMAND_LINE
        log = _MsiLog(self, opts.get("log"))
        if not log.ok:
            return msilib.ERROR_INSTALL_LOG_FAILURE
        log.line(f"=== Verbose logging started: {datetime.now():%m/%d/%Y  %H:%M:%S}  Build type: SHIP UNICODE "
                 f"5.00.9600.00  Calling process: {SYSTEM32}\\msiexec.exe ===")
        shown = [re.sub(r"^([^=]*PASSWORD[^=]*=).*$", r"\1**********", a, flags=re.IGNORECASE) for a in argv[1:]]
        log.line(f"MSI (c) Command Line: {' '.join(shown)}")  # hidden properties stay hidden, as in Windows' log
        busy = self.faults.take("msi_busy_attempts")
        if busy or not self._msi_mutex.acquire(blocking=False):
            log.line("MSI (c): Another installation is in progress (the _MSIExecute mutex is held).")
            return log.finish(msilib.ERROR_INSTALL_ALREADY_RUNNING, "emulated fault msi_busy_attempts" if busy
                              else "another msiexec transaction runs on this host")
        try:
            return self._msi_transaction(ctx, opts, log)
        finally:
            self._msi_mutex.release()

    def _msi_transaction(self, ctx: Command, opts: dict, log: "_MsiLog") -> int:
        source = opts["package"]
        data, why = self._fetch_package(source)
        if data is None:
            log.line(f"MSI (c): Note: 1: 1708 — could not open the package {source}: {why}")
            return log.finish(msilib.ERROR_INSTALL_PACKAGE_OPEN_FAILED, why)
        if not msilib.is_msi(data):
            log.line(f"MSI (c): {source} is not an OLE2 compound document (first bytes {data[:8].hex()})")
            return log.finish(msilib.ERROR_INSTALL_PACKAGE_INVALID, "not a Windows Installer package")
        package = msilib.identify(data, urllib.parse.urlparse(source).path if "://" in source else source)
        props = opts["properties"]
        for key, value in props.items():
            shown = "**********" if "PASSWORD" in key.upper() else value
            log.line(f"MSI (s): PROPERTY CHANGE: Adding {key} property. Its value is '{shown}'.")
        if opts["action"] == "uninstall":
            return self._msi_uninstall(package, log)
        if ctx.sleep(0.05):  # an install takes a moment; it is the window in which a second msiexec meets 1618
            return log.finish(msilib.ERROR_INSTALL_FAILURE, "terminated")
        fault = int(self.faults.msi_exit_code or 0)
        if fault == msilib.ERROR_INSTALL_FAILURE:
            log.line("MSI (s): Product: " + package.product + " -- Error 1722 (emulated fault msi_exit_code=1603).")
            return log.finish(fault, "emulated fault msi_exit_code")
        self._install(package, props, source)
        log.line(f"MSI (s): Product: {package.product} -- Installation completed successfully.")
        log.line(f"MSI (s): Windows Installer installed the product. Product Name: {package.product}. "
                 f"Product Version: {package.version}. Installation success or error status: 0.")
        code = fault if fault in (msilib.ERROR_SUCCESS_REBOOT_REQUIRED, msilib.ERROR_SUCCESS_REBOOT_INITIATED) else 0
        if code == msilib.ERROR_SUCCESS_REBOOT_INITIATED and opts["norestart"]:
            code = msilib.ERROR_SUCCESS_REBOOT_REQUIRED  # /norestart turns an initiated restart into "required"
        if code:
            self.update_state(lambda s: s.__setitem__("pending_reboot", True))
        if code == msilib.ERROR_SUCCESS_REBOOT_INITIATED:
            self.schedule_reboot(self.reboot_grace_s)
        return log.finish(code, "")

    def _fetch_package(self, source: str) -> Tuple[Optional[bytes], str]:
        if re.match(r"^https?://", source, re.IGNORECASE):
            import requests

            url = urllib.parse.urlsplit(source)
            address = self.resolve(url.hostname or "")
            fetch, headers = source, {}
            if address != url.hostname:  # named in the host's hosts file: connect to that address
                netloc = address + (f":{url.port}" if url.port else "")
                fetch, headers = urllib.parse.urlunsplit(url._replace(netloc=netloc)), {"Host": url.netloc}
            try:
                resp = requests.get(fetch, timeout=30, headers=headers)
            except requests.RequestException as exc:
                return None, f"download failed: {type(exc).__name__}: {exc}"
            if resp.status_code != 200:
                return None, f"download failed: HTTP {resp.status_code} from {source}"
            return resp.content, ""
        if "://" in source:
            return None, f"unsupported URL scheme in {source}"
        try:
            return self.to_sandbox(source).read_bytes(), ""
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None, f"the file {source} does not exist"

    def _install(self, package: msilib.Package, props: dict, source: str) -> None:
        def record(state: dict) -> None:
            kept = {k: ("**********" if "PASSWORD" in k.upper() else v) for k, v in props.items()}  # no secrets at rest
            state["products"][package.product] = {"version": package.version, "properties": kept,
                                                  "source": source, "installed_at": _now()}
            if package.is_puppet_agent:
                settings = msilib.puppet_settings_from_properties(package.version, props)
                settings.setdefault("certname", self.hostname.lower())
                settings.setdefault("environment", "production")
                state["puppet_settings"] = settings
                if PUPPET_BIN not in state["path"]:
                    state["path"].append(PUPPET_BIN)
                startup = (props.get("PUPPET_AGENT_STARTUP_MODE") or "Automatic").lower()
                state["services"]["puppet"] = {"display_name": "Puppet Agent", "installed_by": "msi",
                                               "state": "stopped" if startup == "disabled" else "running",
                                               "start_type": startup}

        self.update_state(record)
        if package.is_puppet_agent:
            bindir = self.to_sandbox(PUPPET_BIN)
            bindir.mkdir(parents=True, exist_ok=True)
            (bindir / "puppet.bat").write_text("@echo off\r\nrem emulated Puppet agent (deploy_tasks rehearsal)\r\n")
            self.puppet.write_windows_puppet_conf()

    def _msi_uninstall(self, package: msilib.Package, log: "_MsiLog") -> int:
        if package.product not in self.installed_products():
            log.line("MSI (c): This action is only valid for products that are currently installed.")
            return log.finish(1605, "product not installed")

        def remove(state: dict) -> None:
            state["products"].pop(package.product, None)
            if package.is_puppet_agent:
                state["services"].pop("puppet", None)
                if PUPPET_BIN in state["path"]:
                    state["path"].remove(PUPPET_BIN)

        self.update_state(remove)
        log.line(f"MSI (s): Product: {package.product} -- Removal completed successfully.")
        return log.finish(0, "")

    # -- powershell -------------------------------------------------------------
    def _exe_powershell(self, ctx: Command, argv: List[str]) -> int:
        """A deliberately tiny PowerShell: Write-Output/Write-Host/echo, string literals, $env:X, exit N.

        Anything else is answered with a PowerShell-style error as CLIXML on
        stderr and exit 1, so a script the tool relies on cannot pass silently.
        """
        script = None
        args = argv[1:]
        i = 0
        while i < len(args):
            a = args[i].lower()
            if a in ("-encodedcommand", "-enc", "-e", "-ec") and i + 1 < len(args):
                try:
                    script = base64.b64decode(args[i + 1], validate=True).decode("utf-16-le")
                except (binascii.Error, UnicodeDecodeError):
                    ctx.err("Cannot process the command because the value specified with -EncodedCommand is not "
                            "properly encoded. The value must be Base64 encoded.\n")
                    return 1
                i += 2
            elif a in ("-command", "-c"):
                script = " ".join(args[i + 1 :])
                break
            elif a in ("-executionpolicy", "-ep", "-inputformat", "-outputformat", "-windowstyle"):
                i += 2
            elif a.startswith("-"):
                i += 1
            else:
                script = " ".join(args[i:])
                break
        if script is None:
            ctx.err("The emulated persona runs powershell only with -EncodedCommand or -Command.\n")
            return 1
        return _MiniPowerShell(self, ctx).run(script)


class _Redirected:
    """A command's output streams after cmd.exe redirection (to a file, to NUL, or into each other)."""

    def __init__(self, ctx):
        self._ctx = ctx
        self._route = {1: ("ctx", 1), 2: ("ctx", 2)}
        self._buffers = {1: bytearray(), 2: bytearray()}
        self.stdin_file: Optional[str] = None

    def capture(self, stream: int) -> None:
        self._route[stream] = ("buf", stream)

    def discard(self, stream: int) -> None:
        self._route[stream] = ("nul", stream)

    def join(self, stream: int, into: int) -> None:
        self._route[stream] = self._route[into]

    def captured(self, stream: int) -> bytes:
        return bytes(self._buffers[stream])

    def _emit(self, stream: int, data: bytes) -> None:
        kind, where = self._route[stream]
        if kind == "ctx":
            self._ctx.write_bytes(data, stderr=where == 2)
        elif kind == "buf":
            self._buffers[where].extend(data)

    def out(self, text: str) -> None:
        self._emit(1, crlf(text).encode(ENCODING, errors="replace"))

    def err(self, text: str) -> None:
        self._emit(2, crlf(text).encode(ENCODING, errors="replace"))

    def write_bytes(self, data: bytes, stderr: bool = False) -> None:
        self._emit(2 if stderr else 1, data)

    @property
    def cancelled(self) -> bool:
        return self._ctx.cancelled

    def sleep(self, seconds: float) -> bool:
        return self._ctx.sleep(seconds)


class _Exit:
    def __init__(self, code: int):
        self.code = code


def _parse_msiexec(args: List[str]) -> Optional[dict]:
    opts = {"action": None, "package": None, "log": None, "quiet": False, "norestart": False, "properties": {}}
    i = 0
    while i < len(args):
        a = args[i]
        low = a.lower()
        if low in ("/i", "/package", "-i"):
            if i + 1 >= len(args):
                return None
            opts["action"], opts["package"] = "install", args[i + 1]
            i += 2
        elif low in ("/x", "/uninstall", "-x"):
            if i + 1 >= len(args):
                return None
            opts["action"], opts["package"] = "uninstall", args[i + 1]
            i += 2
        elif low in ("/qn", "/quiet", "/q", "/qb", "/passive"):
            opts["quiet"] = True
            i += 1
        elif low in ("/norestart", "/promptrestart", "/forcerestart"):
            opts["norestart"] = low == "/norestart"
            i += 1
        elif re.match(r"^/l[*iwearucmopvx+!]*$", low):
            if i + 1 >= len(args):
                return None
            opts["log"] = args[i + 1]
            i += 2
        elif "=" in a and not a.startswith("/"):
            key, _, value = a.partition("=")
            opts["properties"][key.upper()] = value
            i += 1
        else:
            return None
    return opts if opts["action"] else None


class _MsiLog:
    """The verbose log msiexec writes (``/l*v``), into the sandbox."""

    def __init__(self, persona: WindowsPersona, win_path: Optional[str]):
        self.path: Optional[Path] = None
        self.ok = True
        if win_path:
            try:
                path = persona.to_sandbox(win_path)
            except FileNotFoundError:
                self.ok = False
                return
            if not path.parent.is_dir():
                self.ok = False
                return
            self.path = path
            path.write_text("")

    def line(self, text: str) -> None:
        if self.path is not None:
            with open(self.path, "a", newline="") as fh:
                fh.write(crlf(text + "\n"))

    def finish(self, code: int, why: str) -> int:
        meaning = msilib.describe(code) or ""
        if why:
            self.line(f"MSI (c): {why}")
        self.line(f"MSI (c): MainEngineThread is returning {code}: {meaning}")
        self.line(f"=== Verbose logging stopped: {datetime.now():%m/%d/%Y  %H:%M:%S} ===")
        return code


class _MiniPowerShell:
    _ENV = {"computername": lambda p: p.hostname.upper(), "username": lambda p: p.user,
            "userdomain": lambda p: p.hostname.upper(), "systemroot": lambda p: r"C:\Windows",
            "programdata": lambda p: r"C:\ProgramData", "temp": lambda p: r"C:\Users\ADMINI~1\AppData\Local\Temp"}
    _NOOP = re.compile(r"^\$(ProgressPreference|ErrorActionPreference|VerbosePreference)\s*=\s*['\"]?\w+['\"]?$",
                       re.IGNORECASE)

    def __init__(self, persona: WindowsPersona, ctx: Command):
        self.persona = persona
        self.ctx = ctx

    def run(self, script: str) -> int:
        for raw in re.split(r"[\r\n;]+", script):
            stmt = raw.strip()
            if not stmt or stmt.startswith("#"):
                continue
            m = re.match(r"^exit(?:\s+(-?\d+))?$", stmt, re.IGNORECASE)
            if m:
                return int(m.group(1) or 0)
            if self._NOOP.match(stmt):
                continue
            m = re.match(r"^(?:Write-Output|Write-Host|echo)\s+(.*)$", stmt, re.IGNORECASE)
            value = self._value(m.group(1) if m else stmt)
            if value is None:
                self._error(stmt)
                return 1
            self.ctx.out(value + "\n")
        return 0

    def _value(self, expr: str) -> Optional[str]:
        expr = expr.strip()
        m = re.match(r"^\$env:(\w+)$", expr, re.IGNORECASE)
        if m:
            return self._env(m.group(1))
        if len(expr) >= 2 and expr[0] == expr[-1] == "'":
            return expr[1:-1].replace("''", "'")
        if len(expr) >= 2 and expr[0] == expr[-1] == '"':
            inner = expr[1:-1]
            if re.search(r"\$(?!env:\w)|`", inner, re.IGNORECASE):
                return None  # other variables and escapes are not emulated
            return re.sub(r"\$env:(\w+)", lambda mm: self._env(mm.group(1)), inner, flags=re.IGNORECASE)
        if re.match(r"^-?\d+$", expr):
            return expr
        return None

    def _env(self, name: str) -> str:
        fn = self._ENV.get(name.lower())
        return fn(self.persona) if fn else ""

    def _error(self, stmt: str) -> None:
        word = stmt.split()[0] if stmt.split() else stmt
        text = (f"{word} : The term '{word}' is not recognized as the name of a cmdlet, function, script file, "
                "or operable program (the emulated Windows persona implements only Write-Output, Write-Host, "
                "echo, string literals, $env:NAME and exit N). Check the spelling of the name, or if a path was "
                "included, verify that the path is correct and try again.\n"
                f"At line:1 char:1\n+ {stmt}\n+ ~~~~\n"
                f"    + CategoryInfo          : ObjectNotFound: ({word}:String) [], CommandNotFoundException\n"
                "    + FullyQualifiedErrorId : CommandNotFoundException\n")
        objs = "".join(f'<S S="Error">{xml_escape(line)}_x000D__x000A_</S>' for line in text.splitlines())
        clixml = ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
                  + objs + "</Objs>")
        self.ctx.write_bytes(clixml.encode("utf-8"), stderr=True)
