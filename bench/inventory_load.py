"""Benchmark: `inv validate`'s load+validate time over the bare library read of the same workbook.

A generated workbook of 5,000 servers, 34 components and 30,000 mapping rows,
in .xlsx and .xls. Baselines, measured in the same run: openpyxl read-only
iteration of every cell (.xlsx); xlrd.open_workbook plus reading every cell
(.xls). Targets: at most 1.5x (.xlsx) and 3x (.xls). Prints ratios; asserts nothing.

    python bench/inventory_load.py [--servers 5000] [--mapping 30000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from deploy_tasks.inventory import load_inventory
from deploy_tasks.inventory.example import COMPONENTS
from deploy_tasks.inventory.validate import SCHEMA

ROOT = Path(__file__).resolve().parent.parent


def big_sheets(servers: int = 5000, mapping: int = 30000) -> dict:
    """The benchmark workbook as {sheet: (headers, rows)} (also used by bench/generate_config.py)."""
    headers = {spec.name: [c.header for c in spec.columns] for spec in SCHEMA}
    server_rows = [["ctl01", "10.1.0.1", "linux", "puppet-master, package-server", None, "controller"]]
    windows = []
    for i in range(1, servers):
        name = f"WIN{i:05d}"
        windows.append(name)
        server_rows.append([name, f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", "windows", "app", 5986, ""])
    comp_rows = [list(c) for c in COMPONENTS]
    names = [c[0] for c in COMPONENTS]
    per_host = max(1, -(-mapping // len(windows)))
    map_rows = []
    for h, host in enumerate(windows):
        for k in range(per_host):
            if len(map_rows) >= mapping:
                break
            comp = names[(h + k * 5) % len(names)]
            map_rows.append([host, comp, 8000 + k, f"value-{h}-{k}"])
    return {
        "Settings": (headers["Settings"], [["environment", "production"], ["domain", "corp.example.com"]]),
        "Servers": (headers["Servers"], server_rows),
        "Components": (headers["Components"], comp_rows),
        "Mapping": (["Hostname", "Component", "port", "instance"], map_rows),
        "Parameters": (headers["Parameters"], [["common", "install_root", "C:\\Product"]]),
    }


def write_big(path: Path, servers: int, mapping: int) -> Path:
    data = big_sheets(servers, mapping)
    if path.suffix == ".xlsx":
        from openpyxl import Workbook

        wb = Workbook(write_only=True)
        for title, (headers, rows) in data.items():
            ws = wb.create_sheet(title)
            ws.append(headers)
            for row in rows:
                ws.append(row)
        wb.save(path)
    else:
        import xlwt

        wb = xlwt.Workbook(encoding="utf-8")
        for title, (headers, rows) in data.items():
            ws = wb.add_sheet(title)
            for c, h in enumerate(headers):
                ws.write(0, c, h)
            for r, row in enumerate(rows, start=1):
                for c, v in enumerate(row):
                    if v is not None:
                        ws.write(r, c, v)
        wb.save(str(path))
    return path


def bare_xlsx(path: Path) -> int:
    import openpyxl

    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    n = 0
    for ws in wb.worksheets:
        for row in ws.iter_rows(values_only=True):
            for _ in row:
                n += 1
    wb.close()
    return n


def bare_xls(path: Path) -> int:
    import xlrd

    book = xlrd.open_workbook(str(path))
    n = 0
    for sh in book.sheets():
        for r in range(sh.nrows):
            for _ in sh.row_values(r):
                n += 1
    return n


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=5000)
    ap.add_argument("--mapping", type=int, default=30000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    targets = {".xlsx": 1.5, ".xls": 3.0}
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, bare in ((".xlsx", bare_xlsx), (".xls", bare_xls)):
            path = write_big(Path(tmp) / f"big{suffix}", args.servers, args.mapping)
            inv = load_inventory(path)  # warm-up, and a check that the workbook is valid
            assert len(inv.mapping) == args.mapping
            base = timed(lambda: bare(path), args.repeat)
            ours = timed(lambda: load_inventory(path), args.repeat)
            ratio = ours / base
            verdict = "OK" if ratio <= targets[suffix] else "OVER TARGET"
            print(f"{suffix:5} {args.servers} servers, {args.mapping} mapping rows: bare read {base:.3f}s, "
                  f"load+validate {ours:.3f}s, ratio {ratio:.2f}x (target <= {targets[suffix]}x) {verdict}")


if __name__ == "__main__":
    main()
