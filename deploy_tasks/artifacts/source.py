"""Where a release's artifacts come from: a directory, or one bundle (zip, tar, tar.gz) holding them.

A component's artifact is found by the file name the Components sheet gives
(in a bundle: a member with that last path part, at any depth). A
``SHA256SUMS`` next to the artifacts (or in the bundle) is read when present.

Each ``ArtifactRef.open()`` returns its own stream (its own file handle and, in
a zip bundle, its own ``ZipFile``), so artifacts are read in parallel.
A tar.gz bundle can only be read front to back: ``Release.prepare`` streams it
once and stages the wanted members as files beside the repository.
"""

from __future__ import annotations

import io
import os
import stat as stat_mod
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

from ..errors import ArtifactError, ConfigError
from . import manifest as manifest_mod
from .archive import BLOCK, archive_kind

#: a file changed less than this long ago may change again within the same timestamp tick
RACY_NS = 2_000_000_000

StatKey = Tuple[int, int, int, int, int]


def stat_key(st: os.stat_result) -> Optional[StatKey]:
    """(dev, inode, size, mtime, ctime) of a file that has not changed recently, else None.

    ctime cannot be set from user space (touch, utime and cp -p set mtime only),
    and every write or rename updates it: a file whose key is unchanged has not
    been written since the key was taken, so the sha256 taken then still holds.
    As git does with its index, a file changed within RACY_NS of now gets no
    key, because a second write in the same timestamp tick would go unseen.
    """
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    if time.time_ns() - newest < RACY_NS:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class ArtifactRef:
    """One component's artifact in the release."""

    component: str
    name: str  # the artifact's file name (Components sheet)
    origin: str  # the file, or the bundle it is in
    member: Optional[str] = None  # member name inside the bundle
    size: int = 0
    kind: str = "file"  # file, zip-member, tar-member, staged
    offset: int = 0  # tar-member: where its data starts
    key: Optional[StatKey] = None  # stat key of ``origin`` when taken (see stat_key)
    source: str = ""  # staged: the bundle it came from

    def open(self):
        try:
            if self.kind in ("file", "staged"):
                return open(self.origin, "rb")
            if self.kind == "zip-member":
                zf = zipfile.ZipFile(self.origin)
                return _ClosingStream(zf.open(self.member), zf)
            if self.kind == "tar-member":
                fh = open(self.origin, "rb")
                fh.seek(self.offset)
                return _Limited(fh, self.size)
        except (OSError, zipfile.BadZipFile) as exc:
            raise ArtifactError(self.component, f"cannot read {self.name} from {self.origin}: {exc}") from None
        raise ValueError(self.kind)

    def record(self) -> dict:
        return {"path": os.path.abspath(self.source or self.origin), "member": self.member, "stat": list(self.key) if self.key else None}


class _ClosingStream(io.RawIOBase):
    def __init__(self, stream, owner):
        self._stream, self._owner = stream, owner

    def read(self, n=-1):
        return self._stream.read(n)

    def readable(self):
        return True

    def close(self):
        try:
            self._stream.close()
            self._owner.close()
        finally:
            super().close()


class _Limited(io.RawIOBase):
    def __init__(self, fh, size):
        self._fh, self._left = fh, size

    def read(self, n=-1):
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._fh.read(n)
        if not data:
            raise EOFError("the bundle ends inside this artifact")
        self._left -= len(data)
        return data

    def readable(self):
        return True

    def close(self):
        try:
            self._fh.close()
        finally:
            super().close()


