"""The package server step: nginx serving the package repository, the agent MSI in it, verified over HTTP.

Check, then act: the package is installed only when missing, the site file
replaced only when its checksum differs, and ``nginx -t`` runs before any
reload; a config nginx rejects is put back to the previous file, so the
running server keeps serving the old one.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
import urllib.error
import urllib.request
from typing import Optional

from ..artifacts.msi import check_msi
from ..errors import ConfigError, RemoteCommandError, StepFailed
from . import StepResult, remote, templates

q = shlex.quote

SITE_TEMPLATE = "nginx-package-site.conf.j2"
SITE_FILE = "/etc/nginx/conf.d/deploy_tasks-packages.conf"
NGINX_PIDFILE = "/run/nginx.pid"
PROBE_NAME = "deploy_tasks-probe.txt"
PROBE_TEXT = "deploy_tasks package repository at {root}\n"  # names the root: proves the new site is live


def probe_text(root: str) -> bytes:
    return PROBE_TEXT.format(root=root).encode()
AGENT_DIR = "puppet-agent"
DEFAULT_ROOT = "/srv/deploy_tasks/repository"


def repository_root(server, settings) -> str:
    """Where the repository lives on the package server: the ``package_root`` setting.

    The same setting tells ``extract-artifacts --publish`` where to send the
    repository; set it to the ``repository`` directory itself to have nginx
    serve the controller's repository in place when the package server is
    this machine.
    """
    return settings.package_root or DEFAULT_ROOT


def base_url(server, settings) -> str:
    return f"http://{server.network_address}:{settings.package_port}"


def agent_msi_url(server, settings) -> str:
    """The URL the Windows nodes install the Puppet agent from."""
    return f"{base_url(server, settings)}/{AGENT_DIR}/{os.path.basename(settings.agent_msi_path)}"


def site_config(root: str, settings) -> str:
    return templates.render(SITE_TEMPLATE, settings.template_dir, port=settings.package_port, root=root)


def run(shell, server, settings, result: StepResult) -> StepResult:
    """Install, configure, start and verify the package server on ``shell``'s host."""
    root = repository_root(server, settings)
    text = site_config(root, settings)  # a template error stops before anything is touched
    msi = _agent_msi(settings)
    plat = remote.platform(shell)

    result.note(remote.packages(shell, ["nginx"]), "installed nginx")
    result.note(remote.directory(shell, root, mode="755"), f"created {root}")
    result.note(remote.upload(shell, probe_text(root), f"{root}/{PROBE_NAME}"), f"wrote {root}/{PROBE_NAME}")
    if msi:
        agent_dir = f"{root}/{AGENT_DIR}"
        result.note(remote.directory(shell, agent_dir, mode="755"), f"created {agent_dir}")
        with open(msi, "rb") as fh:
            data = fh.read()
        target = f"{agent_dir}/{os.path.basename(msi)}"
        result.note(remote.upload(shell, data, target), f"placed the agent MSI at {target}")
    else:
        result.details.append("no agent MSI placed (settings puppet_agent_msi and puppet_agent_msi_name are blank)")

    site_changed = install_site(shell, text)
    result.note(site_changed, f"wrote {SITE_FILE} (port {settings.package_port}, root {root})")
    started = not remote.service_running(shell, "nginx", NGINX_PIDFILE)
    if remote.service(shell, "nginx", start="nginx", reload="nginx -s reload", pidfile=NGINX_PIDFILE,
                      reload_needed=site_changed):
        result.note(True, "started nginx" if started else "reloaded nginx")
    if plat.init == "none":
        result.details.append("no systemd or SysV init: nginx started directly, not enabled at boot")
    if not shell.dry_run:
        verify(server, settings, msi, probe_text(root))
    return result


def _agent_msi(settings) -> Optional[str]:
    path = settings.agent_msi_path
    if not path:
        return None
    if not os.path.isfile(path):
        raise ConfigError(f"the Puppet agent MSI {path} does not exist (puppet_agent_msi in invoke.yaml or "
                          f"INVOKE_DEPLOY_PUPPET_AGENT_MSI, or puppet_agent_msi_name inside artifact_source): "
                          f"download it or fix the setting")
    check_msi(path)  # the nodes install whatever is served: it must be a Windows Installer package
    return path


def install_site(shell, text: str) -> bool:
    """Put the site file in place only if nginx accepts it; otherwise restore the previous one and raise."""
    data = text.encode()
    if remote.sha256(shell, SITE_FILE) == hashlib.sha256(data).hexdigest():
        return False
    previous = SITE_FILE + ".deploy_tasks-previous"
    had_previous = remote.exists(shell, SITE_FILE)
    remote.directory(shell, os.path.dirname(SITE_FILE))
    if had_previous:
        shell.change(f"cp -p {q(SITE_FILE)} {q(previous)}")
    remote.upload(shell, data, SITE_FILE)
    if shell.dry_run:
        shell.echo(f"  [{shell.name}] would run: nginx -t (and put the previous {SITE_FILE} back if it fails)")
        return True
    check = shell.run("nginx -t", check=False)
    if not check.ok:
        if had_previous:
            shell.run(f"mv -f {q(previous)} {q(SITE_FILE)}")
            kept = f"the previous {SITE_FILE} was put back and nginx keeps serving it"
        else:
            shell.run(f"rm -f {q(SITE_FILE)}")
            kept = f"{SITE_FILE} was removed again; nginx was not reloaded"
        raise RemoteCommandError(shell.name, "nginx -t", check.exited, check.output,
                                 f"nginx rejected the rendered site config; {kept}. Fix the template "
                                 f"{SITE_TEMPLATE} (templates/ or the template_dir setting) and re-run")
    return True


def verify(server, settings, msi: Optional[str], probe: bytes, timeout: float = 15.0) -> None:
    """Fetch the probe (and the MSI) from the controller, as the nodes will."""
    url = f"{base_url(server, settings)}/{PROBE_NAME}"
    deadline = time.monotonic() + timeout
    last = ""
    while True:  # a reload lets old workers finish first: give it a moment
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read()
            if body == probe:
                break
            last = f"it answered {body[:80]!r} instead of the probe"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if time.monotonic() > deadline:
            raise StepFailed(server.hostname, "package-server", ConfigError(
                f"the package server does not serve {url}: {last} (check that port {settings.package_port} "
                f"is free and open from the controller: ss -ltnp there; nginx's worker user must be able to read "
                f"{settings.package_root or 'the repository'}; nginx log /var/log/nginx/error.log)"))
        time.sleep(0.3)
    if msi:
        url = agent_msi_url(server, settings)
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    digest.update(chunk)
        except (urllib.error.URLError, OSError) as exc:
            raise StepFailed(server.hostname, "package-server",
                             ConfigError(f"cannot fetch the agent MSI from {url}: {exc}")) from None
        with open(msi, "rb") as fh:
            local = hashlib.sha256(fh.read()).hexdigest()
        if digest.hexdigest() != local:
            raise StepFailed(server.hostname, "package-server",
                             ConfigError(f"{url} does not serve the same bytes as {msi}"))
