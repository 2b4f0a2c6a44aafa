"""Read one component's archive (zip, tar, tar.gz) and extract it safely into a fresh directory.

Zip: the central directory is read and checked as a whole first
(``safety.check_members``); the files are then extracted in chunks, each chunk
through its own ``ZipFile`` handle so that chunks run in parallel.
Tar and tar.gz are streamed in one pass: each member is checked as it comes,
links are created only after the whole list has been checked.

Every function here raises ``ArtifactError`` naming the component and the
member; the caller removes the half-written directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ..errors import ArtifactError
from . import safety
from .failure import component_errors
from .safety import DIR, FILE, HARDLINK, SYMLINK, Limits, Member

BLOCK = 1 << 20

try:  # ISA-L inflates deflate about twice as fast as zlib here (same format, same results)
    from isal import isal_zlib as _inflate_lib

    _INFLATE_ERRORS: tuple = (zlib.error, _inflate_lib.error)
except ImportError:  # pragma: no cover - isal is in requirements.txt
    _inflate_lib = None
    _INFLATE_ERRORS = (zlib.error,)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_CREATE_RW = (_CREATE & ~os.O_WRONLY) | os.O_RDWR  # written in the kernel, then read back for the checksums
MAX_LINK_TARGET = 4096


def archive_kind(path: str) -> str:
    """'zip', 'tar' or 'tar.gz' from the file's first bytes (not its name)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if len(head) == 512 and _tar_checksum_ok(head):
        return "tar"  # v7 tar without the ustar magic
    return ""


def _tar_checksum_ok(block: bytes) -> bool:
    try:
        return tarfile.calc_chksums(block)[0] == int(block[148:156].strip(b"\0 ") or b"-1", 8)
    except ValueError:
        return False


@dataclass
class Extracted:
    """What a (partial) extraction produced: file -> sha256, link -> target, bytes written."""

    files: Dict[str, str] = field(default_factory=dict)
    links: Dict[str, str] = field(default_factory=dict)
    size: int = 0

    def merge(self, other: "Extracted") -> None:
        self.files.update(other.files)
        self.links.update(other.links)
        self.size += other.size


# -- zip ---------------------------------------------------------------------

def _zip_kind(info: zipfile.ZipInfo):
    mode = info.external_attr >> 16
    fmt = stat.S_IFMT(mode)
    if fmt == stat.S_IFLNK:
        return SYMLINK
    if fmt == stat.S_IFDIR or (fmt == 0 and info.is_dir()):
        return DIR
    if fmt in (0, stat.S_IFREG):
        return DIR if info.is_dir() else FILE
    return None  # device, FIFO, socket


