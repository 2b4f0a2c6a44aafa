"""Tasks about the workbook: validate, plan, init-inventory."""

from __future__ import annotations

from invoke import task
from invoke.exceptions import Exit

from ..errors import InventoryError
from ..inventory.template import write_example, write_starter
from ..plan import make_plan
from ..report import console
from ._common import INVENTORY_HELP, check_format, deploy_task, emit_json, inventory_path, load

FORMAT_HELP = "Output format: text (default) or json."


@task(help={"inventory": INVENTORY_HELP, "format": FORMAT_HELP})
@deploy_task
def validate(c, inventory=None, format="text"):
    """Check the inventory workbook and list every problem with its cell."""
    fmt = check_format(format)
    path = inventory_path(c, inventory)
    try:
        inv, _ = load(c, path, quiet=(fmt == "json"))
    except InventoryError as exc:
        if fmt == "json":
            emit_json({"valid": False, "source": path,
                       "problems": [p.as_dict() for p in exc.problems],
                       "warnings": [p.as_dict() for p in exc.warnings]})
            raise Exit(code=1)
        for w in exc.warnings:
            console.warn(str(w))
        raise
    if fmt == "json":
        emit_json({"valid": True, "source": path, "problems": [], "warnings": [p.as_dict() for p in inv.warnings],
                   "servers": len(inv.servers), "components": len(inv.components), "mapping": len(inv.mapping)})
        return
    plan = make_plan(inv)
    console.say(
        f"{path}: valid: {len(inv.servers)} servers ({len(inv.windows_servers)} windows), "
        f"{len(inv.components)} components in {len(plan.waves)} groups, {len(inv.mapping)} mapping rows"
        + (f", {len(inv.warnings)} warning(s)" if inv.warnings else "")
    )


@task(help={"inventory": INVENTORY_HELP, "format": FORMAT_HELP})
@deploy_task
def plan(c, inventory=None, format="text"):
    """Show the dependency groups (waves): components and hosts of each group."""
    fmt = check_format(format)
    try:
        inv, _ = load(c, inventory, quiet=(fmt == "json"))
    except InventoryError as exc:
        if fmt == "json":  # a machine reading stdout gets a document either way
            emit_json({"valid": False, "source": inventory_path(c, inventory),
                       "problems": [p.as_dict() for p in exc.problems], "groups": []})
            raise Exit(str(exc), code=1)
        raise
    the_plan = make_plan(inv)
    if fmt == "json":
        emit_json(the_plan.as_dict())
        return
    for wave in the_plan.waves:
        rows = [(c_.name, c_.version, ", ".join(c_.depends_on) or "-", ", ".join(c_.hosts) or "(not mapped)")
                for c_ in wave.components]
        console.table(f"Group {wave.group}: {len(wave.components)} components on {len(wave.hosts)} hosts",
                      ["component", "version", "depends on", "hosts"], rows)
        console.say()


@task(
    positional=["path"],
    help={
        "path": "Where to write the workbook (.xlsx, or .xls with xlwt installed).",
        "example": "Fill it with the example product (34 components, 6 Windows hosts) instead of leaving it empty.",
        "force": "Overwrite an existing file.",
    },
)
@deploy_task
def init_inventory(c, path, example=False, force=False):
    """Write a starter workbook to fill in (or the example with --example)."""
    written = (write_example if example else write_starter)(path, overwrite=force)
    what = "example inventory" if example else "starter inventory"
    console.say(f"wrote {what} {written}; check it with: inv validate --inventory {written}")


TASKS = (validate, plan, init_inventory)
