"""The emulated Windows persona: what one rehearsal host answers to the commands the tool sends.

This is an emulation of Windows Server 2012 R2 at the level of its command
lines, not Windows. It exists so that the real pywinrm client, through the
rehearsal endpoint, meets the behaviour the product depends on:

* command lines split by ``CommandLineToArgvW`` and run as cmd.exe runs them
  (``&&``, ``||``, ``&``, ``exit N``, ``cmd /c``); an unknown program answers
  ``'x' is not recognized as an internal or external command`` with exit 9009;
* ``msiexec`` (``msiexec.py``: real HTTP download, OLE2 check, the per-host
  MSI mutex -> 1618, reboot codes), ``puppet`` (``puppet.py``: after the agent
  MSI), ``shutdown /r``, ``sc query``, ``hostname``, ``whoami``, ``ver``,
  ``echo``, ``type``, redirection, ``%VAR%``, and a tiny honest subset of
  ``powershell -EncodedCommand`` (``powershell.py``).

A host's ``C:\\`` is its ``sandbox`` directory; its persistent state (installed
products, services, emulated resources, the Puppet journal) lives in
``state_dir`` (``<sandbox>.state`` next to the sandbox).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.parse
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .base import RebootHook, ShellOptions
from .cmdline import ENCODING, cmd_strip_c, crlf, split_argv, split_cmd, split_redirections
from .faults import FleetSpec, HostFaults
from .msiexec import MsiExec
from .powershell import run_powershell
from .puppet import PuppetAgent

EXIT_NOT_RECOGNIZED = 9009
EXIT_TERMINATED = 0xC000013A  # STATUS_CONTROL_C_EXIT, what a command killed by Signal reports
WINDOWS_VERSION = "6.3.9600"
SYSTEM32 = r"C:\Windows\System32"
POWERSHELL_DIR = r"C:\Windows\System32\WindowsPowerShell\v1.0"
_BASE_PATH = [SYSTEM32, r"C:\Windows", r"C:\Windows\System32\Wbem", POWERSHELL_DIR]
_SYSTEM_EXES = {
    SYSTEM32: ("cmd.exe", "hostname.exe", "whoami.exe", "msiexec.exe", "sc.exe", "shutdown.exe", "cscript.exe"),
    SYSTEM32 + r"\Wbem": ("wmic.exe",),
    POWERSHELL_DIR: ("powershell.exe",),
}
_PATHEXT = ("", ".com", ".exe", ".bat", ".cmd")
_CMD_BUILTINS = ("echo", "exit", "type", "ver", "mkdir", "md")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


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
        self._reboot_timer: Optional[threading.Timer] = None
        self.sandbox.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state = self._load_state()
        self._state["hostname"] = hostname
        self._state["boot_time"] = _now()
        self._state.setdefault("boots", []).append(self._state["boot_time"])
        self._lay_out_system()
        self._save_state()
        self.msiexec = MsiExec(self)
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

    def http_get(self, url: str, timeout: float = 60) -> Tuple[Optional[bytes], str]:
        """GET ``url`` over real HTTP as this host would (its hosts file first): (body, "") or (None, why)."""
        import requests

        parts = urllib.parse.urlsplit(url)
        address = self.resolve(parts.hostname or "")
        fetch, headers = url, {}
        if address != parts.hostname:  # named in the host's hosts file: connect to that address
            netloc = address + (f":{parts.port}" if parts.port else "")
            fetch, headers = urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"Host": parts.netloc}
        try:
            resp = requests.get(fetch, timeout=timeout, headers=headers)
        except requests.RequestException as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if resp.status_code != 200:
            return None, f"HTTP {resp.status_code} from {url}"
        return resp.content, ""

    def to_windows(self, path: Path) -> str:
        rel = Path(path).relative_to(self.sandbox)
        return "C:\\" + "\\".join(rel.parts)

    # -- command dispatch ------------------------------------------------------
    def start(self, command_line: str, options: ShellOptions = ShellOptions(),
              skip_cmd_shell: bool = False) -> Command:
        """Run ``command_line`` in a thread, as cmd.exe would; poll the returned handle.

        (``options`` and ``skip_cmd_shell``: see ``base.Persona.start``; not honoured yet.)
        """
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

    def run_process(self, ctx, command_line: str) -> int:
        """Start one program as CreateProcess does (no cmd.exe operators or built-ins); its exit code."""
        argv = split_argv(command_line)
        if argv and argv[0].lower() in _CMD_BUILTINS:
            ctx.err(f"Could not find command '{argv[0]}' (a cmd.exe built-in: run it as cmd.exe /c {argv[0]})\n")
            return EXIT_NOT_RECOGNIZED
        result = self._run_plain(ctx, command_line)
        return result.code if isinstance(result, _Exit) else result

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

    def _builtin_mkdir(self, ctx: Command, text: str, argv: List[str]) -> int:
        if len(argv) < 2:
            ctx.err("The syntax of the command is incorrect.\n")
            return 1
        code = 0
        for name in argv[1:]:
            try:
                path = self.to_sandbox(name)
            except FileNotFoundError:
                ctx.err("The system cannot find the path specified.\n")
                code = 1
                continue
            if path.exists():
                ctx.err(f"A subdirectory or file {name} already exists.\n")
                code = 1
                continue
            try:
                path.mkdir(parents=True)  # command extensions: intermediate folders too
            except (FileExistsError, NotADirectoryError):
                ctx.err("The system cannot find the path specified.\n")
                code = 1
        return code

    _builtin_md = _builtin_mkdir

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

    #: the product's unzip.vbs (puppet/modules/product/files), recognised by its first line
    _UNZIP_VBS = re.compile(r"^' unzip\.vbs ZIP DEST", re.IGNORECASE)

    def _exe_cscript(self, ctx: Command, argv: List[str]) -> int:
        """cscript runs one script here: the product's unzip.vbs, emulated; any other script fails loudly."""
        args = [a for a in argv[1:] if not a.startswith("//")]
        logo = not any(a.lower() == "//nologo" for a in argv[1:])
        if logo:
            ctx.out("Microsoft (R) Windows Script Host Version 5.8\nCopyright (C) Microsoft Corporation. "
                    "All rights reserved.\n\n")
        if not args:
            ctx.out("Usage: CScript scriptname.extension [option...] [arguments...]\n")
            return 0
        script, params = args[0], args[1:]
        try:
            text = self.to_sandbox(script).read_text(errors="replace")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            ctx.err(f'Input Error: Can not find script file "{script}".\n')
            return 1
        if not self._UNZIP_VBS.match(text):
            ctx.err(f"{script}: the emulated persona runs only the product's unzip.vbs with cscript; "
                    "other scripts are not emulated\n")
            return 1
        return self._unzip_vbs(ctx, params)

    def _unzip_vbs(self, ctx: Command, params: List[str]) -> int:
        """unzip.vbs ZIP DEST: unpack into DEST.partial, rename to DEST, write DEST\\.unpacked (its exit codes)."""
        if len(params) != 2:
            ctx.out("usage: unzip.vbs ZIP DEST\n")
            return 2
        try:
            zip_path, dest = self.to_sandbox(params[0]), self.to_sandbox(params[1])
        except FileNotFoundError:
            ctx.out(f"no such file: {params[0]}\n")
            return 3
        if not zip_path.is_file():
            ctx.out(f"no such file: {params[0]}\n")
            return 3
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with zipfile.ZipFile(zip_path) as archive:
                root = os.path.realpath(partial)
                for member in archive.infolist():
                    target = os.path.realpath(os.path.join(partial, member.filename.replace("\\", "/")))
                    if target != root and not target.startswith(root + os.sep):
                        raise zipfile.BadZipFile(f"entry {member.filename!r} points outside the folder")
                archive.extractall(partial)
        except (zipfile.BadZipFile, OSError) as exc:
            # the Shell.Application copy fails with a dialog nobody sees; the script then waits forever
            ctx.err(f"{params[0]}: not a zip archive the Windows shell can open ({exc})\n")
            shutil.rmtree(partial, ignore_errors=True)
            return 1
        if dest.exists():
            shutil.rmtree(dest)
        partial.rename(dest)
        (dest / ".unpacked").write_bytes(b"")
        return 0

    def _exe_wmic(self, ctx: Command, argv: List[str]) -> int:
        """``wmic os get <properties> [/value]``: LastBootUpTime, Caption, Version, CSName (nothing else)."""
        args = [a.lower() for a in argv[1:]]
        boot = datetime.fromisoformat(self.boot_time).astimezone(timezone.utc)
        known = {"lastbootuptime": boot.strftime("%Y%m%d%H%M%S.%f") + "+000",
                 "caption": "Microsoft Windows Server 2012 R2 Standard", "version": WINDOWS_VERSION,
                 "csname": self.hostname.upper()}
        names = {"lastbootuptime": "LastBootUpTime", "caption": "Caption", "version": "Version", "csname": "CSName"}
        value_form = "/value" in args
        args = [a for a in args if a != "/value"]
        if len(args) < 3 or args[:2] != ["os", "get"]:
            ctx.out(f"Node - {self.hostname.upper()}\r\nERROR:\r\nDescription = Invalid query\r\n\r\n")
            ctx.err("(the emulated persona answers only: wmic os get LastBootUpTime,Caption,Version,CSName [/value])\n")
            return 44135
        props = [p for a in args[2:] for p in a.split(",") if p]
        unknown = [p for p in props if p not in known]
        if unknown:
            ctx.out(f"Node - {self.hostname.upper()}\r\nERROR:\r\nDescription = Invalid query\r\n\r\n")
            return 44135
        props = sorted(props)  # wmic lists the properties in alphabetical order
        if value_form:
            ctx.out("\r\n\r\n" + "".join(f"{names[p]}={known[p]}\r\n" for p in props) + "\r\n\r\n")
        else:
            widths = [max(len(names[p]), len(known[p])) + 2 for p in props]
            ctx.out("".join(names[p].ljust(w) for p, w in zip(props, widths)) + "\r\n"
                    + "".join(known[p].ljust(w) for p, w in zip(props, widths)) + "\r\n\r\n")
        return 0

    def _exe_puppet(self, ctx: Command, argv: List[str]) -> int:
        return self.puppet.main(ctx, argv[1:])

    # -- msiexec and powershell (msiexec.py, powershell.py) ------------------------------
    def _exe_msiexec(self, ctx: Command, argv: List[str]) -> int:
        return self.msiexec.run(ctx, argv)

    def _exe_powershell(self, ctx: Command, argv: List[str]) -> int:
        return run_powershell(self, ctx, argv)

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