def _open_zip(component: str, path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ArtifactError(component, f"not a readable zip archive ({exc}); the file is truncated or corrupt",
                            hint="rebuild or re-download the artifact") from None
    except OSError as exc:
        raise ArtifactError(component, f"cannot read the artifact: {exc}") from None


def zip_members(component: str, path: str, limits: Limits) -> List[Member]:
    """The zip's checked member list (symlink targets read from the archive)."""
    with _open_zip(component, path) as zf:
        members = []
        for index, info in enumerate(zf.infolist()):
            raw = info.filename
            kind = safety.check_kind(component, raw, _zip_kind(info), "member")
            if kind == DIR and safety.is_root(raw):
                continue  # "./": the tree itself
            name = safety.clean_name(component, raw)
            if info.flag_bits & 0x1:
                raise ArtifactError(component, "member is encrypted", raw, "artifacts must not be password-protected")
            m = Member(name, kind, size=info.file_size, packed=info.compress_size, index=index, raw_name=raw)
            if kind == SYMLINK:
                if info.file_size > MAX_LINK_TARGET:
                    raise ArtifactError(component, "symlink target longer than 4096 bytes", raw)
                m.target = _read_small(component, zf, info).decode("utf-8", "replace")
            members.append(m)
    return safety.check_members(component, members, limits, os.path.getsize(path))


def _read_small(component: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise _broken(component, info.filename, exc) from None
    except NotImplementedError as exc:
        raise _unsupported(component, info, exc) from None


def _unsupported(component: str, info: zipfile.ZipInfo, exc: BaseException) -> ArtifactError:
    return ArtifactError(component, f"unsupported zip feature (compression method {info.compress_type}): "
                         f"{exc or type(exc).__name__}", info.filename,
                         "rebuild the artifact with stored or deflated members")


def _broken(component: str, member: str, exc: BaseException) -> ArtifactError:
    text = str(exc) or type(exc).__name__
    if "CRC" in text:
        what = "CRC mismatch: the member's data is corrupt"
    elif isinstance(exc, EOFError) or "ended" in text or "truncated" in text.lower():
        what = f"truncated data ({text})"
    else:
        what = f"corrupt data ({text})"
    return ArtifactError(component, what, member, "rebuild or re-download the artifact")


def make_dirs(tree: str, members: List[Member], component: str = "") -> None:
    """Every directory the members need, created up front (real directories; no link exists yet)."""
    needed: Dict[str, Member] = {}
    for m in members:
        if m.kind == DIR:
            needed.setdefault(m.name, m)
        parent = m.name.rpartition("/")[0]
        if parent:
            needed.setdefault(parent, m)
    for d in sorted(needed):
        try:
            os.makedirs(os.path.join(tree, d), exist_ok=True)
        except OSError as exc:  # ENAMETOOLONG, ENOSPC...: name the member that needs the directory
            m = needed[d]
            raise ArtifactError(component, f"cannot create the directory {d}: {exc.strerror or exc}",
                                m.raw_name or m.name) from None


def plan_chunks(members: List[Member], chunk_bytes: int) -> List[List[int]]:
    """Group the zip's file members into chunks of about ``chunk_bytes`` (largest files spread first)."""
    files = sorted((m for m in members if m.kind == FILE), key=lambda m: m.size, reverse=True)
    if not files:
        return []
    total = sum(m.size for m in files)
    n = max(1, min(len(files), -(-total // max(chunk_bytes, 1))))
    chunks: List[List[int]] = [[] for _ in range(n)]
    loads = [0] * n
    for m in files:
        i = loads.index(min(loads))
        chunks[i].append(m.index)
        loads[i] += m.size + 4096
    return [sorted(c) for c in chunks if c]


def copy_range(src_fd: int, dst_fd: int, offset: int, size: int) -> int:
    """Copy ``size`` bytes at ``offset`` of src into dst inside the kernel (copy_file_range), else by reads."""
    done = 0
    while done < size:
        try:
            n = os.copy_file_range(src_fd, dst_fd, size - done, offset + done)
        except OSError:  # another file system, an old kernel: plain reads and writes
            buf = os.pread(src_fd, min(BLOCK, size - done), offset + done)
            n = os.write(dst_fd, buf) if buf else 0
        if n == 0:
            break
        done += n
    return done


def hash_fd(fd: int, with_crc: bool = False) -> Tuple[str, int, int]:
    """(sha256, crc32, size) of a file read from its start."""
    digest = hashlib.sha256()
    crc = 0
    size = 0
    offset = 0
    while True:
        buf = os.pread(fd, BLOCK, offset)
        if not buf:
            break
        digest.update(buf)
        if with_crc:
            crc = zlib.crc32(buf, crc)
        size += len(buf)
        offset += len(buf)
    return digest.hexdigest(), crc, size


def _stored_data_offset(fd: int, info: zipfile.ZipInfo, archive_size: int) -> int:
    """Where a member's data starts, from its local header (checked as zipfile checks it)."""
    header = os.pread(fd, 30, info.header_offset)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    raw = os.pread(fd, name_len, info.header_offset + 30)
    name = raw.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
    if name != info.orig_filename:
        raise zipfile.BadZipFile(f"file name in directory {info.orig_filename!r} and header {name!r} differ")
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.compress_size > archive_size:
        raise EOFError("the archive ends inside this member's data")
    return start


def _extract_stored(fd: int, archive_size: int, info: zipfile.ZipInfo, dest: str) -> Tuple[str, int]:
    """A stored member: copied inside the kernel, then read back once for its CRC and sha256."""
    start = _stored_data_offset(fd, info, archive_size)
    out = os.open(dest, _CREATE_RW, 0o644)
    try:
        copied = copy_range(fd, out, start, info.file_size)
        if copied != info.file_size:
            raise EOFError(f"{copied} bytes of data, {info.file_size} declared")
        sha, crc, size = hash_fd(out, with_crc=True)
    finally:
        os.close(out)
    _check_size_and_crc(info, size, crc)
    return sha, size


def extract_zip_chunk(component: str, archive: str, tree: str, indices: List[int]) -> Extracted:
    """Extract the zip's file members at ``indices`` into ``tree`` through an own handle."""
    out = Extracted()
    with _open_zip(component, archive) as zf:
        infos = zf.infolist()
        fd = os.open(archive, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        archive_size = os.fstat(fd).st_size
        try:
            for index in indices:
                info = infos[index]
                _extract_member(component, zf, fd, archive_size, info, tree, out)
        finally:
            os.close(fd)
    return out


def _extract_deflated(fd: int, archive_size: int, info: zipfile.ZipInfo, dest: str) -> Tuple[str, int]:
    """A deflated member through ISA-L, never producing more than the size the archive declares."""
    pos = _stored_data_offset(fd, info, archive_size)
    left = info.compress_size
    inflater = _inflate_lib.decompressobj(-15)
    digest = hashlib.sha256()
    crc = 0
    size = 0
    out = os.open(dest, _CREATE, 0o644)
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail
            if not data:
                if left <= 0:
                    raise zipfile.BadZipFile("no end-of-stream marker within the member's compressed size")
                data = os.pread(fd, min(BLOCK, left), pos)
                if not data:
                    raise EOFError("the archive ends inside this member's data")
                pos += len(data)
                left -= len(data)
            chunk = inflater.decompress(data, 4 * BLOCK)
            if not chunk:
                continue
            size += len(chunk)
            if size > info.file_size:
                raise _SizeMismatch(f"more data than the {info.file_size} bytes declared")
            digest.update(chunk)
            crc = zlib.crc32(chunk, crc)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
    finally:
        os.close(out)
    _check_size_and_crc(info, size, crc)
    return digest.hexdigest(), size


def _extract_member(component, zf, fd, archive_size, info, tree, out: Extracted) -> None:
    name = safety.clean_name(component, info.filename)
    dest = os.path.join(tree, name)
    with component_errors(component, info.filename):  # anything unforeseen is still this member's failure
        sha, size = _write_member(component, zf, fd, archive_size, info, name, dest)
    out.files[name] = sha
    out.size += size


def _write_member(component, zf, fd, archive_size, info, name: str, dest: str) -> Tuple[str, int]:
    try:
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size == info.file_size:
            return _extract_stored(fd, archive_size, info, dest)
        if info.compress_type == zipfile.ZIP_DEFLATED and _inflate_lib is not None:
            return _extract_deflated(fd, archive_size, info, dest)
        with zf.open(info) as src:
            return _write_file(dest, src, info.file_size)
    except (zipfile.BadZipFile, EOFError, ValueError) + _INFLATE_ERRORS as exc:
        raise _broken(component, info.filename, exc) from None
    except _SizeMismatch as exc:
        raise ArtifactError(component, f"size mismatch: {exc}", info.filename,
                            "rebuild or re-download the artifact") from None
    except OSError as exc:
        raise ArtifactError(component, f"cannot write {name}: {exc}", info.filename) from None
    except NotImplementedError as exc:  # zipfile: compression method or feature it cannot read
        raise _unsupported(component, info, exc) from None


class _SizeMismatch(Exception):
    pass


def _check_size_and_crc(info, size: int, crc: int) -> None:
    """What zipfile checks when it reads a member, for the members written by our own copy paths."""
    if size != info.file_size:
        raise _SizeMismatch(f"{size} bytes of data, {info.file_size} declared")
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")


def _write_file(dest: str, src, declared: int, limit: int = -1) -> Tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(dest, _CREATE, 0o644)
    with open(fd, "wb", buffering=0) as fh:
        while True:
            buf = src.read(BLOCK)
            if not buf:
                break
            size += len(buf)
            if size > declared >= 0:
                raise _SizeMismatch(f"more data than the {declared} bytes declared")
            digest.update(buf)
            fh.write(buf)
    if declared >= 0 and size != declared:
        raise _SizeMismatch(f"{size} bytes of data, {declared} declared")
    return digest.hexdigest(), size


def make_links(component: str, tree: str, members: List[Member], done: Extracted) -> None:
    """Create the (already checked) links once every file exists; a hard link becomes a real link in the tree."""
    for m in members:
        path = os.path.join(tree, m.name)
        # OSError, ValueError (embedded null byte), a missing file...: this member's failure
        with component_errors(component, m.raw_name or m.name, f"cannot create the {m.kind} to {m.target!r}: "):
            if m.kind == SYMLINK:
                os.symlink(m.target.replace("\\", "/"), path)
                done.links[m.name] = m.target
            elif m.kind == HARDLINK:
                target = safety.clean_name(component, m.target)
                os.link(os.path.join(tree, target), path, follow_symlinks=False)
                done.files[m.name] = done.files[target]


# -- tar, tar.gz (streamed) ----------------------------------------------------

def _tar_kind(info: tarfile.TarInfo):
    if info.issparse():
        return None
    if info.isreg():
        return FILE
    if info.isdir():
        return DIR
    if info.issym():
        return SYMLINK
    if info.islnk():
        return HARDLINK
    return None


def extract_tar(component: str, archive: str, tree: str, limits: Limits) -> Extracted:
    """Stream a tar or tar.gz into ``tree``: files as they come, links after the whole list passed the checks."""
    out = Extracted()
    members: List[Member] = []
    seen: Dict[str, str] = {}
    packed = os.path.getsize(archive)
    try:
        with tarfile.open(archive, mode="r|*") as tf:
            for info in tf:
                raw = info.name
                kind = safety.check_kind(component, raw, _tar_kind(info), "member")
                if kind == DIR and safety.is_root(raw):
                    continue  # "." or "./" (tar -C dir -cf x.tar .): the tree itself; a "." file stays refused
                name = safety.clean_name(component, raw)
                m = Member(name, kind, size=info.size if kind == FILE else 0, target=info.linkname, raw_name=raw)
                members.append(m)
                if len(members) > limits.max_members:
                    safety.check_members(component, members, limits)  # raises the limit error
                key = name.lower()
                if key in seen and not (kind == DIR and seen[key] == DIR):
                    safety.check_members(component, members, limits)  # raises the duplicate error
                seen[key] = kind
                if kind == DIR:
                    try:
                        os.makedirs(os.path.join(tree, name), exist_ok=True)
                    except OSError as exc:
                        raise ArtifactError(component, f"cannot create the directory {name}: "
                                            f"{exc.strerror or exc}", raw) from None
                    continue
                if kind != FILE:
                    continue
                if out.size + info.size > limits.max_unpacked:
                    raise ArtifactError(component, f"unpacks to more than {limits.max_unpacked >> 20} MiB "
                                        "(zip bomb guard)", raw, "setting artifact_max_unpacked_mb")
                if out.size + info.size > max(packed, 1) * limits.max_ratio and out.size + info.size > safety.RATIO_MIN_SIZE:
                    raise ArtifactError(component, f"compression ratio above {limits.max_ratio}:1 (zip bomb guard)",
                                        raw, "setting artifact_max_ratio")
                parent = name.rpartition("/")[0]
                if parent:
                    try:
                        _make_parent(component, tree, parent, seen, raw)
                    except OSError as exc:
                        raise ArtifactError(component, f"cannot create the directory {parent}: "
                                            f"{exc.strerror or exc}", raw) from None
                src = tf.extractfile(info)
                try:
                    sha, size = _write_file(os.path.join(tree, name), src, info.size)
                except _SizeMismatch as exc:
                    raise ArtifactError(component, f"size mismatch: {exc}", raw) from None
                except FileExistsError:
                    raise ArtifactError(component, "duplicate member: the same name appears twice", raw) from None
                except (tarfile.TarError, EOFError, zlib.error):
                    raise
                except OSError as exc:  # ENAMETOOLONG, ENOSPC...: a write error, not a corrupt archive
                    if exc.filename is None:
                        raise
                    raise ArtifactError(component, f"cannot write {name}: {exc.strerror or exc}", raw) from None
                out.files[name] = sha
                out.size += size
    except ArtifactError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        where = members[-1].raw_name if members else None
        raise ArtifactError(component, f"truncated or corrupt tar archive ({exc})", where,
                            "rebuild or re-download the artifact") from None
    if not members:
        raise ArtifactError(component, "the archive is empty or not a tar archive")
    safety.check_members(component, members, limits)
    make_links(component, tree, members, out)
    return out


def _make_parent(component: str, tree: str, parent: str, seen: Dict[str, str], raw: str) -> None:
    parts = parent.split("/")
    for i in range(1, len(parts) + 1):
        kind = seen.get("/".join(parts[:i]).lower())
        if kind is not None and kind != DIR:
            raise ArtifactError(component, f"{'/'.join(parts[:i])!r} is a {kind}, not a directory", raw,
                                "members may not be written through links or files")
    os.makedirs(os.path.join(tree, parent), exist_ok=True)
