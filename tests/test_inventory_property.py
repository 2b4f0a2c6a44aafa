"""Property: any cell contents give a valid inventory or located problems, never another exception."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings, strategies as st

from deploy_tasks.errors import InventoryError
from deploy_tasks.inventory.validate import build_inventory
from deploy_tasks.inventory.workbook import CellError, RawSheet, RawWorkbook
from tests import workbooks as wb

cell_values = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.sampled_from(["", " ", "local", "windows", "linux", "app, db", "puppet-master", "5985", "a,b", "zeo_server",
                     "127.0.0.1", "::1", "10.0.0.999", "#REF!", "=A1", "common", "host:ZDB01", "component:x"]),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1)),
    st.builds(CellError, st.sampled_from(["#REF!", "#N/A", "#DIV/0!"])),
)


def _raw(data: dict) -> RawWorkbook:
    sheets = {}
    for title, (headers, rows) in data.items():
        sheets[title] = RawSheet(title, [list(headers)] + [list(r) for r in rows])
    return RawWorkbook("prop.xlsx", "xlsx", sheets)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sheet=st.sampled_from(["Settings", "Servers", "Components", "Mapping", "Parameters"]),
    edits=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 7), cell_values), min_size=1, max_size=12),
)
def test_arbitrary_cells_never_crash(sheet, edits):
    data = wb.sheets()
    headers, rows = data[sheet]
    for row, col, value in edits:
        if row == 0:
            if col < len(headers):
                headers[col] = value if value is None or isinstance(value, str) else str(value)
            continue
        while len(rows) < row:
            rows.append([None] * len(headers))
        line = rows[row - 1]
        while len(line) <= col:
            line.append(None)
        line[col] = value
    try:
        inventory = build_inventory(_raw(data))
    except InventoryError as exc:
        assert exc.problems, "an InventoryError must carry at least one problem"
        for problem in exc.problems:
            assert problem.where and problem.message
            assert problem.where.startswith(("Settings", "Servers", "Components", "Mapping", "Parameters", "workbook"))
    else:
        assert len(inventory.windows_servers) >= 1


@settings(max_examples=100, deadline=None)
@given(values=st.lists(cell_values, min_size=6, max_size=6))
def test_arbitrary_server_row(values):
    data = wb.sheets()
    data["Servers"][1].append(values)
    try:
        build_inventory(_raw(data))
    except InventoryError as exc:
        assert all(p.where.startswith(("Servers", "Mapping", "Parameters")) for p in exc.problems), exc.problems
