"""Write a rendered environment: build beside it, validate, swap; or just compare (--check/--diff).

Quiet and deterministic: when nothing changed nothing is touched (modification
times stay); otherwise the new tree is built in a temp dir next to
``environments/<env>``, unchanged files are hard-linked from the current tree
(so they keep their modification times), the tree is validated, and only then
swapped in with one atomic ``renameat2(RENAME_EXCHANGE)`` (two renames where
the kernel lacks it). A run that fails validation leaves the previous output
exactly as it was.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .. import atomic
from ..errors import ConfigError
from .check import CheckResult, validate_tree
from .render import Rendered

Content = Union[str, bytes]


@dataclass(frozen=True)
class Change:
    path: str  # relative to the output dir
    kind: str  # "added", "changed", "removed"
    old: Optional[bytes] = None
    new: Optional[bytes] = None


@dataclass
class WriteResult:
    env_dir: Path
    changes: list = field(default_factory=list)
    check: Optional[CheckResult] = None
    written: bool = False


def _bytes(content: Content) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content


def _existing(env_dir: Path) -> dict:
    found = {}
    if not env_dir.is_dir():
        return found
    for path in sorted(env_dir.rglob("*")):
        if path.is_file() or path.is_symlink():
            found[path.relative_to(env_dir).as_posix()] = path
    return found


def compare(rendered: Rendered, out_dir: Path) -> list:
    """What writing ``rendered`` under ``out_dir`` would change, file by file, sorted by path."""
    env_dir = Path(out_dir) / rendered.env_dir
    existing = _existing(env_dir)
    prefix = rendered.env_dir + "/"
    changes = []
    for rel in sorted(rendered.files):
        new = _bytes(rendered.files[rel])
        inner = rel[len(prefix):]
        path = existing.pop(inner, None)
        if path is None:
            changes.append(Change(rel, "added", None, new))
            continue
        try:
            old = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the current file: {exc.strerror}") from None
        if old != new:
            changes.append(Change(rel, "changed", old, new))
    for inner, path in existing.items():
        try:
            old = path.read_bytes()
        except OSError:
            old = b""
        changes.append(Change(prefix + inner, "removed", old, None))
    return sorted(changes, key=lambda c: c.path)


def unified_diff(changes: list) -> str:
    """One unified diff over every change (binary files named, not shown)."""
    chunks = []
    for change in changes:
        old, new = change.old or b"", change.new or b""
        try:
            a, b = old.decode("utf-8"), new.decode("utf-8")
        except UnicodeDecodeError:
            chunks.append(f"Binary file {change.path} {change.kind}\n")
            continue
        # paths relative to the output dir, git style (apply there with patch -p1)
        chunks.extend(difflib.unified_diff(
            a.splitlines(keepends=True), b.splitlines(keepends=True),
            fromfile="/dev/null" if change.kind == "added" else f"a/{change.path}",
            tofile="/dev/null" if change.kind == "removed" else f"b/{change.path}",
        ))
        if chunks and not chunks[-1].endswith("\n"):
            chunks[-1] += "\n\\ No newline at end of file\n"
    return "".join(chunks)


def write(rendered: Rendered, out_dir: Path, puppet: Optional[str]) -> WriteResult:
    """Validate and write ``rendered`` under ``out_dir``; nothing is touched when nothing changed."""
    out_dir = Path(out_dir)
    env_dir = out_dir / rendered.env_dir
    changes = compare(rendered, out_dir)
    result = WriteResult(env_dir, changes)
    if not changes:
        # the current tree already holds exactly these bytes: check it where it is, touch nothing
        result.check = validate_tree(_Relocated(rendered), env_dir, puppet, label=f"{env_dir}/")
        return result
    try:
        env_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{env_dir.parent}: cannot create the output directory: {exc.strerror}") from None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{env_dir.name}.new-", dir=env_dir.parent))
    except OSError as exc:
        raise ConfigError(f"{env_dir.parent}: cannot create a temp dir to build in: {exc.strerror}") from None
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the Puppet server's user must read it once published
        try:
            _fill(rendered, staging, env_dir, {c.path for c in changes})
        except OSError as exc:
            raise ConfigError(f"{staging}: cannot write the new files ({exc.strerror}: {exc.filename}); "
                              f"{env_dir} is unchanged") from None
        result.check = validate_tree(_Relocated(rendered), staging, puppet, label=f"{env_dir}/")
        try:
            _swap(staging, env_dir)
        except OSError as exc:
            raise ConfigError(f"{env_dir}: cannot swap in the new tree ({exc.strerror}); "
                              "check its permissions and re-run") from None
        result.written = True
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return result


class _Relocated(Rendered):
    """``rendered`` seen from inside its environment dir (the staging tree holds only that dir)."""

    def __init__(self, rendered: Rendered):
        prefix = rendered.env_dir + "/"
        strip = lambda d: {k[len(prefix):]: v for k, v in d.items()}  # noqa: E731
        super().__init__(env_dir="", files=strip(rendered.files), data=strip(rendered.data),
                         warnings=rendered.warnings, line_origin=strip(rendered.line_origin),
                         value_origin=strip(rendered.value_origin), parts=strip(rendered.parts))


def _fill(rendered: Rendered, staging: Path, env_dir: Path, changed: set) -> None:
    prefix = rendered.env_dir + "/"
    made: set = set()
    for rel, content in rendered.files.items():
        inner = rel[len(prefix):]
        target = staging / inner
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        current = env_dir / inner
        if rel not in changed and current.is_file():
            try:
                os.link(current, target)  # same inode: mtime kept, no copy
                continue
            except OSError:
                shutil.copy2(current, target)
                continue
        target.write_bytes(_bytes(content))


def _swap(staging: Path, env_dir: Path) -> None:
    """Put ``staging`` where ``env_dir`` is, atomically when the kernel can; the old tree goes."""
    atomic.swap_in(staging, env_dir, env_dir.with_name(f".{env_dir.name}.old-{os.getpid()}"))


def read_modules(modules_dir: Optional[Path]) -> dict:
    """Every file under ``modules_dir`` as {relative path: bytes}, for the environment's modules/ dir."""
    if not modules_dir:
        return {}
    modules_dir = Path(modules_dir)
    if not modules_dir.is_dir():
        raise ConfigError(f"{modules_dir}: the Puppet modules directory (setting puppet_modules) does not exist; "
                          "point it at puppet/modules or set it blank")
    files = {}
    for path in sorted(modules_dir.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith("."):
            files[path.relative_to(modules_dir).as_posix()] = path.read_bytes()
    return files
