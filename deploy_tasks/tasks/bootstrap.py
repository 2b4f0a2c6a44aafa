"""Tasks that set up the Linux side over SSH: bootstrap (package server, Puppet master) and publish-config."""

from __future__ import annotations

import os
from typing import Callable, List

from invoke import task

from ..errors import DeployError, TransportError
from ..report import console
from ..steps import CHANGED, FAILED, SKIPPED, StepResult, Timer
from ._common import deploy_task, load

INVENTORY_HELP = "Inventory workbook (.xlsx or .xls); default: deploy.inventory (inventory/example.xlsx)."
DRY_RUN_HELP = "Print the commands that would change the hosts; change nothing (checks still run)."
LINUX_PARTS = ("package-server", "puppet-master")
LATER_PARTS = {"agents": "the agents part (Puppet agents on the Windows nodes over WinRM) is not built yet"}


def parse_only(only: str | None) -> List[str]:
    """``--only a,b`` -> the parts to run, in pipeline order; unknown names are an error."""
    if not only:
        return list(LINUX_PARTS)
    wanted = [p.strip().lower() for p in only.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in LINUX_PARTS and p not in LATER_PARTS]
    if unknown:
        raise DeployError(f"--only: unknown part(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(LINUX_PARTS + tuple(LATER_PARTS))}")
    for part in wanted:
        if part in LATER_PARTS:
            raise DeployError(f"--only {part}: {LATER_PARTS[part]}; run the Linux parts with "
                              f"--only {','.join(LINUX_PARTS)}")
    return [p for p in LINUX_PARTS if p in wanted]


def _shell_for(server, settings, dry_run: bool):
    # Fabric and paramiko load only when a task needs SSH, so every other `inv` call starts faster
    from ..transports.ssh import shell_for

    return shell_for(server, settings, dry_run=dry_run)


def _run_step(results: list, shell, step: str, body: Callable[[StepResult], StepResult],
              dead_hosts: set) -> StepResult:
    result = StepResult(shell.name, step)
    timer = Timer()
    if shell.name in dead_hosts:
        result.status = SKIPPED
        result.error = "skipped: the host could not be reached for an earlier step"
    else:
        try:
            body(result)
        except DeployError as exc:
            result.status = FAILED
            result.error = str(exc)
            if isinstance(exc, TransportError):
                dead_hosts.add(shell.name)
        except OSError as exc:  # a local file (the MSI, a template dir) that cannot be read
            result.status = FAILED
            result.error = f"{shell.name}: {exc}"
    result.seconds = timer.elapsed()
    results.append(result)
    _say_result(result, shell.dry_run)
    return result


def _say_result(result: StepResult, dry_run: bool) -> None:
    status = result.status
    if dry_run and status == CHANGED:
        status = "would change"
    console.say(f"{result.host}  {result.step}  {status}  ({result.seconds:.1f}s)")
    for detail in result.details:
        console.say(f"    - {detail}")
    if result.error:
        for line in result.error.splitlines():
            console.say(f"    ! {line}")


def _summary(title: str, results: list, dry_run: bool) -> None:
    rows = []
    for r in results:
        status = "would change" if dry_run and r.status == CHANGED else r.status
        what = r.error.splitlines()[0] if r.error else ("; ".join(d for d in r.details) or "-")
        rows.append((r.host, r.step, status, f"{r.seconds:.1f}s", what))
    console.say()
    console.table(title, ["host", "step", "result", "time", "what"], rows)
    failed = [r for r in results if r.status in (FAILED, SKIPPED)]
    if failed:
        lines = [f"{len([r for r in failed if r.status == FAILED])} step(s) failed:"]
        lines += [f"  {r.host} {r.step}: {r.error}" for r in failed]
        raise DeployError("\n".join(lines))


@task(help={
    "inventory": INVENTORY_HELP,
    "only": "Comma list of parts: package-server, puppet-master (agents comes with the WinRM tasks). Default: all.",
    "dry_run": DRY_RUN_HELP,
})
@deploy_task
def bootstrap(c, inventory=None, only=None, dry_run=False):
    """Set up the package server (nginx) and the Puppet master over SSH; safe to re-run."""
    from ..steps import package_server, puppet_master

    parts = parse_only(only)
    inv, settings = load(c, inventory)
    shells = {}

    def shell(server):
        if server.hostname not in shells:
            shells[server.hostname] = _shell_for(server, settings, dry_run=dry_run)
        return shells[server.hostname]

    if dry_run:
        console.say("dry run: checks run, nothing is changed; commands that would run are printed")
    results: list = []
    dead: set = set()
    try:
        if "package-server" in parts:
            server = inv.package_server
            _run_step(results, shell(server), "package-server",
                      lambda r: package_server.run(shell(server), server, settings, r), dead)
        if "puppet-master" in parts:
            server = inv.puppet_master
            _run_step(results, shell(server), "puppet-master",
                      lambda r: puppet_master.run(shell(server), server, settings, r), dead)
    finally:
        for s in shells.values():
            s.close()
    _summary("bootstrap" + (" (dry run)" if dry_run else ""), results, dry_run)


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

    rollback = rollback or to is not None
    if modules is not None and not os.path.isdir(modules):
        raise DeployError(f"--modules {modules}: no such directory")
    if rollback and (source is not None or modules is not None):
        raise DeployError("--rollback switches between releases already on the master: it takes no --source "
                          "or --modules")
    inv, settings = load(c, inventory)
    env = settings.environment
    server = inv.puppet_master
    shell = _shell_for(server, settings, dry_run=dry_run)
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
    results: list = []
    step = "rollback" if rollback else "publish-config"

    nothing: list = []  # "nothing to roll back" is said once, as the task's error, not as a failed step

    def body(r):
        layout = puppet_master.layout_for(remote.platform(shell))
        if rollback:
            try:
                return publish.rollback(shell, layout, env, r, to=to)
            except publish.NothingToRollBack as exc:
                nothing.append(exc)
                return r
        return publish.publish(shell, layout, env, source, modules_dir, r)

    try:
        _run_step(results, shell, step, body, set())
    finally:
        shell.close()
    if nothing:
        raise nothing[0]
    _summary(f"{step} (environment {env})" + (" (dry run)" if dry_run else ""), results, dry_run)


TASKS = (bootstrap, publish_config)
