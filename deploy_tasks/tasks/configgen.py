"""inv generate-config: Hiera 5 data and site.pp from the inventory, validated, with drift check."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from ..configgen import load_manifest, render
from ..configgen.check import find_puppet
from ..configgen.render import EMITTER_NOTE
from ..configgen.output import compare, read_modules, unified_diff, write
from ..report import console
from ._common import INVENTORY_HELP, deploy_task, load


def output_dir(settings, output=None) -> Path:
    """--output, else the puppet_dir setting, else <build_dir>/puppet."""
    return Path(output or settings.puppet_dir or Path(settings.build_dir) / "puppet")


def _counts(changes) -> str:
    kinds = {}
    for change in changes:
        kinds[change.kind] = kinds.get(change.kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


@task(help={
    "inventory": INVENTORY_HELP,
    "output": "Puppet code dir to write (environments/<env>/...); default: deploy.puppet_dir, else <build_dir>/puppet.",
    "check": "Write nothing; list the files that would change and exit 1 if any would (drift check for Jenkins).",
    "diff": "Print a unified diff of what changes (with --check: of what would change).",
    "force": "When the environment dir holds files generate-config did not write, move it aside (kept) and write "
             "a fresh one instead of refusing.",
})
@deploy_task
def generate_config(c, inventory=None, output=None, check=False, diff=False, force=False):
    """Generate Hiera data and site.pp for the Windows hosts, validated by Puppet."""
    inv, settings = load(c, inventory)
    out_dir = output_dir(settings, output)
    manifest = load_manifest(settings.repository)
    modules = read_modules(Path(settings.puppet_modules) if settings.puppet_modules else None)
    rendered = render(inv, settings, manifest, modules)
    for warning in rendered.warnings:
        console.warn(warning)
    if EMITTER_NOTE:
        console.warn(EMITTER_NOTE)
    env_dir = out_dir / rendered.env_dir

    if check:
        changes = compare(rendered, out_dir)
        if diff and changes:
            sys.stdout.write(console.redact(unified_diff(changes)))
        if not changes:
            console.say(f"{env_dir}: up to date with {inv.source}")
            return
        for change in changes:
            console.say(f"would be {change.kind}: {out_dir / change.path}")
        raise Exit(f"{env_dir}: {len(changes)} file(s) differ from what {inv.source} generates ({_counts(changes)}); "
                   "run inv generate-config to regenerate (hand edits are overwritten: put them in the workbook)",
                   code=1)

    result = write(rendered, out_dir, find_puppet(), force=force)
    for note in result.notes:
        console.say(note)
    if diff and result.changes:
        sys.stdout.write(console.redact(unified_diff(result.changes)))
    if result.check and not result.check.puppet:
        console.warn(result.check.summary)
    if result.written:
        console.say(f"{env_dir}: {len(result.changes)} file(s) written ({_counts(result.changes)}) for "
                    f"{len(inv.windows_servers)} Windows hosts; {result.check.summary}")
    else:
        console.say(f"{env_dir}: up to date, nothing written; {result.check.summary}")


TASKS = (generate_config,)
