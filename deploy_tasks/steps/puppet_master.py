"""The Puppet master step: puppetserver installed, configured, running and answering.

Configuration: ``puppet.conf`` from a template (certname, dns_alt_names with
the master's host name and address, autosign never ``true``,
environmentpath), ``ssl-protocols: [TLSv1.2]`` in webserver.conf (Debian's
7.9.5 stalls 30 s on TLS 1.3 keep-alive), the heap from the
``puppetserver_heap`` setting. The server is restarted only when what it runs
with differs from that, never stopped for good (a start that fails puts the
previous files back and starts again), and the CA is never touched.

Hosts with systemd or SysV init use them. Hosts with neither (containers,
this project's CI) get the project's own start, the way Debian's systemd
unit starts it: ``runuser -u puppet -- java ... -jar puppetserver.jar``, pid
in /run/puppetserver/puppetserver.pid. ``start_command`` is the one place
that command line is written. That pid is runuser's, which waits for its
child; whether the server runs is asked of the JVM itself (``jvm_pid_command``),
never of the pid alone, which may have been reused by now.
"""

from __future__ import annotations

import configparser
import re
import shlex
import ssl
import time
import urllib.request
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError, RemoteCommandError
from ..settings import HEAP_SIZE
from . import StepResult, remote, templates

q = shlex.quote

RUN_DIR = "/run/puppetserver"
PIDFILE = f"{RUN_DIR}/puppetserver.pid"
RESTART_FILE = f"{RUN_DIR}/restart"
PORT = 8140
PREVIOUS = ".deploy_tasks-previous"
# Puppet's own defaults: a setting absent from puppet.conf has this value
PUPPET_DEFAULTS = {"environmentpath": "$codedir/environments"}


@dataclass(frozen=True)
class Layout:
    """Where a distribution's puppetserver keeps things."""

    confdir: str
    codedir: str
    server_confd: str
    services_d: str
    jar: str
    ruby_lib: str
    log: str
    defaults_file: str
    puppet: str
    puppetserver: str

    @property
    def environments(self) -> str:
        return f"{self.codedir}/environments"


DEBIAN = Layout("/etc/puppet", "/etc/puppet/code", "/etc/puppet/puppetserver/conf.d",
                "/etc/puppet/puppetserver/services.d", "/usr/share/puppetserver/puppetserver.jar",
                "/usr/share/jruby/lib", "/var/log/puppetserver/puppetserver-daemon.log",
                "/etc/default/puppetserver", "puppet", "puppetserver")
# Puppet's own packages (yum.puppet.com), as used on the RHEL family
PUPPETLABS = Layout("/etc/puppetlabs/puppet", "/etc/puppetlabs/code", "/etc/puppetlabs/puppetserver/conf.d",
                    "/etc/puppetlabs/puppetserver/services.d",
                    "/opt/puppetlabs/server/apps/puppetserver/puppet-server-release.jar", "",
                    "/var/log/puppetlabs/puppetserver/puppetserver-daemon.log", "/etc/sysconfig/puppetserver",
                    "/opt/puppetlabs/bin/puppet", "/opt/puppetlabs/bin/puppetserver")


def layout_for(plat: remote.Platform) -> Layout:
    return DEBIAN if plat.family == "debian" else PUPPETLABS


def parse_heap(value: str) -> tuple[str, str]:
    """``512m-1g`` -> ("512m", "1g"); ``2g`` -> ("2g", "2g")."""
    m = HEAP_SIZE.match((value or "").strip())
    if not m:
        raise ConfigError(f"setting puppetserver_heap = {value!r} is not a heap size such as 512m-1g or 2g")
    return m.group(1).lower(), (m.group(2) or m.group(1)).lower()


def dns_alt_names(server, domain: str) -> list:
    """The master's names in its certificate: host name, certname, and its address."""
    names = [server.hostname.lower()]
    fqdn = server.certname(domain)
    if fqdn not in names:
        names.append(fqdn)
    address = server.network_address
    if address.startswith("127.") or address == "::1":
        names += ["localhost", "IP:127.0.0.1"]
    elif re.match(r"^[0-9.]+$", address) or ":" in address:
        names.append(f"IP:{address}")
    elif address.lower() not in names:
        names.append(address.lower())
    return names


