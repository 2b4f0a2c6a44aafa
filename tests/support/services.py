"""Start the real components the integration tests talk to, on loopback.

Each ``ensure_*`` reuses a component that is already up and otherwise starts
it. A component that is not installed raises ``Missing`` with a reason, which
fixtures turn into a skip; .ci/run installs everything, so in CI nothing is
skipped. What the tests start is recorded in the process ledger (pid, start
time, command line; deploy_tasks/processes.py) and stopped by that record only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from deploy_tasks import processes
from deploy_tasks.steps import puppet_master

ROOT = Path(__file__).resolve().parents[2]
SSHD_PORT = 2222  # taken when free; when something else holds it, ours goes on a free port
PUPPETSERVER_PORT = puppet_master.PORT
NGINX_PIDFILE = "/run/nginx.pid"
#: names what this test run creates on shared services (Puppet environments), so that it removes only those
RUN_ID = uuid.uuid4().hex[:8]
#: where the tests record what they start (.ci/run points it elsewhere and stops what it lists)
DEFAULT_LEDGER = ROOT / "build" / "test-processes"


class Missing(RuntimeError):
    """A component the test needs is not installed here."""


def ledger() -> Path:
    return processes.ledger_dir(DEFAULT_LEDGER)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass(frozen=True)
class Sshd:
    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str
    ssh_config: str  # an ssh_config file with a Host entry per test alias
    started: bool
    record: Optional[processes.ProcessRecord] = None
    directory: str = ""


def _private_base() -> Path:
    """A directory only we can write, under the user's real home, whose every parent sshd's StrictModes accepts.

    Not /tmp: sshd refuses an authorized_keys file below a world-writable directory.
    """
    me = os.geteuid()
    home = Path(pwd.getpwuid(me).pw_dir)
    base = home / ".cache" / "deploy_tasks-test"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for d in [base, *base.parents]:
        st = d.lstat()
        if stat.S_ISLNK(st.st_mode) or (st.st_uid not in (0, me)) or st.st_mode & 0o022:
            raise RuntimeError(f"{d} is writable by others or not owned by root/us: the test sshd will not keep "
                               "root's authorized_keys below it")
        if d == home:
            break
    return base


def _check_private(d: Path) -> None:
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
        raise RuntimeError(f"{d} is not a private directory of ours (mode 0700, owner uid {os.geteuid()})")


def _sshd_files(d: Path, port: int) -> Sshd:
    client_key = d / "id_ed25519"
    return Sshd("127.0.0.1", port, "root", str(client_key), str(d / "known_hosts"), str(d / "ssh_config"),
                started=False, directory=str(d))


def _recorded_sshd() -> Optional[processes.ProcessRecord]:
    """Our sshd from an earlier session, when that very process still runs with its private directory."""
    for path, record in processes.recorded(ledger()):
        if record.name != "sshd":
            continue
        if not record.alive():
            path.unlink(missing_ok=True)
            continue
        try:
            _check_private(Path(record.extra["dir"]))
        except (RuntimeError, OSError, KeyError):
            continue
        return record
    return None


def ensure_sshd() -> Sshd:
    """A real OpenSSH server on 127.0.0.1 (2222 when free) accepting a generated key for root.

    Its keys, config and root's authorized_keys live in a fresh private directory
    (mkdtemp, 0700, owner checked) and it runs with StrictModes yes. It is
    recorded in the ledger (pid, start time, command line) and stopped by that
    record only.
    """
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if not sshd or not shutil.which("ssh-keygen"):
        raise Missing("openssh-server is not installed (apt-get install openssh-server)")
    if os.geteuid() != 0:
        raise Missing("the test sshd lets root log in: run the integration tests as root")
    record = _recorded_sshd()
    if record is not None:
        return replace(_sshd_files(Path(record.extra["dir"]), int(record.extra["port"])), record=record)
    d = Path(tempfile.mkdtemp(prefix="sshd-", dir=_private_base()))
    _check_private(d)
    host_key = d / "ssh_host_ed25519_key"
    client_key = d / "id_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = d / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    last_error = ""
    for port in ([SSHD_PORT] if not port_open("127.0.0.1", SSHD_PORT) else []) + [free_port(), free_port()]:
        record, last_error = _start_sshd(sshd, d, port)
        if record is not None:
            processes.register(record, ledger())
            return replace(_sshd_files(d, port), started=True, record=record)
    shutil.rmtree(d, ignore_errors=True)
    raise RuntimeError(f"the test sshd did not start: {last_error}")


def _start_sshd(sshd: str, d: Path, port: int):
    """Start sshd on ``port``; (record, "") when it runs and listens, else (None, why)."""
    host_key = d / "ssh_host_ed25519_key"
    known_hosts = d / "known_hosts"
    pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    config = d / "sshd_config"
    pidfile = d / "sshd.pid"
    pidfile.unlink(missing_ok=True)
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"PidFile {pidfile}\nStrictModes yes\nMaxStartups 100:30:200\nMaxSessions 100\n"
        "Subsystem sftp internal-sftp\nLogLevel INFO\n"
    )
    (d / "ssh_config").write_text(
        f"Host 127.0.0.1 deploy01 deploy01.example.test\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
        f"  IdentityFile {d / 'id_ed25519'}\n  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    log = d / "sshd.log"
    proc = subprocess.run([sshd, "-f", str(config), "-E", str(log)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None, (proc.stderr or proc.stdout).strip()
    try:
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), 10, 0.05, "sshd's pid file")
    except TimeoutError:
        return None, _tail(log, 5)
    record = processes.ProcessRecord.of(int(pidfile.read_text()), name="sshd", marker=str(config),
                                        dir=str(d), port=port)
    try:
        # listening on the port, and the process we started is still the one running
        wait_for(lambda: port_open("127.0.0.1", port) or not record.alive(), 10, 0.05, f"sshd on 127.0.0.1:{port}")
    except TimeoutError:
        pass
    if record.alive() and port_open("127.0.0.1", port):
        return record, ""
    record.stop()
    return None, _tail(log, 5)


def stop_sshd(server: Sshd) -> None:
    """Stop the sshd this session started (by its record) and remove its private directory."""
    if server.record is not None:
        server.record.stop()
        processes.unregister(server.record, ledger())
    if server.directory:
        shutil.rmtree(server.directory, ignore_errors=True)


# -- puppetserver -------------------------------------------------------------
# The test master's certname matches the example inventory's puppet-master
# (deploy01 + domain example.test), so `inv bootstrap` on the same machine
# finds the configuration it would write and the server keeps its identity.
MASTER_CERTNAME = "deploy01.example.test"
PUPPET_CONFDIR = Path("/etc/puppet")
PUPPETSERVER_LOG = Path("/var/log/puppetserver/puppetserver-daemon.log")


def puppetserver_record() -> Optional[processes.ProcessRecord]:
    """The running puppetserver JVM this machine's own start put in /run/puppetserver, if any."""
    proc = subprocess.run(["sh", "-c", puppet_master.jvm_pid_command(puppet_master.DEBIAN)], capture_output=True,
                          text=True)
    pid = proc.stdout.strip()
    if proc.returncode != 0 or not pid.isdigit():
        return None
    return processes.ProcessRecord.of(int(pid), name="puppetserver", marker=puppet_master.DEBIAN.jar)


