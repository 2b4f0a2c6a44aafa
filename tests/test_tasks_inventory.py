"""The inventory tasks as a user runs them: `inv validate`, `inv plan`, `inv init-inventory`, settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest
from invoke import Config, Context

from deploy_tasks import settings as settings_mod
from deploy_tasks.inventory import load_inventory
from deploy_tasks.tasks._common import resolve_settings
from tests import workbooks as wb

ROOT = Path(__file__).resolve().parent.parent
INV = [sys.executable, "-m", "invoke"]


def inv(*args, env=None, cwd=ROOT):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    full_env.update(env or {})
    return subprocess.run(INV + list(args), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


def test_list_shows_every_task_with_a_summary():
    out = inv("--list").stdout
    for name in ("validate", "plan", "init-inventory"):
        line = next(l for l in out.splitlines() if l.strip().startswith(name))
        assert len(line.split(None, 1)) == 2, f"{name} has no summary"


ALL_TASKS = ["validate", "plan", "init-inventory", "make-release", "extract-artifacts", "generate-config",
             "bootstrap", "publish-config", "fleet.up", "fleet.status", "fleet.down"]


def test_every_task_is_listed():
    out = inv("--list").stdout
    listed = {line.split()[0] for line in out.splitlines()[2:] if line.strip()}
    assert set(ALL_TASKS) <= listed, set(ALL_TASKS) - listed


@pytest.mark.parametrize("task", [t for t in ALL_TASKS if t not in ("fleet.status", "fleet.down")])
def test_every_flag_has_help(task):
    out = inv("--help", task).stdout
    options = [l for l in out.splitlines() if l.strip().startswith("-")]
    assert options
    for line in options:
        assert len(line.strip().split(None, 1)) == 2, f"flag without help: {line!r}"


def test_validate_example_passes():
    result = inv("validate")
    assert result.returncode == 0, result.stderr
    assert "valid: 7 servers (6 windows), 34 components in 6 groups" in result.stdout


def test_validate_lists_every_problem_and_exits_1(tmp_path):
    data = wb.sheets()
    wb.set_cell(data, "Servers", 3, "Address", "10.0.0.999")
    data["Mapping"][1].append(["ZAPP01", "catalgo", None, None])
    path = wb.write(tmp_path, data)
    result = inv("validate", "--inventory", str(path))
    assert result.returncode == 1
    assert "2 problems found" in result.stderr
    assert "Servers!B3: address '10.0.0.999'" in result.stderr
    assert "Mapping!B54: unknown component 'catalgo' (did you mean 'catalog'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_json(tmp_path):
    data = wb.sheets()
    wb.set_cell(data, "Components", 2, "Version", 2.5)
    good = inv("validate", "--inventory", str(wb.write(tmp_path, data)), "--format", "json")
    assert good.returncode == 0
    doc = json.loads(good.stdout)
    assert doc["valid"] is True and doc["components"] == 34
    assert doc["warnings"][0]["where"] == "Components!B2"
    wb.set_cell(data, "Servers", 3, "OS", "beos")
    bad = inv("validate", "--inventory", str(wb.write(tmp_path, data, name="bad")), "--format", "json")
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["valid"] is False
    assert doc["problems"] == [{"where": "Servers!C3", "message": "OS 'beos' is not one of windows, linux",
                                "hint": "write the OS family only: windows or linux", "severity": "error"}]


def test_plan_json_shape():
    result = inv("plan", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    groups = doc["groups"]
    assert [g["group"] for g in groups] == list(range(1, len(groups) + 1))
    by_name = {c["name"]: (g["group"], c) for g in groups for c in g["components"]}
    assert len(by_name) == 34
    for name, (group, comp) in by_name.items():
        deps = comp["depends_on"]
        expected = 1 + max((by_name[d][0] for d in deps), default=0)
        assert group == expected, name
        assert set(comp) == {"name", "version", "depends_on", "hosts"}
    assert by_name["zeo_server"][1]["hosts"] == ["ZDB01"]
    assert by_name["health_dashboard"][0] == 6


def test_plan_text_shows_groups():
    out = inv("plan").stdout
    assert "Group 1: 8 components on 6 hosts" in out
    assert "Group 6:" in out and "health_dashboard" in out


def test_missing_inventory_is_one_sentence():
    result = inv("validate", "--inventory", "nope.xlsx")
    assert result.returncode == 1
    assert "nope.xlsx: file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_inventory_starter(tmp_path):
    path = tmp_path / "new.xlsx"
    result = inv("init-inventory", str(path))
    assert result.returncode == 0, result.stderr
    book = openpyxl.load_workbook(path)
    for title in ("Settings", "Servers", "Components", "Mapping", "Parameters"):
        ws = book[title]
        assert ws.freeze_panes == "A2"
        for cell in ws[1]:
            if cell.value:
                assert cell.comment is not None and cell.comment.text, (title, cell.value)
    version_col = [c.value for c in book["Components"][1]].index("Version") + 1
    assert book["Components"].cell(row=5, column=version_col).number_format == "@"
    lists = {str(dv.sqref)[0]: dv.formula1 for dv in book["Servers"].data_validations.dataValidation}
    assert "Lists!$A$1" in lists["C"]  # OS drop-down
    assert "Lists!$B$1" in lists["D"]  # roles drop-down
    mapping = [dv.formula1 for dv in book["Mapping"].data_validations.dataValidation]
    assert any("Servers!" in f for f in mapping) and any("Components!" in f for f in mapping)
    # refusing to overwrite; the starter names every workbook setting
    again = inv("init-inventory", str(path))
    assert again.returncode == 1 and "already exists" in again.stderr
    keys = [r[0].value for r in book["Settings"].iter_rows(min_row=2) if r[0].value]
    assert keys == list(settings_mod.WORKBOOK_KEYS)


def test_init_inventory_example_roundtrip(tmp_path):
    for name in ("ex.xlsx", "ex.xls"):
        result = inv("init-inventory", str(tmp_path / name), "--example")
        assert result.returncode == 0, result.stderr
    assert load_inventory(tmp_path / "ex.xlsx").components == load_inventory(tmp_path / "ex.xls").components


def test_settings_precedence(tmp_path, monkeypatch):
    """flag > INVOKE_DEPLOY_* env > invoke.yaml > Settings sheet > declared default."""
    data = wb.sheets()
    data["Settings"] = (data["Settings"][0], [["max_parallel", 3], ["retries", 4], ["command_timeout_s", 77],
                                              ["package_port", 9090]])
    inventory = load_inventory(wb.write(tmp_path, data))
    (tmp_path / "invoke.yaml").write_text("deploy:\n  retries: 5\n  command_timeout_s: 66\n  package_port: 9191\n")
    monkeypatch.setenv("INVOKE_DEPLOY_COMMAND_TIMEOUT_S", "55")
    monkeypatch.setenv("INVOKE_DEPLOY_PACKAGE_PORT", "9292")
    config = Config(project_location=str(tmp_path))
    config.load_collection({"deploy": settings_mod.declared_defaults()})
    config.load_project()
    config.load_shell_env()
    s = resolve_settings(Context(config), inventory, package_port=9393)
    assert s.package_port == 9393        # flag
    assert s.command_timeout_s == 55     # env over invoke.yaml and sheet
    assert s.retries == 5                # invoke.yaml over sheet
    assert s.max_parallel == 3           # sheet over default
    assert s.winrm_scheme == "https"     # default


def test_bad_setting_from_env_is_named():
    result = inv("plan", env={"INVOKE_DEPLOY_MAX_PARALLEL": "lots"})
    assert result.returncode == 1
    assert "setting max_parallel = 'lots' must be a whole number" in result.stderr
    assert "INVOKE_DEPLOY_MAX_PARALLEL" in result.stderr


def test_inventory_readme_documents_every_setting():
    text = (ROOT / "inventory" / "README.md").read_text()
    for s in settings_mod.SETTINGS:
        assert f"| `{s.name}` |" in text, f"setting {s.name} is not documented in inventory/README.md"


def test_json_stays_json_for_an_odd_xls_and_an_invalid_plan(tmp_path):
    padded = tmp_path / "padded.xls"
    padded.write_bytes(wb.write(tmp_path, wb.sheets(), "xls").read_bytes() + b"\x00" * 100)
    result = inv("validate", "--format", "json", "--inventory", str(padded))
    assert json.loads(result.stdout)["valid"] is True  # xlrd's diagnostics stay off stdout
    data = wb.sheets()
    wb.set_cell(data, "Components", 10, "Depends On", "zodb_storage, workflow_engine")
    bad = inv("plan", "--format", "json", "--inventory", str(wb.write(tmp_path, data, name="cycle")))
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["valid"] is False and doc["groups"] == [] and "dependency cycle" in doc["problems"][0]["message"]