def puppet_conf(server, settings, layout: Layout) -> str:
    autosign = settings.puppet_autosign or "false"
    return templates.render(
        "puppet.conf.j2", settings.template_dir,
        certname=server.certname(settings.domain),
        dns_alt_names=",".join(dns_alt_names(server, settings.domain)),
        autosign=autosign,
        environmentpath=PUPPET_DEFAULTS["environmentpath"],
    )


def conf_satisfied(current: Optional[str], desired: str) -> bool:
    """Whether ``current`` puppet.conf already has every setting ``desired`` sets (comma lists as sets)."""
    if current is None:
        return False
    want, have = configparser.ConfigParser(interpolation=None), configparser.ConfigParser(interpolation=None, strict=False)
    want.read_string(desired)
    try:
        have.read_string(current)
    except configparser.Error:
        return False
    for section in want.sections():
        for key, value in want.items(section):
            got = have.get(section, key, fallback=None)
            if got is None and section == "server":
                got = have.get("master", key, fallback=None) or have.get("main", key, fallback=None)
            if got is None:
                got = PUPPET_DEFAULTS.get(key)
            if got is None:
                return False
            if key == "dns_alt_names":
                if {n.strip() for n in got.split(",")} != {n.strip() for n in value.split(",")}:
                    return False
            elif got.strip() != value.strip():
                return False
    return True


def configured_certname(conf: Optional[str]) -> Optional[str]:
    """The certname a master's puppet.conf gives it ([server], then [master], then [main]); None when unset."""
    if not conf:
        return None
    parsed = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parsed.read_string(conf)
    except configparser.Error:
        return None
    for section in ("server", "master", "main"):
        value = parsed.get(section, "certname", fallback=None)
        if value and value.strip():
            return value.strip()
    return None


def signed_nodes(shell, layout: Layout, *masters: str) -> list:
    """The certnames the master's CA has signed, other than ``masters`` (its own names): its agents."""
    got = shell.run(f"{q(layout.puppet)} config print cadir --section server",
                    hint="is Puppet installed on the master?")
    cadir = got.stdout.strip().splitlines()[-1].split(" = ", 1)[-1].strip() if got.stdout.strip() else ""
    if not cadir.startswith("/"):
        raise RemoteCommandError(shell.name, got.command, got.exited, got.output, "could not read the CA directory")
    listed = shell.run(f"if [ -d {q(cadir + '/signed')} ]; then ls -1 {q(cadir + '/signed')}; fi")
    names = [line[:-4] for line in listed.stdout.splitlines() if line.endswith(".pem")]
    return sorted(n for n in names if n not in masters)


def check_rename(shell, layout: Layout, old: Optional[str], new: str, allowed: bool) -> str:
    """Refuse to change the master's certname from ``old`` to ``new`` when its CA has signed agents, unless
    ``allowed``; -> what to report ("" when the name does not change or nothing depends on it).

    A new certname gives the master a new certificate with the new names only, so every agent that
    reaches it by the old name fails TLS, and the agents' own certnames follow the same domain: each of
    them needs a new certificate. Checked before anything is written, also in a dry run.
    """
    if not old or old == new:
        return ""
    nodes = signed_nodes(shell, layout, old, new)
    if not nodes:
        return ""
    shown = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
    if not allowed:
        raise ConfigError(
            f"{shell.name}: the Puppet master's certname would change from {old} to {new} (setting domain and "
            f"the master's host name), but its CA has signed {len(nodes)} agent certificate(s) ({shown}). "
            f"Renaming it breaks every one of those agents: they reach the master by its old name, which its "
            f"new certificate no longer carries, and their own certnames change with the domain, so each has to "
            f"be re-issued (inv bootstrap --only agents --reissue). If that is intended, run again with "
            f"allow_master_rename=true (INVOKE_DEPLOY_ALLOW_MASTER_RENAME=true or deploy.allow_master_rename in "
            f"invoke.yaml), then re-issue the agents; otherwise put the domain back so that the certname stays {old}")
    did = "would rename" if shell.dry_run else "renamed"
    return (f"{did} the master from {old} to {new} (allow_master_rename): its {len(nodes)} signed agent(s) "
            f"must be re-issued (inv bootstrap --only agents --reissue)")


