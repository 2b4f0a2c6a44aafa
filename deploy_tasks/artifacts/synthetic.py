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
import os
import random
import tarfile
import zipfile
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple, Union

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


def write_sums(directory: Union[str, os.PathLike], names: Iterable[str]) -> Path:
    directory = Path(directory)
    lines = []
    for name in sorted(names):
        with open(directory / name, "rb") as fh:
            lines.append(f"{hashlib.file_digest(fh, 'sha256').hexdigest()}  {name}\n")
    path = directory / "SHA256SUMS"
    path.write_text("".join(lines))
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
