"""Send the package repository to the package server, only the files whose checksum differs.

The local side's checksums come from the manifest (nothing is re-read); the
server's from one ``sha256sum`` over its copy. Changed files are uploaded
under a temporary name and moved into place in one command at the end, the
manifest and SHA256SUMS last, so nginx never serves a half-written file and a
node never sees a manifest naming files that are not there yet. Files on the
server that the repository no longer has are left alone (a node may still be
installing an older version).

Over SSH the target uses the project's SSH shell (``deploy_tasks.transports.ssh.Shell``,
handed in by the task layer): the same ssh_config, known-hosts checks and
located error messages as ``inv bootstrap``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from ..errors import ConfigError, TransportError
from . import manifest as manifest_mod

TMP_SUFFIX = ".publish-tmp"
LAST = (manifest_mod.SUMS, manifest_mod.MANIFEST)


@dataclass
class PublishResult:
    host: str
    root: str
    sent: List[str] = field(default_factory=list)
    unchanged: int = 0
    bytes_sent: int = 0
    dry_run: bool = False


def local_sums(dest: str) -> Dict[str, str]:
    """{relative path: sha256} of every file the repository publishes, from its manifest."""
    manifest = manifest_mod.load(dest)
    if not manifest["components"]:
        raise ConfigError(f"{dest}: the repository is empty; run inv extract-artifacts first")
    sums: Dict[str, str] = {}
    for name, entry in manifest["components"].items():
        base = entry["path"].rsplit("/", 1)[0]
        sums[entry["path"]] = entry["sha256"]
        for rel, sha in entry.get("files", {}).items():
            sums[f"{base}/tree/{rel}"] = sha
        for rel in entry.get("links", {}):
            sums.pop(f"{base}/tree/{rel}", None)  # links are not published (nodes fetch the artifact)
    for name in LAST:
        with open(os.path.join(dest, name), "rb") as fh:
            sums[name] = hashlib.file_digest(fh, "sha256").hexdigest()
    return sums


def parse_sha256sum(text: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for line in text.splitlines():
        if len(line) < 67 or line[64:66] not in ("  ", " *"):
            continue
        path = line[66:]
        if path.startswith("./"):
            path = path[2:]
        out[path] = line[:64].lower()
    return out


def to_send(local: Dict[str, str], remote: Dict[str, str]) -> List[str]:
    """Files whose checksum differs or that the server lacks; manifest and SHA256SUMS last."""
    changed = sorted(p for p, sha in local.items() if remote.get(p) != sha and p not in LAST)
    return changed + [p for p in LAST if p in local and remote.get(p) != local[p]]


# -- targets ----------------------------------------------------------------------

class SshTarget:
    """The package server's repository directory, through an SSH shell (see the module docstring)."""

    def __init__(self, shell, root: str):
        self.shell = shell
        self.host = shell.name
        self.root = root.rstrip("/") or "/"

    def _run(self, command: str) -> str:
        return self.shell.run(command, hint=f"check that the SSH user may write {self.root}").stdout

    def sums(self, create: bool = True) -> Dict[str, str]:
        root = shlex.quote(self.root)
        enter = f"mkdir -p {root} && cd {root}" if create else f"cd {root} 2>/dev/null || exit 0; cd {root}"
        out = self._run(f"{enter} && find . -type f ! -name '*{TMP_SUFFIX}' -print0 | xargs -0 -r sha256sum --")
        return parse_sha256sum(out)

    def send(self, dest: str, paths: List[str]) -> int:
        # Lists of names travel as NUL-separated files over SFTP (invoke feeds a command's stdin
        # one byte per 10 ms), and every name is handled by xargs/read, never pasted into a command.
        root = shlex.quote(self.root)
        listing = f".publish-list-{os.getpid()}{TMP_SUFFIX}"
        dirs = sorted({os.path.dirname(p) for p in paths if os.path.dirname(p)})
        total = 0
        self.shell.open()
        try:
            sftp = self.shell.connection().sftp()
            if dirs:
                sftp.putfo(io.BytesIO("\0".join(dirs).encode()), f"{self.root}/{listing}")
                self._run(f"cd {root} && xargs -0 -r -a {listing} mkdir -p --")
            for rel in paths:
                local = os.path.join(dest, rel)
                sftp.put(local, f"{self.root}/{rel}{TMP_SUFFIX}")
                total += os.path.getsize(local)
            sftp.putfo(io.BytesIO("".join(p + "\0" for p in paths).encode()), f"{self.root}/{listing}")
        except (OSError, EOFError) as exc:
            raise TransportError(self.host, f"upload into {self.root} failed: {exc}") from None
        except Exception as exc:
            raise TransportError(self.host, f"SSH failed: {type(exc).__name__}: {exc}") from None
        # one command moves everything into place, in order (manifest last)
        self._run(f"cd {root} && while IFS= read -r -d '' f; do mv -f -- \"$f{TMP_SUFFIX}\" \"$f\" || exit 1; "
                  f"done < {listing} && rm -f {listing}")
        return total

    def close(self) -> None:
        self.shell.close()


class LocalTarget:
    """A package server on this machine whose nginx serves another directory than the repository."""

    def __init__(self, root: str):
        self.host = "local"
        self.root = root

    def sums(self, create: bool = True) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for base, _dirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(TMP_SUFFIX):
                    continue
                path = os.path.join(base, name)
                if os.path.islink(path):
                    continue
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, self.root)] = hashlib.file_digest(fh, "sha256").hexdigest()
        return out

    def send(self, dest: str, paths: List[str]) -> int:
        total = 0
        for rel in paths:
            target = os.path.join(self.root, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(dest, rel), target + TMP_SUFFIX)
            total += os.path.getsize(target + TMP_SUFFIX)
        for rel in paths:
            target = os.path.join(self.root, rel)
            os.replace(target + TMP_SUFFIX, target)
        return total

    def close(self) -> None:
        pass


def publish(dest: str, target, dry_run: bool = False) -> PublishResult:
    """Sync ``dest`` to ``target`` (SshTarget or LocalTarget), sending only what differs."""
    local = local_sums(dest)
    try:
        remote = target.sums(create=not dry_run)
        paths = to_send(local, remote)
        result = PublishResult(target.host, target.root, list(paths), len(local) - len(paths), 0, dry_run)
        if paths and not dry_run:
            result.bytes_sent = target.send(dest, paths)
        elif dry_run:
            result.bytes_sent = sum(os.path.getsize(os.path.join(dest, p)) for p in paths)
        return result
    finally:
        target.close()


def target_for(package_server, dest: str, package_root: str, shell_factory=None):
    """SshTarget for a remote package server; LocalTarget, or None when nginx serves ``dest`` itself.

    ``shell_factory()`` gives the SSH shell of the package server (the task layer builds it).
    """
    if package_server.is_local:
        if os.path.realpath(package_root) == os.path.realpath(dest):
            return None
        return LocalTarget(package_root)
    if shell_factory is None:
        raise ConfigError(f"{package_server.hostname} is a remote package server: an SSH shell is needed to publish")
    return SshTarget(shell_factory(), package_root)


def describe(result: PublishResult) -> Tuple[str, ...]:
    verb = "would send" if result.dry_run else "sent"
    mb = result.bytes_sent / (1 << 20)
    return (f"{verb} {len(result.sent)} file(s), {mb:.1f} MiB, to {result.host}:{result.root}; "
            f"{result.unchanged} unchanged",)
