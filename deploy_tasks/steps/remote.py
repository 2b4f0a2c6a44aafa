"""Remote helpers in patchwork's shape: context (a Shell) first; check, then act; say if it changed.

Every argument is quoted with ``shlex.quote``. A check that cannot run
(exit code other than 0/1, a broken connection) raises; it is never read as
"absent". In a dry run, checks still run and changes are only printed, so
the return value says what *would* change.
"""

from __future__ import annotations

import hashlib
import shlex
import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import RemoteCommandError

q = shlex.quote


# -- facts ----------------------------------------------------------------------
@dataclass(frozen=True)
class Platform:
    """What /etc/os-release and the running init say about a Linux host."""

    distro: str  # debian, ubuntu, centos, rhel, rocky, almalinux
    version: str  # VERSION_ID: "12", "7", "8.9"
    family: str  # debian or rhel
    init: str  # systemd, sysv (service/chkconfig) or none

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return 0

    @property
    def package_tool(self) -> str:
        if self.family == "debian":
            return "apt"
        return "dnf" if self.major >= 8 else "yum"


def parse_os_release(text: str) -> dict:
    values = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            try:
                parts = shlex.split(value)
            except ValueError:
                parts = [value.strip()]
            values[key.strip()] = parts[0] if parts else ""
    return values


FAMILIES = {"debian": "debian", "ubuntu": "debian", "centos": "rhel", "rhel": "rhel", "rocky": "rhel",
            "almalinux": "rhel", "ol": "rhel", "fedora": "rhel"}


# what platform() found, per transport: a fact is read once per connection, and the transport
# object itself stays free of attributes that steps set on it
_platforms: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def platform(shell) -> Platform:
    """Detect the distribution and init system (CentOS 6 has /etc/redhat-release but no os-release)."""
    cached = _platforms.get(shell)
    if cached is not None:
        return cached
    if shell.test("test -r /etc/os-release"):
        values = parse_os_release(shell.run("cat /etc/os-release").stdout)
        distro, version = values.get("ID", "").lower(), values.get("VERSION_ID", "")
    elif shell.test("test -r /etc/redhat-release"):
        text = shell.run("cat /etc/redhat-release").stdout
        import re

        m = re.search(r"release (\d+(?:\.\d+)?)", text)
        distro, version = "centos", (m.group(1) if m else "")
    else:
        raise RemoteCommandError(shell.name, "cat /etc/os-release", 1, "",
                                 "neither /etc/os-release nor /etc/redhat-release: not a supported Linux "
                                 "(Debian, Ubuntu, CentOS 6/7, RHEL/Rocky/Alma 8/9)")
    family = FAMILIES.get(distro)
    if family is None:
        raise RemoteCommandError(shell.name, "cat /etc/os-release", 1, f"ID={distro}",
                                 "unsupported distribution; supported: Debian, Ubuntu, CentOS 6/7, RHEL/Rocky/Alma 8/9")
    if shell.test("test -d /run/systemd/system"):
        init = "systemd"
    elif shell.test("test -x /sbin/chkconfig"):
        init = "sysv"
    else:
        init = "none"
    result = Platform(distro, version, family, init)
    _platforms[shell] = result
    return result


# -- files ----------------------------------------------------------------------
def exists(shell, path: str) -> bool:
    """Whether ``path`` exists on the host (a failing check raises)."""
    return shell.test(f"test -e {q(path)}")


def sha256(shell, path: str) -> Optional[str]:
    """The file's sha256, or None when it does not exist."""
    if not exists(shell, path):
        return None
    out = shell.run(f"sha256sum {q(path)}").stdout.split()
    return out[0] if out else None


def directory(shell, path: str, owner: str = "", group: str = "", mode: str = "") -> bool:
    """Ensure a directory (with owner/group/mode when given). Returns whether it changed."""
    changed = False
    if not shell.test(f"test -d {q(path)}"):
        if exists(shell, path):
            raise RemoteCommandError(shell.name, f"test -d {q(path)}", 1, "",
                                     f"{path} exists and is not a directory: move it away")
        shell.change(f"mkdir -p {q(path)}")
        changed = True
    want = []
    current = shell.run(f"stat -L -c '%U %G %a' {q(path)}").stdout.split() if not (changed and shell.dry_run) else []
    if owner and (not current or current[0] != owner):
        want.append(f"chown {q(owner)} {q(path)}")
    if group and (not current or current[1] != group):
        want.append(f"chgrp {q(group)} {q(path)}")
    if mode and (not current or current[2] != mode.lstrip("0")):
        want.append(f"chmod {q(mode)} {q(path)}")
    for command in want:
        shell.change(command)
    return changed or bool(want)


def upload(shell, data: bytes, path: str, mode: str = "0644", owner: str = "", group: str = "") -> bool:
    """Place ``data`` at ``path`` atomically (temp file + rename) unless the sha256 already matches."""
    want = hashlib.sha256(data).hexdigest()
    if sha256(shell, path) == want:
        return _attributes(shell, path, mode, owner, group)
    tmp = f"{path}.deploy_tasks-tmp"
    shell.put_bytes(data, tmp)
    return _move_into_place(shell, tmp, path, mode, owner, group)


