"""Publish a generated Puppet environment to the master: new versioned directory, validate, atomic switch.

Layout on the master (Debian paths; Puppet's packages use /etc/puppetlabs/code)::

    /etc/puppet/code/releases/<env>-<content hash>/   one directory per published version
    /etc/puppet/code/releases/<env>.previous          the version before the current one
    /etc/puppet/code/environments/<env> -> ../releases/<env>-<hash>   (symlink, swapped with mv -T)

A version is named by the sha256 of its content, so publishing the same
files again changes nothing. ``puppet parser validate`` runs in the new
directory before the switch; a version that fails is removed and the
current one stays. A real directory found at the environment path (not a
symlink: published by hand) is moved aside into releases/, never deleted.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, RemoteCommandError
from . import StepResult, remote
from .puppet_master import Layout, environment_dirs

q = shlex.quote


def collect(source: str, modules_dir: Optional[str]) -> dict:
    """{relative path: bytes} of the environment plus product modules under modules/."""
    src = Path(source)
    if not src.is_dir():
        raise ConfigError(f"the generated environment {source} does not exist: run `inv generate-config` "
                          f"first, or pass --source DIR")
    if not (src / "environment.conf").is_file() and not (src / "manifests").is_dir():
        raise ConfigError(f"{source} is not a Puppet environment (no environment.conf, no manifests/): "
                          f"pass the directory `inv generate-config` wrote")
    files: dict = {}
    for path in sorted(src.rglob("*")):
        if path.is_file():
            files[path.relative_to(src).as_posix()] = path.read_bytes()
    if modules_dir and not (src / "modules").is_dir():  # generate-config may have copied them already
        mods = Path(modules_dir)
        for path in sorted(mods.rglob("*")):
            if path.is_file():
                rel = "modules/" + path.relative_to(mods).as_posix()
                files[rel] = path.read_bytes()
    if not files:
        raise ConfigError(f"{source} holds no files")
    return files


def content_hash(files: dict) -> str:
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return digest.hexdigest()[:16]


def tarball(files: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel in sorted(files):
            info = tarfile.TarInfo(rel)
            info.size = len(files[rel])
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(files[rel]))
    return buf.getvalue()


def current_target(shell, link: str) -> Optional[str]:
    """Where the environment symlink points (absolute), or None when there is no symlink."""
    if not shell.test(f"test -L {q(link)}"):
        return None
    return shell.run(f"readlink -f {q(link)}").stdout.strip()


def switch(shell, layout: Layout, env: str, target: str) -> None:
    """Point environments/<env> at ``target`` atomically (ln -s to a temp name, then mv -T)."""
    link = f"{layout.environments}/{env}"
    tmp = f"{layout.environments}/.{env}.deploy_tasks-link"
    shell.change(f"rm -f {q(tmp)} && ln -s {q(target)} {q(tmp)} && mv -T {q(tmp)} {q(link)}")


def publish(shell, layout: Layout, env: str, source: str, modules_dir: Optional[str],
            result: StepResult) -> StepResult:
    files = collect(source, modules_dir)
    releases = f"{layout.codedir}/releases"
    name = f"{env}-{content_hash(files)}"
    release = f"{releases}/{name}"
    link = f"{layout.environments}/{env}"
    result.note(remote.directory(shell, releases, mode="755"), f"created {releases}")
    result.note(environment_dirs(shell, layout), f"created {layout.environments} (and production/)")

    if not shell.test(f"test -d {q(release)}"):
        staging = f"{release}.deploy_tasks-tmp"
        archive = f"{staging}.tar.gz"
        shell.change(f"rm -rf {q(staging)} && mkdir -p {q(staging)}")
        shell.put_bytes(tarball(files), archive)
        shell.change(f"tar -xzf {q(archive)} -C {q(staging)} --no-same-owner && rm -f {q(archive)} "
                     f"&& chmod -R u+rwX,go+rX,go-w {q(staging)}")
        validate = (f"cd {q(staging)} && find . -name '*.pp' -print0 | "
                    f"xargs -0 -r {layout.puppet} parser validate --color=false")
        if shell.dry_run:
            shell.echo(f"  [{shell.name}] would run: {validate}")
        else:
            check = shell.run(validate, check=False)
            if not check.ok:
                shell.run(f"rm -rf {q(staging)}")
                raise RemoteCommandError(shell.name, "puppet parser validate", check.exited, check.output,
                                         f"the environment from {source} does not parse; nothing was switched "
                                         f"and {env} still serves its current version. Fix it and re-run")
        shell.change(f"mv -T {q(staging)} {q(release)}")
        result.note(True, f"uploaded and validated {release} ({len(files)} files)")

    current = current_target(shell, link)
    if current == release:
        return result
    if current is None and remote.exists(shell, link):
        aside = f"{releases}/{env}-preexisting-{time.strftime('%Y%m%d%H%M%S')}"
        shell.change(f"mv -T {q(link)} {q(aside)}")
        result.note(True, f"moved the directory that was at {link} to {aside} (kept, not deleted)")
        current = aside
    if current:
        shell.change(f"printf '%s\\n' {q(current)} > {q(releases + '/' + env + '.previous')}")
    switch(shell, layout, env, release)
    result.note(True, f"switched {link} -> {release}" + (f" (previous: {current})" if current else ""))
    return result


def rollback(shell, layout: Layout, env: str, result: StepResult) -> StepResult:
    """Switch environments/<env> back to the previous version (and remember the one left)."""
    releases = f"{layout.codedir}/releases"
    marker = f"{releases}/{env}.previous"
    link = f"{layout.environments}/{env}"
    previous = (remote.read(shell, marker) or "").strip()
    if not previous:
        raise ConfigError(f"{shell.name}: no previous version of environment {env} to roll back to "
                          f"({marker} is missing): publish at least twice first")
    if not shell.test(f"test -d {q(previous)}"):
        raise ConfigError(f"{shell.name}: the previous version {previous} named in {marker} is gone; "
                          f"publish the version you want instead")
    current = current_target(shell, link)
    if current == previous:
        return result
    if current:
        shell.change(f"printf '%s\\n' {q(current)} > {q(marker)}")
    switch(shell, layout, env, previous)
    result.note(True, f"switched {link} back to {previous}" + (f" (was {current})" if current else ""))
    return result
