"""What every task shares: turning DeployError into Exit, loading the inventory, settings."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable, Optional, Tuple

from invoke.exceptions import Exit

from .. import settings as settings_mod
from ..errors import DeployError, InventoryError
from ..inventory import Inventory, load_inventory
from ..report import console

INVENTORY_HELP = "Inventory workbook (.xlsx or .xls); default: deploy.inventory (inventory/example.xlsx)."


def deploy_task(func: Callable) -> Callable:
    """Run a task body; a DeployError becomes ``Exit(message, code)``, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DeployError as exc:
            raise Exit(console.redact(str(exc)), code=getattr(exc, "exit_code", 1)) from None
        except BrokenPipeError:
            # output piped into head/less that closed early: not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=0) from None
        except KeyboardInterrupt:
            raise Exit("interrupted; what finished is kept, re-run the same command to go on", code=130) from None

    return wrapper


def inventory_path(c, path: Optional[str]) -> str:
    return path or c.config.deploy.inventory


def load(c, path: Optional[str] = None, quiet: bool = False) -> Tuple[Inventory, settings_mod.Settings]:
    """Load and validate the inventory; layer its Settings sheet into ``c.config``; resolve settings."""
    inventory = load_inventory(inventory_path(c, path))
    if not quiet:
        for w in inventory.warnings:
            console.warn(str(w))
    return inventory, resolve_settings(c, inventory)


def resolve_settings(c, inventory: Optional[Inventory] = None, **flags: Any) -> settings_mod.Settings:
    """Settings with Invoke's precedence; the Settings sheet sits just above the declared defaults.

    Invoke keeps collection defaults as their own config level below system,
    user, project (invoke.yaml), env and runtime; reloading that level with the
    workbook's values merged in gives exactly flag > env > invoke.yaml > sheet > defaults.
    """
    layer = settings_mod.declared_defaults()
    if inventory is not None:
        layer.update(inventory.settings)
    c.config.load_collection({"deploy": layer})
    merged = dict(c.config.deploy)
    merged.update({k: v for k, v in flags.items() if v is not None})
    return settings_mod.resolve(merged)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def check_format(fmt: str) -> str:
    fmt = (fmt or "text").lower()
    if fmt not in ("text", "json"):
        raise DeployError(f"--format {fmt!r} is not text or json")
    return fmt


__all__ = ["deploy_task", "load", "resolve_settings", "emit_json", "check_format", "InventoryError"]
