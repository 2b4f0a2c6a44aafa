"""Validation messages word for word: the cell, the rule and the hint a user reads (and a few boundaries).

tests/test_inventory_validation.py checks each rule's cell and the start of its
message on both formats; these pin the rest (the hints, the boundaries of a
port and a timeout, warnings), on .xlsx.
"""

from __future__ import annotations

import datetime as dt

import pytest

from deploy_tasks.errors import InventoryError
from deploy_tasks.inventory import load_inventory
from tests import workbooks as wb


def _server(d, host):
    return wb.row_of(d, "Servers", "Hostname", host)


def _component(d, name):
    return wb.row_of(d, "Components", "Component", name)


def _set_server(host, header, value):
    return lambda d: wb.set_cell(d, "Servers", _server(d, host), header, value)


def _set_component(name, header, value):
    return lambda d: wb.set_cell(d, "Components", _component(d, name), header, value)


PORT_HINT = "(use a whole number from 1 to 65535)"


@pytest.mark.parametrize("edit, expected", [
    (_set_server("ZDB01", "WinRM Port", 0), f"Servers!E3: WinRM Port 0 is out of range {PORT_HINT}"),
    (_set_server("ZDB01", "WinRM Port", 65536.0), f"Servers!E3: WinRM Port 65536 is out of range {PORT_HINT}"),
    (_set_server("ZDB01", "WinRM Port", "https"), f"Servers!E3: WinRM Port 'https' is not a number {PORT_HINT}"),
    (_set_server("ZDB01", "WinRM Port", True), f"Servers!E3: WinRM Port True is not a port number {PORT_HINT}"),
    (_set_component("catalog", "Timeout (s)", 0),
     "Components!F16: Timeout (s) 0 is not a positive whole number of seconds"),
    (_set_component("catalog", "Timeout (s)", dt.datetime(2020, 1, 1)),
     "Components!F16: Timeout (s) is a date or time (2020-01-01 00:00:00), not a number of seconds (format the "
     "column as a number and type the value again)"),
    (_set_component("catalog", "Component", "Catalog-2"),
     "Components!A16: component name 'Catalog-2' must match ^[a-z][a-z0-9_]*$ (it becomes a Puppet class name, a "
     "tag and part of command lines) (for example 'catalog_2')"),
    (_set_component("catalog", "Component", "--"),
     "Components!A16: component name '--' must match ^[a-z][a-z0-9_]*$ (it becomes a Puppet class name, a tag and "
     "part of command lines)"),
    (_set_component("catalog", "Component", "class"),
     "Components!A16: component name 'class' is a Puppet reserved word (choose another name)"),
    (_set_component("catalog", "Component", "con"),
     "Components!A16: component name 'con' is a Windows device name (it becomes a folder on the Windows hosts, "
     "and Windows would open a device) (choose another name)"),
    (_set_component("catalog", "Version", "1.0 beta"),
     "Components!B16: version '1.0 beta' may hold only letters, digits and . _ + -"),
    (_set_component("catalog", "Artifact", "../catalog.zip"),
     "Components!C16: artifact '../catalog.zip' must be a plain file name (letters, digits and . _ + -, no "
     "folders; the release directory holds the file)"),
    (_set_component("catalog", "Artifact", "nul.zip"),
     "Components!C16: artifact 'nul.zip' is a Windows device name (NUL): Windows would open a device, not the "
     "file (rename the artifact)"),
    (_set_component("catalog", "Puppet Class", "Product::Catalog"),
     "Components!E16: puppet class 'Product::Catalog' is not a valid class name (segments of lowercase letters, "
     "digits and _, joined by ::, for example product::zeo)"),
    (_set_component("catalog", "Depends On", "zeo_server\nzope_base"),
     "Components!D16: dependencies 'zeo_server\\nzope_base' must be separated by commas"),
    (lambda d: d["Servers"][0].__setitem__(5, "Notez"), "Servers!F1: unknown column 'Notez' (did you mean 'Notes'?)"),
    (lambda d: d["Mapping"][0].__setitem__(3, "Bad Name!"),
     "Mapping!D1: parameter column 'Bad Name!' is not a Puppet parameter name (lowercase letter first, then "
     "lowercase letters, digits, _) (rename it 'bad_name')"),
    (lambda d: d["Mapping"][0].__setitem__(3, "alias"),
     "Mapping!D1: parameter column 'alias' is a name Puppet reserves for every resource (rename it)"),
    (lambda d: d["Settings"][1].append(["puppet_agent_msi", "x.msi"]),
     "Settings!B13: setting 'puppet_agent_msi' belongs to the controller, not the workbook: it is a path, and the "
     "workbook (which anyone may edit) never names a path on the controller (set it in invoke.yaml "
     "(deploy.puppet_agent_msi), INVOKE_DEPLOY_PUPPET_AGENT_MSI or a --flag; for an MSI inside the release, give "
     "its file name as puppet_agent_msi_name)"),
    (lambda d: d["Settings"][1].append(["inventory", "x.xlsx"]),
     "Settings!B13: setting 'inventory' belongs to the controller, not the workbook: it is a path, and the "
     "workbook (which anyone may edit) never names a path on the controller (set it in invoke.yaml "
     "(deploy.inventory), INVOKE_DEPLOY_INVENTORY or a --flag)"),
    (_set_server("ZDB01", "Hostname", "zdb01."),
     "Servers!A3: hostname 'zdb01.' ends with a dot (write the host name without the trailing dot (the domain "
     "setting completes it))"),
    (_set_server("ZAPP01", "Hostname", "-bad-"),
     "Servers!A4: hostname '-bad-' is not a valid host name (letters, digits and hyphens, dot-separated labels of "
     "at most 63 characters, not starting or ending with a hyphen)"),
    (_set_server("ZAPP02", "Hostname", "zapp01"),
     "Servers!A5: hostname 'zapp01' is already used in Servers!A4 (host names are compared ignoring case)"),
    (_set_server("ZAPP02", "Hostname", None), "Servers!A5: Hostname is empty"),
    (_set_server("ZWEB01", "OS", "windoze"),
     "Servers!C8: OS 'windoze' is not one of windows, linux (did you mean 'windows'?)"),
    (_set_server("ZWEB01", "OS", "beos"),
     "Servers!C8: OS 'beos' is not one of windows, linux (write the OS family only: windows or linux)"),
    (_set_server("ZWEB01", "Roles", "web, zzzzzz"),
     "Servers!D8: unknown role 'zzzzzz' (known roles: puppet-master, package-server, app, db, web, zeo, search, "
     "mail, reporting, ldap, cache, worker, proxy, monitoring)"),
    (_set_server("ZWEB01", "Roles", "web\nproxy"), "Servers!D8: roles 'web\\nproxy' must be separated by commas"),
    (lambda d: d.__setitem__("Servers", ([], [])),
     "Servers sheet: the sheet is empty; it needs a header row: Hostname, Address, OS, Roles, WinRM Port, Notes"),
    (lambda d: d["Servers"][0].__setitem__(5, "Hostname"),
     "Servers!F1: column 'Hostname' appears twice (also Servers!A1) (delete one of them)"),
    (lambda d: d["Servers"][0].__setitem__(5, "Qqqqqq"),
     "Servers!F1: unknown column 'Qqqqqq' (known columns: Hostname, Address, OS, Roles, WinRM Port, Notes)"),
], ids=["port-0", "port-65536", "port-text", "port-bool", "timeout-0", "timeout-date", "name-suggested",
        "name-no-suggestion", "name-reserved", "name-device", "version", "artifact-path", "artifact-device",
        "puppet-class", "depends-line-break", "unknown-column", "parameter-column", "parameter-reserved",
        "controller-msi", "controller-path", "host-dot", "host-invalid", "host-twice", "host-empty", "os-near",
        "os-far", "role-unknown", "roles-line-break", "sheet-empty", "column-twice", "column-unknown"])
