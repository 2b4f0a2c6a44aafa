"""What every task shares: turning DeployError into Exit, loading the inventory, settings."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable, Optional, Tuple

from invoke.exceptions import Exit

from .. import settings as settings_mod
from ..errors import ConfigError, DeployError, InventoryError
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
        except OSError as exc:
            # a path the task was given cannot be used (a file where a directory belongs, no permission):
            # the user's to fix, said in one line
            text = f"{exc.strerror or exc} ({exc.filename}): check the path and its permissions" if exc.filename \
                else f"{type(exc).__name__}: {exc.strerror or exc}"
            raise Exit(console.redact(text), code=1) from None
        except KeyboardInterrupt:
            raise Exit("interrupted; what finished is kept, re-run the same command to go on", code=130) from None

    return wrapper


def check_config(c) -> None:
    """Refuse a key under ``deploy:`` (any config file) or an ``INVOKE_DEPLOY_*`` variable that names no setting."""
    problems = settings_mod.unknown_keys(c.config.deploy, os.environ)
    if problems:
        raise ConfigError("unknown settings:\n  - " + "\n  - ".join(problems))


def inventory_path(c, path: Optional[str]) -> str:
    check_config(c)
    if path:
        return path
    try:
        return settings_mod.BY_NAME["inventory"].coerce(c.config.deploy.inventory)
    except ValueError as exc:
        raise ConfigError(f"setting inventory = {c.config.deploy.inventory!r} {exc} (set by --inventory, "
                          "INVOKE_DEPLOY_INVENTORY or invoke.yaml deploy.inventory)") from None


# Where Invoke looks for config files (system, user, project), as Invoke's Config does.
_CONFIG_PREFIXES = ("/etc/invoke", "~/.invoke")
_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def config_file_problems(project_dir: Optional[str]) -> list:
    """Problems in the config files Invoke will read, found before Invoke reads them.

    Invoke parses and merges these files before any task runs, so broken
    YAML or a mapping where a value belongs would end in a traceback there.
    """
    import yaml
    from invoke import Config

    prefixes = [os.path.expanduser(p) for p in _CONFIG_PREFIXES]
    if project_dir:
        prefixes.append(os.path.join(project_dir, "invoke"))
    defaults = Config.global_defaults()
    problems = []
    for prefix in prefixes:
        for suffix in _CONFIG_SUFFIXES:
            path = prefix + suffix
            if not os.path.isfile(path):
                continue
            shown = os.path.relpath(path) if project_dir and path.startswith(project_dir) else path
            try:
                with open(path, encoding="utf-8") as fh:
                    data = json.load(fh) if suffix == ".json" else yaml.safe_load(fh)
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{shown}: cannot be read ({exc})")
                continue
            except (yaml.YAMLError, ValueError) as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                problems.append(f"{shown}{where}: not valid {suffix[1:].upper()} ({what}); fix the file")
                continue
            problems += settings_mod.config_file_problems(data, shown, defaults)
    return problems


def check_config_files() -> None:
    """Stop with one line per problem when a config file Invoke is about to read would crash it."""
    tasks_module = sys.modules.get("tasks")  # the tasks.py Invoke is loading: its directory is the project's
    origin = getattr(tasks_module, "__file__", None)
    problems = config_file_problems(os.path.dirname(os.path.abspath(origin)) if origin else None)
    if problems:
        raise Exit("invalid configuration:\n  - " + "\n  - ".join(problems), code=1)


def load(c, path: Optional[str] = None, quiet: bool = False) -> Tuple[Inventory, settings_mod.Settings]:
    """Load and validate the inventory; layer its Settings sheet into ``c.config``; resolve settings."""
    inventory = load_inventory(inventory_path(c, path))
    settings = resolve_settings(c, inventory)
    # the domain may come from invoke.yaml or the environment, so this rule runs on resolved settings
    clashes = inventory.certname_clashes(settings.domain)
    if clashes:
        raise InventoryError(clashes, source=inventory.source, warnings=inventory.warnings)
    if not quiet:
        for w in inventory.warnings:
            console.warn(str(w))
    return inventory, settings


def resolve_settings(c, inventory: Optional[Inventory] = None, **flags: Any) -> settings_mod.Settings:
    """Settings with Invoke's precedence; the Settings sheet sits just above the declared defaults.

    Invoke keeps collection defaults as their own config level below system,
    user, project (invoke.yaml), env and runtime; reloading that level with the
    workbook's values merged in gives exactly flag > env > invoke.yaml > sheet > defaults.
    """
    check_config(c)
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


__all__ = ["INVENTORY_HELP", "deploy_task", "load", "resolve_settings", "emit_json", "check_format", "InventoryError"]
