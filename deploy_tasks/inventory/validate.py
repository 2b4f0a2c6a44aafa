"""Build an ``Inventory`` from a raw workbook, collecting every problem with its place.

Nothing here raises on the first problem: each rule appends a located
``Problem`` and the caller gets one ``InventoryError`` listing them all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Optional

from ..errors import InventoryError, Problem
from .. import settings as settings_mod
from .graph import find_cycles
from . import health
from .model import Assignment, Component, Inventory, Parameter, Server
from ..names import (
    ARTIFACT_NAME,
    COMPONENT_NAME,
    PARAMETER_NAME,
    PUPPET_CLASS,
    PUPPET_RESERVED,
    VERSION_TEXT,
    address_problem,
    closest,
    is_hostname,
    is_windows_device_name,
)
from .workbook import CellError, RawSheet, RawWorkbook, cell_ref, is_date

OS_NAMES = ("windows", "linux")
ROLES = (
    "puppet-master", "package-server", "app", "db", "web", "zeo", "search", "mail",
    "reporting", "ldap", "cache", "worker", "proxy", "monitoring",
)
LINUX_ONLY_ROLES = ("puppet-master", "package-server")
# Names Puppet gives meaning to on every resource: a component parameter cannot take them.
RESERVED_PARAMETERS = frozenset(
    "alias audit before loglevel noop notify require schedule stage subscribe tag name title".split()
)


@dataclass(frozen=True)
class Column:
    header: str  # canonical header text, as the template writes it
    required: bool = True
    aliases: tuple = ()

    @property
    def keys(self) -> tuple:
        return (_norm(self.header),) + tuple(_norm(a) for a in self.aliases)


@dataclass(frozen=True)
class SheetSpec:
    name: str
    columns: tuple
    required: bool = True
    extra_columns: bool = False  # Mapping: extra columns are component parameters


SCHEMA = (
    SheetSpec("Settings", (Column("Key"), Column("Value"))),
    SheetSpec("Servers", (
        Column("Hostname"), Column("Address"), Column("OS"), Column("Roles"),
        Column("WinRM Port", required=False), Column("Notes", required=False),
    )),
    SheetSpec("Components", (
        Column("Component"), Column("Version"), Column("Artifact"), Column("Depends On"),
        Column("Puppet Class", required=False), Column("Timeout (s)", required=False, aliases=("Timeout",)),
        Column("Health Check", required=False), Column("Description", required=False),
    )),
    SheetSpec("Mapping", (Column("Hostname"), Column("Component")), extra_columns=True),
    SheetSpec("Parameters", (Column("Scope"), Column("Key"), Column("Value")), required=False),
)


_SETTING_BY_LETTERS = {name.replace("_", ""): name for name in settings_mod.BY_NAME}


def _norm(text: str) -> str:
    """Headers and sheet names match ignoring case and white space (not punctuation: host_name is a parameter)."""
    return re.sub(r"\s+", "", text.lower())


def _did_you_mean(word: str, choices) -> Optional[str]:
    match = closest(word, choices)
    return f"did you mean {match!r}?" if match else None


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


class _Sheet:
    """A sheet with its header located: yields (row number, {column: value})."""

    def __init__(self, raw: RawSheet, spec: SheetSpec, builder: "_Builder"):
        self.raw = raw
        self.spec = spec
        self.title = raw.title
        self.col_index: dict = {}  # canonical header -> 1-based column
        self.extras: list = []  # (header text, 1-based column) for Mapping parameters
        self.headed: set = set()  # every column with a header cell, known or not
        self.header_row = 0
        self.ok = self._locate_header(builder)

    def _locate_header(self, b: "_Builder") -> bool:
        for index, row in enumerate(self.raw.rows):
            if any(not _blank(v) for v in row):
                self.header_row = index + 1
                break
        else:
            b.error(f"{self.title} sheet", "the sheet is empty; it needs a header row: "
                    + ", ".join(c.header for c in self.spec.columns))
            return False
        known = {}
        for column in self.spec.columns:
            for key in column.keys:
                known[key] = column
        seen: dict = {}
        header = self.raw.rows[self.header_row - 1]
        for col, value in enumerate(header, start=1):
            if _blank(value):
                continue
            text = str(value).strip()
            self.headed.add(col)
            ref = cell_ref(self.title, self.header_row, col)
            column = known.get(_norm(text))
            if column is not None:
                if column.header in seen:
                    b.error(ref, f"column {text!r} appears twice (also {seen[column.header]})",
                            "delete one of them")
                    continue
                seen[column.header] = ref
                self.col_index[column.header] = col
            elif self.spec.extra_columns:
                self._extra(b, text, col, ref, seen)
            else:
                b.error(ref, f"unknown column {text!r}",
                        _did_you_mean(text, [c.header for c in self.spec.columns])
                        or "known columns: " + ", ".join(c.header for c in self.spec.columns))
        missing = [c.header for c in self.spec.columns if c.required and c.header not in self.col_index]
        for name in missing:
            b.error(f"{self.title}!{self.header_row}:{self.header_row}", f"required column {name!r} is missing",
                    "headers are matched ignoring case and spaces")
        return not missing

    def _extra(self, b: "_Builder", text: str, col: int, ref: str, seen: dict) -> None:
        near = closest(text, [c.header for c in self.spec.columns], cutoff=0.75)
        if near is not None and not PARAMETER_NAME.match(text):  # "Hostnme" is a typo; host_name a parameter
            b.error(ref, f"column {text!r} is neither {near!r} nor a parameter name", f"did you mean {near!r}?")
            return
        if not PARAMETER_NAME.match(text):
            suggestion = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")
            b.error(ref, f"parameter column {text!r} is not a Puppet parameter name "
                    "(lowercase letter first, then lowercase letters, digits, _)",
                    f"rename it {suggestion!r}" if suggestion and PARAMETER_NAME.match(suggestion) else None)
            return
        if text in RESERVED_PARAMETERS:
            b.error(ref, f"parameter column {text!r} is a name Puppet reserves for every resource", "rename it")
            return
        if text in seen:
            b.error(ref, f"parameter column {text!r} appears twice (also {seen[text]})", "delete one of them")
            return
        seen[text] = ref
        self.extras.append((text, col))

    def rows(self):
        start = self.header_row
        for index in range(start, len(self.raw.rows)):
            row = self.raw.rows[index]
            if all(_blank(v) for v in row):
                continue
            values = {}
            for header, col in self.col_index.items():
                values[header] = row[col - 1] if col - 1 < len(row) else None
            yield index + 1, values, row

    def ref(self, row: int, header: str) -> str:
        return cell_ref(self.title, row, self.col_index.get(header, 1))

    def unlabelled(self, b: "_Builder") -> None:
        """A value under a column without a header would be dropped silently: name the first one per column."""
        headed = self.headed
        reported: set = set()
        for index in range(self.header_row, len(self.raw.rows)):
            row = self.raw.rows[index]
            if len(row) <= len(headed) and all(c in headed for c in range(1, len(row) + 1)):
                continue
            for col, value in enumerate(row, start=1):
                if col not in headed and col not in reported and not _blank(value):
                    reported.add(col)
                    b.error(cell_ref(self.title, index + 1, col), "a value under a column without a header",
                            "give the column a header (merged header cells keep only the first) or clear it")


class _Builder:
    def __init__(self, raw: RawWorkbook):
        self.raw = raw
        self.problems: list = []
        self.warnings: list = []

    def error(self, where: str, message: str, hint: Optional[str] = None) -> None:
        self.problems.append(Problem(where, message, hint))

    def warn(self, where: str, message: str, hint: Optional[str] = None) -> None:
        self.warnings.append(Problem(where, message, hint, severity="warning"))

    # -- cell conversions ------------------------------------------------------
    def text(self, sheet: _Sheet, row: int, header: str, value: Any, required: bool = False) -> Optional[str]:
        """Cell as stripped text; None (with a problem) when it cannot be text."""
        if isinstance(value, str):  # the common case first, no cell reference computed
            text = value.strip()
            if text or not required:
                return text
        ref = sheet.ref(row, header)
        if isinstance(value, CellError):
            self.error(ref, f"the cell shows the error {value.code}", "fix the formula or type the value")
            return None
        if _blank(value):
            if required:
                col = sheet.col_index.get(header, 1)
                if not self.raw.is_uncomputed_formula(sheet.title, row, col):  # else reported already
                    self.error(ref, f"{header} is empty")
                return None
            return ""
        if is_date(value):
            self.error(ref, f"{header} is a date ({value}); the spreadsheet converted what was typed",
                       "format the column as text and type the value again")
            return None
        if isinstance(value, bool):
            self.error(ref, f"{header} is the logical value {str(value).upper()}, not text",
                       "format the cell as text and type the value again")
            return None
        if isinstance(value, float):
            if math.isfinite(value) and value.is_integer():
                return str(int(value))
            return repr(value)
        return str(value).strip()

    def port(self, sheet: _Sheet, row: int, header: str, value: Any) -> Optional[int]:
        if _blank(value):
            return None
        if type(value) is int and 1 <= value <= 65535:
            return value
        if type(value) is float and value.is_integer() and 1 <= value <= 65535:
            return int(value)
        ref = sheet.ref(row, header)
        if isinstance(value, CellError):
            self.error(ref, f"the cell shows the error {value.code}", "fix the formula or type the port")
            return None
        if is_date(value):
            self.error(ref, f"{header} is a date or time ({value}), not a port number",
                       "format the column as a number and type the port again")
            return None
        number: Any = value
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                self.error(ref, f"{header} {value.strip()!r} is not a number", "use a whole number from 1 to 65535")
                return None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or is_date(number):
            self.error(ref, f"{header} {value!r} is not a port number", "use a whole number from 1 to 65535")
            return None
        if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
            self.error(ref, f"{header} {number!r} is not a whole number", "use a whole number from 1 to 65535")
            return None
        number = int(number)
        if not 1 <= number <= 65535:
            self.error(ref, f"{header} {number} is out of range", "use a whole number from 1 to 65535")
            return None
        return number

    def positive_int(self, sheet: _Sheet, row: int, header: str, value: Any) -> Optional[int]:
        if _blank(value):
            return None
        ref = sheet.ref(row, header)
        if isinstance(value, CellError):
            self.error(ref, f"the cell shows the error {value.code}", "fix the formula or type the value")
            return None
        if is_date(value):
            self.error(ref, f"{header} is a date or time ({value}), not a number of seconds",
                       "format the column as a number and type the value again")
            return None
        try:
            number = settings_mod._to_int(value)
        except (ValueError, OverflowError):
            number = None
        if number is None or number < 1:
            shown = int(value) if isinstance(value, float) and value.is_integer() else value
            self.error(ref, f"{header} {shown!r} is not a positive whole number of seconds")
            return None
        return number

    def param_value(self, where, value: Any) -> Any:
        """A parameter value as typed: text kept exactly, whole numbers as int (xls floats too).

        ``where`` is the cell reference, or a (title, row, column) tuple turned into one only on a problem.
        """
        if isinstance(value, str) or (isinstance(value, int) and abs(value) < 2 ** 53):
            return value
        ref = cell_ref(*where) if isinstance(where, tuple) else where
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and abs(value) >= 2 ** 53:
            self.warn(ref, f"the number {value} has more digits than a spreadsheet keeps exactly",
                      "type it as text if every digit matters")
            return int(value) if isinstance(value, float) and value.is_integer() else value
        if isinstance(value, bool):
            return value
        if isinstance(value, CellError):
            self.error(ref, f"the cell shows the error {value.code}", "fix the formula or type the value")
            return None
        if isinstance(value, float):
            if not math.isfinite(value):
                self.error(ref, f"value {value!r} is not a finite number")
                return None
            return int(value) if value.is_integer() else value
        if is_date(value):
            self.warn(ref, f"value {value} is a date; it is passed on as the text {value.isoformat()!r}",
                      "format the cell as text if another form is meant")
            return value.isoformat()
        return value

    # -- sheets ----------------------------------------------------------------
    def sheet(self, spec: SheetSpec) -> Optional[_Sheet]:
        wanted = _norm(spec.name)
        matches = [raw for title, raw in self.raw.sheets.items() if _norm(title) == wanted]
        if len(matches) > 1:
            self.error("workbook", f"sheets {', '.join(repr(m.title) for m in matches)} are all read as {spec.name!r}",
                       "sheet names are matched ignoring case and spaces: keep one, rename or delete the others")
            return None
        if matches:
            return _Sheet(matches[0], spec, self)
        if spec.required:
            near = _did_you_mean(spec.name, list(self.raw.sheets))
            self.error("workbook", f"required sheet {spec.name!r} is missing",
                       near or "sheets found: " + (", ".join(self.raw.sheets) or "none"))
        return None

    def settings(self, sheet: Optional[_Sheet]) -> dict:
        found: dict = {}
        if sheet is None or not sheet.ok:
            return found
        seen: dict = {}
        for row, cells, _ in sheet.rows():
            key = self.text(sheet, row, "Key", cells["Key"], required=True)
            if not key:
                continue
            name = re.sub(r"[\s-]+", "_", key.strip().lower())
            # "Max Parallel", "max-parallel", "MaxParallel" all name max_parallel
            name = _SETTING_BY_LETTERS.get(name.replace("_", ""), name)
            ref = sheet.ref(row, "Key")
            spec = settings_mod.BY_NAME.get(name)
            if spec is not None and not spec.workbook:
                # a path is refused where it is written: the Value cell
                self._controller_setting(sheet.ref(row, "Value") if spec.path else ref, spec)
                continue
            if spec is None:
                self.error(ref, f"unknown setting {key!r}",
                           _did_you_mean(name, settings_mod.WORKBOOK_KEYS)
                           or "known settings: " + ", ".join(settings_mod.WORKBOOK_KEYS))
                continue
            if name in seen:
                self.error(ref, f"setting {name!r} is given twice (also {seen[name]})", "delete one of them")
                continue
            seen[name] = ref
            value = cells["Value"]
            if isinstance(value, CellError):
                self.error(sheet.ref(row, "Value"), f"the cell shows the error {value.code}")
                continue
            if is_date(value):
                self.error(sheet.ref(row, "Value"), f"{name} is a date or time ({value})",
                           "format the Value column as text and type the value again")
                continue
            try:
                found[name] = spec.coerce(value)
            except ValueError as exc:
                self.error(sheet.ref(row, "Value"), f"{name} = {value!r} {exc}", spec.doc)
        return found

    def _controller_setting(self, ref: str, spec) -> None:
        where = f"set it in invoke.yaml (deploy.{spec.name}), INVOKE_DEPLOY_{spec.name.upper()} or a --flag"
        if not spec.path:
            self.error(ref, f"setting {spec.name!r} belongs to the controller, not the workbook", where)
            return
        if spec.name == "puppet_agent_msi":
            where += "; for an MSI inside the release, give its file name as puppet_agent_msi_name"
        self.error(ref, f"setting {spec.name!r} belongs to the controller, not the workbook: it is a path, "
                   "and the workbook (which anyone may edit) never names a path on the controller", where)

    def servers(self, sheet: Optional[_Sheet]) -> list:
        if sheet is None or not sheet.ok:
            return []
        return _ServerRules(self, sheet).check()

    def problems_in(self, title: str) -> bool:
        return any(p.where.startswith(f"{title}!") or p.where.startswith(f"'{title}'!") for p in self.problems)

    def components(self, sheet: Optional[_Sheet]) -> list:
        if sheet is None or not sheet.ok:
            return []
        return _ComponentRules(self, sheet).check()

    def mapping(self, sheet: Optional[_Sheet], servers: list, components: list, server_names: set, component_names: set) -> list:
        result: list = []
        if sheet is None or not sheet.ok:
            return result
        hosts = {s.hostname.lower(): s for s in servers}
        comps = {c.name for c in components}
        seen: dict = {}
        extras = sheet.extras
        for row, cells, raw_row in sheet.rows():
            hostname = self.text(sheet, row, "Hostname", cells["Hostname"], required=True)
            component = self.text(sheet, row, "Component", cells["Component"], required=True)
            if not hostname or not component:
                continue
            server = hosts.get(hostname.lower())
            ok = True
            if server is None:
                # a server row with its own problem, or a Servers sheet that could not be read, is not re-reported
                if server_names is not None and hostname.lower() not in server_names:
                    self.error(sheet.ref(row, "Hostname"), f"unknown host {hostname!r}",
                               _did_you_mean(hostname, [s.hostname for s in servers]) or "add it to the Servers sheet")
                ok = False
            elif not server.is_windows:
                self.error(sheet.ref(row, "Hostname"),
                           f"{server.hostname} is a {server.os} server; components deploy to windows servers only")
                ok = False
            if component not in comps:
                if component_names is not None and component not in component_names:
                    self.error(sheet.ref(row, "Component"), f"unknown component {component!r}",
                               _did_you_mean(component, comps) or "add it to the Components sheet")
                ok = False
            if not ok:
                continue
            key = (server.hostname, component)
            if key in seen:
                self.error(sheet.ref(row, "Component"),
                           f"{component} is already mapped to {server.hostname} in {sheet.ref(seen[key], 'Component')}",
                           "delete one of the rows")
                continue
            seen[key] = row
            params = {}
            for header, col in extras:
                value = raw_row[col - 1] if col - 1 < len(raw_row) else None
                if _blank(value) and not (isinstance(value, str) and value):
                    continue
                value = self.param_value((sheet.title, row, col), value)
                if value is not None:
                    params[header] = value
            result.append(Assignment(server.hostname, component, MappingProxyType(params), row))
        mapped = {a.component for a in result}
        for c in components if not self.problems else ():  # with errors, rows were skipped: no noise
            if c.name not in mapped:
                self.warn(f"Components!A{c.row}", f"component {c.name!r} is not mapped to any host")
        return result

    def parameters(self, sheet: Optional[_Sheet], servers: list, components: list,
                   server_names: Optional[set] = None, component_names: Optional[set] = None) -> list:
        result: list = []
        if sheet is None or not sheet.ok:
            return result
        hosts = {s.hostname.lower(): s.hostname for s in servers}
        comps = {c.name for c in components}
        seen: dict = {}
        for row, cells, _ in sheet.rows():
            scope = self.text(sheet, row, "Scope", cells["Scope"], required=True)
            key = self.text(sheet, row, "Key", cells["Key"], required=True)
            if not scope or not key:
                continue
            kind, _, target = scope.partition(":")
            kind = kind.strip().lower()
            target = target.strip()
            ref = sheet.ref(row, "Scope")
            if kind == "common" and not target:
                scope = "common"
            elif kind == "component" and target:
                if target not in comps:
                    if component_names is not None and target not in component_names:
                        self.error(ref, f"scope names unknown component {target!r}", _did_you_mean(target, comps))
                    continue
                scope = f"component:{target}"
            elif kind == "host" and target:
                if target.lower() not in hosts:
                    if server_names is not None and target.lower() not in server_names:
                        self.error(ref, f"scope names unknown host {target!r}",
                                   _did_you_mean(target, list(hosts.values())))
                    continue
                scope = f"host:{hosts[target.lower()]}"
            else:
                self.error(ref, f"scope {scope!r} is not common, component:<name> or host:<hostname>")
                continue
            if not PARAMETER_NAME.match(key) or key in RESERVED_PARAMETERS:
                self.error(sheet.ref(row, "Key"), f"key {key!r} is not a usable Puppet parameter name",
                           "lowercase letter first, then lowercase letters, digits and _; not a metaparameter")
                continue
            if (scope, key) in seen:
                self.error(sheet.ref(row, "Key"), f"{scope} {key} is already set in {seen[(scope, key)]}")
                continue
            seen[(scope, key)] = sheet.ref(row, "Key")
            raw_value = cells["Value"]
            if raw_value is None:
                self.warn(sheet.ref(row, "Value"), f"{scope} {key} has no value; it is passed as an empty text")
                raw_value = ""
            value = self.param_value(sheet.ref(row, "Value"), raw_value)
            if value is not None:
                result.append(Parameter(scope, key, value, row))
        return result


# -- the Servers sheet ------------------------------------------------------------------
@dataclass
class _ServerRow:
    """One Servers row as read; ``ok`` stays True while no rule found a problem on it."""

    row: int
    hostname: Optional[str]
    address: Optional[str]
    os_name: Optional[str]
    roles_text: str
    port: Optional[int]
    notes: str
    roles: list = field(default_factory=list)
    ok: bool = True

    def server(self) -> Server:
        return Server(self.hostname, self.address, self.os_name, tuple(self.roles), self.port, self.notes, self.row)


class _ServerRules:
    """The Servers sheet's rules: each row on its own, then names, addresses and roles across rows."""

    def __init__(self, b: _Builder, sheet: _Sheet):
        self.b = b
        self.sheet = sheet
        self.by_name: dict = {}  # lowercased hostname -> row
        self.by_address: dict = {}  # lowercased address -> row
        self.holders: dict = {role: [] for role in LINUX_ONLY_ROLES}  # rows, whatever else is wrong on them

    def check(self) -> list:
        servers = []
        for row, cells, _ in self.sheet.rows():
            r = self.read(row, cells)
            self.hostname(r)
            self.address(r)
            self.os(r)
            self.roles(r)
            if r.port and r.os_name == "linux":
                self.b.warn(self.sheet.ref(r.row, "WinRM Port"), "a WinRM port on a linux server is ignored")
            if r.ok:
                servers.append(r.server())
        self.one_holder_per_role()
        return servers

    def read(self, row: int, cells: dict) -> _ServerRow:
        b, sheet = self.b, self.sheet
        return _ServerRow(
            row=row,
            hostname=b.text(sheet, row, "Hostname", cells["Hostname"], required=True),
            address=b.text(sheet, row, "Address", cells["Address"], required=True),
            os_name=b.text(sheet, row, "OS", cells["OS"], required=True),
            roles_text=b.text(sheet, row, "Roles", cells["Roles"]) or "",
            port=b.port(sheet, row, "WinRM Port", cells.get("WinRM Port")),
            notes=b.text(sheet, row, "Notes", cells.get("Notes")) or "",
        )

    def _error(self, r: _ServerRow, header: str, message: str, hint: Optional[str] = None) -> None:
        self.b.error(self.sheet.ref(r.row, header), message, hint)
        r.ok = False

    def hostname(self, r: _ServerRow) -> None:
        name = r.hostname
        if not name:
            r.ok = False
        elif name.endswith("."):
            self._error(r, "Hostname", f"hostname {name!r} ends with a dot",
                        "write the host name without the trailing dot (the domain setting completes it)")
        elif not is_hostname(name):
            self._error(r, "Hostname", f"hostname {name!r} is not a valid host name",
                        "letters, digits and hyphens, dot-separated labels of at most 63 characters, "
                        "not starting or ending with a hyphen")
        elif name.lower() in self.by_name:
            self._error(r, "Hostname",
                        f"hostname {name!r} is already used in {self.sheet.ref(self.by_name[name.lower()], 'Hostname')}",
                        "host names are compared ignoring case")
        else:
            self.by_name[name.lower()] = r.row

    def address(self, r: _ServerRow) -> None:
        if not r.address:
            r.ok = False
            return
        if r.address.lower() == "local":
            r.address = "local"
        reason = address_problem(r.address)
        if reason:
            self._error(r, "Address", reason)
        elif r.address != "local" and r.address.lower() in self.by_address:
            self.b.warn(self.sheet.ref(r.row, "Address"), f"address {r.address!r} is also used in "
                        f"{self.sheet.ref(self.by_address[r.address.lower()], 'Address')}")
        else:
            self.by_address[r.address.lower()] = r.row

    def os(self, r: _ServerRow) -> None:
        if not r.os_name:
            r.ok = False
            return
        r.os_name = r.os_name.lower()
        if r.os_name not in OS_NAMES:
            self._error(r, "OS", f"OS {r.os_name!r} is not one of {', '.join(OS_NAMES)}",
                        _did_you_mean(r.os_name, OS_NAMES) or "write the OS family only: windows or linux")

    def roles(self, r: _ServerRow) -> None:
        text = r.roles_text
        if ";" in text or "\n" in text:
            self._error(r, "Roles", f"roles {text!r} must be separated by commas")
            text = text.replace(";", ",").replace("\n", ",")
        for role in (part.strip().lower() for part in text.split(",")):
            if not role:
                continue
            if role not in ROLES:
                self._error(r, "Roles", f"unknown role {role!r}",
                            _did_you_mean(role, ROLES) or "known roles: " + ", ".join(ROLES))
            elif role in LINUX_ONLY_ROLES and r.os_name == "windows":
                self._error(r, "Roles", f"role {role!r} needs a linux server")
            elif role not in r.roles:
                r.roles.append(role)
                if role in self.holders:
                    self.holders[role].append(r.row)

    def one_holder_per_role(self) -> None:
        title = self.sheet.title
        for role in LINUX_ONLY_ROLES:
            rows = self.holders[role]
            if len(rows) != 1:
                where = ", ".join(f"{title} row {row}" for row in rows) or f"{title} sheet"
                self.b.error(where, f"exactly one linux server must have the role {role!r}, found {len(rows)}",
                             "the Roles column is a comma list; one server may hold both puppet-master and "
                             "package-server")