def test_the_first_problem_word_for_word(tmp_path, edit, expected):
    data = wb.sheets()
    edit(data)
    with pytest.raises(InventoryError) as err:
        load_inventory(wb.write(tmp_path, data))
    assert str(err.value.problems[0]) == expected


def test_warnings_word_for_word(tmp_path):
    data = wb.sheets()
    wb.set_cell(data, "Servers", _server(data, "deploy01"), "WinRM Port", 5985)
    wb.set_cell(data, "Servers", _server(data, "ZAPP02"), "Address", "127.0.0.11")
    wb.set_cell(data, "Servers", _server(data, "deploy01"), "Address", "LOCAL")
    wb.set_cell(data, "Components", _component(data, "catalog"), "Version", 1.5)
    inv = load_inventory(wb.write(tmp_path, data))
    assert inv.server("deploy01").address == "local"
    assert [str(w) for w in inv.warnings] == [
        "Servers!E2: a WinRM port on a linux server is ignored",
        "Servers!B5: address '127.0.0.11' is also used in Servers!B3",
        "Components!B16: version '1.5' is stored as a number, so 1.10 would read as 1.1 (format the Version column "
        "as text and retype the version)"]
    assert {w.severity for w in inv.warnings} == {"warning"}


@pytest.mark.parametrize("port, expected", [(1, 1), (65535, 65535), (1.0, 1), (65535.0, 65535), (" 65535 ", 65535)])
def test_the_ends_of_the_port_range_are_ports(tmp_path, port, expected):
    data = wb.sheets()
    wb.set_cell(data, "Servers", _server(data, "ZDB01"), "WinRM Port", port)
    assert load_inventory(wb.write(tmp_path, data)).server("ZDB01").winrm_port == expected