class Release:
    """The release named by --source / artifact_source."""

    def __init__(self, path: str):
        self.path = path
        try:
            st = os.stat(path)
        except OSError:
            raise ConfigError(f"release {path!r} does not exist (set --source or the artifact_source setting; "
                              "`inv make-release` writes a synthetic one)") from None
        self.key = stat_key(st)
        if stat_mod.S_ISDIR(st.st_mode):
            self.kind = "dir"
        else:
            self.kind = archive_kind(path)
            if not self.kind:
                raise ConfigError(f"release {path!r} is neither a directory nor a zip, tar or tar.gz bundle")
        self._refs: Dict[str, list] = {}
        self._sums_text: Optional[str] = None
        self._sums_found: list = []  # (depth, member, text) of every SHA256SUMS in a bundle
        self._sums_error = ""
        self._staged = False
        self._prepared_names: set = set()
        if self.kind == "zip":
            self._index_zip()
        elif self.kind == "tar":
            self._index_tar()

    # -- indexes ---------------------------------------------------------------
    def _add(self, base: str, ref_args: dict) -> None:
        self._refs.setdefault(base, []).append(ref_args)

    def _index_zip(self) -> None:
        try:
            with zipfile.ZipFile(self.path) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
                    if base == manifest_mod.SUMS:
                        self._found_sums(info.filename, zf.read(info).decode("utf-8", "replace"))
                        continue
                    self._add(base, dict(origin=self.path, member=info.filename, size=info.file_size,
                                         kind="zip-member"))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ConfigError(f"release bundle {self.path}: not a readable zip ({exc})") from None
        self._choose_sums()

    def _index_tar(self) -> None:
        try:
            with tarfile.open(self.path, mode="r:") as tf:
                for info in tf:
                    if not info.isreg():
                        continue
                    base = info.name.rsplit("/", 1)[-1]
                    if base == manifest_mod.SUMS:
                        self._found_sums(info.name, tf.extractfile(info).read().decode("utf-8", "replace"))
                        continue
                    self._add(base, dict(origin=self.path, member=info.name, size=info.size, kind="tar-member",
                                         offset=info.offset_data))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ConfigError(f"release bundle {self.path}: not a readable tar ({exc})") from None
        self._choose_sums()

    def _found_sums(self, member: str, text: str) -> None:
        path = member.replace("\\", "/")
        while path.startswith("./"):
            path = path[2:]
        self._sums_found.append((path.strip("/").count("/"), member, text))

    def _choose_sums(self) -> None:
        """The SHA256SUMS nearest the bundle's root; several at that depth must not disagree."""
        if not self._sums_found:
            return
        depth = min(d for d, _, _ in self._sums_found)
        top = [(m, t) for d, m, t in self._sums_found if d == depth]
        self._sums_text = "\n".join(t for _, t in top)
        for i, (m1, t1) in enumerate(top):
            for m2, t2 in top[i + 1:]:
                try:
                    s1 = manifest_mod.parse_sums(t1, m1)
                    s2 = manifest_mod.parse_sums(t2, m2)
                except ArtifactError:
                    continue  # reported by sums()
                clash = sorted(n for n in set(s1) & set(s2) if s1[n] != s2[n])
                if clash:
                    self._sums_error = (f"release bundle {self.path}: {m1} and {m2} (both at the same depth) give "
                                        f"different sha256 for {', '.join(clash[:5])}; keep one SHA256SUMS")
                    return

    def prepare(self, names: Iterable[str], staging: str, limit: int = 0) -> None:
        """tar.gz only: stream the bundle once, staging the wanted artifacts (and SHA256SUMS) as files.

        An artifact larger than ``limit`` bytes (the unpacked size limit) is not staged: its
        component fails with that reason (see ``extract._check_bundled_size``).
        """
        if self.kind != "tar.gz" or self._staged:
            return
        wanted = set(names)
        os.makedirs(staging, exist_ok=True)
        count: Dict[str, int] = {}
        try:
            with tarfile.open(self.path, mode="r|gz") as tf:
                for info in tf:
                    if not info.isreg():
                        continue
                    base = info.name.rsplit("/", 1)[-1]
                    if base == manifest_mod.SUMS:
                        self._found_sums(info.name, tf.extractfile(info).read().decode("utf-8", "replace"))
                        continue
                    if base not in wanted:
                        continue
                    if limit and info.size > limit:  # never written: the component fails on its size
                        self._add(base, dict(origin=self.path, member=info.name, size=info.size, kind="too-large",
                                             source=self.path))
                        continue
                    count[base] = count.get(base, 0) + 1
                    target = os.path.join(staging, f"{count[base]}-{base}")
                    src = tf.extractfile(info)
                    written = 0
                    with open(target, "wb") as out:
                        while True:
                            buf = src.read(BLOCK)
                            if not buf:
                                break
                            written += len(buf)
                            if written > info.size:  # tarfile never gives more; a guard all the same
                                raise OSError(f"{info.name}: more data than the {info.size} bytes declared")
                            out.write(buf)
                    self._add(base, dict(origin=target, member=info.name, size=info.size, kind="staged",
                                         source=self.path))
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise ConfigError(f"release bundle {self.path}: truncated or corrupt tar.gz ({exc}); "
                              "rebuild or re-download it") from None
        self._choose_sums()
        self._staged = True

    # -- lookups ---------------------------------------------------------------
    @property
    def needs_prepare(self) -> bool:
        return self.kind == "tar.gz" and not self._staged

    def sums(self) -> Optional[Dict[str, str]]:
        """The release's SHA256SUMS, or None when it ships none."""
        if self.kind == "dir":
            path = os.path.join(self.path, manifest_mod.SUMS)
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
            except FileNotFoundError:
                return None
            return manifest_mod.parse_sums(text, path)
        if self._sums_error:
            raise ConfigError(self._sums_error)
        if self._sums_text is None:
            return None
        return manifest_mod.parse_sums(self._sums_text, f"{self.path}!{manifest_mod.SUMS}")

    def find(self, component: str, name: str) -> ArtifactRef:
        """The component's artifact, or ArtifactError naming the file expected and where."""
        if self.kind == "dir":
            path = os.path.join(self.path, name)
            try:
                st = os.stat(path)
            except OSError:
                raise ArtifactError(component, f"artifact {name} is missing: expected {path}",
                                    hint="put the file there or fix the Artifact cell of the Components sheet") from None
            if not stat_mod.S_ISREG(st.st_mode):
                raise ArtifactError(component, f"artifact {path} is not a regular file")
            real, root = os.path.realpath(path), os.path.realpath(self.path)
            if os.path.commonpath([real, root]) != root:
                raise ArtifactError(component, f"artifact {path} is a link to {real}, outside the release {self.path}",
                                    hint="copy the file into the release instead of linking to it")
            return ArtifactRef(component, name, path, None, st.st_size, "file", key=stat_key(st))
        found = self._refs.get(name, [])
        if not found:
            raise ArtifactError(component, f"artifact {name} is missing from the bundle {self.path}",
                                hint="add it to the release or fix the Artifact cell of the Components sheet")
        if len(found) > 1:
            where = ", ".join(f["member"] for f in found)
            raise ArtifactError(component, f"artifact {name} appears more than once in the bundle {self.path} ({where})")
        return ArtifactRef(component, name, key=self.key, **found[0])

    def has(self, name: str) -> bool:
        if self.kind == "dir":
            return os.path.isfile(os.path.join(self.path, name))
        return name in self._refs

    def fast_key(self, name: str) -> Optional[StatKey]:
        """The stat key that identifies the artifact without reading it (tar.gz: the bundle's)."""
        if self.kind == "dir":
            try:
                return stat_key(os.stat(os.path.join(self.path, name)))
            except OSError:
                return None
        return self.key

    def origin_of(self, name: str) -> str:
        return os.path.abspath(os.path.join(self.path, name) if self.kind == "dir" else self.path)
