"""A host's ``C:\\`` drive: Windows paths mapped into its sandbox directory, and back.

NTFS rules the persona keeps: names match case-insensitively (an existing
name keeps the case it has on disk), trailing dots and spaces are dropped,
``/`` is a separator too, relative paths start at the current directory.
Nothing maps outside the sandbox: ``..`` stops at the root, a symlink that
leads out, another drive or a UNC path raise ``FileNotFoundError``.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import List, Optional

from .process import PROFILE_DIR

_LISTINGS: dict = {}  # folder -> (its mtime_ns, when listed, {lowercased name: name on disk})
_LISTINGS_LOCK = threading.Lock()
_RACY_NS = 2_000_000_000


class Sandbox:
    """The directory that is a host's ``C:\\``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._real_root: Optional[str] = None

    def to_sandbox(self, win_path: str, cwd: str = PROFILE_DIR) -> Path:
        """Map a Windows path (``C:\\X\\Y``, ``C:/X/Y``, ``\\X``, relative to ``cwd``) into the sandbox."""
        p = win_path.strip().strip('"').replace("/", "\\")
        if p.startswith("\\\\"):
            raise FileNotFoundError(win_path)
        if re.match(r"^[A-Za-z]:", p):
            if p[0].upper() != "C":
                raise FileNotFoundError(win_path)
            p = p[2:]
            if not p.startswith("\\"):
                p = cwd[2:] + "\\" + p  # C:name is relative to the current directory of drive C:
        elif not p.startswith("\\"):
            p = cwd[2:] + "\\" + p
        parts: List[str] = []
        for part in p.split("\\"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part.rstrip(" ."))  # Windows drops trailing dots and spaces
        # a path that exists as given is itself, and one whose folder does needs only its last name found:
        # a stat or two, not one for every name on the way (four times in every Puppet run)
        current = self.root.joinpath(*parts)
        if not os.path.exists(current):
            if parts and os.path.isdir(current.parent):
                current = self.find(current) or current
            else:
                current = self.root
                for part in parts:
                    current = self.find(current / part) or current / part
        if self._has_link_below_root(current):
            root = self._real_root
            if root is None:  # the sandbox's own place does not move: resolved once (its links, up to /)
                root = self._real_root = os.path.realpath(self.root)
            real = os.path.realpath(current)
            if real != root and not real.startswith(root + os.sep):
                raise FileNotFoundError(win_path)
        return current

    def _has_link_below_root(self, path: Path) -> bool:
        """Whether a name on the way from the root to ``path`` is a symbolic link (only then can a path made of
        names, none of them ``..``, lead out: it is resolved then). One ``lstat`` a name, up to the first that
        does not exist, instead of ``realpath``'s one a name of the whole path from ``/`` on."""
        text, root = os.fspath(path), os.fspath(self.root)
        if text == root:
            return False
        walked = root
        for name in text[len(root) + 1:].split(os.sep):
            walked = walked + os.sep + name
            try:
                if stat.S_ISLNK(os.lstat(walked).st_mode):
                    return True
            except FileNotFoundError:
                return False  # nothing below a name that does not exist: no link there
            except OSError:
                return True  # (not a folder on the way, no permission...: let realpath decide)
        return False

    def to_windows(self, path: Path) -> str:
        """The Windows path of a sandbox path (``C:\\`` for the root)."""
        rel = Path(path).relative_to(self.root)
        return "C:\\" + "\\".join(rel.parts)

    @staticmethod
    def find(path: Path) -> Optional[Path]:
        """``path`` as it exists on disk, its last name matched case-insensitively; None when absent.

        Every command resolves its program through the PATH (a few folders times PATHEXT's
        extensions), so the lowercased names of a folder are kept while its mtime says it is
        unchanged; a listing taken within ``_RACY_NS`` of the folder's mtime is not trusted (a
        change in the same clock tick leaves the mtime as it was: git's "racy clean" rule).
        """
        if path.exists():
            return path
        parent = os.fspath(path.parent)
        try:
            st = os.stat(parent)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        cached = _LISTINGS.get(parent)
        if cached is None or cached[0] != st.st_mtime_ns or cached[1] - st.st_mtime_ns < _RACY_NS:
            listed = time.time_ns()
            names: dict = {}
            for entry in os.listdir(parent):
                names.setdefault(entry.lower(), entry)
            cached = (st.st_mtime_ns, listed, names)
            with _LISTINGS_LOCK:
                if len(_LISTINGS) > 4096:
                    _LISTINGS.clear()
                _LISTINGS[parent] = cached
        entry = cached[2].get(path.name.lower())
        return path.parent / entry if entry is not None else None

    def is_dir(self, win_path: str, cwd: str = PROFILE_DIR) -> bool:
        try:
            return self.to_sandbox(win_path, cwd).is_dir()
        except FileNotFoundError:
            return False
