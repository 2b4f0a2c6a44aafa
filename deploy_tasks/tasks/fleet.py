"""Tasks for the rehearsal fleet (emulated Windows hosts): fleet.up, fleet.status, fleet.down."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from invoke import Collection, task

from ..errors import DeployError
from ..rehearsal.faults import FleetSpec
from ..rehearsal import DEFAULT_ROOT  # the fleet itself is imported by the process fleet.up starts
from ..report import console
from ._common import deploy_task, inventory_path, load

INVENTORY_HELP = "Inventory workbook (.xlsx or .xls); default: deploy.inventory (inventory/example.xlsx)."
MODULE = "deploy_tasks.rehearsal.fleet"
START_TIMEOUT_S = 60.0


def _paths(root: Path = DEFAULT_ROOT):
    return root / "fleet.json", root / "fleet.pid", root / "fleet.log"


def _proc_start_time(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat): tells a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _is_our_fleet(pid: int, start_time: Optional[str]) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if MODULE.encode() not in cmdline:
        return False
    return start_time is None or _proc_start_time(pid) == start_time


def _running(root: Path = DEFAULT_ROOT) -> Optional[dict]:
    """The pid record of the fleet this project started, if that process still runs."""
    _, pid_file, _ = _paths(root)
    try:
        record = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return None
    if _is_our_fleet(int(record.get("pid", 0)), record.get("start_time")):
        return record
    return None


def _read_fleet(root: Path = DEFAULT_ROOT) -> dict:
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
    127.0.0.x address, ports 5985/5986; writes build/fleet/fleet.json (0600).
    """
    root = DEFAULT_ROOT
    fleet_json, pid_file, log_file = _paths(root)
    running = _running(root)
    if running:
        console.say(f"fleet already running (pid {running['pid']}); `inv fleet.down` first to restart it")
        _show(_read_fleet(root))
        return
    path = inventory_path(c, inventory)
    inv, _ = load(c, path)  # a bad workbook is reported here, with its cells, not in a background log
    FleetSpec.load(spec)  # same for the spec
    if not inv.windows_servers:
        raise DeployError(f"{path}: the Servers sheet has no windows server: nothing to emulate")
    root.mkdir(parents=True, exist_ok=True)
    fleet_json.unlink(missing_ok=True)
    argv = [sys.executable, "-m", MODULE, "--inventory", str(path), "--root", str(root)]
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
    record = {"pid": proc.pid, "start_time": _proc_start_time(proc.pid), "argv": argv}
    pid_file.write_text(json.dumps(record) + "\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not fleet_json.exists():
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            tail = log_file.read_text(errors="replace").strip().splitlines()[-10:]
            raise DeployError("the rehearsal fleet did not start:\n  " + "\n  ".join(tail or ["(no output)"])
                              + f"\n  (full log: {log_file})")
        if time.monotonic() > deadline:
            _stop(record)
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
    fleet_json, _, _ = _paths()
    running = _running()
    if not running or not fleet_json.exists():
        console.say("no rehearsal fleet running (`inv fleet.up` starts one)")
        return
    console.say(f"fleet running (pid {running['pid']})")
    _show(_read_fleet())


def _stop(record: dict, timeout: float = 15.0) -> None:
    pid = int(record["pid"])
    if not _is_our_fleet(pid, record.get("start_time")):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_our_fleet(pid, record.get("start_time")):
            return
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (started in this process)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@task
@deploy_task
def down(c):
    """Stop the rehearsal fleet that fleet.up started."""
    fleet_json, pid_file, _ = _paths()
    running = _running()
    if not running:
        pid_file.unlink(missing_ok=True)
        fleet_json.unlink(missing_ok=True)
        console.say("no rehearsal fleet running: nothing to stop")
        return
    _stop(running)
    pid_file.unlink(missing_ok=True)
    fleet_json.unlink(missing_ok=True)
    console.say(f"fleet down (pid {running['pid']} stopped)")


COLLECTION = Collection("fleet", up, status, down)
