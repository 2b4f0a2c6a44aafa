"""Write inventory workbooks: the starter a person fills in, and the example.

.xlsx is written with openpyxl (frozen header, a note on every header, version
columns formatted as text, drop-down lists); .xls with xlwt (install
requirements-dev.txt), which supports neither notes nor drop-downs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from ..errors import ConfigError
from .. import settings as settings_mod
from . import example
from .validate import OS_NAMES, ROLES, SCHEMA

HEADER_NOTES = {
    ("Settings", "Key"): "A setting name; see inventory/README.md for every key and its default.",
    ("Settings", "Value"): "The setting's value. Blank means the default.",
    ("Servers", "Hostname"): "Host name (letters, digits, hyphens). Unique, compared ignoring case.",
    ("Servers", "Address"): "IPv4, IPv6, DNS name, or 'local' for the machine running inv.",
    ("Servers", "OS"): "windows or linux.",
    ("Servers", "Roles"): "Comma list: " + ", ".join(ROLES) + ". Exactly one linux server is puppet-master and one package-server.",
    ("Servers", "WinRM Port"): "Blank: 5986 for https, 5985 for http (setting winrm_scheme).",
    ("Servers", "Notes"): "Free text.",
    ("Components", "Component"): "Name: lowercase letter first, then lowercase letters, digits and _.",
    ("Components", "Version"): "Text, not a number (1.10 stays 1.10).",
    ("Components", "Artifact"): "File name of the component's artifact in the release (zip).",
    ("Components", "Depends On"): "Comma list of components that must be deployed first.",
    ("Components", "Puppet Class"): "Blank: the product module's component type titled by the component.",
    ("Components", "Timeout (s)"): "Longest the component's deploy may take; blank: command_timeout_s.",
    ("Components", "Health Check"): "Optional, checked after the component deployed: service:<name> (running), "
                                    "port:<n> (TCP listening) or cmd:<command> (exits 0).",
    ("Components", "Description"): "Free text.",
    ("Mapping", "Hostname"): "A Windows server from the Servers sheet.",
    ("Mapping", "Component"): "A component from the Components sheet. Add columns to the right: each header is a parameter of that component on that host.",
    ("Parameters", "Scope"): "common, component:<name> or host:<hostname>.",
    ("Parameters", "Key"): "Parameter name (lowercase letters, digits, _).",
    ("Parameters", "Value"): "Value as typed; Mapping columns override host:, which overrides component:, which overrides common.",
}
TEXT_COLUMNS = {("Components", "Version"), ("Components", "Component"), ("Components", "Artifact"),
                ("Servers", "Hostname"), ("Servers", "Address"), ("Parameters", "Value"), ("Settings", "Value")}


def _headers() -> dict:
    return {spec.name: [c.header for c in spec.columns] for spec in SCHEMA}


def example_sheets() -> dict:
    """The example workbook as {sheet: (headers, rows)}."""
    headers = _headers()
    return {
        "Settings": (headers["Settings"], [list(r) for r in example.SETTINGS]),
        "Servers": (headers["Servers"], [list(r) for r in example.SERVERS]),
        "Components": (headers["Components"], [list(r) for r in example.COMPONENTS]),
        "Mapping": (list(example.MAPPING_HEADERS), [list(r) for r in example.MAPPING]),
        "Parameters": (headers["Parameters"], [list(r) for r in example.PARAMETERS]),
    }


def starter_sheets() -> dict:
    headers = _headers()
    rows = {name: [] for name in headers}
    rows["Settings"] = [[s.name, None] for s in settings_mod.SETTINGS if s.workbook]
    return {name: (headers[name], rows[name]) for name in headers}


def write_workbook(path: str | os.PathLike, sheets: dict, starter_aids: bool = True, overwrite: bool = False) -> Path:
    """Write ``sheets`` to ``path`` as .xlsx or .xls (by its suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".xls", ".xlsx", ".xlsm"):
        raise ConfigError(f"{path}: give the workbook a .xlsx or .xls name")
    try:
        if os.path.lexists(path) and not overwrite:
            raise ConfigError(f"{path} already exists; choose another path or delete it first")
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True)
        if suffix == ".xls":
            _write_xls(path, sheets)
        else:
            _write_xlsx(path, sheets, starter_aids)
    except OSError as exc:
        raise ConfigError(f"cannot write the workbook {path}: {exc.strerror or exc} "
                          f"({exc.filename or path}); choose a path you can write") from None
    return path


