"""Read an inventory workbook (.xlsx or .xls) into plain rows of cell values.

The format is taken from the file's first bytes, not its name: a zip container
is .xlsx (openpyxl, read-only), an OLE2 compound file is .xls (xlrd). Anything
else gets one sentence saying what the file looks like. Cell values come out
as Python values with the libraries' quirks evened out: xls dates become
datetimes, xls booleans become bools, error cells become ``CellError``.
"""

from __future__ import annotations

import datetime as _dt
import os
import stat
import zipfile
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import WorkbookFormatError

ZIP_MAGIC = b"PK\x03\x04"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
EXCEL_ERRORS = frozenset({"#NULL!", "#DIV/0!", "#VALUE!", "#REF!", "#NAME?", "#NUM!", "#N/A", "#GETTING_DATA"})


@dataclass(frozen=True)
class CellError:
    """An Excel error value such as #REF! or #DIV/0!."""

    code: str

    def __str__(self) -> str:
        return self.code


@dataclass
class RawSheet:
    """A sheet as read: its title and its rows (1-based row numbers implied by position)."""

    title: str
    rows: list  # list of tuples/lists of cell values; rows[0] is spreadsheet row 1


@dataclass
class RawWorkbook:
    """All sheets of a workbook, and the cells holding formulas that were never computed."""

    path: str
    format: str  # "xlsx" or "xls"
    sheets: dict  # title -> RawSheet, in workbook order
    # (title, row, column), 1-based: formulas saved without a cached value (tools that
    # write .xlsx without computing, openpyxl among them); such a cell reads as blank
    uncomputed_formulas: frozenset = frozenset()
    lock_file: Optional[str] = None  # the workbook is open in Excel or LibreOffice (edits may be unsaved)

    def is_uncomputed_formula(self, title: str, row: int, col: int) -> bool:
        """True when the (1-based) cell holds a formula whose value was never computed."""
        return (title, row, col) in self.uncomputed_formulas


def sniff_format(path: str) -> str:
    """Return "xlsx" or "xls" from the file's content, or raise WorkbookFormatError."""
    head = _read_head(path)
    if not head:
        raise WorkbookFormatError(path, "the file is empty; save the workbook from Excel or LibreOffice as .xlsx")
    if head.startswith(ZIP_MAGIC):
        return "xlsx"
    if head.startswith(OLE2_MAGIC):
        if _ole2_holds(path, "EncryptedPackage"):
            raise WorkbookFormatError(path, "the workbook is password-protected (encrypted); "
                                            "save a copy without a password and use that")
        return "xls"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<table")):
        looks = "an HTML page (some tools export 'Excel' files as HTML)"
    elif text.startswith(b"<?xml"):
        looks = "an XML file (perhaps Excel 2003 XML)"
    elif b"," in head or b";" in head or b"\t" in head:
        looks = "a text file such as CSV"
    else:
        looks = "neither a zip (.xlsx) nor an OLE2 (.xls) file"
    raise WorkbookFormatError(
        path, f"is not an Excel workbook: it looks like {looks}; open it in Excel or LibreOffice and save it as .xlsx"
    )


