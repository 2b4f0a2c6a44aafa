"""Tasks that set up the Linux side over SSH: bootstrap (package server, Puppet master) and publish-config."""

from __future__ import annotations

import os
from typing import List

from invoke import task

from ..errors import DeployError
from ..report import console
from ._common import INVENTORY_HELP, deploy_task, load

DRY_RUN_HELP = "Print the commands that would change the hosts; change nothing (checks still run)."
LINUX_PARTS = ("package-server", "puppet-master")
PARTS = LINUX_PARTS + ("agents",)  # pipeline order: the nodes need the package server and the master first


def parse_only(only: str | None) -> List[str]:
    """``--only a,b`` -> the parts to run, in pipeline order; unknown names are an error."""
    if not only:
        return list(PARTS)
    wanted = [p.strip().lower() for p in only.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        raise DeployError(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return [p for p in PARTS if p in wanted]


class _Shells:
    """One lazy SSH shell per host, shared by that host's units (the runner never runs two at once on a host)."""

    def __init__(self, settings, dry_run: bool):
        self.settings = settings
        self.dry_run = dry_run
        self._shells: dict = {}

    def for_unit(self, server, ctx):
        if server.hostname not in self._shells:
            # Fabric and paramiko load only when a task needs SSH, so every other `inv` call starts faster
            from ..transports.ssh import shell_for

            self._shells[server.hostname] = shell_for(server, self.settings, dry_run=self.dry_run)
        shell = self._shells[server.hostname]
        shell.echo = ctx.output  # what the step prints (a dry run's commands) belongs to this unit
        return shell

    def close(self) -> None:
        for shell in self._shells.values():
            shell.close()


def _step_unit(shells: _Shells, server, step: str, body):
    """A runner unit running ``body(shell, StepResult)`` on ``server``: the step's result is the unit's outcome."""
    from ..runner import Unit
    from ..steps import StepResult

    def fn(ctx):
        return body(shells.for_unit(server, ctx), StepResult(server.hostname, step))

    return Unit(server.hostname, step, fn)


@task(help={
    "inventory": INVENTORY_HELP,
    "only": "Comma list of parts: package-server, puppet-master, agents. Default: all, in that order.",
    "dry_run": DRY_RUN_HELP,
    "hosts": "agents: only these Windows servers (comma list of hostnames); default: every Windows server.",
    "max_parallel": "Most hosts worked on at once (default: setting max_parallel).",
    "reboot": "agents: reboot a node whose agent install asks for it (msiexec 3010) and wait for it to come back.",
    "reissue": "agents: a node re-imaged since its certificate was signed gets a new one (the old is cleaned on the master).",
})
@deploy_task
def bootstrap(c, inventory=None, only=None, dry_run=False, hosts=None, max_parallel=None, reboot=False,
              reissue=False):
    """Set up the package server (nginx) and the Puppet master over SSH, then the Puppet agents over WinRM; safe to re-run."""
    from ..steps import package_server, puppet_master
    from ._run import run_units

    parts = parse_only(only)
    inv, settings = load(c, inventory)
    shells = _Shells(settings, dry_run)
    units = []
    if "package-server" in parts:
        server = inv.package_server
        units.append(_step_unit(shells, server, "package-server",
                                lambda shell, r, s=server: package_server.run(shell, s, settings, r)))
    if "puppet-master" in parts:
        server = inv.puppet_master
        units.append(_step_unit(shells, server, "puppet-master",
                                lambda shell, r, s=server: puppet_master.run(shell, s, settings, r)))
    agents = None
    options = {}
    if max_parallel is not None:
        try:
            options["max_parallel"] = max(1, int(max_parallel))
        except ValueError:
            raise DeployError(f"--max-parallel {max_parallel!r}: give a whole number of hosts") from None
    if "agents" in parts:
        from ._agents import AgentRun

        agents = AgentRun(inv, settings, hosts=hosts, reboot=reboot, reissue=reissue, dry_run=dry_run,
                          depends_on=[u.id for u in units])
        units.extend(agents.units())
    elif hosts or reboot or reissue:
        raise DeployError("--hosts, --reboot and --reissue are for the agents part (--only agents)")
    if dry_run:
        console.say("dry run: checks run, nothing is changed; commands that would run are printed")
    try:
        run_units("bootstrap", units, settings, title="bootstrap" + (" (dry run)" if dry_run else ""),
                  dry_run=dry_run, **options)
    finally:
        shells.close()
        if agents is not None:
            agents.close()


@task(help={
    "inventory": INVENTORY_HELP,
    "source": "The generated environment to publish; default: <build_dir>/puppet/environments/<environment>.",
    "modules": "Product Puppet modules to ship in the environment's modules/ when it has none (default: puppet/modules).",
    "rollback": "Switch the environment back one release in its history (again: one further back).",
    "to": "With --rollback (or alone): switch to this published release (its name, e.g. production-1a2b..., or hash).",
    "dry_run": DRY_RUN_HELP,
})
@deploy_task
def publish_config(c, inventory=None, source=None, modules=None, rollback=False, to=None, dry_run=False):
    """Publish the generated Puppet environment to the master (versioned, validated, atomic switch)."""
    from ..steps import publish, puppet_master, remote
    from ._run import run_units

    rollback = rollback or to is not None
    if modules is not None and not os.path.isdir(modules):
        raise DeployError(f"--modules {modules}: no such directory")
    if rollback and (source is not None or modules is not None):
        raise DeployError("--rollback switches between releases already on the master: it takes no --source "
                          "or --modules")
    inv, settings = load(c, inventory)
    env = settings.environment
    server = inv.puppet_master
    modules_dir = None
    if not rollback:
        puppet_dir = settings.puppet_dir or os.path.join(settings.build_dir, "puppet")  # where generate-config writes
        source = source or os.path.join(puppet_dir, "environments", env)
        explicit = modules is not None
        modules = modules or "puppet/modules"
        if os.path.isdir(os.path.join(source, "modules")):
            modules_dir = None  # the generated environment ships its modules already
        elif os.path.isdir(modules):
            modules_dir = modules
        elif explicit:
            raise DeployError(f"--modules {modules}: no such directory")
        else:
            console.warn(f"{modules} not found: publishing the environment without the product module(s) "
                         f"(only what {source} holds)")
    if dry_run:
        console.say("dry run: checks run, nothing is changed; commands that would run are printed")
    step = "rollback" if rollback else "publish-config"

    nothing: list = []  # "nothing to roll back" is said once, as the task's error, not as a failed step

    def body(shell, r):
        layout = puppet_master.layout_for(remote.platform(shell))
        if rollback:
            try:
                return publish.rollback(shell, layout, env, r, to=to)
            except publish.NothingToRollBack as exc:
                nothing.append(exc)
                return r
        return publish.publish(shell, layout, env, source, modules_dir, r)

    shells = _Shells(settings, dry_run)
    try:
        run_units("publish-config", [_step_unit(shells, server, step, body)], settings,
                  title=f"{step} (environment {env})" + (" (dry run)" if dry_run else ""), dry_run=dry_run)
    finally:
        shells.close()
    if nothing:
        raise nothing[0]


TASKS = (bootstrap, publish_config)
