"""Build real workbooks (.xlsx with openpyxl, .xls with xlwt) from the example, with edits."""

from __future__ import annotations

import copy
from pathlib import Path

from deploy_tasks.inventory.template import example_sheets, write_workbook


def sheets():
    """A fresh, deep copy of the example workbook's sheets: {title: (headers, rows)}."""
    return copy.deepcopy(example_sheets())


def write(tmp_path: Path, data: dict, fmt: str = "xlsx", name: str = "inv") -> Path:
    return write_workbook(tmp_path / f"{name}.{fmt}", data, starter_aids=False, overwrite=True)


def set_cell(data: dict, sheet: str, row: int, header: str, value) -> None:
    """Set a data cell; ``row`` is the spreadsheet row (2 = first data row)."""
    headers, rows = data[sheet]
    col = headers.index(header)
    while len(rows) < row - 1:
        rows.append([None] * len(headers))
    line = rows[row - 2]
    while len(line) <= col:
        line.append(None)
    line[col] = value


def row_of(data: dict, sheet: str, header: str, value) -> int:
    """The spreadsheet row whose ``header`` cell equals ``value``."""
    headers, rows = data[sheet]
    col = headers.index(header)
    for i, row in enumerate(rows):
        if row[col] == value:
            return i + 2
    raise KeyError(value)
