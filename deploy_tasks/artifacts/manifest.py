"""The repository's manifest.json and SHA256SUMS (format fixed by docs/artifacts.md)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from contextlib import contextmanager
from typing import Dict, Optional

from .. import atomic
from ..errors import ArtifactError, ConfigError

FORMAT = 1
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def load(dest: str) -> dict:
    """The manifest in ``dest``, or an empty one; a manifest that cannot be read is an error."""
    path = os.path.join(dest, MANIFEST)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {"format": FORMAT, "environment": "", "components": {}}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the repository manifest ({exc}); "
                          "move it away and re-run to extract everything again") from None
    if not isinstance(data, dict) or not isinstance(data.get("components"), dict):
        raise ConfigError(f"{path}: not a repository manifest (no components); move it away and re-run")
    return data


def sums_text(manifest: dict) -> str:
    """``sha256sum`` format: one line per artifact, sorted by path."""
    rows = sorted((entry["path"], entry["sha256"]) for entry in manifest["components"].values())
    return "".join(f"{sha}  {path}\n" for path, sha in rows)


def manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def write(dest: str, manifest: dict, sums_only: bool = False) -> bool:
    """Write SHA256SUMS, then manifest.json, each atomically; leave them untouched when unchanged. True if written.

    SHA256SUMS first: it only ever lists trees already in place, and the
    manifest (what generate-config trusts) follows. Ctrl-C waits until both are written.
    ``sums_only``: the manifest on disk is known to hold ``manifest`` already.
    """
    changed = False
    with _interrupts_deferred():
        files = [(SUMS, lambda: sums_text(manifest))] + ([] if sums_only else [(MANIFEST, lambda: manifest_text(manifest))])
        for name, render in files:
            text = render()
            path = os.path.join(dest, name)
            try:
                with open(path, encoding="utf-8") as fh:
                    if fh.read() == text:
                        continue
            except OSError:
                pass
            atomic.write_file(path, text)
            changed = True
    return changed


@contextmanager
def _interrupts_deferred():
    """SIGINT/SIGTERM held back (in the main thread) until the block is done, then delivered."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Sums(dict):
    """{artifact file name: sha256}; ``conflicts`` holds the names whose lines disagree (name -> the error)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.conflicts: Dict[str, str] = {}


def parse_sums(text: str, where: str) -> Sums:
    """A release's SHA256SUMS as {file name: sha256}.

    A line naming exactly the file (``c.zip``, ``./c.zip``) wins over lines for the
    same name in a subdirectory (``old/c.zip``); without such a line, the
    subdirectory lines must agree, or the name is a conflict (``Sums.conflicts``,
    naming both lines) and its component fails.
    """
    exact: Dict[str, list] = {}
    nested: Dict[str, list] = {}
    text = text.lstrip("\ufeff")  # a byte-order mark, as editors on Windows write one
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _SUM_LINE.match(line.rstrip("\r"))
        if not match:
            raise ArtifactError("(release)", f"{where} line {number} is not '<sha256>  <file>': {line[:80]!r}",
                                hint="write it with sha256sum")
        path = match.group(2).replace("\\", "/")
        while path.startswith("./"):
            path = path[2:]
        name = path.rsplit("/", 1)[-1]
        (exact if path == name else nested).setdefault(name, []).append((number, path, match.group(1).lower()))
    sums = Sums()
    for name in set(exact) | set(nested):
        lines = exact.get(name) or nested[name]
        first = lines[0]
        other = next((ln for ln in lines[1:] if ln[2] != first[2]), None)
        if other is None:
            sums[name] = first[2]
            continue
        sums.conflicts[name] = (f"{where} gives {name} two different sha256: line {first[0]} ({first[1]}: "
                                f"{first[2]}) and line {other[0]} ({other[1]}: {other[2]})"
                                + ("" if name in exact else f", and no line names {name} itself"))
    return sums


def expected_sha(sums: Optional[Dict[str, str]], artifact: str) -> Optional[str]:
    return None if sums is None else sums.get(artifact)
