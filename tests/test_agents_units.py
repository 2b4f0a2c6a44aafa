"""The agent step's pieces without a fleet: the MSI property by agent version, the CA's batching, --hosts."""

from __future__ import annotations

import threading
import time

import pytest

from deploy_tasks.errors import DeployError
from deploy_tasks.inventory import load_inventory
from deploy_tasks.steps.agent import AgentSpec, CertificateAuthority, MsiBusy
from deploy_tasks.tasks._agents import select_hosts
from deploy_tasks.transports.base import Result


@pytest.mark.parametrize("version,prop", [("7.23.0", "PUPPET_SERVER"), ("8.1.0", "PUPPET_SERVER"),
                                          ("6.28.0", "PUPPET_MASTER_SERVER"), ("5.5.22", "PUPPET_MASTER_SERVER")])
def test_the_server_property_follows_the_agent_version(version, prop):
    spec = AgentSpec("http://pkg:8080/puppet-agent/a b.msi", version, "deploy01.example.test", "production")
    argv = spec.install_argv("zdb01.example.test")
    assert argv[:5] == ["msiexec", "/qn", "/norestart", "/i", "http://pkg:8080/puppet-agent/a b.msi"]
    assert f"{prop}=deploy01.example.test" in argv and "PUPPET_AGENT_CERTNAME=zdb01.example.test" in argv
    assert argv[-2] == "/l*v"


def test_msi_busy_is_retryable_and_other_failures_are_not():
    from deploy_tasks.steps.agent import AgentError, FingerprintMismatch, Reimaged

    assert MsiBusy("x").retryable
    assert not AgentError("x").retryable and not FingerprintMismatch("x").retryable and not Reimaged("x").retryable


class FakeMaster:
    """A master shell answering `puppetserver ca` like the real CLI (the fallback without curl), each command slow."""

    name = "deploy01"
    dry_run = False

    def __init__(self, requests: dict):
        self.requests = dict(requests)  # certname -> fingerprint
        self.signed = {}
        self.commands = []
        self.busy = threading.Lock()

    def run(self, command, check=True, hint="", timeout=None):
        if command.startswith("puppet config print"):
            return Result(command, 0, "certname = deploy01.example.test\nssldir = /s\ncadir = /c\n", "")
        if "mktemp" in command:
            return Result(command, 0, "/tmp/deploy_tasks-ca.x/puppet.conf\n", "")
        return self._ca(command)

    change = run

    def _ca(self, command):
        import json

        assert self.busy.acquire(blocking=False), "two CA commands at once"
        try:
            self.commands.append(command)
            time.sleep(0.2)
            names = command.split("--certname ")[1].split()[0].split(",")
            if " ca list " in command:
                data = {"requested": [{"name": n, "fingerprints": {"SHA256": fp}} for n, fp in self.requests.items()
                                      if n in names],
                        "signed": [{"name": n, "fingerprints": {"SHA256": fp}} for n, fp in self.signed.items()
                                   if n in names]}
                return Result(command, 0, json.dumps(data) + "\n", "")
            if " ca sign " in command:
                for n in names:
                    self.signed[n] = "CERT-" + self.requests.pop(n)
                return Result(command, 0, "".join(f"Successfully signed certificate request for {n}\n"
                                                  for n in names), "")
            raise AssertionError(command)
        finally:
            self.busy.release()


