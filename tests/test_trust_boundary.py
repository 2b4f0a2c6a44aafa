"""The workbook names the deployment, never a controller path; config and inventory files that would hang or crash.

Each test runs what a user runs (``inv`` in a subprocess) or loads a real
workbook, and asserts what the user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_tasks import settings as settings_mod
from deploy_tasks.errors import InventoryError, WorkbookFormatError
from deploy_tasks.inventory import load_inventory
from deploy_tasks.names import is_windows_device_name
from tests import workbooks as wb

ROOT = Path(__file__).resolve().parent.parent
INV = [sys.executable, "-m", "invoke"]


def inv(*args, env=None, cwd=ROOT, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    full_env.update(env or {})
    proc = subprocess.run(INV + list(args), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    proc.all = proc.stdout + proc.stderr
    return proc


def _problems(tmp_path, data, fmt="xlsx"):
    with pytest.raises(InventoryError) as info:
        load_inventory(wb.write(tmp_path, data, fmt))
    return [str(p) for p in info.value.problems]


def _setting_row(data, key, value):
    data["Settings"][1].append([key, value])
    return len(data["Settings"][1]) + 1


# -- controller paths are not workbook keys -----------------------------------------------
@pytest.mark.parametrize("key,value", [
    ("puppet_agent_msi", "/root/.ssh/id_rsa"),
    ("artifact_source", "/root"),
    ("winrm_ca_path", "/etc/shadow"),
    ("repository", "/var/www"),
    ("build_dir", "/"),
    ("template_dir", "/tmp/evil"),
    ("puppet_dir", "/etc/puppet/code"),
    ("ssh_config", "/tmp/cfg"),
    ("package_root", "/"),
])
def test_a_path_setting_in_the_workbook_is_refused_and_says_where_to_set_it(tmp_path, key, value):
    data = wb.sheets()
    row = _setting_row(data, key, value)
    problems = _problems(tmp_path, data)
    assert any(p.startswith(f"Settings!B{row}: setting {key!r} belongs to the controller") and "it is a path" in p
               and f"INVOKE_DEPLOY_{key.upper()}" in p and f"deploy.{key}" in p for p in problems), problems


def test_every_path_valued_setting_is_controller_only():
    for spec in settings_mod.SETTINGS:
        looks_like_path = spec.name.endswith(("_dir", "_path", "_source", "_root", "_config", "_msi")) \
            or spec.name in ("inventory", "repository", "puppet_modules")
        if looks_like_path:
            assert spec.path and not spec.workbook, spec.name
        if spec.workbook:
            assert not spec.path, spec.name


def test_an_old_workbook_with_artifact_source_is_refused_at_its_value_cell(tmp_path):
    data = wb.sheets()
    rows = data["Settings"][1]
    rows.insert(3, ["artifact_source", "/root"])  # where the example had it: row 5
    problems = _problems(tmp_path, data)
    assert any(p.startswith("Settings!B5: setting 'artifact_source' belongs to the controller") for p in problems), \
        problems


def test_a_controller_setting_that_is_no_path_is_refused_at_its_key(tmp_path):
    data = wb.sheets()
    row = _setting_row(data, "extract_workers", 4)
    problems = _problems(tmp_path, data)
    assert any(p.startswith(f"Settings!A{row}: setting 'extract_workers' belongs to the controller")
               and "it is a path" not in p for p in problems), problems


def test_the_msi_path_in_the_sheet_points_to_the_msi_name_instead(tmp_path):
    data = wb.sheets()
    _setting_row(data, "puppet_agent_msi", "build/release/puppet-agent-7.23.0-x64.msi")
    problems = _problems(tmp_path, data)
    assert any("puppet_agent_msi_name" in p for p in problems), problems


@pytest.mark.parametrize("name,ok", [
    ("puppet-agent-7.23.0-x64.msi", True),
    ("../../root/agent.msi", False),
    ("/root/agent.msi", False),
    ("sub/agent.msi", False),
    ("agent.exe", False),
    ("con.msi", False),
])
def test_the_agent_msi_name_is_a_file_name_inside_the_release(tmp_path, name, ok):
    data = wb.sheets()
    wb.set_cell(data, "Settings", wb.row_of(data, "Settings", "Key", "puppet_agent_msi_name"), "Value", name)
    if ok:
        inventory = load_inventory(wb.write(tmp_path, data))
        settings = settings_mod.resolve({**inventory.settings, "artifact_source": "/srv/release"})
        assert settings.agent_msi_path == f"/srv/release/{name}"
    else:
        assert any(p.startswith("Settings!B") and "puppet_agent_msi_name" in p for p in _problems(tmp_path, data))


def test_the_controller_msi_path_wins_over_the_name_inside_the_release():
    s = settings_mod.resolve({"puppet_agent_msi": "/opt/agent.msi", "puppet_agent_msi_name": "x.msi"})
    assert s.agent_msi_path == "/opt/agent.msi"
    assert settings_mod.resolve({}).agent_msi_path == ""


def test_the_example_workbook_names_no_path():
    inventory = load_inventory(ROOT / "inventory" / "example.xlsx")
    for key in inventory.settings:
        assert settings_mod.BY_NAME[key].workbook and not settings_mod.BY_NAME[key].path, key
    assert inventory.settings["puppet_agent_msi_name"] == "puppet-agent-7.23.0-x64.msi"


# -- Windows device names ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CON", "aux.zip", "com1.tar.gz", "NUL.txt", "lpt9.msi", "Prn"])
def test_windows_device_names(name):
    assert is_windows_device_name(name)


@pytest.mark.parametrize("name", ["console.zip", "auxiliary.tar.gz", "com10.zip", "nullable.zip"])
def test_names_that_only_look_like_devices(name):
    assert not is_windows_device_name(name)


@pytest.mark.parametrize("artifact", ["CON", "aux.zip", "com1.tar.gz"])
def test_a_device_name_as_artifact_is_refused(tmp_path, artifact):
    data = wb.sheets()
    row = wb.row_of(data, "Components", "Component", "catalog")
    wb.set_cell(data, "Components", row, "Artifact", artifact)
    problems = _problems(tmp_path, data)
    assert any(p.startswith(f"Components!C{row}") and "Windows device name" in p for p in problems), problems


@pytest.mark.parametrize("component", ["con", "aux", "com1", "nul"])
def test_a_device_name_as_component_is_refused(tmp_path, component):
    data = wb.sheets()
    row = wb.row_of(data, "Components", "Component", "catalog")
    wb.set_cell(data, "Components", row, "Component", component)
    problems = _problems(tmp_path, data)
    assert any(p.startswith(f"Components!A{row}") and "Windows device name" in p for p in problems), problems


# -- the inventory file itself ----------------------------------------------------------------
def test_a_fifo_as_inventory_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "inventory.xlsx"
    os.mkfifo(fifo)
    with pytest.raises(WorkbookFormatError, match="FIFO"):
        load_inventory(fifo)
    proc = inv("validate", "--inventory", str(fifo), timeout=60)
    assert proc.returncode == 1 and "is a FIFO (named pipe), not a workbook file" in proc.stderr, proc.all
    assert "Traceback" not in proc.all


def test_a_device_as_inventory_is_refused():
    with pytest.raises(WorkbookFormatError, match="is a device"):
        load_inventory("/dev/zero")


@pytest.mark.parametrize("lock", ["~$inv.xlsx", ".~lock.inv.xlsx#"])
def test_a_workbook_open_in_excel_is_a_warning(tmp_path, lock):
    path = wb.write(tmp_path, wb.sheets())
    (tmp_path / lock).write_bytes(b"someone\x00")
    inventory = load_inventory(path)
    assert any("open in Excel or LibreOffice" in str(w) and lock in str(w) for w in inventory.warnings)
    proc = inv("validate", "--inventory", str(path))
    assert proc.returncode == 0 and "open in Excel or LibreOffice" in proc.all, proc.all


def test_excel_s_shortened_lock_name_counts(tmp_path):
    path = wb.write(tmp_path, wb.sheets(), name="deployment")
    (tmp_path / "~$ployment.xlsx").write_bytes(b"x")
    assert any("open in Excel" in str(w) for w in load_inventory(path).warnings)


# -- certnames ----------------------------------------------------------------------------------
def _clashing_workbook(tmp_path):
    data = wb.sheets()
    data["Servers"][1].append(["zdb01.example.test", "127.0.0.21", "windows", "db", None, None])
    return wb.write(tmp_path, data)


def test_validate_refuses_colliding_certnames_that_generate_config_would_refuse(tmp_path):
    path = _clashing_workbook(tmp_path)
    proc = inv("validate", "--inventory", str(path))
    assert proc.returncode == 1, proc.all
    assert "gets the Puppet certname zdb01.example.test, as 'ZDB01'" in proc.stderr
    assert "Servers!A9" in proc.stderr
    proc = inv("validate", "--inventory", str(path), "--format", "json")
    assert proc.returncode == 1 and '"valid": false' in proc.stdout


def test_the_certname_check_follows_the_domain_wherever_it_is_set(tmp_path):
    path = _clashing_workbook(tmp_path)
    # with another domain, ZDB01 is zdb01.other.test: no clash
    proc = inv("validate", "--inventory", str(path), env={"INVOKE_DEPLOY_DOMAIN": "other.test"})
    assert proc.returncode == 0, proc.all


# -- invoke.yaml and INVOKE_DEPLOY_* --------------------------------------------------------------
def _project(tmp_path, yaml_text):
    (tmp_path / "tasks.py").write_text((ROOT / "tasks.py").read_text())
    (tmp_path / "deploy_tasks").symlink_to(ROOT / "deploy_tasks")
    (tmp_path / "invoke.yaml").write_text(yaml_text)
    return tmp_path


@pytest.mark.parametrize("yaml_text,message", [
    ("deploy: {max_parallel: [\n", "invoke.yaml line 2, column 1: not valid YAML"),
    ("deploy:\n  inventory: [a, b]\n", "invoke.yaml: deploy.inventory is a list; a setting takes one value"),
    ("deploy:\n  max_parallel: {a: 1}\n", "invoke.yaml: deploy.max_parallel is a mapping; a setting takes one value"),
    ("deploy:\n  max_paralel: 5\n", "invoke.yaml: deploy: 'max_paralel' is not a setting (did you mean max_parallel?)"),
    ("deploy: [1]\n", "invoke.yaml: deploy is a list"),
    ("- 1\n- 2\n", "invoke.yaml: the file holds a list"),
    ("run: 5\n", "invoke.yaml: run is int; Invoke expects a mapping there"),
])
@pytest.mark.parametrize("task", ["validate", "--list"])
def test_a_bad_invoke_yaml_is_one_clear_line(tmp_path, yaml_text, message, task):
    proc = inv(task, cwd=_project(tmp_path, yaml_text))
    assert proc.returncode == 1, proc.all
    assert message in proc.stderr
    assert "Traceback" not in proc.all


def test_an_unknown_env_setting_is_named_with_the_closest():
    proc = inv("plan", env={"INVOKE_DEPLOY_MAX_PARALEL": "5"})
    assert proc.returncode == 1
    assert "INVOKE_DEPLOY_MAX_PARALEL names no setting (did you mean INVOKE_DEPLOY_MAX_PARALLEL?)" in proc.stderr


def test_an_unknown_key_reaching_resolve_is_refused():
    with pytest.raises(Exception, match="'max_paralel' is not a setting"):
        settings_mod.resolve({"max_paralel": 5})


def test_a_good_invoke_yaml_still_works(tmp_path):
    proc = inv("validate", cwd=_project(tmp_path, "deploy:\n  max_parallel: 5\n  inventory: "
                                                   f"{ROOT / 'inventory' / 'example.xlsx'}\n"))
    assert proc.returncode == 0, proc.all
