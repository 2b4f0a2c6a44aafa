"""Is this file a Windows Installer package? Checked before any file is served to the nodes as the agent MSI.

A Windows Installer package is an OLE compound file (MS-CFB) whose root
storage carries the installer's class id {000C1084-0000-0000-C000-000000000046}
(a merge module or a transform has another one; a Word document, a renamed
zip, an HTML error page none). The check reads the header and the root
directory entry: 640 bytes at most, no parser library.
"""

from __future__ import annotations

import os
import struct
import uuid
from typing import Optional

from ..errors import ConfigError

OLE_MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")
MSI_CLSID = uuid.UUID("000C1084-0000-0000-C000-000000000046")
_HEADER = 512
_ENTRY = 128
_MAX_REGULAR_SECTOR = 0xFFFFFFFA
_ROOT_TYPE = 5


def msi_problem(path: str) -> Optional[str]:
    """None when ``path`` is a Windows Installer package, else what it is not, in a few words."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(_HEADER)
            if len(header) < _HEADER or header[:8] != OLE_MAGIC:
                return "not an OLE compound file (no D0 CF 11 E0 signature)"
            major, byte_order, shift = struct.unpack_from("<HHH", header, 0x1A)
            if byte_order != 0xFFFE or (major, shift) not in ((3, 9), (4, 12)):
                return f"an OLE header with an unknown layout (version {major}, sector shift {shift})"
            first_dir = struct.unpack_from("<I", header, 0x30)[0]
            if first_dir > _MAX_REGULAR_SECTOR:
                return "an OLE compound file without a directory"
            fh.seek((first_dir + 1) << shift)
            root = fh.read(_ENTRY)
    except IsADirectoryError:
        return "a directory"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if len(root) < _ENTRY or root[0x42] != _ROOT_TYPE:
        return "an OLE compound file whose directory has no root entry (truncated?)"
    clsid = uuid.UUID(bytes_le=root[0x50:0x60])
    if clsid != MSI_CLSID:
        return f"an OLE compound file of another kind (class id {{{str(clsid).upper()}}}, not a Windows Installer package)"
    return None


def check_msi(path: str, what: str = "the Puppet agent MSI") -> None:
    """Raise ConfigError (one line: which file, what it is, what to do) unless ``path`` is a Windows Installer package."""
    problem = msi_problem(os.fspath(path))
    if problem:
        raise ConfigError(f"{what} {path} is {problem}; it is not served to the nodes. Download the agent's .msi "
                          "(or, for rehearsals, let inv make-release write a synthetic one)")