def _write_xlsx(path: Path, sheets: dict, aids: bool) -> None:
    from openpyxl import Workbook
    from openpyxl.comments import Comment
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    wb = Workbook()
    wb.remove(wb.active)
    # Lists for the drop-downs live on a hidden sheet (validation ignores unknown sheets).
    lists = wb.create_sheet("Lists")
    lists.sheet_state = "hidden"
    for i, name in enumerate(OS_NAMES, start=1):
        lists.cell(row=i, column=1, value=name)
    for i, name in enumerate(ROLES, start=1):
        lists.cell(row=i, column=2, value=name)
    lists.cell(row=1, column=3, value="common")
    for title, (headers, rows) in sheets.items():
        ws = wb.create_sheet(title)
        for col, header in enumerate(headers, start=1):
            cell = ws.cell(row=1, column=col, value=header)
            cell.font = Font(bold=True)
            note = HEADER_NOTES.get((title, header))
            if aids and note:
                cell.comment = Comment(note, "deploy_tasks")
            ws.column_dimensions[get_column_letter(col)].width = max(14, len(header) + 4)
        for r, row in enumerate(rows, start=2):
            for col, value in enumerate(row, start=1):
                cell = ws.cell(row=r, column=col, value=value)
                if (title, headers[col - 1]) in TEXT_COLUMNS and value is not None and isinstance(value, str):
                    cell.number_format = "@"
        # text format for the whole column, so new rows typed by hand stay text (1.10 stays 1.10)
        for col, header in enumerate(headers, start=1):
            if (title, header) in TEXT_COLUMNS:
                letter = get_column_letter(col)
                for r in range(len(rows) + 2, len(rows) + 502):
                    ws[f"{letter}{r}"].number_format = "@"
        ws.freeze_panes = "A2"
        if aids:
            _add_validations(ws, title, headers, DataValidation, get_column_letter, len(rows))
    wb.move_sheet("Lists", offset=len(wb.sheetnames))
    wb.save(path)


def _add_validations(ws, title, headers, DataValidation, letter_of, nrows) -> None:
    last = max(nrows + 500, 1000)

    def column(header: str) -> Optional[str]:
        return letter_of(headers.index(header) + 1) if header in headers else None

    def add(header: str, formula: str, error: str, strict: bool = True) -> None:
        col = column(header)
        if col is None:
            return
        dv = DataValidation(type="list", formula1=formula, allow_blank=True, showErrorMessage=strict)
        dv.error = error
        dv.errorTitle = header
        ws.add_data_validation(dv)
        dv.add(f"{col}2:{col}{last}")

    if title == "Servers":
        add("OS", f"Lists!$A$1:$A${len(OS_NAMES)}", "windows or linux")
        # Roles is a comma list: the drop-down offers single roles but accepts any text.
        add("Roles", f"Lists!$B$1:$B${len(ROLES)}", "comma list of roles", strict=False)
    elif title == "Mapping":
        add("Hostname", "Servers!$A$2:$A$5000", "a host from the Servers sheet")
        add("Component", "Components!$A$2:$A$5000", "a component from the Components sheet")
    elif title == "Settings":
        keys = [s.name for s in settings_mod.SETTINGS if s.workbook]
        add("Key", '"' + ",".join(keys) + '"', "a known setting")


def _write_xls(path: Path, sheets: dict) -> None:
    try:
        import xlwt
    except ImportError:
        raise ConfigError("writing .xls needs xlwt: pip install -r requirements-dev.txt (or write .xlsx)") from None
    wb = xlwt.Workbook(encoding="utf-8")
    bold = xlwt.easyxf("font: bold on")
    text = xlwt.easyxf(num_format_str="@")
    for title, (headers, rows) in sheets.items():
        ws = wb.add_sheet(title)
        for col, header in enumerate(headers):
            ws.write(0, col, header, bold)
        for r, row in enumerate(rows, start=1):
            for col, value in enumerate(row):
                if value is None:
                    continue
                if (title, headers[col]) in TEXT_COLUMNS and isinstance(value, str):
                    ws.write(r, col, value, text)
                else:
                    ws.write(r, col, value)
        ws.set_panes_frozen(True)
        ws.set_horz_split_pos(1)
    wb.save(str(path))


def write_example(path: str | os.PathLike, overwrite: bool = False) -> Path:
    return write_workbook(path, example_sheets(), starter_aids=True, overwrite=overwrite)


def write_starter(path: str | os.PathLike, overwrite: bool = False) -> Path:
    return write_workbook(path, starter_sheets(), starter_aids=True, overwrite=overwrite)


def rows_of(sheets: dict) -> Iterable:
    for title, (headers, rows) in sheets.items():
        yield title, headers, rows
