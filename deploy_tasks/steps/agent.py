"""The Puppet agent step on one Windows node: installed, certificate signed after a fingerprint match, catalog retrieved.

Check first, then only what is missing (DESIGN.md, "Windows nodes: the command contract"):

1. ``puppet --version`` and ``puppet config print server certname environment``:
   not installed or another version -> ``msiexec /qn /norestart /i <package
   server URL> PUPPET_SERVER=... PUPPET_AGENT_CERTNAME=...
   PUPPET_AGENT_ENVIRONMENT=... /l*v <log>`` (``PUPPET_MASTER_SERVER`` for
   agents before 7). 1618 (another install runs) raises ``MsiBusy``, which the
   runner retries with backoff; 3010/1641 succeed with a reboot pending
   (``reboot=True`` reboots and waits for a new boot time); anything else fails
   the host with the error lines of the MSI log. Installed with other settings
   -> ``puppet config set``.
2. The node's fingerprint (``puppet agent --fingerprint``); no key yet -> a CSR
   (``puppet agent --test --noop --waitforcert 0``: ``--noop`` so that a
   certificate signed meanwhile never applies a catalog from this step).
3. The master's view of the name (the CA's certificate status, batched: see
   ``puppet_ca``): a request whose fingerprint equals the node's is signed in
   the same turn of the CA; any other request signs nothing and fails the host
   with both fingerprints; a signed certificate for another key (a re-imaged
   node) fails with what to do, or with ``reissue=True`` is cleaned on the
   master (revoked and deleted, as ``puppetserver ca clean`` does), the node's
   SSL files removed (``puppet ssl clean``) and the handshake repeated.
4. Confirm: ``puppet agent --test --noop`` retrieves a catalog.

``autosign = true`` is never written; the CA is reached only through
``CertificateAuthority`` (one CA operation at a time, several names per operation).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..errors import DeployError, TransportError
from ..transports.wincmd import cmd_line
from . import StepResult
from .puppet_ca import CaEntry, CaError, CertificateAuthority  # noqa: F401 - the CA, as callers know it

STEP = "puppet-agent"
MSI_LOG = r"C:\Windows\Temp\deploy_tasks-puppet-agent-install.log"
_FINGERPRINT = re.compile(r"\b([0-9A-F]{2}(?::[0-9A-F]{2}){19,63})\b")
_CSR_FINGERPRINT = re.compile(r"Certificate Request fingerprint \(SHA256\): ([0-9A-F:]+)")
_KEY_MISMATCH = "does not match its private key"
# what the agent prints when it never reached the CA (name unresolved, port closed, TLS refused)
_CA_UNREACHABLE = ("No more routes to ca",)  # a node holding a stale certificate fails TLS instead: not this
_MSI_ERROR_LINE = re.compile(r"(?i)(error|fail|returning [1-9]|note: 1: |return value 3)")
MSI_OK, MSI_REBOOT_REQUIRED, MSI_REBOOT_INITIATED, MSI_BUSY = 0, 3010, 1641, 1618
MSI_MEANING = {1603: "fatal error during installation", 1619: "the package could not be opened (download failed?)",
               1620: "not a valid Windows Installer package", 1622: "cannot write the log file",
               1625: "installation forbidden by system policy", 1638: "another version of the product is installed",
               1639: "invalid command line"}


class AgentError(DeployError):
    """The agent step failed on a host for a reason the message names."""


class MsiBusy(AgentError):
    """msiexec answered 1618: another installation runs on the host; trying again later helps."""

    retryable = True


class FingerprintMismatch(AgentError):
    """The CSR the master holds is not the node's: nothing is signed."""


class Reimaged(AgentError):
    """The master holds a signed certificate for the name, for a key the node no longer has."""


@dataclass(frozen=True)
class AgentSpec:
    """What every node's agent must be: one package, one master, one environment."""

    msi_url: str
    version: str
    server: str  # the master's name, as PUPPET_SERVER
    environment: str

    @property
    def server_property(self) -> str:
        """``PUPPET_SERVER`` from agent 7 on, ``PUPPET_MASTER_SERVER`` before (the MSI's property name changed)."""
        try:
            major = int(self.version.split(".")[0])
        except ValueError:
            major = 7
        return "PUPPET_SERVER" if major >= 7 else "PUPPET_MASTER_SERVER"

    def install_argv(self, certname: str) -> List[str]:
        return ["msiexec", "/qn", "/norestart", "/i", self.msi_url, f"{self.server_property}={self.server}",
                f"PUPPET_AGENT_CERTNAME={certname}", f"PUPPET_AGENT_ENVIRONMENT={self.environment}",
                "/l*v", MSI_LOG]


@dataclass(frozen=True)
class Options:
    reboot: bool = False
    reissue: bool = False
    reboot_timeout_s: float = 900.0
    poll_s: float = 1.0


# -- one node --------------------------------------------------------------------------------


def _puppet(*args: str) -> str:
    # puppet is puppet.bat on Windows: a batch file runs through cmd.exe, so it is quoted for cmd
    return cmd_line(["puppet", *args])


