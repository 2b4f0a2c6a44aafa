"""The agents part of ``inv bootstrap``: one runner unit per Windows node, one CA for all of them."""

from __future__ import annotations

import threading
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from ..errors import ConfigError, DeployError

UNIT = "puppet-agent"
#: lines of one command's output kept in the host's log (a Puppet run can print thousands)
LOG_LINES = 40


class LoggedTransport:
    """A transport whose every command, exit status and time go to the unit's output (the host's log)."""

    def __init__(self, inner, log: Callable[[str], None]):
        self._inner = inner
        self._log = log

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _logged(self, kind: str, command, fn, *args, **kwargs):
        shown = command if isinstance(command, str) else " ".join(command)
        result = fn(command, *args, **kwargs)
        if not self._inner.dry_run or kind == "run":
            self._log(f"$ {shown}  -> exit {result.exited} ({result.duration:.1f}s)")
            lines = result.output.splitlines()
            for line in lines[:LOG_LINES]:
                self._log("  " + line)
            if len(lines) > LOG_LINES:
                self._log(f"  ... ({len(lines) - LOG_LINES} more lines)")
        return result

    def run(self, command, **kw):
        return self._logged("run", command, self._inner.run, **kw)

    def change(self, command, **kw):
        return self._logged("change", command, self._inner.change, **kw)

    def run_argv(self, argv, **kw):
        return self._logged("run", argv, self._inner.run_argv, **kw)

    def change_argv(self, argv, **kw):
        return self._logged("change", argv, self._inner.change_argv, **kw)


def select_hosts(inventory, hosts: Optional[str]) -> List:
    """The Windows servers to work on: all, or ``--hosts a,b`` (case-insensitive; unknown names are an error)."""
    windows = list(inventory.windows_servers)
    if not hosts:
        return windows
    wanted = [h.strip() for h in hosts.split(",") if h.strip()]
    by_name = {s.hostname.lower(): s for s in windows}
    unknown = [h for h in wanted if h.lower() not in by_name]
    if unknown:
        raise DeployError(f"--hosts: {', '.join(unknown)} not a Windows server of the inventory; choose from "
                          f"{', '.join(s.hostname for s in windows)}")
    return [by_name[h.lower()] for h in dict.fromkeys(w.lower() for w in wanted)]


class AgentRun:
    """Units for the agents part, and what they share: the WinRM options and credential, the master's CA."""

    def __init__(self, inventory, settings, *, hosts: Optional[str] = None, reboot: bool = False,
                 reissue: bool = False, dry_run: bool = False, depends_on: Sequence[str] = (),
                 ca=None, pool=None, reboot_timeout_s: Optional[float] = None):
        from ..steps import agent, package_server
        from ..transports.winrm import pool_from_settings

        if not settings.agent_msi_path:
            raise ConfigError("the agents part installs the Puppet agent MSI the package server serves, but no MSI "
                              "is named: set puppet_agent_msi_name (Settings sheet: its file name inside the "
                              "release) or puppet_agent_msi (its path on the controller: invoke.yaml or "
                              "INVOKE_DEPLOY_PUPPET_AGENT_MSI)")
        self.servers = select_hosts(inventory, hosts)
        self.settings = settings
        self.dry_run = dry_run
        self.depends_on = tuple(depends_on)
        master = inventory.puppet_master
        self.spec = agent.AgentSpec(msi_url=package_server.agent_msi_url(inventory.package_server, settings),
                                    version=settings.puppet_agent_version, server=master.certname(settings.domain),
                                    environment=settings.environment)
        self.options = agent.Options(reboot=reboot, reissue=reissue,
                                     reboot_timeout_s=reboot_timeout_s or float(settings.command_timeout_s))
        self.pool = pool or pool_from_settings(settings, dry_run=dry_run)
        self.pool.credential()  # asked (or refused) once, before any host is contacted
        if ca is None:
            from ..transports.ssh import shell_for

            ca = agent.CertificateAuthority(shell_for(master, settings, dry_run=dry_run))
        self.ca = ca
        self._lock = threading.Lock()
        self.shells: Dict[str, int] = {}  # host -> WinRM shells opened for it in this run

    def _transport(self, server, log):
        from ..transports.winrm import WinRMTransport

        return WinRMTransport(server.hostname, server.network_address, self.pool.options, port=server.winrm_port,
                              credential=self.pool.credential, dry_run=self.dry_run, echo=log)

    def units(self) -> List:
        from ..runner import Unit

        return [Unit(s.hostname, UNIT, self._fn(s), depends_on=self.depends_on) for s in self.servers]

    def _fn(self, server):
        from ..steps import agent

        def fn(ctx):
            made: List = []

            def connect():
                t = self._transport(server, ctx.output)
                made.append(t)
                return LoggedTransport(t, ctx.output)

            step = agent.AgentStep(connect(), server.hostname, server.certname(self.settings.domain), self.spec,
                                   self.ca, self.options, connect=connect)
            try:
                return step.run()
            finally:
                for t in made:
                    t.close()
                with self._lock:
                    self.shells[server.hostname] = self.shells.get(server.hostname, 0) + sum(
                        t.shells_opened for t in made)

        return fn

    def close(self) -> None:
        self.ca.close()
        shell = getattr(self.ca, "shell", None)
        if shell is not None:
            shell.close()
        self.pool.close()


def hosts_in(servers: Iterable) -> str:
    return ", ".join(s.hostname for s in servers)
