"""The small system programs of an emulated host: hostname, whoami, shutdown, sc, cscript, wmic, certutil, netstat.

Each answers the forms the product uses, with Windows' texts and exit codes,
and any other form loudly (a usage text and a non-zero exit), so a command the
tool relies on can never pass here by accident.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import zipfile
from datetime import datetime, timezone
from typing import List

from .process import WINDOWS_VERSION, Host, Process


class Hostname:
    def __init__(self, host: Host):
        self.host = host

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        if len(argv) > 1:
            proc.err("sethostname: Use the Network Control Panel Applet to set hostname.\n")
            return 1
        proc.out(self.host.hostname + "\n")
        return 0


class Whoami:
    def __init__(self, host: Host):
        self.host = host

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        proc.out(f"{self.host.hostname.lower()}\\{self.host.user}\n")
        return 0


class Shutdown:
    """``shutdown /r [/t N]`` schedules the host's reboot (30 s by default), ``shutdown /a`` cancels it."""

    def __init__(self, host: Host):
        self.host = host

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        flags = [a.lower().replace("-", "/", 1) if a.startswith("-") else a.lower() for a in argv[1:]]
        if "/a" in flags:
            if not self.host.abort_reboot():
                proc.err("Unable to abort the system shutdown because no shutdown was in progress.(1116)\n")
                return 1116
            return 0
        if "/r" not in flags:
            proc.err("The emulated persona supports shutdown /r [/t N] and shutdown /a only.\n")
            return 87
        delay = 30.0  # Windows' default when /t is not given
        if "/t" in flags:
            try:
                delay = float(flags[flags.index("/t") + 1])
            except (IndexError, ValueError):
                proc.err("The parameter is incorrect.(87)\n")
                return 87
        if not self.host.schedule_reboot(delay, exclusive=True):
            proc.err("A system shutdown has already been scheduled.(1190)\n")
            return 1190
        return 0


