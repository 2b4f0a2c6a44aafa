"""File-system moves every writer shares: a directory swapped in whole, a file replaced whole, a checked output dir.

At the bottom of the layers (beside errors.py): the package repository
(artifacts) and the generated Puppet environment (configgen) are both built
beside their target and then swapped in, so a reader never sees half a tree.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
from typing import Union

from .errors import ConfigError

PathLike = Union[str, os.PathLike]

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: PathLike, b: PathLike) -> bool:
    """Swap two paths in one step (``renameat2(RENAME_EXCHANGE)``); False when the kernel or libc cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def swap_in(new: PathLike, target: PathLike, aside: PathLike) -> None:
    """Put the directory ``new`` where ``target`` is; the previous ``target`` is removed.

    Atomic when the kernel can exchange the two; otherwise the previous tree is
    renamed to ``aside`` first and put back if the second rename fails, so
    ``target`` never disappears for good. Raises OSError; ``new`` is gone on success.
    """
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    if not os.path.islink(target) and _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now holds the previous tree
        return
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except OSError:
        os.rename(aside, target)  # put the previous tree back
        raise
    if os.path.islink(aside) or not os.path.isdir(aside):
        os.unlink(aside)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def write_file(path: PathLike, data: Union[str, bytes], fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` in one rename (a reader sees the old bytes or the new, never half)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(raw)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def output_dir(path: PathLike, what: str) -> str:
    """Create the directory ``path`` (``what`` says which: "--dest") or say in one line why it cannot be.

    A file in the way, a path under a file, no permission: a ConfigError naming
    the path and what to do, never a traceback.
    """
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{what} {path} is a file, not a directory; point {what} at a directory") from None
    except NotADirectoryError:
        raise ConfigError(f"{what} {path} is under a file ({_file_above(path)}); point {what} at a directory") \
            from None
    except PermissionError:
        raise ConfigError(f"{what} {path}: permission denied creating it; choose a directory you can write "
                          f"(or run as its owner)") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create it ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: permission denied (not writable by this user); choose a directory "
                          "you can write (or run as its owner)")
    return path


def _file_above(path: str) -> str:
    probe = os.path.abspath(path)
    while probe and probe != os.path.dirname(probe):
        if os.path.lexists(probe) and not os.path.isdir(probe):
            return probe
        probe = os.path.dirname(probe)
    return "a file"


def describe_os_error(exc: OSError) -> str:
    """``strerror`` with the file name, for one-line messages."""
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)}{where}"
