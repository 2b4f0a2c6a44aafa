"""A synthetic release: one zip per component, named as the Components sheet says, plus SHA256SUMS.

Used by the tests, ``bench/extract.py`` and ``inv make-release``. Each
artifact mixes compressible text (deflated, about 3:1 like source and
configuration files) and incompressible binaries (stored, like executables
and images), in a layout that looks like an installed product
(``bin/``, ``lib/``, ``etc/``, ``docs/``). Content is deterministic for a seed.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import random
import struct
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple, Union

from .. import atomic
from ..errors import ConfigError

_DATE = (2026, 1, 2, 3, 4, 6)
_MIB = 1 << 20


def _components(components) -> List[Tuple[str, str, str]]:
    if hasattr(components, "components"):  # an Inventory
        components = components.components
    out = []
    for c in components:
        if isinstance(c, (tuple, list)):
            out.append((c[0], c[1], c[2]))
        else:
            out.append((c.name, c.version, c.artifact))
    return out


def _text_base(rng: random.Random, size: int) -> bytes:
    letters = "etaoinshrdlucmfwypvbgkqjxz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)]
    words += ["def", "class", "return", "import", "self", "None", "=", "(", ")", ":", "\n", "    ", "\n\n"]
    chunks, total = [], 0
    while total < size:
        line = " ".join(rng.choices(words, k=rng.randint(4, 14))) + "\n"
        chunks.append(line)
        total += len(line)
    return "".join(chunks).encode()[:size]


def component_files(name: str, size: int, text_fraction: float, seed: int) -> List[Tuple[str, bytes, bool]]:
    """(path, content, compressible) of one synthetic component of about ``size`` bytes."""
    rng = random.Random(f"{seed}:{name}")
    files: List[Tuple[str, bytes, bool]] = []
    text_total = int(size * text_fraction)
    bin_total = size - text_total
    base = _text_base(rng, min(max(text_total, 4096), 2 * _MIB) + 4096)
    files.append((f"etc/{name}.conf", f"[{name}]\nname = {name}\nport = 8080\n".encode(), True))
    i = 0
    while text_total > 0:
        n = min(text_total, rng.randint(16 << 10, 768 << 10))
        start = rng.randrange(0, max(1, len(base) - n)) if len(base) > n else 0
        chunk = base[start:start + n]
        while len(chunk) < n:
            chunk += base[: n - len(chunk)]
        files.append((f"lib/{name}/module_{i:04d}.py", chunk, True))
        text_total -= n
        i += 1
    i = 0
    while bin_total > 0:
        n = min(bin_total, rng.randint(256 << 10, 8 * _MIB))
        folder = "bin" if i % 3 == 0 else "lib/native"
        files.append((f"{folder}/{name}_{i:03d}.{'exe' if folder == 'bin' else 'dll'}", rng.randbytes(n), False))
        bin_total -= n
        i += 1
    files.append((f"docs/README-{name}.txt", f"{name}: synthetic component for tests and benchmarks\n".encode(), True))
    return files


def write_component_zip(path: Union[str, os.PathLike], name: str, size: int, text_fraction: float = 0.5,
                        seed: int = 0) -> int:
    """Write one component's zip; returns its size on disk."""
    with zipfile.ZipFile(path, "w") as zf:
        for member, data, compressible in component_files(name, size, text_fraction, seed):
            info = zipfile.ZipInfo(member, _DATE)
            info.external_attr = 0o644 << 16
            if compressible:
                zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
            else:
                zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)
    return os.path.getsize(path)


