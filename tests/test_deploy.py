"""inv deploy on the emulated Windows fleet: the real pywinrm client, the persona's Puppet and its run lock.

These tests use the TIMING-MODEL persona (each tagged component "takes" a
configured time, changes once, fails when named in ``puppet_fail``): the
whole example (34 components, 6 hosts, 6 groups) deploys in seconds. The
real-agent run against the real puppetserver is in test_deploy_real.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy_tasks import outcome
from deploy_tasks.inventory import load_inventory
from deploy_tasks.plan import make_plan
from deploy_tasks.report import deploy as report
from deploy_tasks.runner.deploy import Deployment, load_state, plan_steps
from deploy_tasks.steps.deploy import PuppetRun, interpret, puppet_command
from deploy_tasks.transports import winrm as w
from tests.support.deploy_fleet import (assert_dependencies_first, assert_no_overlap, fleet_workbook,
                                        install_agents, journals)

ROOT = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).with_name("inv"))
EXAMPLE = load_inventory(ROOT / "inventory" / "example.xlsx")
PLAN = make_plan(EXAMPLE)
ALL_STEPS = plan_steps(EXAMPLE, PLAN)


def timing(default_s=0.2, **hosts):
    return {"spec": {"mode": "timing", "timing": {"default_s": default_s}, "hosts": hosts}}


@pytest.fixture(autouse=True)
def _fresh_rejections():
    w.forget_rejected_credentials()
    yield
    w.forget_rejected_credentials()


@pytest.fixture
def agents(winrm_fleet, tmp_path):
    return install_agents(winrm_fleet, tmp_path)


def connector(fleet):
    options = w.WinRMOptions(transport="ntlm", scheme="https", ca_path=str(fleet.ca_cert), operation_timeout_s=2,
                             read_timeout_s=5)
    credential = w.Credential(fleet.username, fleet.password)

    def connect(host):
        h = fleet.host(host)
        return w.WinRMTransport(host, h.address, options, port=h.https_port, credential=credential)

    return connect


def deploy(fleet, tmp_path, steps=ALL_STEPS, **kw):
    kw.setdefault("state_path", str(tmp_path / "state.json"))
    kw.setdefault("backoff", 0.2)
    kw.setdefault("handle_signals", False)
    return Deployment(steps, connector(fleet), classes={c.name: c.puppet_class for c in EXAMPLE.components},
                      **kw).run()


def components_run(fleet):
    """(host, component) pairs in the order the Puppet runs carried them (by start time)."""
    runs = sorted(((r["started"], host, r) for host, rs in journals(fleet).items() for r in rs),
                  key=lambda t: (t[0], t[1]))
    return [(host, comp) for _, host, r in runs for comp in r["tags"]]


def run_counts(fleet):
    return {host: len(runs) for host, runs in journals(fleet).items()}


def components_run_since(fleet, counts):
    """(host, component) of the Puppet runs after ``counts`` (run_counts taken earlier)."""
    return [(host, comp) for host, runs in journals(fleet).items() for r in runs[counts.get(host, 0):]
            for comp in r["tags"]]


# -- reading Puppet's answer -----------------------------------------------------------------
def test_exit_codes_and_output_are_attributed_to_components():
    out = ("Notice: /Stage[main]/Main/Node[x]/Product::Component[zope_base]/File[C:/p]/ensure: created\n"
           "Error: /Stage[main]/Main/Node[x]/Product::Component[auth_ldap]/Exec[product auth_ldap: unpack]/returns: "
           "change from 'notrun' to ['0'] failed\n"
           "Warning: /Stage[main]/Main/Node[x]/Product::Component[auth_ldap]/Service[Product_auth_ldap]: "
           "Skipping because of failed dependencies\n")
    run = interpret(PuppetRun("ZAPP01", ["auth_ldap", "zope_base", "monitoring_agent"], "", 6, out))
    assert {c: o.status for c, o in run.outcomes.items()} == {
        "auth_ldap": "failed", "zope_base": "changed", "monitoring_agent": "unchanged"}
    assert "unpack" in run.outcomes["auth_ldap"].error and "Skipping" in run.outcomes["auth_ldap"].error
    # a component declared by its own class is found by the class in the resource path
    out = "Error: /Stage[main]/Acme::Zeo/File[C:/Acme/zeo.json]: Could not evaluate: denied\n"
    run = interpret(PuppetRun("ZDB01", ["zeo_server", "session_store"], "", 4, out), {"zeo_server": "acme::zeo"})
    assert run.outcomes["zeo_server"].status == "failed" and run.outcomes["session_store"].status == "unchanged"
    # a failure naming none of them fails them all; exit 1 is the run failing as a whole
    run = interpret(PuppetRun("ZDB01", ["a_x", "b_y"], "", 4, "Error: /Stage[main]/Main/Notify[other]: boom\n"))
    assert all(o.status == "failed" for o in run.outcomes.values())
    run = interpret(PuppetRun("ZDB01", ["a_x"], "", 1, "Error: Could not retrieve catalog from remote server: 500\n"))
    assert run.outcomes["a_x"].status == "failed" and "Could not retrieve catalog" in run.error
    assert [o.status for o in interpret(PuppetRun("H", ["a_x"], "", 0, "")).outcomes.values()] == ["unchanged"]
    assert puppet_command(["a", "b_c"]) == "puppet agent --test --detailed-exitcodes --tags a,b_c"


def test_steps_depend_on_every_host_of_their_dependencies_and_narrow():
    steps = {s.id: s for s in ALL_STEPS}
    assert len(steps) == sum(len(c.hosts) for w_ in PLAN.waves for c in w_.components)
    assert set(steps["ZAPP01/zope_base"].depends_on) == {
        f"{h}/python_runtime" for h in EXAMPLE.hosts_for("python_runtime")} | {"ZAPP01/license_service",
                                                                               "ZAPP02/license_service"}
    assert steps["ZAPP01/zope_instance_1"].timeout == 900
    narrowed = plan_steps(EXAMPLE, PLAN, groups=[2], hosts=["zapp01"], components=["auth_ldap", "zope_base"])
    assert [s.id for s in narrowed] == ["ZAPP01/auth_ldap", "ZAPP01/zope_base"]


# -- the whole example -------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing()], indirect=True)
@pytest.mark.parametrize("schedule", ["waves", "dag"])
def test_the_example_deploys_completely_in_dependency_order(winrm_fleet, agents, tmp_path, schedule):
    result = deploy(winrm_fleet, tmp_path, schedule=schedule, max_parallel=6)
    assert result.ok, report.summary(result)
    assert [r.id for r in result.steps] == [s.id for s in ALL_STEPS]
    assert all(r.status == outcome.CHANGED and r.exit_code == 2 for r in result.steps)
    runs = journals(winrm_fleet)
    assert_no_overlap(runs)
    assert_dependencies_first(runs, EXAMPLE)
    # every mapped step ran exactly once
    assert sorted(components_run(winrm_fleet)) == sorted((s.host, s.component) for s in ALL_STEPS)
    if schedule == "waves":
        # one Puppet run per host per group, carrying all of that group's components on the host
        for host, host_runs in runs.items():
            expected = [list(w_.components_on(host)) for w_ in PLAN.waves if w_.components_on(host)]
            assert [r["tags"] for r in host_runs] == expected
    # the report: every step after all steps of its dependencies ended
    reports = report.report_dict(result)["steps"]
    ended = {(s["host"], s["component"]): s["ended"] for s in reports}
    by_id = {s.id: s for s in ALL_STEPS}
    for s in reports:
        assert s["status"] == "succeeded" and s["exit_code"] == 2
        for dep in by_id[f"{s['host']}/{s['component']}"].depends_on:
            assert s["started"] >= ended[tuple(dep.split("/"))]
    # the state file records every step
    state = load_state(str(tmp_path / "state.json"))
    assert {k: v.status for k, v in state.items()} == {s.id: "changed" for s in ALL_STEPS}


# -- a failure in group 2, then --resume -----------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing(ZDB01={"puppet_fail": ["zeo_server"]})], indirect=True)
def test_a_failure_stops_the_next_group_and_resume_finishes_without_redoing(winrm_fleet, agents, tmp_path):
    result = deploy(winrm_fleet, tmp_path)
    assert not result.ok
    status = {r.id: r for r in result.steps}
    assert status["ZDB01/zeo_server"].status == "failed" and status["ZDB01/zeo_server"].exit_code == 6
    assert status["ZDB01/monitoring_agent"].status == "changed"  # same run, not at fault
    assert all(r.status == "changed" for r in result.steps if r.group <= 2 and r.id != "ZDB01/zeo_server")
    assert all(r.status == "skipped" for r in result.steps if r.group >= 3)
    assert "group 2 did not succeed" in status["ZAPP01/catalog"].error
    ran = components_run(winrm_fleet)
    counts = run_counts(winrm_fleet)
    assert not {c for _, c in ran} & {c.name for w_ in PLAN.waves[2:] for c in w_.components}  # group 3 never ran
    text = report.summary(result)
    assert "ZDB01 zeo_server (group 2) failed" in text and "emulated fault puppet_fail" in text
    assert "--resume" in text

    winrm_fleet.host("ZDB01").persona.faults.puppet_fail = ()
    again = deploy(winrm_fleet, tmp_path, resume=True)
    assert again.ok, report.summary(again)
    rerun = components_run_since(winrm_fleet, counts)
    # only the failed step and the groups after it ran; nothing that had succeeded ran again
    assert sorted(rerun) == sorted([("ZDB01", "zeo_server")] + [(s.host, s.component) for s in ALL_STEPS
                                                                if s.group >= 3])
    carried = {r.id: r for r in again.steps}["ZAPP01/zope_base"]
    assert carried.status == "changed" and "done in a previous run; not run again" in carried.details


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing(ZDB01={"puppet_fail": ["zeo_server"]})], indirect=True)
@pytest.mark.parametrize("schedule", ["waves", "dag"])
def test_continue_on_error_runs_exactly_the_steps_whose_dependencies_succeeded(winrm_fleet, agents, tmp_path,
                                                                                schedule):
    result = deploy(winrm_fleet, tmp_path, continue_on_error=True, schedule=schedule)
    # what must be skipped: everything downstream of zeo_server, transitively
    bad = {"ZDB01/zeo_server"}
    for s in ALL_STEPS:  # plan order: dependencies come first
        if any(d in bad for d in s.depends_on):
            bad.add(s.id)
    expected_run = {s.id for s in ALL_STEPS} - (bad - {"ZDB01/zeo_server"})
    assert {f"{h}/{c}" for h, c in components_run(winrm_fleet)} == expected_run
    status = {r.id: r.status for r in result.steps}
    assert {i for i, s in status.items() if s == "skipped"} == bad - {"ZDB01/zeo_server"}
    assert status["ZDB01/zeo_server"] == "failed"
    assert {i for i, s in status.items() if s == "changed"} == expected_run - {"ZDB01/zeo_server"}
    assert_no_overlap(journals(winrm_fleet))
    skipped = {r.id: r for r in result.steps}["ZAPP01/catalog"]
    assert "ZDB01/zeo_server failed" in skipped.error


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing()], indirect=True)
def test_a_held_run_lock_is_retried_with_backoff(winrm_fleet, agents, tmp_path):
    """Someone else's Puppet run holds ZWEB01's lock: the step waits it out instead of failing."""
    import threading

    persona = winrm_fleet.host("ZWEB01").persona
    persona.puppet._run_lock.acquire()
    threading.Timer(1.0, persona.puppet._run_lock.release).start()
    steps = [s for s in ALL_STEPS if s.host == "ZWEB01" and s.group == 1]
    result = deploy(winrm_fleet, tmp_path, steps=steps, retries=5, backoff=0.3)
    assert result.ok, report.summary(result)
    assert result.steps[0].attempts >= 2
    outcomes = [r["outcome"] for r in __import__("deploy_tasks.rehearsal.puppet", fromlist=["x"]).read_journal(
        persona.state_dir)]
    assert outcomes[0] == "already_running" and outcomes[-1] == "changed"


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing()], indirect=True)
def test_a_run_past_its_components_timeout_fails_them(winrm_fleet, agents, tmp_path):
    def short(rows):
        for row in rows:
            if row[0] == "static_assets":
                row[5] = 1
        return rows

    winrm_fleet.spec.timing_components["static_assets"] = 4.0
    inv = load_inventory(fleet_workbook(winrm_fleet, tmp_path / "short.xlsx", edit_components=short))
    steps = plan_steps(inv, make_plan(inv), groups=[1], hosts=["ZWEB01"], components=["static_assets"])
    assert steps[0].timeout == 1
    result = deploy(winrm_fleet, tmp_path, steps=steps)
    assert result.steps[0].status == "failed" and "timeout 1 s" in result.steps[0].error


# -- inv deploy as a user runs it: dry run, SIGTERM, SIGKILL, --resume ----------------------------
def inv_env(fleet, tmp_path, workbook):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update({"INVOKE_DEPLOY_INVENTORY": str(workbook), "INVOKE_DEPLOY_BUILD_DIR": str(tmp_path / "build"),
                "INVOKE_DEPLOY_REPORTS_DIR": str(tmp_path / "reports"),
                "PYTHONPATH": str(ROOT)})
    if fleet is not None:
        env.update({"INVOKE_DEPLOY_WINRM_CA_PATH": str(fleet.ca_cert), "DEPLOY_WINRM_USER": fleet.username,
                    "DEPLOY_WINRM_PASSWORD": fleet.password})
    return env


def test_dry_run_prints_every_command_and_contacts_nobody(tmp_path):
    # no credentials, no fleet: the example's addresses answer nothing, and nothing is asked
    proc = subprocess.run([INV, "-r", str(ROOT), "deploy", "--dry-run"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=inv_env(None, tmp_path, ROOT / "inventory" / "example.xlsx"),
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("group ")]
    assert len(lines) == sum(len(w_.hosts) for w_ in PLAN.waves)
    assert "group 3  ZAPP01  puppet agent --test --detailed-exitcodes --tags catalog,zope_instance_1,zope_instance_2" in lines
    assert not (tmp_path / "build").exists() and not (tmp_path / "reports").exists()


def state_of(tmp_path) -> dict:
    path = tmp_path / "build" / "state" / "deploy-production.json"
    try:
        return {f"{s['host']}/{s['component']}": s for s in json.loads(path.read_text())["steps"]}
    except (FileNotFoundError, ValueError):
        return {}


def start_deploy(fleet, tmp_path, *args, prove=False):
    workbook = fleet_workbook(fleet, tmp_path / "fleet.xlsx")
    if not prove:
        # the timing-model fleet has no Puppet master, package server or services: nothing for pre-flight or
        # health checks to prove (tests/test_preflight.py, tests/test_health.py, test_deploy_real.py do)
        args = (*args, "--skip-preflight", "--skip-health-checks")
    return subprocess.Popen([INV, "-r", str(ROOT), "deploy", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=inv_env(fleet, tmp_path, workbook),
                            stdin=subprocess.DEVNULL)


def wait_for_running_group(tmp_path, group, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = state_of(tmp_path)
        if any(s["status"] == "running" and s["group"] == group for s in steps.values()):
            return steps
        time.sleep(0.05)
    raise AssertionError(f"group {group} never started: {state_of(tmp_path)}")


def resume_and_check(fleet, tmp_path, succeeded_before):
    counts = run_counts(fleet)
    proc = start_deploy(fleet, tmp_path, "--resume")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    final = state_of(tmp_path)
    assert all(s["status"] in ("changed", "unchanged") for s in final.values())
    assert set(final) == {s.id for s in ALL_STEPS}
    rerun = {f"{h}/{c}" for h, c in components_run_since(fleet, counts)}
    assert not rerun & succeeded_before, "a step that had succeeded ran again"
    # every step ran; each one changed its host exactly once (nothing lost, nothing redone)
    changed = {}
    for host, runs in journals(fleet).items():
        for r in runs:
            for comp, c in r["components"].items():
                if c["outcome"] == "changed":
                    changed[f"{host}/{comp}"] = changed.get(f"{host}/{comp}", 0) + 1
    assert changed == {s.id: 1 for s in ALL_STEPS}
    report_steps = json.loads((tmp_path / "reports" / "deploy.json").read_text())["steps"]
    assert {s["status"] for s in report_steps} == {"succeeded"}
    assert_no_overlap(journals(fleet))
    return rerun


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing(default_s=0.6)], indirect=True)
def test_sigterm_mid_group_lets_runs_finish_then_resume_completes(winrm_fleet, agents, tmp_path):
    proc = start_deploy(winrm_fleet, tmp_path)
    wait_for_running_group(tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "cancelled by SIGTERM" in err and "--resume" in err
    steps = state_of(tmp_path)
    # the runs in flight finished within the grace period and were recorded; nothing later started
    assert not [s for s in steps.values() if s["status"] == "running"]
    assert any(s["group"] == 2 and s["status"] == "changed" for s in steps.values())
    assert all(s["status"] == "skipped" for s in steps.values() if s["group"] >= 4)
    succeeded = {i for i, s in steps.items() if s["status"] == "changed"}
    assert (tmp_path / "reports" / "junit-deploy.xml").exists()
    resume_and_check(winrm_fleet, tmp_path, succeeded)


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing(default_s=0.6)], indirect=True)
def test_sigkill_mid_group_then_resume_rechecks_what_was_in_flight(winrm_fleet, agents, tmp_path):
    proc = start_deploy(winrm_fleet, tmp_path)
    wait_for_running_group(tmp_path, 2)
    proc.kill()
    proc.communicate(timeout=30)
    steps = state_of(tmp_path)  # whole JSON: it is only ever replaced atomically
    assert steps, "the state file is not readable after SIGKILL"
    in_flight = {i for i, s in steps.items() if s["status"] == "running"}
    succeeded = {i for i, s in steps.items() if s["status"] == "changed"}
    assert in_flight
    rerun = resume_and_check(winrm_fleet, tmp_path, succeeded)
    assert in_flight <= rerun  # re-checked and run again (Puppet found nothing left to do, or finished it)
    final = state_of(tmp_path)
    assert any("re-checked on the host" in d for i in in_flight for d in final[i]["details"])


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing(ZDB01={"puppet_fail": ["zeo_server"]})], indirect=True)
def test_inv_deploy_group_writes_the_reports(winrm_fleet, agents, tmp_path):
    proc = start_deploy(winrm_fleet, tmp_path, "--group", "1")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    proc = start_deploy(winrm_fleet, tmp_path, "--group", "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "ZDB01 zeo_server (group 2) failed" in err and "emulated fault puppet_fail" in err
    data = json.loads((tmp_path / "reports" / "deploy.json").read_text())
    assert {(s["host"], s["component"]) for s in data["steps"]} == {(s.host, s.component) for s in ALL_STEPS
                                                                      if s.group == 2}
    row = next(s for s in data["steps"] if s["component"] == "zeo_server")
    assert (row["status"], row["exit_code"], row["group"]) == ("failed", 6, 2)
    assert set(row) >= {"host", "component", "group", "status", "started", "ended", "exit_code"}
    assert row["started"].endswith("Z") and "T" in row["started"]
    copies = list((tmp_path / "reports").glob("deploy-*.json"))
    assert len(copies) == 2
    junit = (tmp_path / "reports" / "junit-deploy.xml").read_text()
    assert junit.count("<testcase") == len(data["steps"]) and "emulated fault puppet_fail" in junit
    log = (tmp_path / "reports" / "hosts" / "deploy" / "ZDB01.log").read_text()
    assert "--tags zeo_server,monitoring_agent" in log and "emulated fault" in log
    assert "ZDB01" in out and "zeo_server" in out  # the summary table


# -- the integrator's hooks ---------------------------------------------------------------------
def test_preflight_runs_before_anything_and_a_narrowed_run_names_missing_dependencies(tmp_path):
    from deploy_tasks.errors import DeployError

    class Refused(DeployError):
        pass

    seen, warnings = [], []

    def preflight(steps):
        seen.extend(steps)
        raise Refused("ZDB01: the agent is not signed")

    def connect(host):
        raise AssertionError(f"{host} contacted before the pre-flight passed")

    with pytest.raises(Refused):
        Deployment(plan_steps(EXAMPLE, PLAN, groups=[2]), connect, preflight=preflight, warn=warnings.append,
                   state_path=str(tmp_path / "state.json"), handle_signals=False).run()
    assert {s.group for s in seen} == {2}
    assert warnings[0].startswith("18 dependency step(s) outside this run are not recorded as succeeded")
    assert not (tmp_path / "state.json").exists()


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing()], indirect=True)
def test_a_failing_health_check_fails_its_step(winrm_fleet, agents, tmp_path):
    from deploy_tasks.errors import DeployError

    checked = []

    def health_check(transport, host, component):
        checked.append((host, component))
        result = transport.run("sc query Product_" + component, check=False)
        if component == "static_assets":
            raise DeployError(f"{host}: service Product_{component} is not running:\n{result.output}")

    steps = [s for s in ALL_STEPS if s.host == "ZWEB01" and s.group == 1]
    result = deploy(winrm_fleet, tmp_path, steps=steps, health_check=health_check)
    status = {r.component: r for r in result.steps}
    assert checked == [("ZWEB01", "python_runtime"), ("ZWEB01", "log_shipper"), ("ZWEB01", "static_assets")]
    assert status["static_assets"].status == "failed" and "health check failed" in status["static_assets"].error
    assert "1060" in status["static_assets"].error or "does not exist" in status["static_assets"].error
    assert status["python_runtime"].status == "changed"


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [timing()], indirect=True)
def test_inv_deploy_proves_the_plan_first_and_changes_nothing_when_it_cannot(winrm_fleet, agents, tmp_path):
    # No generated environment, no artifact manifest, no package server here: the task's pre-flight says so,
    # every problem at once, and no host sees a Puppet run.
    counts = run_counts(winrm_fleet)
    proc = start_deploy(winrm_fleet, tmp_path, "--group", "1", prove=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, out + err
    assert "pre-flight: proving the plan" in out
    assert "[environment]" in err or "[artifact]" in err, err
    assert run_counts(winrm_fleet) == counts
    assert not (tmp_path / "build" / "state" / "deploy-production.json").exists() or all(
        s["status"] != "changed" for s in state_of(tmp_path).values())