def webserver_conf(current: Optional[str], layout: Layout, template_dir: str = "") -> str:
    """webserver.conf with ``ssl-protocols: [TLSv1.2]`` (the rest as it is)."""
    if current is None or not current.strip():
        return templates.render("puppetserver-webserver.conf.j2", template_dir, confdir=layout.confdir)
    line = "    ssl-protocols: [TLSv1.2]"
    pattern = re.compile(r"^\s*ssl-protocols\s*:.*$", re.M)
    if pattern.search(current):
        return pattern.sub(line, current, count=1)
    text = current.rstrip()
    if not text.endswith("}"):
        raise ConfigError("webserver.conf does not end with the closing } of its webserver block: "
                          "fix it by hand, then re-run")
    return text[:-1].rstrip() + "\n" + line + "\n}\n"


def jvm_pid_command(layout: Layout, launcher: bool = False) -> str:
    """A shell command printing the pid of the running puppetserver JVM; exit 1 when there is none.

    The JVM is the process named in PIDFILE, or one of its children (runuser
    forks it), whose program is java and whose arguments hold the server's jar.
    A pid file naming an exited process, or a pid since reused, finds nothing.
    With ``launcher``, the pid file's own process also counts when the jar is
    on its command line: runuser in the moment before it has forked the JVM.
    """
    program = '[ "${a##*/}" = java ]'
    if launcher:
        program = f'{{ [ "$c" = "$p" ] || {program}; }}'
    return (
        f"( p=$(cat {PIDFILE} 2>/dev/null); case \"$p\" in ''|*[!0-9]*) exit 1;; esac; "
        f"for c in $p $(pgrep -P \"$p\" 2>/dev/null); do "
        f"a=$(tr '\\0' '\\n' < /proc/$c/cmdline 2>/dev/null | head -n 1); "
        f"if {program} && tr '\\0' '\\n' < /proc/$c/cmdline 2>/dev/null | grep -qxF {q(layout.jar)}; "
        f"then echo \"$c\"; exit 0; fi; done; exit 1 )"
    )


def server_alive(shell, layout: Layout) -> bool:
    """Whether the directly started puppetserver's JVM runs (not merely its pid file's process)."""
    return shell.test(jvm_pid_command(layout))


def start_command(layout: Layout, heap: tuple[str, str]) -> str:
    """The project's own start of puppetserver (no systemd, no init script): detached, pid in PIDFILE.

    Serialized with flock: two callers at once (bootstrap and a test fixture)
    start one server; the second finds it alive (its JVM, or runuser about to
    fork it) and starts nothing.
    """
    java = ["runuser", "-u", "puppet", "--", "java", f"-Xms{heap[0]}", f"-Xmx{heap[1]}",
            "-Djruby.logger.class=com.puppetlabs.jruby_utils.jruby.Slf4jLogger"]
    if layout.ruby_lib:
        java.append(f"-Djruby.lib={layout.ruby_lib}")
    java += ["-XX:+CrashOnOutOfMemoryError", "-jar", layout.jar, "--config", layout.server_confd,
             "--bootstrap-config", layout.services_d, "--restart-file", RESTART_FILE]
    logdir = layout.log.rsplit("/", 1)[0]
    return (
        f"mkdir -p {RUN_DIR} {q(logdir)} && chown puppet:puppet {RUN_DIR} {q(logdir)} && "
        f"exec 9>{RUN_DIR}/start.lock && flock -w 120 9 && "
        f"if {jvm_pid_command(layout, launcher=True)} >/dev/null; then echo 'already running'; else "
        f"echo 0 > {RESTART_FILE} && chown puppet:puppet {RESTART_FILE} && cd / && "
        f"{{ setsid {' '.join(q(a) for a in java)} >> {q(layout.log)} 2>&1 < /dev/null 9>&- & }} && "
        f"echo $! > {PIDFILE}; fi"
    )


