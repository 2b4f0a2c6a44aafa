"""inv rehearse: the whole chain on this machine, the Windows side against the EMULATED fleet.

Real: nginx, puppetserver, the pywinrm client, the Linux Puppet agent behind each emulated node (CSR,
signing, catalogs). Emulated: the Windows hosts. Everything the run creates is its own: a build dir, a
package root and a Puppet environment unique to this test run; the emulated nodes' certificates (the
example's names, reissued by every rehearsal) are cleaned afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_tasks.inventory import load_inventory
from deploy_tasks.tasks.rehearse import check_rehearsable
from deploy_tasks.errors import DeployError
from tests.support import services

ROOT = Path(__file__).resolve().parent.parent
INV = [sys.executable, "-m", "invoke", "-r", str(ROOT)]


def test_an_inventory_with_servers_elsewhere_is_never_rehearsed(example_xlsx):
    inv = load_inventory(example_xlsx)
    check_rehearsable(inv)  # the example lives on this machine
    from dataclasses import replace

    moved = replace(inv, servers=tuple(replace(s, address="10.1.2.3") if s.hostname == "ZDB01" else s
                                       for s in inv.servers))
    with pytest.raises(DeployError) as err:
        check_rehearsable(moved)
    assert "ZDB01 (10.1.2.3)" in str(err.value) and "only on this machine" in str(err.value)


@pytest.mark.integration
@pytest.mark.slow
def test_rehearse_runs_the_whole_chain_and_a_second_run_changes_nothing(puppet_master, master_environment,
                                                                      tmp_path):
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install nginx)")
    environment = master_environment("rehearse")
    # the example's own domain: another one would rename the shared master (deploy01.<domain>) and restart it
    domain = load_inventory(ROOT / "inventory" / "example.xlsx").settings["domain"]
    package_root = f"/srv/deploy_tasks-test/rehearse-{services.RUN_ID}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "DEPLOY_WINRM_"))}
    env.update({
        "HOME": str(tmp_path), "INVOKE_DEPLOY_INVENTORY": str(ROOT / "inventory" / "example.xlsx"),
        "INVOKE_DEPLOY_BUILD_DIR": str(tmp_path / "build"), "INVOKE_DEPLOY_REPORTS_DIR": str(tmp_path / "reports"),
        "INVOKE_DEPLOY_REPOSITORY": str(tmp_path / "build" / "repository"),
        "INVOKE_DEPLOY_ARTIFACT_SOURCE": str(tmp_path / "build" / "release"),
        "INVOKE_DEPLOY_PUPPET_MODULES": str(ROOT / "puppet" / "modules"),
        "INVOKE_DEPLOY_ENVIRONMENT": environment,
        "INVOKE_DEPLOY_PACKAGE_PORT": str(services.free_port()), "INVOKE_DEPLOY_PACKAGE_ROOT": package_root,
    })
    certnames = [f"{h.lower()}.{domain}" for h in ("ZDB01", "ZAPP01", "ZAPP02", "ZSRCH01", "ZSVC01", "ZWEB01")]
    try:
        first = subprocess.run(INV + ["rehearse"], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=900, stdin=subprocess.DEVNULL)
        out = first.stdout + first.stderr
        assert first.returncode == 0, out[-6000:]
        assert "Traceback" not in out and "rehearsal passed" in out
        for stage in ("validate", "extract-artifacts", "generate-config", "publish-config",
                      "fleet.up (EMULATED Windows hosts)", "bootstrap: Puppet agents over WinRM", "deploy",
                      "fleet.down"):
            assert f"== rehearse: {stage}" in out
        steps = json.loads((tmp_path / "reports" / "deploy.json").read_text())["steps"]
        assert len(steps) == 52 and {s["status"] for s in steps} == {"succeeded"}
        agents = json.loads((tmp_path / "reports" / "bootstrap.json").read_text())
        assert sorted(u["host"] for u in agents["units"]) == sorted(h.upper() for h in
                                                                   ("ZDB01", "ZAPP01", "ZAPP02", "ZSRCH01",
                                                                    "ZSVC01", "ZWEB01"))
        assert all(u["status"] == "changed" for u in agents["units"])

        second = subprocess.run(INV + ["rehearse"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=900, stdin=subprocess.DEVNULL)
        out = second.stdout + second.stderr
        assert second.returncode == 0, out[-6000:]
        assert "52 step(s): 52 unchanged" in out
        agents = json.loads((tmp_path / "reports" / "bootstrap.json").read_text())
        assert all(u["status"] == "unchanged" for u in agents["units"])
    finally:
        subprocess.run(INV + ["fleet.down"], cwd=tmp_path, env=env, capture_output=True, timeout=120)
        subprocess.run(["puppetserver", "ca", "clean", "--certname", ",".join(certnames)], capture_output=True,
                       timeout=300)
        shutil.rmtree(package_root, ignore_errors=True)