def write_release(components, dest: Union[str, os.PathLike], size_per_component: Union[int, Sequence[int]] = _MIB,
                  text_fraction: float = 0.5, seed: int = 0, sums: bool = True, workers: int = 2) -> Path:
    """Write every component's artifact into ``dest`` (a directory), plus SHA256SUMS; returns ``dest``.

    ``components``: an Inventory, Components, or (name, version, artifact) tuples.
    ``size_per_component``: unpacked bytes per component (one int, or one per component).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    items = _components(components)
    sizes = list(size_per_component) if isinstance(size_per_component, (list, tuple)) else \
        [int(size_per_component)] * len(items)
    if len(sizes) != len(items):
        raise ConfigError("size_per_component: one size per component expected")
    for name, _version, artifact in items:
        if "/" in artifact or "\\" in artifact or artifact in ("", ".", ".."):
            raise ConfigError(f"component {name}: artifact {artifact!r} is not a plain file name")

    def one(item):
        (name, _version, artifact), size = item
        write_component_zip(dest / artifact, name, size, text_fraction, seed)
        return artifact

    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        artifacts = list(pool.map(one, zip(items, sizes)))
    if sums:
        write_sums(dest, artifacts)
    return dest


RECORD = ".make-release.json"


@dataclass
class MadeRelease:
    written: List[str] = field(default_factory=list)  # artifacts written by this run
    kept: List[str] = field(default_factory=list)  # artifacts a previous (interrupted) run finished


def make_release(components, dest: Union[str, os.PathLike], size_per_component: int, force: bool = False,
                 seed: int = 0, workers: int = 2) -> MadeRelease:
    """``write_release``, resumable: each artifact is written whole (a rename) and recorded in ``dest/RECORD``.

    A re-run with the same size keeps what an interrupted run finished. Files
    in ``dest`` that this tool did not write (a real release) are refused
    unless ``force``; they are then overwritten, never deleted.
    """
    dest = Path(dest)
    items = _components(components)
    for name, _version, artifact in items:
        if "/" in artifact or "\\" in artifact or artifact in ("", ".", ".."):
            raise ConfigError(f"component {name}: artifact {artifact!r} is not a plain file name")
    dest.mkdir(parents=True, exist_ok=True)
    record = _read_record(dest)
    params = {"size": int(size_per_component), "seed": seed}
    made = record.get("artifacts", {}) if record.get("params") == params else {}
    result, todo, present = MadeRelease(), [], []
    for item in items:
        path = dest / item[2]
        if not force and item[2] in made and _size_of(path) == made[item[2]]:
            result.kept.append(item[2])  # finished by an earlier run with the same settings
            continue
        if not force and os.path.lexists(path):
            present.append(item[2])
        todo.append(item)
    if present:
        raise ConfigError(f"{dest} already holds {len(present)} artifact(s) ({present[0]}, ...) that inv "
                          "make-release did not write with these settings; add --force to overwrite them with "
                          "synthetic ones")
    if not made:
        made = {}
        atomic.write_file(dest / RECORD, json.dumps({"params": params, "artifacts": made}), fsync=False)

    lock = threading.Lock()

    def one(item):
        name, _version, artifact = item
        tmp = dest / f".{artifact}.tmp-{os.getpid()}"
        try:
            write_component_zip(tmp, name, int(size_per_component), 0.5, seed)
            os.replace(tmp, dest / artifact)
        finally:
            if tmp.exists():
                tmp.unlink()
        with lock:  # recorded by the worker itself: a zip finished while Ctrl-C stops the run is still known
            made[artifact] = _size_of(dest / artifact)
            result.written.append(artifact)
            atomic.write_file(dest / RECORD, json.dumps({"params": params, "artifacts": made}), fsync=False)

    pool = cf.ThreadPoolExecutor(max(1, workers))
    try:
        for future in cf.as_completed([pool.submit(one, item) for item in todo]):
            future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: finish the zips being written, start no more
    write_sums(dest, [item[2] for item in items])
    return result


def _read_record(dest: Path) -> dict:
    try:
        data = json.loads((dest / RECORD).read_text())
        return data if isinstance(data, dict) and isinstance(data.get("artifacts"), dict) else {}
    except (OSError, ValueError):
        return {}


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() and not path.is_symlink() else -1
    except OSError:
        return -1


def write_sums(directory: Union[str, os.PathLike], names: Iterable[str]) -> Path:
    directory = Path(directory)
    lines = []
    for name in sorted(names):
        with open(directory / name, "rb") as fh:
            lines.append(f"{hashlib.file_digest(fh, 'sha256').hexdigest()}  {name}\n")
    path = directory / "SHA256SUMS"
    atomic.write_file(path, "".join(lines), fsync=False)
    return path


def write_bundle(release_dir: Union[str, os.PathLike], bundle: Union[str, os.PathLike], form: str,
                 folder: str = "release") -> Path:
    """Pack a release directory into one bundle: form zip, tar or tar.gz (members under ``folder/``)."""
    release_dir, bundle = Path(release_dir), Path(bundle)
    files = sorted(p for p in release_dir.iterdir() if p.is_file())
    if form == "zip":
        with zipfile.ZipFile(bundle, "w", zipfile.ZIP_STORED) as zf:
            for p in files:
                zf.write(p, f"{folder}/{p.name}")
    elif form in ("tar", "tar.gz"):
        with tarfile.open(bundle, "w:gz" if form == "tar.gz" else "w", compresslevel=1) if form == "tar.gz" \
                else tarfile.open(bundle, "w") as tf:
            for p in files:
                tf.add(p, f"{folder}/{p.name}")
    else:
        raise ConfigError(f"bundle form {form!r} is not zip, tar or tar.gz")
    return bundle


# -- a synthetic Windows Installer package (the agent MSI of rehearsals) ------------------------------

#: the marker the rehearsal fleet's msiexec reads the product from (deploy_tasks/rehearsal/msi.py)
SYNTHETIC_MSI_MARKER = b"DEPLOY_TASKS_EMULATED_MSI:"
_SECTOR = 512
_ENDOFCHAIN, _FATSECT, _FREESECT, _NOSTREAM = 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF, 0xFFFFFFFF
_STREAM_SECTORS = 8  # 4096 bytes: at the mini-stream cutoff, so the stream lives in regular sectors


def _dir_entry(name: str, kind: int, child: int, clsid: bytes, start: int, size: int) -> bytes:
    encoded = (name + "\0").encode("utf-16-le") if name else b""
    entry = encoded.ljust(64, b"\0") + struct.pack("<HBB3I", len(encoded), kind, 1 if kind else 0,
                                                   _NOSTREAM, _NOSTREAM, child)
    entry += clsid.ljust(16, b"\0") + b"\0" * 20 + struct.pack("<IQ", start, size)
    return entry


def synthetic_msi_bytes(product: str = "Puppet Agent", version: str = "7.23.0") -> bytes:
    """A minimal, well-formed OLE compound file with the Windows Installer class id and a synthetic marker.

    It passes ``artifacts.msi.check_msi`` and the rehearsal fleet's msiexec; it
    holds no installer database, so real Windows refuses it (1620), and
    ``is_synthetic_msi`` tells it apart from a real agent.
    """
    from .msi import MSI_CLSID, OLE_MAGIC

    marker = SYNTHETIC_MSI_MARKER + json.dumps({"product": product, "version": version},
                                               sort_keys=True).encode() + b"\n"
    body = (marker + b"SYNTHETIC: made by inv make-release for the rehearsal fleet; not a real installer\n")
    body = body.ljust(_STREAM_SECTORS * _SECTOR, b"\0")[: _STREAM_SECTORS * _SECTOR]
    header = OLE_MAGIC + b"\0" * 16 + struct.pack("<HHHHH6x9I", 0x3E, 3, 0xFFFE, 9, 6, 0, 1, 1, 0, 0x1000,
                                                  _ENDOFCHAIN, 0, _ENDOFCHAIN, 0)
    header += struct.pack("<109I", 0, *([_FREESECT] * 108))  # the DIFAT: the FAT is sector 0
    fat = [_FATSECT, _ENDOFCHAIN] + [2 + i + 1 for i in range(_STREAM_SECTORS - 1)] + [_ENDOFCHAIN]
    fat_sector = struct.pack(f"<{_SECTOR // 4}I", *(fat + [_FREESECT] * (_SECTOR // 4 - len(fat))))
    directory = (_dir_entry("Root Entry", 5, 1, MSI_CLSID.bytes_le, _ENDOFCHAIN, 0)
                 + _dir_entry("DeployTasksSynthetic", 2, _NOSTREAM, b"", 2, len(body))
                 + _dir_entry("", 0, _NOSTREAM, b"", 0, 0) * 2)
    return header + fat_sector + directory + body


def write_synthetic_msi(path: Union[str, os.PathLike], product: str = "Puppet Agent", version: str = "7.23.0") -> Path:
    """Write ``synthetic_msi_bytes`` to ``path`` in one rename (a link at ``path`` is replaced, not written through)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_file(path, synthetic_msi_bytes(product, version))
    return path


def is_synthetic_msi(path: Union[str, os.PathLike]) -> bool:
    """True for an MSI written by ``write_synthetic_msi`` (or the rehearsal fleet's own fake)."""
    try:
        with open(path, "rb") as fh:
            return SYNTHETIC_MSI_MARKER in fh.read(64 << 10)
    except OSError:
        return False

