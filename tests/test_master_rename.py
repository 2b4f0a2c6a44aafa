"""The Puppet master step refuses to rename a master whose CA has signed agents, unless allow_master_rename.

Unit level with a stand-in shell (a table of CA states), then against the real master on this machine in a
dry run only: the shared master is never renamed, and a dry run writes nothing even when the guard would
let it through.
"""

from __future__ import annotations

import pytest

from deploy_tasks.errors import ConfigError
from deploy_tasks.steps import puppet_master as pm
from deploy_tasks.transports.base import Result

CONF = "[main]\n\n[server]\ncertname = deploy01.old.example\nautosign = false\n"


class Master:
    """A master shell that answers the two reads the guard makes; anything else is a failure of the test."""

    name = "deploy01"

    def __init__(self, signed, dry_run=False):
        self.signed = signed
        self.dry_run = dry_run
        self.commands = []

    def run(self, command, check=True, hint="", timeout=None):
        self.commands.append(command)
        if command.startswith("puppet config print cadir"):
            return Result(command, 0, "/etc/puppet/puppetserver/ca\n", "")
        if "/etc/puppet/puppetserver/ca/signed" in command:
            return Result(command, 0, "".join(f"{n}.pem\n" for n in self.signed), "")
        raise AssertionError(f"unexpected command {command}")


@pytest.mark.parametrize("conf,expected", [
    (CONF, "deploy01.old.example"),
    ("[master]\ncertname = m.example\n", "m.example"),
    ("[main]\ncertname = main.example\n[server]\nautosign = false\n", "main.example"),
    ("[server]\nautosign = false\n", None),
    (None, None),
    ("not an ini file [", None),
])
def test_the_configured_certname(conf, expected):
    assert pm.configured_certname(conf) == expected


@pytest.mark.parametrize("old,signed", [
    (None, ["zdb01.old.example"]),  # a first install: nothing to rename
    ("deploy01.new.example", ["zdb01.new.example"]),  # the name does not change
    ("deploy01.old.example", ["deploy01.old.example"]),  # only the master's own certificate: no agent depends on it
    ("deploy01.old.example", []),
])
def test_nothing_to_refuse(old, signed):
    shell = Master(signed)
    assert pm.check_rename(shell, pm.DEBIAN, old, "deploy01.new.example", allowed=False) == ""
    if old in (None, "deploy01.new.example"):
        assert shell.commands == []  # the CA is not even read


def test_a_master_with_signed_agents_is_not_renamed_without_allow_master_rename():
    agents = [f"z{i:02d}.old.example" for i in range(7)]
    shell = Master(["deploy01.old.example", *agents])
    with pytest.raises(ConfigError) as err:
        pm.check_rename(shell, pm.DEBIAN, "deploy01.old.example", "deploy01.new.example", allowed=False)
    text = str(err.value)
    assert text.startswith("deploy01: the Puppet master's certname would change from deploy01.old.example to "
                           "deploy01.new.example")
    assert "has signed 7 agent certificate(s) (z00.old.example, z01.old.example, z02.old.example, " \
           "z03.old.example, z04.old.example and 2 more)" in text
    assert "re-issued (inv bootstrap --only agents --reissue)" in text
    assert "allow_master_rename=true (INVOKE_DEPLOY_ALLOW_MASTER_RENAME=true" in text
    assert "certname stays deploy01.old.example" in text
    # asked for explicitly: done, and said what follows
    said = pm.check_rename(shell, pm.DEBIAN, "deploy01.old.example", "deploy01.new.example", allowed=True)
    assert said.startswith("renamed the master from deploy01.old.example to deploy01.new.example "
                           "(allow_master_rename): its 7 signed agent(s) must be re-issued")
    dry = Master(agents, dry_run=True)
    assert pm.check_rename(dry, pm.DEBIAN, "deploy01.old.example", "deploy01.new.example",
                           allowed=True).startswith("would rename")


def test_the_setting_is_a_controller_setting_and_off_by_default():
    from deploy_tasks.settings import BY_NAME, resolve

    setting = BY_NAME["allow_master_rename"]
    assert setting.default is False and not setting.workbook  # never from the (untrusted) workbook
    assert resolve({"allow_master_rename": "true"}).allow_master_rename is True


@pytest.mark.integration
def test_the_real_master_refuses_a_new_domain_in_a_dry_run_and_changes_nothing(puppet_master, capsys):
    """The shared master (deploy01.example.test) has signed many agents: a workbook with another domain is
    refused before anything would be written."""
    from pathlib import Path

    from deploy_tasks.inventory.model import Server
    from deploy_tasks.settings import resolve
    from deploy_tasks.steps import StepResult
    from deploy_tasks.transports.ssh import Shell

    conf = Path("/etc/puppet/puppet.conf")
    before = conf.read_text()
    master = Server("deploy01", "local", "linux", ("puppet-master", "package-server"))
    settings = resolve({"domain": "elsewhere.example.test"})
    with pytest.raises(ConfigError) as err:
        pm.run(Shell("deploy01", "local", dry_run=True), master, settings, StepResult("deploy01", "puppet-master"))
    text = str(err.value)
    assert "would change from deploy01.example.test to deploy01.elsewhere.example.test" in text
    assert "agent certificate(s)" in text and "allow_master_rename" in text
    assert "would run" not in capsys.readouterr().out  # refused before the first change was even printed
    assert conf.read_text() == before
