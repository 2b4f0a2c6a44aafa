"""Tasks for the rehearsal fleet (emulated Windows hosts): fleet.up, fleet.status, fleet.down."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from invoke import Collection, task

from .. import processes
from ..errors import DeployError
from ..rehearsal.faults import FleetSpec
from ..report import console
from ._common import INVENTORY_HELP, deploy_task, inventory_path, load, resolve_settings

MODULE = "deploy_tasks.rehearsal.fleet"  # the fleet itself is imported only by the process fleet.up starts
START_TIMEOUT_S = 60.0


def _root(settings) -> Path:
    """The fleet's state directory: <build_dir>/fleet."""
    return Path(settings.build_dir) / "fleet"


def _paths(root: Path):
    return root / "fleet.json", root / "fleet.pid", root / "fleet.log"


def _running(root: Path) -> Optional[processes.ProcessRecord]:
    """The record of the fleet this project started, if that very process still runs."""
    _, pid_file, _ = _paths(root)
    record = processes.ProcessRecord.load(pid_file)
    if record is None:
        return None
    # records written before the marker existed: the fleet's module is on its command line
    record = processes.ProcessRecord(record.pid, record.start_time, record.argv, record.marker or MODULE,
                                     record.name or "rehearsal fleet")
    return record if record.alive() else None


def _read_fleet(root: Path) -> dict:
    fleet_json, _, _ = _paths(root)
    data = json.loads(fleet_json.read_text())
    console.add_secret(data.get("password", ""))
    return data


def _port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def _show(data: dict) -> None:
    rows = []
    for h in data.get("hosts", []):
        http = _port_open(h["address"], h["http_port"])
        https = _port_open(h["address"], h["https_port"])
        state = "up" if http and https else ("down" if not http and not https else "partial")
        rows.append((h["hostname"], h["address"], h["http_port"], h["https_port"], state))
    console.table(f"Rehearsal fleet (emulated Windows): user {data.get('username')}, CA {data.get('ca_cert')}",
                  ("Host", "Address", "HTTP", "HTTPS", "State"), rows)


@task(help={
    "inventory": INVENTORY_HELP,
    "spec": "Fleet spec (YAML/JSON): per-host faults and the persona mode; default: no faults.",
    "allow_unencrypted": "Accept unencrypted Basic over plain HTTP (like AllowUnencrypted=true); default: refused.",
    "persona": "Persona factory as module:callable (default: the emulated Windows persona).",
})
@deploy_task
def up(c, inventory=None, spec=None, allow_unencrypted=False, persona=None):
    """Start the rehearsal fleet (emulated Windows hosts) in the background.

    One emulated host per Windows server of the inventory, each on its own
    127.0.0.x address, ports 5985/5986; writes <build_dir>/fleet/fleet.json (0600).
    """
    path = inventory_path(c, inventory)
    inv, settings = load(c, path)  # a bad workbook is reported here, with its cells, not in a background log
    root = _root(settings)
    fleet_json, pid_file, log_file = _paths(root)
    running = _running(root)
    if running:
        console.say(f"fleet already running (pid {running.pid}); `inv fleet.down` first to restart it")
        _show(_read_fleet(root))
        return
    FleetSpec.load(spec)  # same for the spec
    if not inv.windows_servers:
        raise DeployError(f"{path}: the Servers sheet has no windows server: nothing to emulate")
    root.mkdir(parents=True, exist_ok=True)
    fleet_json.unlink(missing_ok=True)
    argv = [sys.executable, "-m", MODULE, "--inventory", str(path), "--root", str(root),
            "--domain", str(settings.domain or "")]
    if spec:
        argv += ["--spec", str(spec)]
    if allow_unencrypted:
        argv.append("--allow-unencrypted")
    if persona:
        argv += ["--persona", persona]
    # the fleet process imports this package from wherever this one was imported (inv -r from another directory)
    project = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")])))
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    record = processes.ProcessRecord.of(proc.pid, name="rehearsal fleet", marker=MODULE)
    record.save(pid_file)
    processes.register(record)  # so that CI can stop it should fleet.down never run
    deadline = time.monotonic() + START_TIMEOUT_S
    while not fleet_json.exists():
        if proc.poll() is not None:
            processes.unregister(record)
            pid_file.unlink(missing_ok=True)
            tail = log_file.read_text(errors="replace").strip().splitlines()[-10:]
            raise DeployError("the rehearsal fleet did not start:\n  " + "\n  ".join(tail or ["(no output)"])
                              + f"\n  (full log: {log_file})")
        if time.monotonic() > deadline:
            record.stop()
            processes.unregister(record)
            pid_file.unlink(missing_ok=True)
            raise DeployError(f"the rehearsal fleet did not come up within {START_TIMEOUT_S:.0f} s; see {log_file}")
        time.sleep(0.1)
    data = _read_fleet(root)
    console.say(f"fleet up: {len(data['hosts'])} emulated Windows hosts (pid {proc.pid}); "
                f"credentials and CA in {fleet_json} (mode 0600)")
    _show(data)


@task
@deploy_task
def status(c):
    """Show the rehearsal fleet's hosts and whether they answer."""
    root = _root(resolve_settings(c))
    fleet_json, _, _ = _paths(root)
    running = _running(root)
    if not running or not fleet_json.exists():
        console.say("no rehearsal fleet running (`inv fleet.up` starts one)")
        return
    console.say(f"fleet running (pid {running.pid})")
    _show(_read_fleet(root))


@task
@deploy_task
def down(c):
    """Stop the rehearsal fleet that fleet.up started."""
    root = _root(resolve_settings(c))
    fleet_json, pid_file, _ = _paths(root)
    running = _running(root)
    if not running:
        pid_file.unlink(missing_ok=True)
        fleet_json.unlink(missing_ok=True)
        console.say("no rehearsal fleet running: nothing to stop")
        return
    running.stop()
    processes.unregister(running)
    pid_file.unlink(missing_ok=True)
    fleet_json.unlink(missing_ok=True)
    console.say(f"fleet down (pid {running.pid} stopped)")


COLLECTION = Collection("fleet", up, status, down)
