"""inv fleet.up / fleet.status / fleet.down as a user runs them (real subprocesses, real pywinrm client)."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import openpyxl
import pytest
import winrm

ROOT = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).with_name("inv"))
pytestmark = pytest.mark.integration
FAKE = "tests.support.fake_persona:FakePersona"


@pytest.fixture
def workbook(tmp_path, example_xlsx):
    """The example workbook with its Windows servers moved to loopback addresses no one else uses."""
    wb = openpyxl.load_workbook(example_xlsx)
    ws = wb["Servers"]
    base = f"127.{random.randint(40, 250)}.{random.randint(1, 250)}"
    n = 0
    for row in ws.iter_rows(min_row=2):
        if row[2].value == "windows":
            n += 1
            row[1].value = f"{base}.{n}"
    path = tmp_path / "inventory.xlsx"
    wb.save(path)
    return path


def inv(cwd, *args, env=None):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PYTHONPATH", None)  # fleet.up itself makes the package importable by its background process
    return subprocess.run([INV, "-r", str(ROOT), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=90)


def test_fleet_up_status_down(tmp_path, workbook):
    password = "Rehearsal-Pa55-" + str(random.randint(1000, 9999))
    env = {"DEPLOY_WINRM_USER": "deployer", "DEPLOY_WINRM_PASSWORD": password}
    up = inv(tmp_path, "fleet.up", "--inventory", str(workbook), "--persona", FAKE, env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert password not in up.stdout + up.stderr
        fleet_json = tmp_path / "build" / "fleet" / "fleet.json"
        assert stat.S_IMODE(fleet_json.stat().st_mode) == 0o600
        data = json.loads(fleet_json.read_text())
        assert (data["username"], data["password"]) == ("deployer", password)
        assert [h["hostname"] for h in data["hosts"]] == ["ZDB01", "ZAPP01", "ZAPP02", "ZSRCH01", "ZSVC01", "ZWEB01"]
        assert all((h["http_port"], h["https_port"]) == (5985, 5986) for h in data["hosts"])
        for h in data["hosts"]:
            assert (tmp_path / "build" / "fleet" / h["hostname"] / "C").is_dir()
        web = data["hosts"][-1]
        s = winrm.Session(f"https://{web['address']}:5986/wsman", auth=("deployer", password), transport="ntlm",
                          server_cert_validation="validate", ca_trust_path=data["ca_cert"])
        assert s.run_cmd("hostname").std_out == b"ZWEB01\r\n"

        again = inv(tmp_path, "fleet.up", "--inventory", str(workbook), "--persona", FAKE, env=env)
        assert again.returncode == 0 and "already running" in again.stdout

        status = inv(tmp_path, "fleet.status")
        assert status.returncode == 0 and password not in status.stdout
        assert status.stdout.count(" up") == 6 and web["address"] in status.stdout
        pid = json.loads((tmp_path / "build" / "fleet" / "fleet.pid").read_text())["pid"]
    finally:
        down = inv(tmp_path, "fleet.down")
    assert down.returncode == 0 and "fleet down" in down.stdout
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    assert not (tmp_path / "build" / "fleet" / "fleet.json").exists()
    assert not (tmp_path / "build" / "fleet" / "ntlm_users").exists()
    assert "no rehearsal fleet running" in inv(tmp_path, "fleet.status").stdout
    assert "nothing to stop" in inv(tmp_path, "fleet.down").stdout


def test_fleet_up_with_a_spec_applies_its_faults(tmp_path, workbook):
    spec = tmp_path / "spec.yaml"
    spec.write_text("hosts:\n  ZDB01: {down: true}\n")
    up = inv(tmp_path, "fleet.up", "--inventory", str(workbook), "--spec", str(spec), "--persona", FAKE)
    try:
        assert up.returncode == 0, up.stderr
        lines = {line.split()[0]: line.split()[-1] for line in up.stdout.splitlines() if line.startswith("Z")}
        assert lines["ZDB01"] == "down" and lines["ZAPP01"] == "up"
    finally:
        inv(tmp_path, "fleet.down")


def test_fleet_up_reports_a_bad_spec_without_traceback(tmp_path, workbook):
    spec = tmp_path / "spec.yaml"
    spec.write_text("hosts:\n  ZDB01: {dwon: true}\n")
    up = inv(tmp_path, "fleet.up", "--inventory", str(workbook), "--spec", str(spec))
    assert up.returncode == 1
    assert "unknown fault(s) dwon" in up.stderr and str(spec) in up.stderr
    assert "Traceback" not in up.stderr
    assert not (tmp_path / "build" / "fleet" / "fleet.pid").exists()


def test_fleet_up_reports_a_persona_that_cannot_load(tmp_path, workbook):
    up = inv(tmp_path, "fleet.up", "--inventory", str(workbook), "--persona", "no_such_module:Persona")
    assert up.returncode == 1
    assert "did not start" in up.stderr and "no_such_module" in up.stderr
    assert "no rehearsal fleet running" in inv(tmp_path, "fleet.status").stdout


def test_fleet_state_follows_the_build_dir_setting(tmp_path, workbook):
    env = {"INVOKE_DEPLOY_BUILD_DIR": str(tmp_path / "elsewhere")}
    ledger = tmp_path / "ledger"
    up = inv(tmp_path, "fleet.up", "--inventory", str(workbook), "--persona", FAKE,
             env={**env, "DEPLOY_TASKS_PROCESS_LEDGER": str(ledger)})
    try:
        assert up.returncode == 0, up.stderr
        assert (tmp_path / "elsewhere" / "fleet" / "fleet.json").exists()
        assert not (tmp_path / "build").exists()
        record = json.loads((tmp_path / "elsewhere" / "fleet" / "fleet.pid").read_text())
        # the fleet is in the ledger CI stops from, under its pid and start time
        assert [p.name for p in ledger.iterdir()] == [f"{record['pid']}-{record['start_time']}.json"]
        assert "fleet running" in inv(tmp_path, "fleet.status", env=env).stdout
    finally:
        down = inv(tmp_path, "fleet.down", env={**env, "DEPLOY_TASKS_PROCESS_LEDGER": str(ledger)})
    assert down.returncode == 0 and "fleet down" in down.stdout
    assert not list(ledger.iterdir())
