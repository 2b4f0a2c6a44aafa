"""inv generate-config's library: inventory -> Puppet code dir (Hiera 5 data + site.pp).

- ``render``   pure: inventory + settings + artifact manifest -> {relative path: text}
- ``manifest`` reads the package repository's manifest.json (docs/artifacts.md)
- ``check``    validation: one ``puppet parser validate`` call, YAML read back
- ``output``   the writer: temp dir beside the output, validate, swap; --check / --diff
"""

from __future__ import annotations

from .manifest import ArtifactManifest, load_manifest
from .render import Rendered, render

__all__ = ["ArtifactManifest", "Rendered", "load_manifest", "render"]
