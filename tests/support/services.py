"""Start the real components the integration tests talk to, on loopback.

Each ``ensure_*`` reuses a component that is already up (started by .ci/run,
an earlier test session or a developer) and otherwise starts it. A component
that is not installed raises ``Missing`` with a reason, which fixtures turn
into a skip; .ci/run installs everything, so in CI nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SSHD_PORT = 2222
SSHD_DIR = Path(os.environ.get("DEPLOY_TEST_SSHD_DIR", "/tmp/deploy_tasks-sshd"))
PUPPETSERVER_PORT = 8140


class Missing(RuntimeError):
    """A component the test needs is not installed here."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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


def ensure_sshd() -> Sshd:
    """A real OpenSSH server on 127.0.0.1:2222 accepting a generated key for root."""
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if not sshd or not shutil.which("ssh-keygen"):
        raise Missing("openssh-server is not installed (apt-get install openssh-server)")
    SSHD_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    host_key = SSHD_DIR / "ssh_host_ed25519_key"
    client_key = SSHD_DIR / "id_ed25519"
    for key in (host_key, client_key):
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = SSHD_DIR / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    known_hosts = SSHD_DIR / "known_hosts"
    pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{SSHD_PORT} {pub[0]} {pub[1]}\n")
    config = SSHD_DIR / "sshd_config"
    config.write_text(
        f"Port {SSHD_PORT}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"PidFile {SSHD_DIR / 'sshd.pid'}\nStrictModes no\nMaxStartups 100:30:200\nMaxSessions 100\n"
        "Subsystem sftp internal-sftp\nLogLevel INFO\n"
    )
    ssh_config = SSHD_DIR / "ssh_config"
    ssh_config.write_text(
        f"Host 127.0.0.1 deploy01 deploy01.example.test\n  HostName 127.0.0.1\n  Port {SSHD_PORT}\n  User root\n"
        f"  IdentityFile {client_key}\n  UserKnownHostsFile {known_hosts}\n  StrictHostKeyChecking yes\n"
    )
    started = False
    if not port_open("127.0.0.1", SSHD_PORT):
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        subprocess.run([sshd, "-f", str(config), "-E", str(SSHD_DIR / "sshd.log")], check=True)
        wait_for(lambda: port_open("127.0.0.1", SSHD_PORT), 10, what=f"sshd on 127.0.0.1:{SSHD_PORT}")
        started = True
    return Sshd("127.0.0.1", SSHD_PORT, "root", str(client_key), str(known_hosts), str(ssh_config), started)


def stop_sshd() -> None:
    pidfile = SSHD_DIR / "sshd.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), 15)
        except (ValueError, ProcessLookupError):
            pass


def puppetserver_status(port: int = PUPPETSERVER_PORT) -> str:
    """What /status/v1/simple answers ('running', 'starting', ...) or '' when nothing answers."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/status/v1/simple", context=ctx, timeout=3) as resp:
            return resp.read().decode().strip()
    except Exception:
        return ""


# -- puppetserver -------------------------------------------------------------
# The test master's certname matches the example inventory's puppet-master
# (deploy01 + domain example.test), so `inv bootstrap` on the same machine
# finds the configuration it would write and the server keeps its identity.
MASTER_CERTNAME = "deploy01.example.test"
PUPPET_CONFDIR = Path("/etc/puppet")
PUPPETSERVER_LOG = Path("/var/log/puppetserver/puppetserver-daemon.log")


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
    if puppetserver_status() == "running":
        return info
    from deploy_tasks.inventory.model import Server
    from deploy_tasks.settings import resolve
    from deploy_tasks.steps import StepResult, puppet_master
    from deploy_tasks.transports.ssh import Shell

    master = Server(MASTER_CERTNAME.split(".")[0], "local", "linux", ("puppet-master", "package-server"))
    settings = resolve({"domain": MASTER_CERTNAME.split(".", 1)[1], "puppetserver_start_timeout_s": int(timeout)})
    result = puppet_master.run(Shell(master.hostname, "local"), master, settings,
                               StepResult(master.hostname, "puppet-master"))
    info["started"] = result.changed
    return info


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