# -- the Components sheet -----------------------------------------------------------------
@dataclass
class _ComponentRow:
    """One Components row as read; ``named`` when the row defines its name (even with other problems)."""

    row: int
    name: Optional[str]
    version: Optional[str]
    version_cell: Any
    artifact: Optional[str]
    depends_text: str
    puppet_class: str
    timeout: Optional[int]
    description: str
    depends_on: list = field(default_factory=list)
    ok: bool = True
    named: bool = False

    def component(self, depends_on: list) -> Component:
        return Component(self.name, self.version, self.artifact, tuple(depends_on), self.puppet_class.lstrip(":"),
                         self.timeout, self.description, self.row)


class _ComponentRules:
    """The Components sheet's rules: each row's cells, then dependencies (unknown, self, cycles) across rows."""

    def __init__(self, b: _Builder, sheet: _Sheet):
        self.b = b
        self.sheet = sheet
        self.defined: dict = {}  # name -> cell that defines it

    def check(self) -> list:
        named = []
        for row, cells, _ in self.sheet.rows():
            r = self.read(row, cells)
            self.name(r)
            self.version(r)
            self.artifact(r)
            self.puppet_class(r)
            self.dependencies(r)
            if r.named:  # rows with other problems still take part in the dependency checks
                named.append(r)
        return self.resolve_dependencies(named)

    def read(self, row: int, cells: dict) -> _ComponentRow:
        b, sheet = self.b, self.sheet
        return _ComponentRow(
            row=row,
            name=b.text(sheet, row, "Component", cells["Component"], required=True),
            version=b.text(sheet, row, "Version", cells["Version"], required=True),
            version_cell=cells["Version"],
            artifact=b.text(sheet, row, "Artifact", cells["Artifact"], required=True),
            depends_text=b.text(sheet, row, "Depends On", cells["Depends On"]) or "",
            puppet_class=b.text(sheet, row, "Puppet Class", cells.get("Puppet Class")) or "",
            timeout=b.positive_int(sheet, row, "Timeout (s)", cells.get("Timeout (s)")),
            description=b.text(sheet, row, "Description", cells.get("Description")) or "",
        )

    def _error(self, r: _ComponentRow, header: str, message: str, hint: Optional[str] = None) -> None:
        self.b.error(self.sheet.ref(r.row, header), message, hint)
        r.ok = False

    def name(self, r: _ComponentRow) -> None:
        if r.name is None or r.version is None or r.artifact is None:
            r.ok = False
        name = r.name
        if not name:
            return
        if not COMPONENT_NAME.match(name):
            suggestion = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
            self._error(r, "Component", f"component name {name!r} must match ^[a-z][a-z0-9_]*$ "
                        "(it becomes a Puppet class name, a tag and part of command lines)",
                        f"for example {suggestion!r}" if COMPONENT_NAME.match(suggestion or "-") else None)
        elif name in PUPPET_RESERVED:
            self._error(r, "Component", f"component name {name!r} is a Puppet reserved word", "choose another name")
        elif is_windows_device_name(name):
            self._error(r, "Component", f"component name {name!r} is a Windows device name "
                        "(it becomes a folder on the Windows hosts, and Windows would open a device)",
                        "choose another name")
        elif name in self.defined:
            self._error(r, "Component", f"component {name!r} is already defined in {self.defined[name]}")
        else:
            self.defined[name] = self.sheet.ref(r.row, "Component")
            r.named = True

    def version(self, r: _ComponentRow) -> None:
        if not r.version:
            return
        cell = r.version_cell
        if isinstance(cell, (int, float)) and not isinstance(cell, bool):
            self.b.warn(self.sheet.ref(r.row, "Version"),
                        f"version {r.version!r} is stored as a number, so 1.10 would read as 1.1",
                        "format the Version column as text and retype the version")
        if not VERSION_TEXT.match(r.version):
            self._error(r, "Version", f"version {r.version!r} may hold only letters, digits and . _ + -")

    def artifact(self, r: _ComponentRow) -> None:
        artifact = r.artifact
        if not artifact:
            return
        if not ARTIFACT_NAME.match(artifact) or ".." in artifact:
            self._error(r, "Artifact", f"artifact {artifact!r} must be a plain file name",
                        "letters, digits and . _ + -, no folders; the release directory holds the file")
        elif is_windows_device_name(artifact):
            self._error(r, "Artifact", f"artifact {artifact!r} is a Windows device name "
                        f"({artifact.split('.')[0].upper()}): Windows would open a device, not the file",
                        "rename the artifact")

    def puppet_class(self, r: _ComponentRow) -> None:
        pclass = r.puppet_class
        if pclass and (not PUPPET_CLASS.match(pclass)
                       or any(seg in PUPPET_RESERVED for seg in pclass.strip(":").split("::"))):
            self._error(r, "Puppet Class", f"puppet class {pclass!r} is not a valid class name",
                        "segments of lowercase letters, digits and _, joined by ::, for example product::zeo")

    def dependencies(self, r: _ComponentRow) -> None:
        text = r.depends_text
        if ";" in text or "\n" in text:
            self._error(r, "Depends On", f"dependencies {text!r} must be separated by commas")
        for dep in (d.strip() for d in re.split(r"[,;\n]", text)):
            if dep and dep not in r.depends_on:
                r.depends_on.append(dep)

    def resolve_dependencies(self, named: list) -> list:
        """Components whose rows are clean, with known dependencies; unknown ones and cycles reported."""
        sheet = self.sheet
        components = []
        graph: dict = {}
        row_of: dict = {}
        for r in named:
            ref = sheet.ref(r.row, "Depends On")
            good = []
            for dep in r.depends_on:
                if dep == r.name:
                    self.b.error(ref, f"component {r.name!r} depends on itself")
                elif dep not in self.defined:
                    self.b.error(ref, f"{r.name!r} depends on unknown component {dep!r}",
                                 _did_you_mean(dep, self.defined) or "add it to the Components sheet")
                else:
                    good.append(dep)
            graph[r.name] = good
            row_of[r.name] = r.row
            if r.ok:
                components.append(r.component(good))
        for cycle in find_cycles(graph):
            where = ", ".join(sheet.ref(row_of[n], "Depends On") for n in cycle[:-1])
            self.b.error(f"{sheet.ref(row_of[cycle[0]], 'Depends On')}", "dependency cycle " + " -> ".join(cycle),
                         f"declared in {where}; remove one of these dependencies")
        return components