def upload_file(shell, local_path: str, path: str, mode: str = "0644", owner: str = "", group: str = "") -> bool:
    """``upload`` for a file on the controller, streamed instead of read into memory (large files: an MSI)."""
    digest = hashlib.sha256()
    with open(local_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if sha256(shell, path) == digest.hexdigest():
        return _attributes(shell, path, mode, owner, group)
    tmp = f"{path}.deploy_tasks-tmp"
    shell.put_file(local_path, tmp)
    return _move_into_place(shell, tmp, path, mode, owner, group)


def _move_into_place(shell, tmp: str, path: str, mode: str, owner: str, group: str) -> bool:
    """The uploaded ``tmp`` gets its mode and owner, then replaces ``path`` in one rename."""
    shell.change(f"chmod {q(mode)} {q(tmp)}")
    if owner or group:
        shell.change(f"chown {q(owner)}{':' + q(group) if group else ''} {q(tmp)}")
    shell.change(f"mv -f {q(tmp)} {q(path)}")
    return True


def _attributes(shell, path, mode, owner, group) -> bool:
    current = shell.run(f"stat -L -c '%U %G %a' {q(path)}").stdout.split()
    changed = False
    if mode and current[2] != mode.lstrip("0"):
        shell.change(f"chmod {q(mode)} {q(path)}")
        changed = True
    if owner and current[0] != owner:
        shell.change(f"chown {q(owner)} {q(path)}")
        changed = True
    if group and current[1] != group:
        shell.change(f"chgrp {q(group)} {q(path)}")
        changed = True
    return changed


def contains_line(shell, path: str, line: str) -> bool:
    return shell.test(f"grep -qxF -- {q(line)} {q(path)}")


def ensure_line(shell, path: str, line: str) -> bool:
    """Append ``line`` to ``path`` unless a line equal to it is already there (any quoting is safe)."""
    if exists(shell, path) and contains_line(shell, path, line):
        return False
    shell.change(f"printf '%s\\n' {q(line)} >> {q(path)}")
    return True


def read(shell, path: str) -> Optional[str]:
    """The file's text, or None when it does not exist."""
    if not exists(shell, path):
        return None
    return shell.run(f"cat {q(path)}").stdout


# -- packages -------------------------------------------------------------------
def package_installed(shell, name: str) -> bool:
    plat = platform(shell)
    if plat.family == "debian":
        result = shell.run(f"dpkg-query -W -f='${{Status}}' {q(name)}", check=False)
        if result.exited not in (0, 1):
            raise RemoteCommandError(shell.name, result.command, result.exited, result.output)
        return "install ok installed" in result.stdout
    return shell.test(f"rpm -q {q(name)} >/dev/null 2>&1")


def packages(shell, names: Sequence[str]) -> bool:
    """Ensure the distribution packages ``names`` are installed (apt, yum or dnf)."""
    missing = [n for n in names if not package_installed(shell, n)]
    if not missing:
        return False
    plat = platform(shell)
    args = " ".join(q(n) for n in missing)
    hint = (f"could not install {', '.join(missing)} on {shell.name}: check the package name, the host's "
            f"package sources and its network, then re-run")
    if plat.family == "debian":
        # a host whose package lists were never downloaded knows no package at all
        if not shell.test("ls /var/lib/apt/lists/ | grep -q _Packages"):
            shell.change("apt-get update -q", hint=hint)
        shell.change(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {args}", hint=hint)
    else:
        shell.change(f"{plat.package_tool} -y install {args}", hint=hint)
    return True


# -- services -------------------------------------------------------------------
def service_running(shell, name: str, pidfile: str = "") -> bool:
    plat = platform(shell)
    if plat.init == "systemd":
        return shell.run(f"systemctl is-active --quiet {q(name)}", check=False).exited == 0
    if plat.init == "sysv":
        return shell.run(f"service {q(name)} status >/dev/null 2>&1", check=False).exited == 0
    if not pidfile:
        raise RemoteCommandError(shell.name, f"status of {name}", 1, "",
                                 "no systemd or SysV init on this host and no pid file known for this service")
    return pid_alive(shell, pidfile)


def pid_alive(shell, pidfile: str) -> bool:
    return shell.test(f"test -s {q(pidfile)} && kill -0 \"$(cat {q(pidfile)})\" 2>/dev/null")


def service(shell, name: str, *, start: str = "", reload: str = "", pidfile: str = "",
            reload_needed: bool = False) -> bool:
    """Ensure a service is running (and enabled at boot); reload it when ``reload_needed``.

    ``start``/``reload``/``pidfile`` are used on hosts with neither systemd nor
    SysV init (containers), where the service is started directly.
    """
    plat = platform(shell)
    changed = False
    if plat.init == "systemd":
        if not shell.test(f"systemctl is-enabled --quiet {q(name)}"):
            shell.change(f"systemctl enable {q(name)}")
            changed = True
    elif plat.init == "sysv":
        if not shell.test(f"chkconfig {q(name)}"):
            shell.change(f"chkconfig {q(name)} on")
            changed = True
    running = service_running(shell, name, pidfile)
    if not running:
        if plat.init == "systemd":
            shell.change(f"systemctl start {q(name)}")
        elif plat.init == "sysv":
            shell.change(f"service {q(name)} start")
        else:
            shell.change(start)
        return True
    if reload_needed:
        if plat.init == "systemd":
            shell.change(f"systemctl reload {q(name)}")
        elif plat.init == "sysv":
            shell.change(f"service {q(name)} reload")
        else:
            shell.change(reload)
        changed = True
    return changed
