"""Publish a generated Puppet environment to the master: new versioned directory, validate, atomic switch.

Layout on the master (Debian paths; Puppet's packages use /etc/puppetlabs/code)::

    /etc/puppet/code/releases/<env>-<content hash>/   one directory per published version
    /etc/puppet/code/releases/<env>.history           the releases published, oldest first (--rollback steps back)
    /etc/puppet/code/environments/<env> -> ../releases/<env>-<hash>   (symlink, swapped with mv -T)

A version is named by the sha256 of its content, so publishing the same
files again changes nothing. ``puppet parser validate`` runs in the new
directory before the switch; a version that fails is removed and the
current one stays. A real directory found at the environment path (not a
symlink: published by hand) is moved aside into releases/, never deleted;
a symlink whose target is gone counts as no current release.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
import time
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ConfigError, RemoteCommandError
from . import StepResult, remote
from .puppet_master import Layout, environment_dirs

q = shlex.quote
RELEASE_NAME = re.compile(r"^[a-z0-9_]+-[A-Za-z0-9_.-]+$")


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


@dataclass(frozen=True)
class Current:
    """What sits at environments/<env>: the release it serves, a dangling link, a real directory, or nothing."""

    target: Optional[str] = None  # the directory the symlink resolves to (absolute)
    dangling: Optional[str] = None  # the text of a symlink whose target is gone
    directory: bool = False  # a real directory (published by hand), not a symlink


def current_state(shell, link: str) -> Current:
    """Read environments/<env> without following a dangling link (``readlink -f`` fails on one)."""
    out = shell.run(f"l={q(link)}; if [ -L \"$l\" ]; then if [ -e \"$l\" ]; then echo link; readlink -f \"$l\"; "
                    f"else echo dangling; readlink \"$l\"; fi; elif [ -d \"$l\" ]; then echo dir; "
                    f"elif [ -e \"$l\" ]; then echo other; else echo none; fi").stdout.splitlines()
    kind = out[0].strip() if out else "none"
    text = out[1].strip() if len(out) > 1 else ""
    if kind == "link":
        return Current(target=text)
    if kind == "dangling":
        return Current(dangling=text)
    if kind == "dir":
        return Current(directory=True)
    if kind == "other":
        raise ConfigError(f"{shell.name}: {link} is neither a directory nor a symlink; move it away and re-run")
    return Current()


def current_target(shell, link: str) -> Optional[str]:
    """Where the environment symlink points (absolute), or None when there is no usable symlink."""
    return current_state(shell, link).target


def switch(shell, layout: Layout, env: str, target: str) -> None:
    """Point environments/<env> at ``target`` atomically (ln -s to a temp name, then mv -T)."""
    link = f"{layout.environments}/{env}"
    tmp = f"{layout.environments}/.{env}.deploy_tasks-link"
    shell.change(f"rm -f {q(tmp)} && ln -s {q(target)} {q(tmp)} && mv -T {q(tmp)} {q(link)}")


# -- the history of published releases ------------------------------------------------------
def history_file(layout: Layout, env: str) -> str:
    return f"{layout.codedir}/releases/{env}.history"


def read_history(shell, layout: Layout, env: str) -> list:
    """Releases of ``env`` in the order they were published (oldest first), each once."""
    releases = f"{layout.codedir}/releases"
    text = remote.read(shell, history_file(layout, env))
    if text is None:  # written by an earlier version: one line naming the release before the current one
        text = remote.read(shell, f"{releases}/{env}.previous") or ""
    entries: list = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(f"{releases}/") and "\0" not in line:
            if line in entries:
                entries.remove(line)
            entries.append(line)
    return entries


def write_history(shell, layout: Layout, env: str, entries: list) -> None:
    data = "".join(f"{e}\n" for e in entries).encode()
    remote.upload(shell, data, history_file(layout, env))


def record(shell, layout: Layout, env: str, *releases: str) -> None:
    """Add ``releases`` (in order) at the end of the history; one already there moves to the end."""
    entries = read_history(shell, layout, env)
    for release in releases:
        if release in entries:
            entries.remove(release)
        entries.append(release)
    write_history(shell, layout, env, entries)


def _move_aside(shell, layout: Layout, env: str, link: str, result: StepResult) -> str:
    """A real directory at the environment path (published by hand) is moved into releases/, never deleted."""
    aside = f"{layout.codedir}/releases/{env}-preexisting-{time.strftime('%Y%m%d%H%M%S')}"
    shell.change(f"mv -T {q(link)} {q(aside)}")
    result.note(True, f"moved the directory that was at {link} to {aside} (kept, not deleted)")
    return aside


def _what_is_current(shell, layout: Layout, env: str, link: str, result: StepResult) -> Optional[str]:
    """The release environments/<env> serves now, after moving a real directory aside; None for none."""
    state = current_state(shell, link)
    if state.dangling is not None:
        result.details.append(f"{link} pointed to {state.dangling}, which is gone: treated as no current release")
        return None
    if state.directory:
        return _move_aside(shell, layout, env, link, result)
    return state.target


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

    current = _what_is_current(shell, layout, env, link, result)
    if current == release:
        return result
    switch(shell, layout, env, release)
    record(shell, layout, env, *([current] if current else []), release)
    result.note(True, f"switched {link} -> {release}" + (f" (previous: {current})" if current else ""))
    return result


class NothingToRollBack(ConfigError):
    """No other published release to switch to: said once, by the task."""


def rollback(shell, layout: Layout, env: str, result: StepResult, to: Optional[str] = None) -> StepResult:
    """Switch environments/<env> back one release in the history (or to release ``to``), saying from what to what."""
    releases = f"{layout.codedir}/releases"
    link = f"{layout.environments}/{env}"
    history = read_history(shell, layout, env)
    state = current_state(shell, link)
    current = state.target
    if state.dangling is not None:
        result.details.append(f"{link} pointed to {state.dangling}, which is gone: treated as no current release")
    if current and current not in history:  # published by another tool
        history.append(current)
    if to is not None:
        target = _release_named(shell, releases, env, to, history)
    else:
        target = _step_back(shell, history, current)
        if target is None:
            others = [h for h in history if h != current]
            where = f"(history: {history_file(layout, env)})"
            if not history:
                raise NothingToRollBack(f"{shell.name}: no previous version of environment {env} to roll back to "
                                        f"{where}: publish at least twice first")
            raise NothingToRollBack(
                f"{shell.name}: nothing to roll back to: {current or 'no release'} is the oldest published release "
                f"of environment {env} still on the master {where}"
                + (f"; pick one with --to: {', '.join(posixpath.basename(o) for o in others)}" if others else ""))
    if target == current:
        result.details.append(f"{link} already serves {target}")
        return result
    if state.directory:  # decided first, so a refused rollback leaves the directory where it was
        current = _move_aside(shell, layout, env, link, result)
        history.append(current)
    switch(shell, layout, env, target)
    write_history(shell, layout, env, history)
    result.note(True, f"switched {link} back to {target} (was {current or 'no release'})")
    return result


def _step_back(shell, history: list, current: Optional[str]) -> Optional[str]:
    """The newest release published before ``current`` that is still on the master (any, with no current)."""
    before = history[:history.index(current)] if current in history else list(history)
    for release in reversed(before):
        if shell.test(f"test -d {q(release)}"):
            return release
    return None


def _release_named(shell, releases: str, env: str, name: str, history: list) -> str:
    """The release directory ``--to`` names: its directory name, its full path, or its content hash."""
    base = posixpath.basename(name.rstrip("/"))
    candidates = [base, f"{env}-{base}"]
    for candidate in candidates:
        if RELEASE_NAME.match(candidate) and candidate.startswith(f"{env}-"):
            path = f"{releases}/{candidate}"
            if shell.test(f"test -d {q(path)} && test ! -L {q(path)}"):
                return path
    known = ", ".join(posixpath.basename(h) for h in history) or "none recorded"
    raise ConfigError(f"{shell.name}: --to {name}: no published release of environment {env} by that name in "
                      f"{releases} (published: {known})")