def _read_head(path: str, size: int = 512) -> bytes:
    """The first bytes of a regular file; a FIFO or a device is refused, never read (a FIFO would block)."""
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise WorkbookFormatError(path, "file not found; pass --inventory PATH or set deploy.inventory in invoke.yaml") from None
    except IsADirectoryError:
        raise WorkbookFormatError(path, "is a directory, not a workbook") from None
    except OSError as exc:
        raise WorkbookFormatError(path, f"cannot be read: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise WorkbookFormatError(path, "is a directory, not a workbook")
        if not stat.S_ISREG(mode):
            kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise WorkbookFormatError(path, f"is {kind}, not a workbook file; pass the path of the .xlsx or .xls file")
        try:
            return os.read(fd, size)
        except OSError as exc:
            raise WorkbookFormatError(path, f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def lock_file_beside(path: str) -> Optional[str]:
    """The lock file Excel (``~$name``) or LibreOffice (``.~lock.name#``) keeps beside an open workbook, or None."""
    folder, name = os.path.split(os.path.abspath(path))
    # Excel shortens long names by their first two characters (~$ample.xlsx for example.xlsx)
    for candidate in (f"~${name}", f"~${name[2:]}", f".~lock.{name}#"):
        if len(candidate) > 2 and os.path.lexists(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    return None


def _ole2_holds(path: str, stream: str) -> bool:
    """True when the OLE2 file's directory names ``stream`` (an encrypted .xlsx is an OLE2 file
    with an EncryptedPackage stream); a cheap scan of the bytes for the UTF-16 name."""
    needle = stream.encode("utf-16-le")
    try:
        with open(path, "rb") as fh:
            return needle in fh.read(4 << 20)
    except OSError:
        return False


def read_workbook(path: str | os.PathLike) -> RawWorkbook:
    """Read every sheet of the workbook at ``path``."""
    path = os.fspath(path)
    fmt = sniff_format(path)
    try:
        raw = _read_xlsx(path) if fmt == "xlsx" else _read_xls(path)
        raw.lock_file = lock_file_beside(path)
        return raw
    except WorkbookFormatError:
        raise
    except Exception as exc:  # the libraries raise anything from KeyError to struct.error on corrupt files
        kind = ".xlsx (zip)" if fmt == "xlsx" else ".xls (OLE2)"
        raise WorkbookFormatError(
            path, f"looks like an {kind} workbook but cannot be read ({type(exc).__name__}: {exc}); "
            "it may be truncated or corrupt: save it again from Excel or LibreOffice"
        ) from None


def _read_xlsx(path: str) -> RawWorkbook:
    import openpyxl

    if not zipfile.is_zipfile(path):
        raise WorkbookFormatError(path, "is a truncated or corrupt zip file; save the workbook again as .xlsx")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    if "xl/workbook.xml" not in names and not any(n.endswith("workbook.xml") for n in names):
        if "content.xml" in names:
            looks = "an OpenDocument spreadsheet (.ods)"
        elif "word/document.xml" in names:
            looks = "a Word document"
        else:
            looks = "a zip archive"
        raise WorkbookFormatError(path, f"is {looks}, not an .xlsx workbook; save it as .xlsx")

    # a file object, not the name: openpyxl refuses names not ending in .xlsx
    # even when the content is one (an .xlsx saved with an .xls name)
    fh = open(path, "rb")
    wb = openpyxl.load_workbook(fh, read_only=True, data_only=True)
    try:
        sheets = {}
        for ws in wb.worksheets:
            ws.reset_dimensions()  # some writers store a wrong dimension tag
            rows = [_clean_xlsx_row(r) for r in ws.iter_rows(values_only=True)]
            sheets[ws.title] = RawSheet(ws.title, rows)
    finally:
        wb.close()
        fh.close()

    uncomputed = _uncomputed_formulas(path, sheets) if _has_formulas(path) else frozenset()
    return RawWorkbook(path, "xlsx", sheets, uncomputed)


def _has_formulas(path: str) -> bool:
    """Whether any worksheet holds a formula (an <f> element): a cheap scan, no parsing."""
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if name.startswith("xl/worksheets/") and name.endswith(".xml"):
                data = zf.read(name)
                if b"<f>" in data or b"<f " in data or b":f>" in data or b":f " in data:
                    return True
    return False


def _uncomputed_formulas(path: str, sheets: dict) -> frozenset:
    """Cells whose formula has no cached value: a second, formula-reading pass, only when formulas exist."""
    import openpyxl

    found = set()
    with open(path, "rb") as fh:
        wb = openpyxl.load_workbook(fh, read_only=True, data_only=False)
        try:
            for ws in wb.worksheets:
                ws.reset_dimensions()
                cached = sheets[ws.title].rows
                for r, row in enumerate(ws.iter_rows(values_only=True), start=1):
                    for c, value in enumerate(row, start=1):
                        if isinstance(value, str) and value.startswith("="):
                            line = cached[r - 1] if r - 1 < len(cached) else ()
                            if c - 1 >= len(line) or line[c - 1] is None:
                                found.add((ws.title, r, c))
        finally:
            wb.close()
    return frozenset(found)





def _clean_xlsx_row(row: tuple) -> tuple:
    if any(isinstance(v, str) and v in EXCEL_ERRORS for v in row):
        return tuple(CellError(v) if isinstance(v, str) and v in EXCEL_ERRORS else v for v in row)
    return row


def _read_xls(path: str) -> RawWorkbook:
    import xlrd

    with open(os.devnull, "w") as quiet:  # xlrd prints its diagnostics to stdout: keep --format json clean
        book = xlrd.open_workbook(path, on_demand=True, logfile=quiet)
    try:
        sheets = {}
        datemode = book.datemode  # (book stays usable after the logfile closes: on_demand reads need no log)
        for index in range(book.nsheets):
            sh = book.sheet_by_index(index)
            rows = []
            for r in range(sh.nrows):
                values = sh.row_values(r)
                types = sh.row_types(r)
                if any(t >= 3 for t in types):
                    values = [_xls_value(v, t, datemode) for v, t in zip(values, types)]
                rows.append(values)
            sheets[sh.name] = RawSheet(sh.name, rows)
            book.unload_sheet(index)
    finally:
        book.release_resources()
    return RawWorkbook(path, "xls", sheets)


def _xls_value(value: Any, ctype: int, datemode: int) -> Any:
    import xlrd

    if ctype == xlrd.XL_CELL_DATE:
        try:
            return xlrd.xldate_as_datetime(value, datemode)
        except Exception:
            return value
    if ctype == xlrd.XL_CELL_BOOLEAN:
        return bool(value)
    if ctype == xlrd.XL_CELL_ERROR:
        return CellError(xlrd.error_text_from_code.get(value, "#ERROR"))
    if ctype == xlrd.XL_CELL_EMPTY or ctype == xlrd.XL_CELL_BLANK:
        return None
    return value


def column_letter(col: int) -> str:
    """1 -> A, 27 -> AA."""
    letters = ""
    while col > 0:
        col, rem = divmod(col - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def cell_ref(title: str, row: int, col: int) -> str:
    sheet = title if title.replace("_", "").isalnum() else f"'{title}'"
    return f"{sheet}!{column_letter(col)}{row}"


def is_date(value: Any) -> bool:
    """A date, time or duration: what a spreadsheet makes of text it took for one."""
    return isinstance(value, (_dt.datetime, _dt.date, _dt.time, _dt.timedelta))
