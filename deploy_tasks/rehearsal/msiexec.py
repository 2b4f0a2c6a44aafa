"""``msiexec`` on an emulated Windows host: real HTTP downloads, the per-host MSI mutex, reboot codes.

``msiexec /i <http URL or C:\\path> /qn /norestart /l*v <log> PROP=VALUE...``
downloads the package over real HTTP (names resolve through the host's hosts
file first), checks it is an MSI (OLE2 signature), runs one transaction per
host at a time (a concurrent one gets 1618, as the ``_MSIExecute`` mutex makes
Windows answer), writes the verbose log into the sandbox and records the
product and its properties. Faults: ``msi_busy_attempts`` (1618 the first N
times), ``msi_exit_code`` (3010/1641 reboot, 1603 failure). ``/x`` uninstalls.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import List, Optional, Tuple

from .msi import (ERROR_INSTALL_ALREADY_RUNNING, ERROR_INSTALL_FAILURE, ERROR_INSTALL_LOG_FAILURE,
                  ERROR_INSTALL_PACKAGE_INVALID, ERROR_INSTALL_PACKAGE_OPEN_FAILED, ERROR_INVALID_COMMAND_LINE,
                  ERROR_SUCCESS_REBOOT_INITIATED, ERROR_SUCCESS_REBOOT_REQUIRED, Package, describe, identify, is_msi,
                  puppet_settings_from_properties)
from .process import Host, Process, crlf, now
from .puppet import PUPPET_BIN, write_windows_puppet_conf


class MsiExec:
    """The ``msiexec`` of one host; it owns the host's MSI mutex."""

    def __init__(self, host: Host):
        self.host = host
        self._mutex = threading.Lock()

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        """``msiexec`` with ``argv`` (``argv[0]`` is the program name as typed)."""
        opts = _parse_msiexec(argv[1:])
        if opts is None or not opts.get("package"):
            proc.err(describe(ERROR_INVALID_COMMAND_LINE) + "\n")
            return ERROR_INVALID_COMMAND_LINE
        log = _MsiLog(self.host, opts.get("log"), proc.session.cwd)
        if not log.ok:
            return ERROR_INSTALL_LOG_FAILURE
        log.line(f"=== Verbose logging started: {datetime.now():%m/%d/%Y  %H:%M:%S}  Build type: SHIP UNICODE "
                 f"5.00.9600.00  Calling process: C:\\Windows\\System32\\msiexec.exe ===")
        shown = [re.sub(r"^([^=]*PASSWORD[^=]*=).*$", r"\1**********", a, flags=re.IGNORECASE) for a in argv[1:]]
        log.line(f"MSI (c) Command Line: {' '.join(shown)}")  # hidden properties stay hidden, as in Windows' log
        busy = self.host.faults.take("msi_busy_attempts")
        if busy or not self._mutex.acquire(blocking=False):
            log.line("MSI (c): Another installation is in progress (the _MSIExecute mutex is held).")
            return log.finish(ERROR_INSTALL_ALREADY_RUNNING, "emulated fault msi_busy_attempts" if busy
                              else "another msiexec transaction runs on this host")
        try:
            return self._msi_transaction(proc, opts, log)
        finally:
            self._mutex.release()

    def _msi_transaction(self, proc: Process, opts: dict, log: "_MsiLog") -> int:
        source = opts["package"]
        data, why = self._fetch_package(source, proc.session.cwd)
        if data is None:
            log.line(f"MSI (c): Note: 1: 1708 — could not open the package {source}: {why}")
            return log.finish(ERROR_INSTALL_PACKAGE_OPEN_FAILED, why)
        if not is_msi(data):
            log.line(f"MSI (c): {source} is not an OLE2 compound document (first bytes {data[:8].hex()})")
            return log.finish(ERROR_INSTALL_PACKAGE_INVALID, "not a Windows Installer package")
        package = identify(data, urllib.parse.urlparse(source).path if "://" in source else source)
        props = opts["properties"]
        for key, value in props.items():
            shown = "**********" if "PASSWORD" in key.upper() else value
            log.line(f"MSI (s): PROPERTY CHANGE: Adding {key} property. Its value is '{shown}'.")
        if opts["action"] == "uninstall":
            return self._msi_uninstall(package, log)
        if proc.sleep(0.05):  # an install takes a moment; it is the window in which a second msiexec meets 1618
            return log.finish(ERROR_INSTALL_FAILURE, "terminated")
        fault = int(self.host.faults.msi_exit_code or 0)
        if fault and fault not in (ERROR_SUCCESS_REBOOT_REQUIRED, ERROR_SUCCESS_REBOOT_INITIATED):
            # 1603 or any other failure code the spec names: the install fails with it and installs nothing
            log.line(f"MSI (s): Product: {package.product} -- Installation failed "
                     f"(emulated fault msi_exit_code={fault}).")
            return log.finish(fault, "emulated fault msi_exit_code")
        self._install(package, props, source)
        log.line(f"MSI (s): Product: {package.product} -- Installation completed successfully.")
        log.line(f"MSI (s): Windows Installer installed the product. Product Name: {package.product}. "
                 f"Product Version: {package.version}. Installation success or error status: 0.")
        code = fault if fault in (ERROR_SUCCESS_REBOOT_REQUIRED, ERROR_SUCCESS_REBOOT_INITIATED) else 0
        if code == ERROR_SUCCESS_REBOOT_INITIATED and opts["norestart"]:
            code = ERROR_SUCCESS_REBOOT_REQUIRED  # /norestart turns an initiated restart into "required"
        if code:
            self.host.update_state(lambda s: s.__setitem__("pending_reboot", True))
        if code == ERROR_SUCCESS_REBOOT_INITIATED:
            self.host.schedule_reboot(0)
        return log.finish(code, "")

    def _fetch_package(self, source: str, cwd: str) -> Tuple[Optional[bytes], str]:
        if re.match(r"^https?://", source, re.IGNORECASE):
            data, why = self.host.http_get(source)
            return data, (f"download failed: {why}" if data is None else "")
        if "://" in source:
            return None, f"unsupported URL scheme in {source}"
        try:
            return self.host.to_sandbox(source, cwd).read_bytes(), ""
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None, f"the file {source} does not exist"

    def _install(self, package: Package, props: dict, source: str) -> None:
        def record(state: dict) -> None:
            kept = {k: ("**********" if "PASSWORD" in k.upper() else v) for k, v in props.items()}  # no secrets at rest
            state["products"][package.product] = {"version": package.version, "properties": kept,
                                                  "source": source, "installed_at": now()}
            if package.is_puppet_agent:
                settings = puppet_settings_from_properties(package.version, props)
                settings.setdefault("certname", self.host.hostname.lower())
                settings.setdefault("environment", "production")
                state["puppet_settings"] = settings
                if PUPPET_BIN not in state["path"]:
                    state["path"].append(PUPPET_BIN)
                startup = (props.get("PUPPET_AGENT_STARTUP_MODE") or "Automatic").lower()
                state["services"]["puppet"] = {"display_name": "Puppet Agent", "installed_by": "msi",
                                               "state": "stopped" if startup == "disabled" else "running",
                                               "start_type": startup}

        self.host.update_state(record)
        if package.is_puppet_agent:
            bindir = self.host.to_sandbox(PUPPET_BIN)
            bindir.mkdir(parents=True, exist_ok=True)
            (bindir / "puppet.bat").write_text("@echo off\r\nrem emulated Puppet agent (deploy_tasks rehearsal)\r\n")
            write_windows_puppet_conf(self.host)

    def _msi_uninstall(self, package: Package, log: "_MsiLog") -> int:
        if package.product not in self.host.installed_products():
            log.line("MSI (c): This action is only valid for products that are currently installed.")
            return log.finish(1605, "product not installed")

        def remove(state: dict) -> None:
            state["products"].pop(package.product, None)
            if package.is_puppet_agent:
                state["services"].pop("puppet", None)
                if PUPPET_BIN in state["path"]:
                    state["path"].remove(PUPPET_BIN)

        self.host.update_state(remove)
        log.line(f"MSI (s): Product: {package.product} -- Removal completed successfully.")
        return log.finish(0, "")


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

    def __init__(self, host: Host, win_path: Optional[str], cwd: str):
        self.path: Optional[Path] = None
        self.ok = True
        if win_path:
            try:
                path = host.to_sandbox(win_path, cwd)
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
        meaning = describe(code) or ""
        if why:
            self.line(f"MSI (c): {why}")
        self.line(f"MSI (c): MainEngineThread is returning {code}: {meaning}")
        self.line(f"=== Verbose logging stopped: {datetime.now():%m/%d/%Y  %H:%M:%S} ===")
        return code
