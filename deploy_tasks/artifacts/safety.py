"""Checks that keep an archive's members inside the directory it is extracted to.

Everything here works on the member list alone (names, types, sizes, link
targets), before a byte is written: a hostile archive is rejected as a whole.
The rules are the union of what ``unzip``, Python's ``tarfile`` "data" filter
and Windows' own path rules forbid, because the extracted trees end up on
Windows nodes:

- no absolute path, drive letter (``C:``), UNC path or ``..`` component; a
  backslash counts as a separator (``..\\..\\x`` is a traversal on Windows);
- no device file, FIFO or socket;
- no duplicate member, compared ignoring case (NTFS is case-insensitive), and
  no member that is both a file and a directory;
- no member written through a link, and no link whose target (followed
  through the archive's other links) leaves the tree;
- zip bombs: a limit on the total unpacked size, on the number of members,
  and on the compression ratio of each member over 1 MiB.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

from ..errors import ArtifactError

RATIO_MIN_SIZE = 1 << 20  # members smaller than this cannot be bombs on their own
_DRIVE = re.compile(r"^[A-Za-z]:")
_FORBIDDEN_CHARS = set('\0<>:"|?*')
_WINDOWS_DEVICES = ({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
                    | {f"{p}{n}" for p in ("COM", "LPT") for n in (*range(1, 10), "\u00b9", "\u00b2", "\u00b3")})

FILE, DIR, SYMLINK, HARDLINK = "file", "dir", "symlink", "hardlink"


@dataclass(frozen=True)
class Limits:
    """Zip bomb guards (settings artifact_max_unpacked_mb, artifact_max_ratio, artifact_max_members)."""

    max_unpacked: int = 8192 << 20
    max_ratio: int = 200
    max_members: int = 200000

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.artifact_max_unpacked_mb << 20, settings.artifact_max_ratio, settings.artifact_max_members)


@dataclass
class Member:
    """One archive entry as the checks see it (name is the clean relative path)."""

    name: str
    kind: str  # FILE, DIR, SYMLINK, HARDLINK
    size: int = 0  # unpacked size (declared)
    packed: int = 0  # compressed size (zip) or 0 when unknown
    target: str = ""  # link target (symlink: relative to the link's directory; hardlink: a member name)
    index: int = -1  # position in the archive (zip infolist index)
    raw_name: str = ""


def is_root(raw: str) -> bool:
    """``.`` or ``./`` (``tar -C dir -cf x.tar .`` starts with it): the tree itself, not a member."""
    name = raw.replace("\\", "/")
    return bool(name) and not name.startswith("/") and all(p in ("", ".") for p in name.split("/"))


def clean_name(component: str, raw: str) -> str:
    """The member's path relative to the tree, or ArtifactError when it could leave it."""
    name = raw.replace("\\", "/")
    if not name or name.strip("/") == "":
        raise ArtifactError(component, "empty member name", raw)
    if name.startswith("/") or _DRIVE.match(name):
        raise ArtifactError(component, "absolute path", raw, "archives must hold relative paths")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArtifactError(component, "path traversal ('..')", raw, "the member would land outside the target directory")
    for part in parts:
        if _FORBIDDEN_CHARS.intersection(part) or _has_control(part):
            raise ArtifactError(component, "name holds a character Windows forbids (control, <>:\"|?*)", raw)
        if part.endswith((".", " ")) and part not in (".", ".."):
            # Win32 strips a trailing dot or space: "a.txt." and "a.txt" would be one file on the nodes
            raise ArtifactError(component, "name ends with a dot or a space, which Windows strips", raw,
                                "the nodes would write another file than the archive names")
        if part.split(".")[0].upper().rstrip(" ") in _WINDOWS_DEVICES:
            raise ArtifactError(component, f"{part!r} is a Windows device name (CON, NUL, COM1...)", raw,
                                "the nodes could not write this file")
    if not parts:
        raise ArtifactError(component, "empty member name", raw)
    return "/".join(parts)


