"""A deliberately tiny, honest PowerShell for the emulated persona (``powershell -EncodedCommand``).

pywinrm's ``run_ps`` sends ``powershell -encodedcommand <UTF-16LE base64>``.
The persona understands only ``Write-Output``/``Write-Host``/``echo``, string
literals (with ``$env:NAME`` in double quotes), ``$env:NAME`` and ``exit N``
(and ignores ``$ProgressPreference``-style preference assignments). Anything
else is answered as PowerShell answers an unknown command: an error record as
CLIXML on stderr (``#< CLIXML`` + ``<S S="Error">``), exit 1, so a script the
tool relies on can never pass silently here.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import List, Optional
from xml.sax.saxutils import escape as xml_escape

from .process import Host, Process


class PowerShell:
    """``powershell.exe``: a deliberately tiny PowerShell (see the module docstring)."""

    def __init__(self, host: Host):
        self.host = host

    def run(self, proc: Process, argv: List[str], line: str) -> int:
        return run_powershell(proc, argv)


def run_powershell(proc: Process, argv: List[str]) -> int:
    """A deliberately tiny PowerShell: Write-Output/Write-Host/echo, string literals, $env:X, exit N.

    Anything else is answered with a PowerShell-style error as CLIXML on
    stderr and exit 1, so a script the tool relies on cannot pass silently.
    ``$env:NAME`` reads the process's environment (the shell's, with its
    Create options applied).
    """
    script = None
    args = argv[1:]
    i = 0
    while i < len(args):
        a = args[i].lower()
        if a in ("-encodedcommand", "-enc", "-e", "-ec") and i + 1 < len(args):
            try:
                script = base64.b64decode(args[i + 1], validate=True).decode("utf-16-le")
            except (binascii.Error, UnicodeDecodeError):
                proc.err("Cannot process the command because the value specified with -EncodedCommand is not "
                        "properly encoded. The value must be Base64 encoded.\n")
                return 1
            i += 2
        elif a in ("-command", "-c"):
            script = " ".join(args[i + 1 :])
            break
        elif a in ("-executionpolicy", "-ep", "-inputformat", "-outputformat", "-windowstyle"):
            i += 2
        elif a.startswith("-"):
            i += 1
        else:
            script = " ".join(args[i:])
            break
    if script is None:
        proc.err("The emulated persona runs powershell only with -EncodedCommand or -Command.\n")
        return 1
    return _MiniPowerShell(proc).run(script)


class _MiniPowerShell:
    _NOOP = re.compile(r"^\$(ProgressPreference|ErrorActionPreference|VerbosePreference)\s*=\s*['\"]?\w+['\"]?$",
                       re.IGNORECASE)

    def __init__(self, proc: Process):
        self.proc = proc

    def run(self, script: str) -> int:
        for raw in re.split(r"[\r\n;]+", script):
            stmt = raw.strip()
            if not stmt or stmt.startswith("#"):
                continue
            m = re.match(r"^exit(?:\s+(-?\d+))?$", stmt, re.IGNORECASE)
            if m:
                return int(m.group(1) or 0)
            if self._NOOP.match(stmt):
                continue
            m = re.match(r"^(?:Write-Output|Write-Host|echo)\s+(.*)$", stmt, re.IGNORECASE)
            value = self._value(m.group(1) if m else stmt)
            if value is None:
                self._error(stmt)
                return 1
            self.proc.out(value + "\n")
        return 0

    def _value(self, expr: str) -> Optional[str]:
        expr = expr.strip()
        m = re.match(r"^\$env:(\w+)$", expr, re.IGNORECASE)
        if m:
            return self._env(m.group(1))
        if len(expr) >= 2 and expr[0] == expr[-1] == "'":
            return expr[1:-1].replace("''", "'")
        if len(expr) >= 2 and expr[0] == expr[-1] == '"':
            inner = expr[1:-1]
            if re.search(r"\$(?!env:\w)|`", inner, re.IGNORECASE):
                return None  # other variables and escapes are not emulated
            return re.sub(r"\$env:(\w+)", lambda mm: self._env(mm.group(1)), inner, flags=re.IGNORECASE)
        if re.match(r"^-?\d+$", expr):
            return expr
        return None

    def _env(self, name: str) -> str:
        return self.proc.session.env.get(name, "")

    def _error(self, stmt: str) -> None:
        word = stmt.split()[0] if stmt.split() else stmt
        text = (f"{word} : The term '{word}' is not recognized as the name of a cmdlet, function, script file, "
                "or operable program (the emulated Windows persona implements only Write-Output, Write-Host, "
                "echo, string literals, $env:NAME and exit N). Check the spelling of the name, or if a path was "
                "included, verify that the path is correct and try again.\n"
                f"At line:1 char:1\n+ {stmt}\n+ ~~~~\n"
                f"    + CategoryInfo          : ObjectNotFound: ({word}:String) [], CommandNotFoundException\n"
                "    + FullyQualifiedErrorId : CommandNotFoundException\n")
        objs = "".join(f'<S S="Error">{xml_escape(line)}_x000D__x000A_</S>' for line in text.splitlines())
        clixml = ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
                  + objs + "</Objs>")
        self.proc.write_bytes(self.proc.encode(clixml), stderr=True)