def test_a_component_keeps_its_class_without_leading_colons_and_its_description(tmp_path):
    data = wb.sheets()
    wb.set_cell(data, "Components", _component(data, "catalog"), "Puppet Class", "::acme::catalog")
    wb.set_cell(data, "Components", _component(data, "catalog"), "Description", "the catalogue")
    wb.set_cell(data, "Components", _component(data, "catalog"), "Timeout (s)", 1)
    component = load_inventory(wb.write(tmp_path, data)).component("catalog")
    assert (component.puppet_class, component.description, component.timeout_s) == ("acme::catalog",
                                                                                     "the catalogue", 1)


def test_a_port_cell_showing_an_error_says_what_to_do(tmp_path):
    data = wb.sheets()
    wb.set_cell(data, "Servers", _server(data, "ZDB01"), "WinRM Port", "#REF!")  # openpyxl writes an error cell
    with pytest.raises(InventoryError) as err:
        load_inventory(wb.write(tmp_path, data))
    assert str(err.value.problems[0]) == "Servers!E3: the cell shows the error #REF! (fix the formula or type the port)"


def _swap_first_columns(data, sheet):
    headers, rows = data[sheet]
    headers[0], headers[1] = headers[1], headers[0]
    for row in rows:
        row[0], row[1] = row[1], row[0]


@pytest.mark.parametrize("edit, expected", [
    (_set_server("ZDB01", "Hostname", "zdb01."), "Servers!B3: hostname 'zdb01.' ends with a dot"),
    (_set_server("ZAPP01", "Hostname", "-bad-"), "Servers!B4: hostname '-bad-' is not a valid host name"),
    (_set_server("ZAPP02", "Hostname", "zapp01"), "Servers!B5: hostname 'zapp01' is already used in Servers!B4"),
    (_set_component("catalog", "Component", "Catalog-2"), "Components!B16: component name 'Catalog-2' must match"),
    (_set_component("catalog", "Component", "class"), "Components!B16: component name 'class' is a Puppet reserved"),
    (_set_component("catalog", "Component", "con"), "Components!B16: component name 'con' is a Windows device name"),
    (_set_component("zeo_server", "Component", "catalog"), "Components!B16: component 'catalog' is already defined "
                                                           "in Components!B"),
], ids=["host-dot", "host-invalid", "host-twice", "name", "name-reserved", "name-device", "name-twice"])
def test_a_problem_points_at_its_column_wherever_the_column_is(tmp_path, edit, expected):
    # the key column second: a message must name the cell of that column, not column A
    data = wb.sheets()
    edit(data)
    _swap_first_columns(data, "Servers")
    _swap_first_columns(data, "Components")
    with pytest.raises(InventoryError) as err:
        load_inventory(wb.write(tmp_path, data))
    texts = [str(p) for p in err.value.problems]
    assert any(t.startswith(expected) for t in texts), texts