class AgentStep:
    """The agent on one node, over ``transport``; ``connect()`` makes a fresh transport (after a reboot)."""

    def __init__(self, transport, host: str, certname: str, spec: AgentSpec, ca: CertificateAuthority,
                 options: Options = Options(), connect: Optional[Callable[[], object]] = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.t = transport
        self.host = host
        self.certname = certname
        self.spec = spec
        self.ca = ca
        self.options = options
        self.connect = connect
        self.sleep = sleep
        self.result = StepResult(host, STEP)
        self.fresh = False  # the agent was not installed at all before this run: no key to ask about yet

    @property
    def dry_run(self) -> bool:
        return bool(self.t.dry_run)

    def run(self) -> StepResult:
        if not self.ensure_installed():
            return self.result  # a dry run: nothing further can be read from a node without the agent
        if not self.handshake():
            return self.result
        self.confirm()
        return self.result

    # 1. the package
    def read_node(self) -> Optional[Dict[str, str]]:
        got = self.t.run(_puppet("--version") + " & " + _puppet("config", "print", "server", "certname",
                                                                  "environment"), check=False)
        lines = [l.strip() for l in got.stdout.splitlines() if l.strip()]
        if got.exited == 9009 or not lines or not re.match(r"^\d+\.\d+", lines[0]):
            return None
        node = {"version": lines[0]}
        node.update(dict(l.split(" = ", 1) for l in lines[1:] if " = " in l))
        return node

    def ensure_installed(self) -> bool:
        node = self.read_node()
        want = {"server": self.spec.server, "certname": self.certname, "environment": self.spec.environment}
        if node is not None and node.get("version") == self.spec.version:
            for key, value in want.items():
                if node.get(key, "") != value:
                    self.t.change(_puppet("config", "set", key, value, "--section", "main"))
                    self.result.note(True, f"set the agent's {key} to {value} (was {node.get(key) or 'unset'})")
            return True
        was = f" (had {node['version']})" if node else ""
        code = self.t.change_argv(self.spec.install_argv(self.certname), check=False).exited
        if self.dry_run:
            self.result.note(True, f"would install Puppet agent {self.spec.version} from {self.spec.msi_url}{was}")
            return False
        if code == MSI_BUSY:
            raise MsiBusy(f"{self.host}: msiexec exit 1618: another installation is in progress on the host "
                          "(retried with backoff)")
        if code not in (MSI_OK, MSI_REBOOT_REQUIRED, MSI_REBOOT_INITIATED):
            raise AgentError(f"{self.host}: installing Puppet agent {self.spec.version} failed: msiexec exit {code}"
                             f" ({MSI_MEANING.get(code, 'see the log')}); from {MSI_LOG}:\n"
                             + "\n".join("  " + l for l in self.msi_log_errors()))
        self.fresh = node is None
        self.result.note(True, f"installed Puppet agent {self.spec.version}{was} (msiexec exit {code})")
        if code == MSI_REBOOT_INITIATED or (code == MSI_REBOOT_REQUIRED and self.options.reboot):
            self.reboot(initiated=code == MSI_REBOOT_INITIATED)
        elif code == MSI_REBOOT_REQUIRED:
            self.result.details.append("reboot pending (msiexec 3010): run again with --reboot, or reboot the host")
        return True

    def msi_log_errors(self, limit: int = 12) -> List[str]:
        got = self.t.run(cmd_line(["type", MSI_LOG]), check=False)
        if got.exited != 0:
            return [f"(the log could not be read: {got.output[:200] or 'exit %d' % got.exited})"]
        lines = [l.rstrip() for l in got.stdout.replace("\x00", "").splitlines() if _MSI_ERROR_LINE.search(l)]
        return lines[-limit:] or ["(no error lines in the log)"]

    def boot_time(self, transport=None) -> str:
        got = (transport or self.t).run("wmic os get LastBootUpTime /value")
        m = re.search(r"LastBootUpTime=(\S+)", got.stdout)
        if not m:
            raise AgentError(f"{self.host}: cannot read the boot time from wmic: {got.output[:200]}")
        return m.group(1)

    def reboot(self, initiated: bool) -> None:
        """Reboot (unless the installer already does) and wait until WinRM answers with a new boot time."""
        if self.connect is None:
            raise AgentError(f"{self.host}: a reboot is needed but this run cannot reconnect")
        before = self.boot_time()
        if not initiated:
            self.t.change("shutdown /r /t 0")
        self.t.close()
        deadline = time.monotonic() + self.options.reboot_timeout_s
        last = ""
        while time.monotonic() < deadline:
            self.sleep(self.options.poll_s)
            fresh = self.connect()
            try:
                now = self.boot_time(fresh)
            except TransportError as exc:
                last = str(exc)
                fresh.close()
                continue
            if now != before:
                self.t = fresh
                self.result.note(True, f"rebooted (boot time {before} -> {now})")
                return
            fresh.close()
        raise AgentError(f"{self.host}: did not come back with a new boot time within "
                         f"{self.options.reboot_timeout_s:.0f} s after the reboot" + (f" (last: {last})" if last else ""))

    # 2.-4. the certificate
    def node_fingerprint(self) -> Optional[str]:
        got = self.t.run(_puppet("agent", "--fingerprint"), check=False)
        m = _FINGERPRINT.search(got.stdout)
        return m.group(1) if got.exited == 0 and m else None

    def submit_csr(self) -> Optional[str]:
        got = self.t.change(_puppet("agent", "--test", "--noop", "--waitforcert", "0"), check=False)
        if self.dry_run:
            self.result.note(True, f"would submit a certificate request for {self.certname}")
            return None
        if _KEY_MISMATCH in got.output:
            return self._reimaged(CaEntry("signed"), None)
        if got.exited != 0 and any(text in got.output for text in _CA_UNREACHABLE):
            raise AgentError(f"{self.host}: the node could not reach the master's CA at {self.spec.server}:8140, so "
                             f"no certificate request was submitted: check that the node resolves "
                             f"{self.spec.server} (DNS, hosts file) and reaches port 8140:\n" + _tail(got.output))
        self.result.note(True, f"submitted a certificate request for {self.certname}")
        m = _CSR_FINGERPRINT.search(got.output)
        fp = m.group(1) if m else self.node_fingerprint()
        if fp is None:
            raise AgentError(f"{self.host}: the agent made no certificate request (exit {got.exited}):\n"
                             + _tail(got.output))
        return fp

    def handshake(self) -> bool:
        # a fresh install has no key: skip asking (one Ruby start, seconds on Windows); SSL files an earlier
        # install left behind are still found, by the CSR run itself
        fp = None if self.fresh else self.node_fingerprint()
        if fp is None:
            fp = self.submit_csr()
            if fp is None:
                return False
        entry, signed = self.ca.sign_if_matching(self.certname, fp)
        if entry.state == "missing":  # the master lost the request (cleaned): the node sends it again
            fp = self.submit_csr()
            entry, signed = self.ca.sign_if_matching(self.certname, fp)
        if entry.state == "requested":
            if not signed:
                raise FingerprintMismatch(
                    f"{self.host}: fingerprint mismatch for {self.certname}: the node's request is {fp}, the "
                    f"master holds a request with {entry.fingerprint}; nothing was signed. Someone else asked "
                    f"for this name: check it, then clean it on the master (puppetserver ca clean --certname "
                    f"{self.certname}) and run again")
            self.result.note(True, f"signed {self.certname} on the master (fingerprint {fp} matched)")
        elif entry.state == "revoked":
            return self._reimaged(entry, fp) is not None
        elif entry.state == "missing":
            # the node keeps a certificate (or request) the master does not know: its CA was rebuilt, the name
            # cleaned there, or the node asked another master
            return self._reimaged(entry, fp) is not None
        return True

    def confirm(self) -> None:
        got = self.t.run(_puppet("agent", "--test", "--noop"), check=False, timeout=None)
        if _KEY_MISMATCH in got.output:
            if self._reimaged(CaEntry("signed"), None) is not None:
                self.confirm()
            return
        if got.exited not in (0, 2) or "Could not retrieve catalog" in got.output:
            raise AgentError(f"{self.host}: the agent run (--noop) retrieved no catalog (exit {got.exited}):\n"
                             + _tail(got.output))
        self.result.details.append(f"catalog retrieved ({self.certname}, environment {self.spec.environment})")

    def _reimaged(self, entry: CaEntry, fp: Optional[str]):
        if entry.state == "missing" and not self.options.reissue:
            raise Reimaged(
                f"{self.host}: the node holds a certificate for {self.certname} ({fp}) that the master "
                f"({self.spec.server}) does not list: its CA was rebuilt or the name was cleaned there, or the node "
                "was set up against another master. If this master is the right one, run again with --reissue "
                "(removes the node's SSL files and requests a new certificate)")
        what = "revoked" if entry.state == "revoked" else "signed"
        if not self.options.reissue:
            raise Reimaged(
                f"{self.host}: the master holds a {what} certificate for {self.certname}"
                + (f" ({entry.fingerprint})" if entry.fingerprint else "")
                + " but the node has a different key: it was re-imaged or its SSL files were reset. If this is "
                f"the same server, run again with --reissue (cleans {self.certname} on the master and the "
                f"node's SSL files, then repeats the handshake); otherwise find who holds that name")
        if entry.state != "missing":
            self.ca.clean(self.certname)
        self.t.change(_puppet("ssl", "clean"), check=False)
        self.result.note(True, "reissued: cleaned the node's SSL files" + (
            f" and {self.certname} on the master" if entry.state != "missing" else ""))
        fp = self.submit_csr()
        if fp is None:  # a dry run
            return None
        entry, signed = self.ca.sign_if_matching(self.certname, fp)
        if not signed:
            raise FingerprintMismatch(f"{self.host}: after --reissue the master holds "
                                      f"{entry.state} {entry.fingerprint or ''} for {self.certname}, the node's "
                                      f"request is {fp}; nothing was signed")
        self.result.note(True, f"signed {self.certname} on the master (fingerprint {fp} matched)")
        return fp


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join("  " + l for l in text.strip().splitlines()[-lines:])
