"""The package repository's manifest.json, as far as generate-config needs it.

The contract is docs/artifacts.md: ``components.<name>.sha256`` counts only when
``components.<name>.version`` equals the workbook's version of that component.
Only that part of the file is read; the rest belongs to extract-artifacts.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from ..errors import ConfigError

_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class ArtifactManifest:
    """Checksums by component: {name: (version, artifact or "", sha256)}."""

    path: str
    environment: str = ""
    components: Mapping[str, tuple] = field(default_factory=dict)

    def sha256(self, component: str, version: str, artifact: str) -> tuple[Optional[str], str]:
        """(checksum, "") when the manifest has this exact version, else (None, why not)."""
        entry = self.components.get(component)
        if entry is None:
            return None, f"{self.path} has no entry for {component}"
        have_version, have_artifact, digest = entry
        if have_version != version:
            return None, f"{self.path} has {component} {have_version}, the workbook says {version}"
        if have_artifact and have_artifact != artifact:
            return None, f"{self.path} has artifact {have_artifact} for {component} {version}, the workbook says {artifact}"
        return digest, ""


def manifest_path(repository: str | os.PathLike) -> Path:
    return Path(repository) / "manifest.json"


def load_manifest(repository: str | os.PathLike) -> Optional[ArtifactManifest]:
    """The manifest of the repository at ``repository``, or None when there is none yet."""
    path = manifest_path(repository)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the artifact manifest: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); re-run inv extract-artifacts to rewrite it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("components"), dict):
        raise ConfigError(f"{path}: no 'components' object; re-run inv extract-artifacts to rewrite it")
    if doc.get("format", 1) != 1:
        raise ConfigError(f"{path}: manifest format {doc.get('format')!r} is not 1; update deploy_tasks or re-run inv extract-artifacts")
    components = {}
    for name, entry in doc["components"].items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: components.{name} is not an object")
        digest = str(entry.get("sha256", "")).lower()
        if len(digest) != 64 or not set(digest) <= _HEX64:
            raise ConfigError(f"{path}: components.{name}.sha256 {entry.get('sha256')!r} is not a sha256 hex digest")
        components[name] = (str(entry.get("version", "")), str(entry.get("artifact", "") or ""), digest)
    return ArtifactManifest(str(path), str(doc.get("environment", "")), components)