class ServiceControl:
    """``sc [\\\\server] query|queryex <service>`` over the services the host has recorded."""

    def __init__(self, host: Host):
        self.host = host

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        args = argv[1:]
        if args and args[0].startswith("\\\\"):
            args = args[1:]  # sc \\server query x: this host is the only server there is
        if len(args) < 2 or args[0].lower() not in ("query", "queryex"):
            proc.out("DESCRIPTION:\n        SC is a command line program used for communicating with the\n"
                     "        Service Control Manager and services.\n"
                     "(the emulated persona supports: sc query <service>, sc queryex <service>)\n")
            return 1639 if args else 0
        name = args[1]
        svc = {k.lower(): (k, v) for k, v in self.host.services().items()}.get(name.lower())
        if svc is None:
            proc.out("[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\n\n"
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
            pid = info.get("pid", 0) if running else 0
            text += f"        PID                : {pid}\n        FLAGS              : \n"
        proc.out(text)
        return 0


class CScript:
    """cscript runs one script here: the product's unzip.vbs, emulated; any other script fails loudly."""

    #: the product's unzip.vbs (puppet/modules/product/files), recognised by its first line
    UNZIP_VBS = re.compile(r"^' unzip\.vbs ZIP DEST", re.IGNORECASE)

    def __init__(self, host: Host):
        self.host = host

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        args = [a for a in argv[1:] if not a.startswith("//")]
        if not any(a.lower() == "//nologo" for a in argv[1:]):
            proc.out("Microsoft (R) Windows Script Host Version 5.8\nCopyright (C) Microsoft Corporation. "
                     "All rights reserved.\n\n")
        if not args:
            proc.out("Usage: CScript scriptname.extension [option...] [arguments...]\n")
            return 0
        script, params = args[0], args[1:]
        try:
            text = self.host.to_sandbox(script, proc.session.cwd).read_text(errors="replace")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            proc.err(f'Input Error: Can not find script file "{script}".\n')
            return 1
        if not self.UNZIP_VBS.match(text):
            proc.err(f"{script}: the emulated persona runs only the product's unzip.vbs with cscript; "
                     "other scripts are not emulated\n")
            return 1
        return self._unzip_vbs(proc, params)

    def _unzip_vbs(self, proc: Process, params: List[str]) -> int:
        """unzip.vbs ZIP DEST: unpack into DEST.partial, rename to DEST, write DEST\\.unpacked (its exit codes)."""
        if len(params) != 2:
            proc.out("usage: unzip.vbs ZIP DEST\n")
            return 2
        try:
            zip_path = self.host.to_sandbox(params[0], proc.session.cwd)
            dest = self.host.to_sandbox(params[1], proc.session.cwd)
        except FileNotFoundError:
            proc.out(f"no such file: {params[0]}\n")
            return 3
        if not zip_path.is_file():
            proc.out(f"no such file: {params[0]}\n")
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
            proc.err(f"{params[0]}: not a zip archive the Windows shell can open ({exc})\n")
            shutil.rmtree(partial, ignore_errors=True)
            return 1
        if dest.exists():
            shutil.rmtree(dest)
        partial.rename(dest)
        (dest / ".unpacked").write_bytes(b"")
        return 0


class Wmic:
    """``wmic os get <properties> [/value]``: LastBootUpTime, Caption, Version, CSName (nothing else)."""

    NAMES = {"lastbootuptime": "LastBootUpTime", "caption": "Caption", "version": "Version", "csname": "CSName"}

    def __init__(self, host: Host):
        self.host = host

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        args = [a.lower() for a in argv[1:]]
        boot = datetime.fromisoformat(self.host.boot_time).astimezone(timezone.utc)
        known = {"lastbootuptime": boot.strftime("%Y%m%d%H%M%S.%f") + "+000",
                 "caption": "Microsoft Windows Server 2012 R2 Standard", "version": WINDOWS_VERSION,
                 "csname": self.host.hostname.upper()}
        value_form = "/value" in args
        args = [a for a in args if a != "/value"]
        invalid = f"Node - {self.host.hostname.upper()}\r\nERROR:\r\nDescription = Invalid query\r\n\r\n"
        if len(args) < 3 or args[:2] != ["os", "get"]:
            proc.out(invalid)
            proc.err("(the emulated persona answers only: "
                     "wmic os get LastBootUpTime,Caption,Version,CSName [/value])\n")
            return 44135
        props = [p for a in args[2:] for p in a.split(",") if p]
        if any(p not in known for p in props):
            proc.out(invalid)
            return 44135
        props = sorted(props)  # wmic lists the properties in alphabetical order
        if value_form:
            proc.out("\r\n\r\n" + "".join(f"{self.NAMES[p]}={known[p]}\r\n" for p in props) + "\r\n\r\n")
        else:
            widths = [max(len(self.NAMES[p]), len(known[p])) + 2 for p in props]
            proc.out("".join(self.NAMES[p].ljust(w) for p, w in zip(props, widths)) + "\r\n"
                     + "".join(known[p].ljust(w) for p, w in zip(props, widths)) + "\r\n\r\n")
        return 0


class CertUtil:
    """``certutil [-f] -decode <in> <out>``: base64 (PEM-style lines, headers optional) to bytes; nothing else."""

    def __init__(self, host: Host):
        self.host = host

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        args = argv[1:]
        force = bool(args) and args[0].lower() in ("-f", "/f")
        if force:
            args = args[1:]
        if len(args) != 3 or args[0].lower() not in ("-decode", "/decode"):
            proc.err("CertUtil: Unknown arg: (only -decode is emulated)\nCertUtil: The parameter is incorrect.\n")
            return 0x80070057
        src = self.host.to_sandbox(args[1], proc.session.cwd)
        dst = self.host.to_sandbox(args[2], proc.session.cwd)
        try:
            raw = src.read_bytes()
        except OSError:
            proc.out("CertUtil: -decode command FAILED: 0x80070002 (WIN32: 2 ERROR_FILE_NOT_FOUND)\n"
                     "CertUtil: The system cannot find the file specified.\n")
            return 0x80070002
        if dst.exists() and not force:
            proc.out("CertUtil: -decode command FAILED: 0x80070050 (WIN32: 80 ERROR_FILE_EXISTS)\n"
                     "CertUtil: The file exists.\n")
            return 0x80070050
        body = b"".join(l for l in raw.split() if not l.startswith(b"-----"))
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            proc.out("CertUtil: -decode command FAILED: 0x80090005 (-2146893819 NTE_BAD_DATA)\n"
                     "CertUtil: Bad Data.\n")
            return 0x80090005
        dst.write_bytes(data)
        proc.out(f"Input Length = {len(raw)}\nOutput Length = {len(data)}\n"
                 "CertUtil: -decode command completed successfully.\n")
        return 0


class Netstat:
    """``netstat -an`` from the host's socket model: a running emulated service with a ``port`` listens on
    both stacks (0.0.0.0 and [::]); ``netstat_rows`` in the host state adds other rows (proto, local, foreign,
    state). Header and columns as Windows Server 2012 R2 prints them."""

    HEADER = "\nActive Connections\n\n  Proto  Local Address          Foreign Address        State\n"

    def __init__(self, host: Host):
        self.host = host

    @staticmethod
    def row(proto: str, local: str, foreign: str, state: str = "") -> str:
        return f"  {proto:<7}{local:<23}{foreign:<23}{state}".rstrip() + "\n"

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        if sorted(a.lower() for a in argv[1:]) not in (["-an"], ["-a", "-n"], ["-na"]):
            proc.err("(only netstat -an is emulated)\n")
            return 1
        state = self.host.state()
        lines = [self.row(*r) for r in state.get("netstat_rows", [])]
        for info in state.get("services", {}).values():
            if info.get("state") == "running" and info.get("port"):
                lines.append(self.row("TCP", f"0.0.0.0:{info['port']}", "0.0.0.0:0", "LISTENING"))
                lines.append(self.row("TCP", f"[::]:{info['port']}", "[::]:0", "LISTENING"))
        proc.out(self.HEADER + "".join(lines))
        return 0