def stop_command(layout: Layout, timeout_s: int = 90) -> str:
    """Stop the directly started server (its JVM: runuser would SIGKILL it 2 s after a TERM) and wait until it is gone."""
    jvm = jvm_pid_command(layout)
    return (
        f"pid=$(cat {PIDFILE}) && kill \"$( {jvm} || echo \"$pid\")\" && i=0 && "
        f"while {jvm} >/dev/null; do i=$((i+1)); "
        f"if [ $i -gt {timeout_s * 5} ]; then echo 'still running after {timeout_s}s' >&2; exit 1; fi; "
        f"sleep 0.2; done"
    )


def running_heap(shell, layout: Layout) -> Optional[tuple[str, str]]:
    """The -Xms/-Xmx of the directly started server, or None when it is not running."""
    if not server_alive(shell, layout):
        return None
    cmdline = shell.run(f"c=$( {jvm_pid_command(layout)}) && tr '\\0' ' ' < /proc/$c/cmdline").stdout
    xms = re.search(r"-Xms(\S+)", cmdline)
    xmx = re.search(r"-Xmx(\S+)", cmdline)
    return (xms.group(1).lower() if xms else "", xmx.group(1).lower() if xmx else "")


def status(address: str, port: int = PORT, timeout: float = 3.0) -> str:
    """What /status/v1/simple answers ('running', 'starting', 'error') or '' when nothing answers."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the status endpoint only: the CA may not exist yet on a first start
    try:
        with urllib.request.urlopen(f"https://{address}:{port}/status/v1/simple", context=ctx, timeout=timeout) as r:
            return r.read().decode().strip()
    except Exception:
        return ""


def wait_running(shell, address: str, layout: Layout, timeout_s: int, pid_check: bool) -> None:
    """Wait until /status/v1/simple answers ``running``; the error shows the server log's last lines."""
    deadline = time.monotonic() + timeout_s
    answer = ""
    while time.monotonic() < deadline:
        answer = status(address)
        if answer == "running":
            return
        if pid_check and not server_alive(shell, layout):
            raise RemoteCommandError(shell.name, "puppetserver start", 1, log_tail(shell, layout),
                                     f"puppetserver exited during start-up (log {layout.log})")
        time.sleep(1)
    raise RemoteCommandError(shell.name, f"wait for https://{address}:{PORT}/status/v1/simple", 1,
                             log_tail(shell, layout),
                             f"puppetserver did not answer 'running' within {timeout_s} s (last answer: "
                             f"{answer or 'none'}); raise puppetserver_start_timeout_s on a slow host, "
                             f"or read {layout.log}")


def log_tail(shell, layout: Layout, lines: int = 25) -> str:
    result = shell.run(f"tail -n {lines} {q(layout.log)}", check=False)
    return result.stdout if result.ok else f"(no log at {layout.log})"


def ensure_started(shell, address: str, layout: Layout, heap: tuple[str, str], timeout_s: int,
                   restart: bool = False) -> str:
    """Own start (no init system): start when not running, restart when asked. Returns what it did."""
    alive = server_alive(shell, layout)
    if alive and not restart:
        if not shell.dry_run and status(address) not in ("running",):
            wait_running(shell, address, layout, timeout_s, pid_check=True)
        return ""
    if alive:
        shell.change(stop_command(layout))
    shell.change(start_command(layout, heap))
    if not shell.dry_run:
        wait_running(shell, address, layout, timeout_s, pid_check=True)
    return "restarted puppetserver" if alive else "started puppetserver"