def build_inventory(raw: RawWorkbook) -> Inventory:
    """Validate ``raw`` into an Inventory, or raise InventoryError with every problem located."""
    b = _Builder(raw)
    if raw.lock_file:
        b.warn("workbook", f"the workbook is open in Excel or LibreOffice (lock file {raw.lock_file} beside it): "
               "changes not saved yet are not in what was read", "save it (or close it) and run again")
    sheets = {spec.name: b.sheet(spec) for spec in SCHEMA}
    for title, row, col in sorted(raw.uncomputed_formulas):
        if any(sh is not None and sh.title == title for sh in sheets.values()):
            b.error(cell_ref(title, row, col), "a formula without a computed value (the cell reads as blank)",
                    "the file was written by a tool that does not compute formulas: open and save it in "
                    "Excel or LibreOffice, or type the value")
    for sh in sheets.values():
        if sh is not None and sh.ok:
            sh.unlabelled(b)
    settings = b.settings(sheets["Settings"])
    servers = b.servers(sheets["Servers"])
    components = b.components(sheets["Components"])
    components = _health_checks(b, sheets["Components"], components)
    # names that exist but whose row has its own problem: references to them are not re-reported
    server_names = _names_in(sheets["Servers"], "Hostname", lower=True)
    component_names = _names_in(sheets["Components"], "Component")
    mapping = b.mapping(sheets["Mapping"], servers, components, server_names, component_names)
    parameters = b.parameters(sheets.get("Parameters"), servers, components, server_names, component_names)
    if b.problems:
        raise InventoryError(b.problems, source=raw.path, warnings=b.warnings)
    return Inventory(
        source=raw.path,
        servers=tuple(servers),
        components=tuple(components),
        mapping=tuple(mapping),
        parameters=tuple(parameters),
        settings=MappingProxyType(settings),
        warnings=tuple(b.warnings),
    )


def _health_checks(b: _Builder, sheet: Optional[_Sheet], components: list) -> list:
    """The optional Health Check column: each spec parsed onto its component, a bad one reported at its cell."""
    if sheet is None or not sheet.ok or "Health Check" not in sheet.col_index:
        return components
    checks: dict = {}
    for row, cells, _ in sheet.rows():
        text = b.text(sheet, row, "Health Check", cells.get("Health Check"))
        try:
            check = health.parse(text)
        except ValueError as exc:
            b.error(sheet.ref(row, "Health Check"), str(exc), f"write {health.FORMS}, or leave it blank")
            continue
        if check is not None:
            checks[row] = check
    return [replace(c, health_check=checks[c.row]) if c.row in checks else c for c in components]


def _names_in(sheet: Optional[_Sheet], header: str, lower: bool = False) -> Optional[set]:
    """Names the sheet mentions at all; None when the sheet could not be read (then nothing is checked against it)."""
    names: set = set()
    if sheet is None or not sheet.ok:
        return None
    for _, cells, _ in sheet.rows():
        value = cells.get(header)
        if isinstance(value, str) and value.strip():
            names.add(value.strip().lower() if lower else value.strip())
    return names
