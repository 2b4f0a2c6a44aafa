"""Name rules shared by settings, the inventory, the generator and the transports (a leaf: no project imports)."""

from __future__ import annotations

import ipaddress
import re

COMPONENT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Puppet class names: namespace segments of lowercase letters, digits and _.
PUPPET_CLASS = re.compile(r"^(::)?[a-z][a-z0-9_]*(::[a-z][a-z0-9_]*)*$")
PARAMETER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# An artifact is a plain file name: it becomes part of a URL and a path.
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
VERSION_TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# Puppet reserved words cannot be class names or name segments.
PUPPET_RESERVED = frozenset(
    "and application attr case component consumes default define elsif environment "
    "false function if import in inherits node or private produces regexp site true "
    "type undef unit unless class".split()
) | frozenset({"main", "settings"})  # class names Puppet itself defines


def is_hostname(text: str) -> bool:
    """True for an RFC 1123 host name (labels of letters, digits, hyphens)."""
    if not text or len(text) > 253:
        return False
    labels = text.rstrip(".").split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    # "10.0.0.999" is made of valid labels but is a mistyped address, not a name.
    return not labels[-1].isdigit()


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def address_problem(text: str) -> str | None:
    """Why ``text`` is not a usable server address, or None when it is."""
    if text == "local" or is_ip_address(text) or is_hostname(text):
        return None
    return f"address {text!r} is not an IP address, a host name or 'local'"


def certname(hostname: str, domain: str = "") -> str:
    """The Puppet certname of a host: lowercased, plus the domain when it has no dot."""
    name = hostname.lower()
    if domain and "." not in name:
        name = f"{name}.{domain.lower()}"
    return name


def closest(word: str, choices, cutoff: float = 0.6) -> str | None:
    """The most similar of ``choices`` (case-insensitive), or None: the "did you mean" of every message."""
    import difflib

    lowered = {str(c).lower(): c for c in choices}
    match = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[match[0]] if match else None


# Windows opens a device, not a file, for these base names whatever the extension (aux.zip, com1.tar.gz).
WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
                            | {f"{p}{n}" for p in ("COM", "LPT") for n in (*range(1, 10), "\u00b9", "\u00b2", "\u00b3")})


def is_windows_device_name(name: str) -> bool:
    """True when Windows reads the file name ``name`` as a device (CON, aux.zip, com1.tar.gz)."""
    return name.split(".")[0].rstrip(" ").upper() in WINDOWS_DEVICES


def file_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name inside the release (an Artifact, the agent MSI), or None."""
    if not ARTIFACT_NAME.match(name) or ".." in name:
        return f"{name!r} must be a plain file name (letters, digits and . _ + -, no folders)"
    if is_windows_device_name(name):
        return f"{name!r} is a Windows device name ({name.split('.')[0].upper()}): Windows would open a device, not a file"
    return None
