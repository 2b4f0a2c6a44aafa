"""The example deploys completely on the fleet backed by the REAL Puppet agent and the REAL puppetserver.

The generated environment (``inv generate-config``'s renderer and writer, the
example product module) is written into the real master's code dir under a
name unique to this test run; the artifacts are real zips served over HTTP;
every emulated host gets the agent MSI with msiexec, submits its CSR with the
real Linux agent, and is signed on the real master (certnames under a domain
unique to this run, cleaned from the CA afterwards). Each Puppet run then
fetches its catalog from the real server with Windows facts and applies the
tagged components into the host's sandbox.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from deploy_tasks.configgen import render
from deploy_tasks.configgen.check import find_puppet
from deploy_tasks.configgen.output import read_modules, write
from deploy_tasks.inventory import load_inventory
from deploy_tasks.plan import make_plan
from deploy_tasks.report import deploy as report
from deploy_tasks.runner.deploy import Deployment, plan_steps
from deploy_tasks.settings import resolve
from tests.support.deploy_fleet import (PackageServer, assert_dependencies_first, assert_no_overlap,
                                        install_agents, journals)
from tests.support.services import RUN_ID
from tests.test_deploy import connector

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = f"dep{RUN_ID}.test"
pytestmark = pytest.mark.integration


@pytest.fixture
def real_lab(puppet_master, master_environment, tmp_path):
    if not shutil.which("puppet"):
        pytest.skip("the Linux puppet agent is not installed (apt-get install puppet-agent)")
    environment = master_environment("deploytest")
    inventory = load_inventory(ROOT / "inventory" / "example.xlsx")
    repo = tmp_path / "repository"
    for comp in inventory.components:
        target = repo / environment / comp.name / comp.version / comp.artifact
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w") as zf:
            zf.writestr(f"{comp.name}/VERSION.txt", f"{comp.name} {comp.version}\n")
    server = PackageServer(repo)
    port = int(server.url.rsplit(":", 1)[1])
    settings = resolve({**inventory.settings, "environment": environment, "domain": DOMAIN, "package_port": port,
                        "repository": str(tmp_path / "none")})
    rendered = render(inventory, settings, None, read_modules(ROOT / "puppet" / "modules"))
    write(rendered, Path(puppet_master["codedir"]), find_puppet())
    conf = tmp_path / "ca" / "puppet.conf"
    conf.parent.mkdir()
    conf.write_text(f"[main]\ncertname = {puppet_master['certname']}\nserver = 127.0.0.1\nca_server = 127.0.0.1\n"
                    f"ssldir = {puppet_master['ssldir']}\n")
    signed = []

    def ca(*args):
        return subprocess.run(["puppetserver", "ca", *args, "--config", str(conf)], capture_output=True, text=True,
                              timeout=300)

    yield {"inventory": inventory, "environment": environment, "ca": ca, "signed": signed}
    server.close()
    if signed:
        ca("clean", "--certname", ",".join(signed))


@pytest.mark.parametrize("winrm_fleet", [{}], indirect=True)
def test_the_example_deploys_completely_with_the_real_agent(winrm_fleet, real_lab, tmp_path):
    inventory = real_lab["inventory"]
    names = {h.hostname: f"{h.hostname.lower()}.{DOMAIN}" for h in winrm_fleet.hosts.values()}
    install_agents(winrm_fleet, tmp_path, environment=real_lab["environment"], certnames=names)
    # the CSRs, made by the real agent on each host, then signed on the real master
    for host in winrm_fleet.hosts.values():
        out, err, code = host.persona.run("puppet agent --test --waitforcert 0")
        assert "you might still need to sign" in out, (out, err)
    real_lab["signed"].extend(names.values())
    signing = real_lab["ca"]("sign", "--certname", ",".join(names.values()))
    assert signing.returncode == 0, signing.stdout + signing.stderr

    steps = plan_steps(inventory, make_plan(inventory))
    result = Deployment(steps, connector(winrm_fleet), state_path=str(tmp_path / "state.json"), handle_signals=False,
                        max_parallel=6, classes={c.name: c.puppet_class for c in inventory.components}).run()
    assert result.ok, report.summary(result)
    assert all(r.status == "changed" and r.exit_code == 2 for r in result.steps)
    runs = journals(winrm_fleet)
    assert_no_overlap(runs)
    assert_dependencies_first(runs, inventory)
    # every mapped component was applied on its host by a real catalog, once
    for host, host_runs in runs.items():
        applied = [c for r in host_runs for c in r["component_order"]]
        assert sorted(applied) == sorted(inventory.components_on(host))
        assert all(r["mode"] == "real" and r["environment"] == real_lab["environment"] for r in host_runs)
        sandbox = winrm_fleet.host(host).persona.sandbox
        for comp in inventory.components_on(host):
            root = inventory.parameters_for(host, comp).get("install_root", "C:\\Product")
            assert (sandbox / root[3:] / comp / "etc" / "parameters.json").exists(), (host, comp)
