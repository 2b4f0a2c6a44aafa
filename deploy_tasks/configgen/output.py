"""Write a rendered environment: build beside it, validate, swap; or just compare (--check/--diff).

Quiet and deterministic: when nothing changed nothing is touched (modification
times stay); otherwise the new tree is built in a temp dir next to
``environments/<env>``, unchanged files are hard-linked from the current tree
(so they keep their modification times), the tree is validated, and only then
swapped in with one atomic ``renameat2(RENAME_EXCHANGE)`` (two renames where
the kernel lacks it). A run that fails validation leaves the previous output
exactly as it was.

The generator owns only what it wrote: ``.deploy_tasks-generated`` in the
environment lists its files. A directory holding anything else (a ``.git``, a
hand-written module) is refused, or with ``force`` moved aside and kept; the
tool never deletes a file it did not create. When ``environments/<env>`` is a
symbolic link to a directory, the link is followed (and said so); a link to
nothing is refused.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
import time
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


MARKER = ".deploy_tasks-generated"  # in the environment dir: the files generate-config wrote there


@dataclass
class WriteResult:
    env_dir: Path
    changes: list = field(default_factory=list)
    check: Optional[CheckResult] = None
    written: bool = False
    notes: list = field(default_factory=list)  # what the user should know (a link followed, a dir moved aside)


def _bytes(content: Content) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content


def _existing(env_dir: Path) -> dict:
    found = {}
    if not env_dir.is_dir():
        return found
    for path in sorted(env_dir.rglob("*")):
        if path.is_file() or path.is_symlink():
            found[path.relative_to(env_dir).as_posix()] = path
    found.pop(MARKER, None)
    return found


def owned_files(env_dir: Path) -> set:
    """The files the marker says generate-config wrote under ``env_dir`` (empty without a marker)."""
    try:
        data = json.loads((Path(env_dir) / MARKER).read_text(encoding="utf-8"))
        return {str(f) for f in data.get("files", [])}
    except (OSError, ValueError, AttributeError):
        return set()


def foreign_entries(rendered: Rendered, env_dir: Path) -> list:
    """What under ``env_dir`` generate-config did not write: not in its marker nor among the files it renders.

    An unmarked directory holding only files the generator writes (the output of
    an earlier version) is adopted; anything else is the user's.
    """
    env_dir = Path(env_dir)
    if not env_dir.is_dir():
        return []
    prefix = rendered.env_dir + "/"
    ours = owned_files(env_dir) | {rel[len(prefix):] for rel in rendered.files}
    parents = {p for rel in ours for p in Path(rel).parents}
    foreign = []
    for path in sorted(env_dir.rglob("*")):
        rel = path.relative_to(env_dir)
        if rel.as_posix() == MARKER or rel.as_posix() in ours:
            continue
        if path.is_dir() and not path.is_symlink() and rel in parents:
            continue
        if any(f.endswith("/") and rel.as_posix().startswith(f) for f in foreign):
            continue  # inside a foreign directory already named
        foreign.append(rel.as_posix() + ("/" if path.is_dir() and not path.is_symlink() else ""))
    return foreign


def compare(rendered: Rendered, out_dir: Path) -> list:
    """What writing ``rendered`` under ``out_dir`` would change, file by file, sorted by path.

    Only the generator's own files count: a file it did not write is never "removed" (see ``foreign_entries``).
    """
    env_dir = Path(out_dir) / rendered.env_dir
    existing = _existing(env_dir)
    owned = owned_files(env_dir)
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
        if inner not in owned:
            continue
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


def write(rendered: Rendered, out_dir: Path, puppet: Optional[str], force: bool = False) -> WriteResult:
    """Validate and write ``rendered`` under ``out_dir``; nothing is touched when nothing changed.

    ``force``: an environment dir holding files the generator did not write is moved aside (kept) instead of refused.
    """
    out_dir = Path(out_dir)
    env_dir, notes = _resolve_env_dir(out_dir / rendered.env_dir)
    _check_out_dir(out_dir)
    foreign = foreign_entries(rendered, env_dir)
    if foreign:
        notes.append(_set_aside(env_dir, foreign, force))
    changes = compare(rendered, out_dir)  # through a followed link, or after the directory was moved aside
    result = WriteResult(out_dir / rendered.env_dir, changes, notes=notes)
    marker = _marker_text(rendered)
    if not changes:
        # the current tree already holds exactly these bytes: check it where it is, touch nothing
        result.check = validate_tree(_Relocated(rendered), env_dir, puppet, label=f"{result.env_dir}/")
        if _read(env_dir / MARKER) != marker:
            _write_marker(env_dir, marker)  # an unmarked tree adopted: say from now on that these files are ours
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
            (staging / MARKER).write_text(marker, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{staging}: cannot write the new files ({exc.strerror}: {exc.filename}); "
                              f"{env_dir} is unchanged") from None
        result.check = validate_tree(_Relocated(rendered), staging, puppet, label=f"{result.env_dir}/")
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


def _resolve_env_dir(env_dir: Path) -> tuple:
    """``environments/<env>``, or the directory it links to (followed, and said so); a dangling link is refused."""
    if not env_dir.is_symlink():
        return env_dir, []
    target = Path(os.path.realpath(env_dir))
    if not target.is_dir():
        raise ConfigError(f"{env_dir} is a symbolic link to {os.readlink(env_dir)}, which is not a directory; "
                          "generate-config does not replace links: remove it or point --output elsewhere")
    return target, [f"{env_dir} is a symbolic link: following it, writing into {target}"]


def _check_out_dir(out_dir: Path) -> None:
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == out_dir else f"is under {probe}, which is"
        raise ConfigError(f"--output {out_dir} {where} a file, not a directory; point --output at a directory")


def _set_aside(env_dir: Path, foreign: list, force: bool) -> str:
    """Refuse a directory holding files the generator did not write, or with ``force`` move it aside whole."""
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    aside = env_dir.with_name(f".{env_dir.name}.kept-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    if not force:
        count = f"{len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'}"
        raise ConfigError(f"{env_dir} holds {count} generate-config did not write ({shown}); it "
                          "never deletes those: point --output at a directory of its own, or add --force to move "
                          f"{env_dir.name} aside (kept, as {aside.name}) and write a fresh one")
    try:
        os.rename(env_dir, aside)
    except OSError as exc:
        raise ConfigError(f"{env_dir}: cannot move it aside to {aside}: {exc.strerror}") from None
    return f"{env_dir} held files generate-config did not write ({shown}): moved aside to {aside} (kept)"


def _marker_text(rendered: Rendered) -> str:
    prefix = rendered.env_dir + "/"
    files = sorted(rel[len(prefix):] for rel in rendered.files)
    return json.dumps({"generator": "inv generate-config", "files": files}, indent=1) + "\n"


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def _write_marker(env_dir: Path, text: str) -> None:
    try:
        atomic.write_file(env_dir / MARKER, text, fsync=False)
    except OSError as exc:
        raise ConfigError(f"{env_dir}: cannot write {MARKER} ({exc.strerror}); check its permissions") from None


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