def test_the_ca_serialises_and_batches_and_signs_only_matching_fingerprints():
    names = [f"n{i}.example.test" for i in range(12)]
    master = FakeMaster({n: f"FP{i}" for i, n in enumerate(names)})
    ca = CertificateAuthority(master, puppetserver="puppetserver", puppet="puppet", backend="cli")
    results = {}

    def host(i, name):
        fp = f"FP{i}" if i != 3 else "SOMETHING-ELSE"  # n3's node holds another key than the request
        results[name] = ca.sign_if_matching(name, fp)

    threads = [threading.Thread(target=host, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(master.commands) <= 6  # 12 hosts, a list and a sign per turn of the CA
    assert set(master.signed) == set(names) - {"n3.example.test"}
    entry, signed = results["n3.example.test"]
    assert (entry.state, entry.fingerprint, signed) == ("requested", "FP3", False)
    assert all(results[n][1] for n in names if n != "n3.example.test")
    # a second look: signed, nothing signed again
    entry, signed = ca.sign_if_matching("n0.example.test", "CERT-FP0")
    assert (entry.state, signed) == ("signed", False)


def test_hosts_selection(example_xlsx):
    inv = load_inventory(example_xlsx)
    assert [s.hostname for s in select_hosts(inv, None)] == [s.hostname for s in inv.windows_servers]
    assert [s.hostname for s in select_hosts(inv, "zweb01, ZDB01,zdb01")] == ["ZWEB01", "ZDB01"]
    with pytest.raises(DeployError, match="--hosts: deploy01, nope not a Windows server"):
        select_hosts(inv, "deploy01,nope")


def test_a_node_that_cannot_reach_the_ca_is_told_so_not_called_reimaged():
    # seen when the master's name did not resolve on the nodes: the agent makes a key and a CSR locally,
    # cannot send it, and exits 1; that is not a certificate "the master does not list"
    from deploy_tasks.steps import agent
    from deploy_tasks.transports.base import Result

    output = ("Info: Creating a new SSL certificate request for zdb01.example.test\n"
              "Info: Certificate Request fingerprint (SHA256): EB:31:24:8C:2B:6B:CB:4D:09:6F:B5:63:81:0A:92:E3:01:9E:"
              "26:81:27:FF:F6:55:2E:58:95:5B:3A:7E:4D:27\n"
              "Error: Connection to https://deploy01.example.test:8140/puppet-ca/v1 failed, trying next route: "
              "Failed to open TCP connection to deploy01.example.test:8140 (getaddrinfo: Name or service not known)\n"
              "Error: No more routes to ca\nError: Exiting now because the waitforcert setting is set to 0.\n")

    class Node:
        dry_run = False

        def change(self, command, check=True, hint="", timeout=None):
            return Result(command, 1, output, "")

    spec = agent.AgentSpec(msi_url="http://x/agent.msi", version="7.23.0", server="deploy01.example.test",
                           environment="production")
    step = agent.AgentStep(Node(), "ZDB01", "zdb01.example.test", spec, ca=None)
    with pytest.raises(agent.AgentError) as err:
        step.submit_csr()
    text = str(err.value)
    assert "could not reach the master's CA at deploy01.example.test:8140" in text
    assert "does not list" not in text and "No more routes to ca" in text


def test_a_host_goes_on_as_soon_as_its_own_name_is_signed_not_when_the_whole_turn_ends():
    from deploy_tasks.steps.puppet_ca import CaEntry

    release = threading.Event()
    first_back = threading.Event()

    class SlowSigner(CertificateAuthority):
        def _list(self, names, deliver=None):
            self.commands += 1
            return {n: CaEntry("requested", "FP-" + n.upper()) for n in names}

        def _sign(self, names, deliver=None):
            self.commands += 1
            deliver(names[0], None)  # the first signature is made...
            assert first_back.wait(5), "its caller was not released while the turn went on"
            release.wait(5)  # ...the others take long
            for n in names[1:]:
                deliver(n, None)
            return {n: None for n in names}

    ca = SlowSigner(shell=None, backend="cli")
    ca.gather_s = 0.2
    names = ["a.example.test", "b.example.test", "c.example.test"]
    results = {}

    def host(name):
        results[name] = ca.sign_if_matching(name, "FP-" + name.upper())
        if name == "a.example.test":
            first_back.set()

    # c arrives first and runs the turn (it goes on when the turn ends); a and b join it while it gathers
    threads = [threading.Thread(target=host, args=(n,)) for n in reversed(names)]
    threads[0].start()
    time.sleep(0.05)
    for t in threads[1:]:
        t.start()
    assert first_back.wait(5) and len(results) == 1 and results["a.example.test"][1]
    release.set()
    for t in threads:
        t.join()
    assert all(signed for _, signed in results.values()) and ca.commands == 2