def check_kind(component: str, raw: str, kind: Optional[str], what: str) -> str:
    if kind is None:
        raise ArtifactError(component, f"{what} is not a regular file, directory or link", raw,
                            "device files, FIFOs and sockets are never extracted")
    return kind


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def resolve_link(component: str, link: Member, links: Dict[str, Member]) -> str:
    """Where a symlink ends up, following the archive's other links; ArtifactError when outside."""
    if _has_control(link.target):
        raise ArtifactError(component, f"link target {link.target!r} holds a control character (NUL, newline...)",
                            link.raw_name or link.name, "link targets must be plain relative paths")
    return _resolve(component, link, posixpath.dirname(link.name), link.target, links, 0)


def _resolve(component: str, link: Member, base: str, target: str, links: Dict[str, Member], depth: int) -> str:
    if depth > 40:
        raise ArtifactError(component, "link loop", link.raw_name or link.name)
    if not target or target.startswith("/") or target.startswith("\\") or _DRIVE.match(target):
        raise ArtifactError(component, f"link points outside the tree (to {target!r})", link.raw_name or link.name)
    stack: List[str] = [p for p in base.split("/") if p]
    for part in target.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                raise ArtifactError(component, f"link points outside the tree (to {link.target!r})",
                                    link.raw_name or link.name)
            stack.pop()
            continue
        stack.append(part)
        here = "/".join(stack).lower()
        inner = links.get(here)
        if inner is not None:
            resolved = _resolve(component, link, posixpath.dirname(inner.name), inner.target, links, depth + 1)
            stack = [p for p in resolved.split("/") if p]
    return "/".join(stack)


def check_members(component: str, members: Iterable[Member], limits: Limits, archive_size: int = 0) -> List[Member]:
    """Check a whole member list; return it (clean) or raise ArtifactError naming the first bad member."""
    members = list(members)
    if len(members) > limits.max_members:
        raise ArtifactError(component, f"{len(members)} members, more than the limit of {limits.max_members}",
                            hint="setting artifact_max_members")
    seen: Dict[str, Member] = {}
    links: Dict[str, Member] = {}
    total = 0
    for m in members:
        key = m.name.lower()
        if key in seen:
            other = seen[key]
            if not (m.kind == DIR and other.kind == DIR):
                same = "the same name" if other.name == m.name else f"a name differing only in case ({other.name!r})"
                raise ArtifactError(component, f"duplicate member: {same} appears twice", m.raw_name or m.name)
            continue
        seen[key] = m
        if m.kind in (SYMLINK,):
            links[key] = m
        total += m.size
        if total > limits.max_unpacked:
            raise ArtifactError(component, f"unpacks to more than {limits.max_unpacked >> 20} MiB (zip bomb guard)",
                                m.raw_name or m.name, "setting artifact_max_unpacked_mb")
        if m.kind == FILE and m.size > RATIO_MIN_SIZE and m.packed and m.size > m.packed * limits.max_ratio:
            raise ArtifactError(component, f"compression ratio {m.size // max(m.packed, 1)}:1 is above the limit of "
                                f"{limits.max_ratio}:1 (zip bomb guard)", m.raw_name or m.name,
                                "setting artifact_max_ratio")
    # a name used as a directory by another member must be a directory; never write through a link
    for m in members:
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i]).lower()
            parent = seen.get(prefix)
            if parent is None:
                continue
            if parent.kind == SYMLINK:
                raise ArtifactError(component, f"member is written through the link {parent.name!r}",
                                    m.raw_name or m.name, "links inside an archive may not be used as directories")
            if parent.kind != DIR:
                raise ArtifactError(component, f"{parent.name!r} is both a file and a directory",
                                    m.raw_name or m.name)
    for m in members:
        if m.kind == SYMLINK:
            resolve_link(component, m, links)
        elif m.kind == HARDLINK:
            try:
                target = clean_name(component, m.target) if m.target else ""
            except ArtifactError as exc:
                raise ArtifactError(component, f"hard link to {m.target!r} points outside the tree ({exc.reason})",
                                    m.raw_name or m.name) from None
            other = seen.get(target.lower())
            if not target or other is None or other.kind != FILE:
                raise ArtifactError(component, f"hard link to {m.target!r}, which is not a file in this archive "
                                    "(links pointing outside are refused)", m.raw_name or m.name)
    if archive_size and total > RATIO_MIN_SIZE and total > archive_size * limits.max_ratio:
        raise ArtifactError(component, f"unpacks to {total} bytes from {archive_size}: ratio above "
                            f"{limits.max_ratio}:1 (zip bomb guard)", hint="setting artifact_max_ratio")
    return members