def nginx_record() -> Optional[processes.ProcessRecord]:
    """The nginx master named by /run/nginx.pid, if it runs."""
    try:
        pid = int(Path(NGINX_PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return None
    record = processes.ProcessRecord.of(pid, name="nginx", marker="nginx: master")
    return record if record.alive() else None


def services_now() -> dict:
    """The long-running services a test (through `inv bootstrap`) may start on this machine: name -> record."""
    return {"puppetserver": puppetserver_record(), "nginx": nginx_record()}


def record_started_since(before: dict) -> list:
    """Put in the ledger each service that runs now and did not run (as the same process) in ``before``."""
    started = []
    for name, record in services_now().items():
        if record is not None and record != before.get(name):
            processes.register(record, ledger())
            started.append(record)
    return started


def ensure_puppetserver(timeout: float = 240.0) -> dict:
    """A real puppetserver (Debian 7.9.5) answering on 127.0.0.1:8140; reused when already up.

    Not running: the product's own Puppet master step (deploy_tasks.steps.puppet_master,
    what `inv bootstrap --only puppet-master` runs for the example's master deploy01 +
    example.test, through invoke's local Context) configures and starts it: TLS 1.2 only
    (TLS 1.3 keep-alive stalls 30 s on this version), autosign off, started as the
    Debian systemd unit would (systemd does not run here). Returns paths the tests need.
    """
    if not Path("/usr/share/puppetserver/puppetserver.jar").exists() or not shutil.which("java"):
        raise Missing("puppetserver is not installed (apt-get install puppetserver)")
    info = {
        "url": f"https://127.0.0.1:{PUPPETSERVER_PORT}",
        "certname": MASTER_CERTNAME,
        "codedir": "/etc/puppet/code",
        "environmentpath": "/etc/puppet/code/environments",
        "ssldir": "/var/lib/puppet/ssl",
        "cacert": "/var/lib/puppet/ssl/certs/ca.pem",
        "started": False,
    }
    if puppet_master.status("127.0.0.1", PUPPETSERVER_PORT) == "running":
        return info
    before = puppetserver_record()
    from deploy_tasks.inventory.model import Server
    from deploy_tasks.settings import resolve
    from deploy_tasks.steps import StepResult
    from deploy_tasks.transports.ssh import Shell

    master = Server(MASTER_CERTNAME.split(".")[0], "local", "linux", ("puppet-master", "package-server"))
    settings = resolve({"domain": MASTER_CERTNAME.split(".", 1)[1], "puppetserver_start_timeout_s": int(timeout)})
    result = puppet_master.run(Shell(master.hostname, "local"), master, settings,
                               StepResult(master.hostname, "puppet-master"))
    info["started"] = result.changed
    now = puppetserver_record()
    if now is not None and now != before:  # ours: recorded, so that CI stops it and nothing else
        processes.register(now, ledger())
    return info


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
