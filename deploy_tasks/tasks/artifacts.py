"""Tasks about the release: extract-artifacts (release -> package repository), make-release (a synthetic one)."""

from __future__ import annotations

import os

from invoke import task

from ..errors import ConfigError
from ..report import console
from ._common import INVENTORY_HELP, deploy_task, load, resolve_settings

# deploy_tasks.artifacts is imported inside the tasks: every `inv` loads this module, and most never need it


@task(help={
    "inventory": INVENTORY_HELP,
    "source": "Release directory, or one bundle (zip, tar, tar.gz) holding the artifacts; default: artifact_source (build/release).",
    "dest": "Package repository directory to write; default: the repository setting (build/repository).",
    "workers": "Worker threads (or processes: setting extract_executor); default: extract_workers (0 = one per CPU).",
    "publish": "Then send the repository to the package server over SSH (only files whose checksum differs).",
    "dry_run": "Say what would be extracted (and published) without writing anything.",
    "verify": "Re-hash every file already in the repository (a plain re-run compares sizes and times) and repair "
              "what differs.",
})
@deploy_task
def extract_artifacts(c, inventory=None, source=None, dest=None, workers=None, publish=False, dry_run=False,
                      verify=False):
    """Unpack the release into the package repository: verified, safe, concurrent, incremental."""
    from ..artifacts import Limits, extract_release, jobs_from_inventory
    from ..report.progress import ComponentProgress

    inv, _ = load(c, inventory)
    settings = resolve_settings(c, inv, artifact_source=source, repository=dest, extract_workers=workers)
    progress = ComponentProgress("would extract" if dry_run else "extracting")
    try:
        result = extract_release(jobs_from_inventory(inv), settings.artifact_source, settings.repository,
                                 settings.environment, limits=Limits.from_settings(settings),
                                 workers=settings.extract_workers, executor=settings.extract_executor,
                                 dry_run=dry_run, progress=progress, verify=verify)
    finally:
        progress.close()
    counts = {}
    for o in result.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    console.say(f"repository {settings.repository}: {len(result.outcomes)} components: {summary} "
                f"({result.seconds:.1f}s){'; manifest updated' if result.manifest_written else ''}")
    _write_reports(result, settings, dry_run)
    if result.failures:
        if publish:
            console.warn("not publishing: fix the failed components and re-run")
        result.raise_for_failures()
    if publish:
        _publish(inv, settings, dry_run)


def _write_reports(result, settings, dry_run: bool) -> None:
    """reports/extract-artifacts.json and junit-extract-artifacts.xml, in the vocabulary every task reports in."""
    from ..report import extraction, files

    paths = files.write(extraction.run_result(result, dry_run=dry_run), settings.reports_dir)
    console.say(f"reports: {paths[0]}, {paths[1]}")


def _publish(inv, settings, dry_run: bool) -> None:
    from ..artifacts import publish as publish_mod

    server = inv.package_server
    def shell():
        from ..transports.ssh import shell_for

        return shell_for(server, settings, dry_run=dry_run)

    target = publish_mod.target_for(server, settings.repository, settings.package_root, shell)
    if target is None:
        console.say(f"publish: package server {server.hostname} is this machine and serves "
                    f"{settings.repository} directly; nothing to send")
        return
    if dry_run and not os.path.exists(os.path.join(settings.repository, "manifest.json")):
        console.say("publish: the repository does not exist yet; nothing to compare")
        return
    result = publish_mod.publish(settings.repository, target, dry_run=dry_run)
    for line in publish_mod.describe(result):
        console.say(f"publish ({server.hostname}): {line}")


@task(help={
    "inventory": INVENTORY_HELP,
    "dest": "Directory to write the release into; default: artifact_source (build/release).",
    "size_mb": "Unpacked size of each component in MiB (half text, half binaries); default 2.",
    "force": "Overwrite artifacts already there that make-release did not write with these settings.",
})
@deploy_task
def make_release(c, inventory=None, dest=None, size_mb=None, force=False):
    """Write a SYNTHETIC release (one zip per component + SHA256SUMS) for rehearsals, demos and tests."""
    from .. import atomic
    from ..artifacts import synthetic

    inv, _ = load(c, inventory)
    settings = resolve_settings(c, inv, artifact_source=dest)
    target = settings.artifact_source
    try:
        size = int(size_mb if size_mb is not None else 2)
    except ValueError:
        raise ConfigError(f"--size-mb {size_mb!r} is not a whole number of MiB (for example --size-mb 2)") from None
    if size < 1:
        raise ConfigError("--size-mb must be at least 1")
    atomic.output_dir(target, "--dest")
    try:
        made = synthetic.make_release(inv, target, size << 20, force=force)
    except OSError as exc:
        raise ConfigError(f"--dest {target}: cannot write the release ({atomic.describe_os_error(exc)})") from None
    kept = f"; {len(made.kept)} kept from an earlier run" if made.kept else ""
    console.say(f"wrote a synthetic release of {len(inv.components)} components ({size} MiB each, unpacked{kept}) "
                f"and SHA256SUMS to {target}; next: inv extract-artifacts")
    _synthetic_agent_msi(settings)


def _synthetic_agent_msi(settings) -> None:
    """Write the synthetic agent MSI where bootstrap looks for one, unless a real one is there."""
    from ..artifacts import synthetic
    from ..artifacts.msi import msi_problem

    msi = settings.agent_msi_path
    if not msi:
        return
    stale = os.path.exists(msi) and synthetic.is_synthetic_msi(msi) and msi_problem(msi)  # an older fake
    if os.path.exists(msi) and not stale:
        return
    try:
        # bootstrap places this file on the package server; only the emulated hosts can "install" it
        synthetic.write_synthetic_msi(msi, version=settings.puppet_agent_version)
    except OSError as exc:
        raise ConfigError(f"cannot write the synthetic agent MSI {msi} (setting puppet_agent_msi): "
                          f"{exc.strerror}; choose a path you can write") from None
    console.say(f"wrote a SYNTHETIC Puppet agent MSI {msi} (version {settings.puppet_agent_version}; "
                "for the rehearsal fleet's emulated hosts only)")


TASKS = (extract_artifacts, make_release)