def run(shell, server, settings, result: StepResult) -> StepResult:
    """Install, configure and start puppetserver on ``shell``'s host; wait until it answers."""
    heap = parse_heap(settings.puppetserver_heap)
    plat = remote.platform(shell)
    layout = layout_for(plat)
    timeout_s = settings.puppetserver_start_timeout_s
    address = server.network_address

    if plat.family == "rhel":
        result.note(_puppet_repository(shell, plat), "added Puppet's yum repository (puppet7-release)")
    result.note(remote.packages(shell, ["puppetserver"]), "installed puppetserver")

    changed_files = []
    conf_path = f"{layout.confdir}/puppet.conf"
    desired = puppet_conf(server, settings, layout)
    current = remote.read(shell, conf_path)
    renamed = check_rename(shell, layout, configured_certname(current), server.certname(settings.domain),
                           bool(settings.allow_master_rename))
    if renamed:
        result.details.append(renamed)
    if not conf_satisfied(current, desired):
        _replace(shell, conf_path, desired, current is not None)
        changed_files.append(conf_path)
    web_path = f"{layout.server_confd}/webserver.conf"
    current_web = remote.read(shell, web_path)
    desired_web = webserver_conf(current_web, layout, settings.template_dir)
    if desired_web != current_web:
        _replace(shell, web_path, desired_web, current_web is not None)
        changed_files.append(web_path)
    for path in changed_files:
        result.note(True, f"wrote {path}")
    result.note(environment_dirs(shell, layout), f"created {layout.environments}/production")

    if plat.init == "none":
        heap_now = running_heap(shell, layout)
        restart = bool(changed_files) or (heap_now is not None and heap_now != heap)
        try:
            did = ensure_started(shell, address, layout, heap, timeout_s, restart=restart)
        except RemoteCommandError:
            # never leave it stopped: start again with what it ran with before
            if (changed_files or heap_now) and not shell.dry_run and not server_alive(shell, layout):
                _restore(shell, changed_files)
                ensure_started(shell, address, layout, heap_now or heap, timeout_s, restart=False)
                result.details.append("the previous configuration (and heap) were put back and the server "
                                      "started with them")
            raise
        result.note(bool(did), did)
        result.details.append("no systemd or SysV init: puppetserver started directly, not enabled at boot")
    else:
        heap_changed = _heap_defaults(shell, layout, heap)
        result.note(heap_changed, f"set the heap in {layout.defaults_file}")
        was_running = remote.service_running(shell, "puppetserver")
        if remote.service(shell, "puppetserver"):
            result.note(True, "enabled/started puppetserver")
        if was_running and (changed_files or heap_changed):
            shell.change("systemctl restart puppetserver" if plat.init == "systemd" else "service puppetserver restart")
            result.note(True, "restarted puppetserver")
        if not shell.dry_run:
            wait_running(shell, address, layout, timeout_s, pid_check=False)
    return result


def environment_dirs(shell, layout: Layout) -> bool:
    """environments/ and environments/production: puppetserver (running as puppet) cannot start
    when it has to create production itself under a root-owned environments/."""
    changed = remote.directory(shell, layout.environments, mode="755")
    return remote.directory(shell, f"{layout.environments}/production", mode="755") or changed


def _replace(shell, path: str, text: str, keep_previous: bool) -> None:
    if keep_previous:
        shell.change(f"cp -p {q(path)} {q(path + PREVIOUS)}")
    remote.upload(shell, text.encode(), path)


def _restore(shell, paths) -> None:
    for path in paths:
        shell.run(f"if [ -e {q(path + PREVIOUS)} ]; then cp -p {q(path + PREVIOUS)} {q(path)}; fi")


def _heap_defaults(shell, layout: Layout, heap: tuple[str, str]) -> bool:
    """Set -Xms/-Xmx in JAVA_ARGS of /etc/default (Debian) or /etc/sysconfig (RHEL) puppetserver."""
    current = remote.read(shell, layout.defaults_file)
    if current is None:
        raise RemoteCommandError(shell.name, f"cat {layout.defaults_file}", 1, "",
                                 "the puppetserver package did not install its defaults file: reinstall it")
    def fix(m):
        args = re.sub(r"-Xms\S+", f"-Xms{heap[0]}", m.group(2))
        args = re.sub(r"-Xmx\S+", f"-Xmx{heap[1]}", args)
        return f'{m.group(1)}"{args}"'
    updated = re.sub(r'^(JAVA_ARGS=)"([^"]*)"', fix, current, count=1, flags=re.M)
    if updated == current:
        return False
    _replace(shell, layout.defaults_file, updated, True)
    return True


def _puppet_repository(shell, plat: remote.Platform) -> bool:
    """Puppet's yum repository (the RHEL family has no puppetserver of its own). Not testable here."""
    if remote.package_installed(shell, "puppet7-release"):
        return False
    url = f"https://yum.puppet.com/puppet7-release-el-{plat.major}.noarch.rpm"
    shell.change(f"rpm -Uvh {q(url)}", hint=f"could not add Puppet's repository from {url}: check the "
                                            "host's access to yum.puppet.com (or a mirror), then re-run")
    return True
