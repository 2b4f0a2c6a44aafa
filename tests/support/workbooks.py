"""Workbooks for the generator's tests: the example with changes, written as a real .xlsx."""

from __future__ import annotations

from pathlib import Path

from deploy_tasks.inventory.template import example_sheets, write_workbook

# Everything that breaks naive templating: both quotes, backslashes (a Windows
# path and a trailing one), Puppet ${...}, Hiera %{...}, Jinja {{...}}, ERB,
# a newline and a tab, non-ASCII text (accents, an em dash, an emoji), and the
# Unicode line breaks NEL and LS that YAML 1.1 treats as newlines.
HOSTILE = ("He said \"hi\" & it's C:\\temp\\new\\ ${facts['os']} %{trusted.certname} %{literal('x')} "
           "{{ jinja }} <%= erb %>\nline 2\tüñíçødé — ✓ 🚀 NEL\x85LS\u2028 \\")


def write_example_variant(path: Path, parameters=(), mapping_column=None, components=None) -> Path:
    """The example workbook plus ``parameters`` rows (scope, key, value) and, optionally, an
    extra Mapping column ``(header, {(hostname, component): value})``; ``components`` edits
    the Components rows (a function of the list of rows)."""
    sheets = example_sheets()
    headers, rows = sheets["Parameters"]
    sheets["Parameters"] = (headers, rows + [list(p) for p in parameters])
    if mapping_column:
        header, values = mapping_column
        m_headers, m_rows = sheets["Mapping"]
        sheets["Mapping"] = (list(m_headers) + [header],
                             [list(r) + [values.get((r[0], r[1]))] for r in m_rows])
    if components:
        c_headers, c_rows = sheets["Components"]
        sheets["Components"] = (c_headers, components([list(r) for r in c_rows]))
    return write_workbook(path, sheets, overwrite=True)
