"""``inv rehearse``: the whole chain on this machine, the Windows side against the rehearsal fleet (EMULATED hosts)."""

from __future__ import annotations

import ipaddress
import json
import os

from invoke import task

from ..errors import DeployError
from ..report import console
from ._common import INVENTORY_HELP, deploy_task, load


def _loopback(address: str) -> bool:
    if address == "local":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_rehearsable(inventory) -> None:
    """Only an inventory that lives on this machine is rehearsed: the Linux servers `local` or loopback, the
    Windows servers on 127.0.0.x (the fleet emulates them there). A rehearsal reissues the emulated nodes'
    certificates on the master, which must never touch a real master."""
    remote = [f"{s.hostname} ({s.address})" for s in inventory.servers if not _loopback(s.address)]
    if remote:
        raise DeployError("inv rehearse runs only on this machine, but these servers are elsewhere: "
                          + ", ".join(remote) + ". Rehearse with an inventory whose Linux servers are `local` and "
                          "whose Windows servers have 127.0.0.x addresses (like inventory/example.xlsx), or run "
                          "the tasks one by one against the real fleet")


@task(help={
    "inventory": INVENTORY_HELP,
    "keep_fleet": "Leave the rehearsal fleet running afterwards (inv fleet.down stops it).",
})
@deploy_task
def rehearse(c, inventory=None, keep_fleet=False):
    """Run the whole chain on this machine; the Windows hosts are the EMULATED rehearsal fleet."""
    from . import artifacts, bootstrap, configgen, deploy, fleet, inventory as inventory_tasks

    inv, settings = load(c, inventory, quiet=True)
    check_rehearsable(inv)
    path = inventory or c.config.deploy.inventory

    def stage(title: str, fn, **kwargs) -> None:
        console.say(f"\n== rehearse: {title}")
        fn(c, **kwargs)

    stage("validate", inventory_tasks.validate, inventory=path)
    stage("plan", inventory_tasks.plan, inventory=path)
    stage("make-release (synthetic)", artifacts.make_release, inventory=path)
    stage("extract-artifacts", artifacts.extract_artifacts, inventory=path)
    stage("generate-config", configgen.generate_config, inventory=path)
    stage("bootstrap: package server and Puppet master", bootstrap.bootstrap, inventory=path,
          only="package-server,puppet-master")
    stage("extract-artifacts --publish", artifacts.extract_artifacts, inventory=path, publish=True)
    stage("publish-config", bootstrap.publish_config, inventory=path)
    stage("fleet.up (EMULATED Windows hosts)", fleet.up, inventory=path)
    try:
        # the fleet's account and CA, as Jenkins would pass a real fleet's (withCredentials, invoke.yaml)
        with open(os.path.join(settings.build_dir, "fleet", "fleet.json")) as fh:
            info = json.load(fh)
        os.environ["DEPLOY_WINRM_USER"] = info["username"]
        os.environ["DEPLOY_WINRM_PASSWORD"] = info["password"]
        console.add_secret(info["password"])
        c.config.load_overrides({"deploy": {"winrm_ca_path": info["ca_cert"]}})
        # a fleet started afresh has new node keys: the master's certificates for these emulated names are
        # reissued (check_rehearsable made sure the master is this machine's)
        stage("bootstrap: Puppet agents over WinRM", bootstrap.bootstrap, inventory=path, only="agents",
              reissue=True)
        stage("deploy", deploy.deploy, inventory=path)
    finally:
        if not keep_fleet:
            stage("fleet.down", fleet.down)
    console.say("\nrehearsal passed: every step of the chain ran against this machine and the emulated fleet")


TASKS = (rehearse,)
