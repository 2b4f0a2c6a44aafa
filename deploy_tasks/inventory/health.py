"""The Components sheet's ``Health Check`` column: its three forms, parsed (pure; no I/O).

``service:<name>``  the Windows service <name> is RUNNING (``sc query <name>``)
``port:<n>``        something listens on TCP port n, IPv4 or IPv6 (``netstat -an``)
``cmd:<command>``   the command line, run through cmd.exe on the host, exits 0

``parse`` returns a ``HealthCheck`` or None for a blank cell, and raises
``ValueError`` with a message for the person who typed it. The prefix is
matched ignoring case and spaces around it; the value keeps its case.

A ``cmd:`` check is code from the workbook run on the hosts with the deploying
account's rights: that is what the column is for, so whoever may edit the
workbook may run commands on the fleet. Only what cmd.exe cannot carry (line
breaks, NUL) and what cannot fit a command line (8191 characters) is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

SERVICE, PORT, CMD = "service", "port", "cmd"
KINDS = (SERVICE, PORT, CMD)
FORMS = "service:<name> (the Windows service is running), port:<n> (a TCP port is listening) or cmd:<command> (exits 0)"
#: a Windows service (key) name: at most 256 characters, no / or \ (CreateService's rule); printable, no quotes
#: or cmd.exe metacharacters, so that `sc query <name>` reads exactly one name
SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.$@#{}\[\]+=,;' -]{1,256}$")
CMD_MAX = 8191 - 16  # cmd.exe's longest command line, less what the transport wraps around it


@dataclass(frozen=True)
class HealthCheck:
    kind: str  # "service", "port" or "cmd"
    target: str  # the service name, the port number (as text) or the command line

    @property
    def port(self) -> int:
        return int(self.target)

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse(text: Optional[str]) -> Optional[HealthCheck]:
    """``"service:Product_zeo"`` -> HealthCheck("service", "Product_zeo"); blank -> None; else ValueError."""
    if text is None:
        return None
    text = str(text).strip()
    if not text:
        return None
    kind, colon, value = text.partition(":")
    kind = kind.strip().lower()
    value = value.strip()
    if not colon or kind not in KINDS:
        raise ValueError(f"health check {text[:80]!r} is not one of the three forms")
    if not value:
        raise ValueError(f"health check {text[:80]!r} names no {'service' if kind == SERVICE else kind}")
    if kind == SERVICE:
        if not SERVICE_NAME.match(value) or value.strip(" .") != value:
            raise ValueError(f"service name {value[:80]!r} is not a Windows service name (letters, digits, "
                             f"spaces and _ . - $ @ #; no quotes, slashes or & | < > ^ ( ) %)")
        return HealthCheck(SERVICE, value)
    if kind == PORT:
        if isinstance(value, str) and re.fullmatch(r"\d{1,5}(\.0+)?", value):  # xlrd turns 80 into 80.0
            number = int(value.split(".")[0])
            if 1 <= number <= 65535:
                return HealthCheck(PORT, str(number))
        raise ValueError(f"port {value[:40]!r} is not a whole number from 1 to 65535")
    if any(c in value for c in "\r\n\0"):
        raise ValueError("the command holds a line break or NUL, which a cmd.exe command line cannot carry")
    if len(value) > CMD_MAX:
        raise ValueError(f"the command is {len(value)} characters long; cmd.exe takes at most {CMD_MAX} here")
    return HealthCheck(CMD, value)
