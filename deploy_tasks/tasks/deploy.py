"""``inv deploy``: the components onto the Windows hosts, group by group (or as a DAG), resumable."""

from __future__ import annotations

import os
from typing import List, Optional

from invoke import task

from ..errors import ConfigError, RunFailed
from ..report import console
from ._common import INVENTORY_HELP, deploy_task, load


def _names(value: Optional[str]) -> Optional[List[str]]:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ConfigError("an empty list: name at least one, comma separated")
    return names


def state_path(settings, given: Optional[str] = None) -> str:
    """The deploy state file of the settings' environment: <build_dir>/state/deploy-<environment>.json."""
    return given or os.path.join(settings.build_dir, "state", f"deploy-{settings.environment}.json")


@task(help={
    "inventory": INVENTORY_HELP,
    "group": "Run only this dependency group (see inv plan); default: every group in order.",
    "schedule": "waves (default: group k after all of group k-1) or dag (a host's group as soon as its steps' dependencies are done).",
    "continue_on_error": "Keep going after a failure: run every step whose dependencies succeeded, skip the rest.",
    "resume": "Do not run again the steps the state file records as succeeded; re-check steps that were in flight.",
    "dry_run": "Print every Puppet command per group and host; contact nobody.",
    "hosts": "Comma list of hosts to deploy to (default: every mapped host).",
    "components": "Comma list of components to deploy (default: every component of the selected groups).",
    "max_parallel": "Most hosts worked on at once (default: the max_parallel setting).",
    "grace": "Seconds running Puppet runs get to finish after SIGINT/SIGTERM (default 300).",
    "state": "The state file (default: <build_dir>/state/deploy-<environment>.json).",
    "skip_preflight": "Do not prove the plan before changing anything (says what it did not prove).",
    "skip_health_checks": "Do not run the Components sheet's Health Check after each component (says so).",
})
@deploy_task
def deploy(c, inventory=None, group=None, schedule="waves", continue_on_error=False, resume=False, dry_run=False,
           hosts=None, components=None, max_parallel=None, grace=300, state=None, skip_preflight=False,
           skip_health_checks=False):
    """Deploy the components onto the Windows hosts with Puppet, group by group; resumable."""
    from ..plan import make_plan
    from ..report import deploy as report
    from ..report.live import ConsoleReporter
    from ..runner.deploy import SCHEDULES, Deployment, batches_by_group, load_state, plan_steps
    from ..steps.deploy import puppet_command

    if schedule not in SCHEDULES:
        raise ConfigError(f"--schedule {schedule}: choose {' or '.join(SCHEDULES)}")
    inv, settings = load(c, inventory)
    plan = make_plan(inv)
    groups = None
    if group is not None:
        try:
            groups = [int(group)]
        except ValueError:
            raise ConfigError(f"--group {group}: not a number; this inventory has groups 1 to {len(plan.waves)}") from None
    steps = plan_steps(inv, plan, groups=groups, hosts=_names(hosts), components=_names(components),
                       default_timeout=float(settings.command_timeout_s))
    if not steps:
        raise ConfigError("nothing to deploy: no mapped (host, component) matches the selection")
    if dry_run:
        console.say(f"dry run ({schedule}): the Puppet runs, per group and host; nobody is contacted")
        if resume:
            done = {sid for sid, rec in load_state(state_path(settings, state)).items() if rec.ok}
            kept = [s for s in steps if s.id not in done]
            if len(kept) < len(steps):
                console.say(f"--resume: {len(steps) - len(kept)} step(s) recorded as succeeded are left out")
            steps = kept
        for g, host, comps in batches_by_group(steps):
            console.say(f"group {g}  {host}  {puppet_command(comps)}")
        if schedule == "dag":
            console.say("(dag: the same runs, without the barrier between groups: a host's run for a group "
                        "starts when the dependencies of its steps in that group are done)")
        return
    from ..transports.winrm import pool_from_settings

    pool = pool_from_settings(settings)
    pool.credential()  # asked once, before anything starts
    servers = {s.hostname: s for s in inv.servers}
    reporter = ConsoleReporter()
    deployment = Deployment(
        # one WinRM shell per host for the whole run: the runner never runs two units on a host at once
        steps, lambda host: pool.borrow(servers[host]), release=lambda transport: None, schedule=schedule, continue_on_error=continue_on_error,
        resume=resume, state_path=state_path(settings, state),
        max_parallel=int(max_parallel or settings.max_parallel), retries=settings.retries, grace=float(grace),
        listeners=[reporter], classes={comp.name: comp.puppet_class for comp in inv.components},
        environment=settings.environment, warn=console.warn,
        preflight=None if skip_preflight else _preflight(inv, settings, pool),
        health_check=None if skip_health_checks else _health_check(inv))
    if skip_preflight:
        from ..steps.preflight import CHECKS

        console.warn("--skip-preflight: not proven before changing hosts: " + "; ".join(CHECKS.values()))
    if skip_health_checks:
        console.warn("--skip-health-checks: the Components sheet's health checks do not run")
    try:
        result = deployment.run()
    finally:
        reporter.close()
        pool.close()
    title = "deploy" + (f" group {group}" if group is not None else f" ({schedule})")
    report.finish(result, title, settings.reports_dir)
    if not result.ok:
        raise RunFailed(report.summary(result), result, exit_code=130 if result.cancelled else 1)


def _preflight(inv, settings, pool):
    """The hook the deployment calls before it contacts a host to change it: every problem at once, or go."""

    def run(steps) -> None:
        from ..configgen import load_manifest
        from ..steps import preflight as pf
        from ..transports.ssh import shell_for

        targets: dict = {}
        for step in steps:
            targets.setdefault(step.host, []).append(step.component)
        puppet_dir = settings.puppet_dir or os.path.join(settings.build_dir, "puppet")
        env_dir = os.path.join(puppet_dir, "environments", settings.environment)
        master = shell_for(inv.puppet_master, settings)
        console.say(f"pre-flight: proving the plan for {len(targets)} host(s) before anything changes")
        try:
            result = pf.preflight(inv, settings, {h: tuple(c) for h, c in targets.items()}, master=master,
                                  winrm_pool=pool, manifest=load_manifest(settings.repository),
                                  environment_dir=env_dir, modules_dir=_modules_dir(env_dir))
        finally:
            master.close()
        for line in result.passed:
            console.say(f"pre-flight: {line}")
        for skipped in result.skipped:
            console.warn(f"pre-flight did not prove: {skipped}")
        result.raise_for_problems()

    return run


def _modules_dir(env_dir):
    """As publish-config: the product modules it ships when the generated environment has no modules/."""
    if os.path.isdir(os.path.join(env_dir, "modules")):
        return None
    return "puppet/modules" if os.path.isdir("puppet/modules") else None


def _health_check(inv):
    """The hook run after a component deployed on a host: its Health Check, if the Components sheet has one."""
    checks = {comp.name: comp.health_check for comp in inv.components if comp.health_check is not None}

    def run(transport, host, component) -> None:
        from ..steps import health

        if component in checks:
            health.run(transport, component, checks[component])

    return run


TASKS = (deploy,)
