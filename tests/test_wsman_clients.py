"""Two independent WinRM clients, pywinrm and pypsrp (its WinRS layer), run the same session against the fleet.

pypsrp implements WS-Man, NTLM and message encryption on its own (not through
requests_ntlm), so a behaviour that only pywinrm happens to tolerate shows up
here. Windows is the small test persona, which records the shell options the
endpoint passed it.
"""

from __future__ import annotations

import threading

import pytest
import winrm
from winrm.exceptions import WSManFaultError
from winrm.protocol import Protocol

from tests.support.fake_persona import FakePersona

HOSTS = [("ZCLI01", "127.0.0.82")]
pytestmark = pytest.mark.integration
ENV = {"DEPLOY_STAGE": "rehearsal", "PATHEXT": ".COM;.EXE"}
WORKDIR = "C:\\deploy"
BIG = 300000


def params(**defaults):
    return {"inventory": HOSTS, "persona_factory": FakePersona, "spec": {"defaults": {"basic": True, **defaults}}}


class PywinrmSession:
    def __init__(self, fleet, transport, scheme):
        self.p = Protocol(fleet.endpoint("ZCLI01", scheme), transport=transport, username=fleet.username,
                          password=fleet.password, ca_trust_path=str(fleet.ca_cert), server_cert_validation="validate")
        self.shell = self.p.open_shell(codepage=65001, env_vars=ENV, working_directory=WORKDIR, noprofile=True)

    def run(self, exe, args=(), stdin=None):
        cid = self.p.run_command(self.shell, exe, list(args))
        if stdin is not None:
            self.p.send_command_input(self.shell, cid, stdin, end=True)
        out, err, code = self.p.get_command_output(self.shell, cid)
        self.p.cleanup_command(self.shell, cid)
        return out, err, code

    def close(self):
        self.p.close_shell(self.shell)


class PypsrpSession:
    def __init__(self, fleet, transport, scheme):
        from pypsrp.shell import WinRS
        from pypsrp.wsman import WSMan

        host = fleet.host("ZCLI01")
        self.wsman = WSMan(host.address, port=host.https_port if scheme == "https" else host.http_port,
                           ssl=scheme == "https", username=fleet.username, password=fleet.password,
                           auth="basic" if transport == "basic" else "ntlm", cert_validation=str(fleet.ca_cert),
                           operation_timeout=20)
        self.shell = WinRS(self.wsman, codepage=65001, environment=ENV, working_directory=WORKDIR, no_profile=True)
        self.shell.open()

    def run(self, exe, args=(), stdin=None):
        from pypsrp.shell import Process

        process = Process(self.shell, exe, list(args))
        if stdin is None:
            process.invoke()
        else:
            process.begin_invoke()
            process.send(stdin, end=True)
            process.end_invoke()
        process.signal("http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate")
        return process.stdout, process.stderr, process.rc

    def close(self):
        self.shell.close()
        self.wsman.close()


CLIENTS = {"pywinrm": PywinrmSession, "pypsrp": PypsrpSession}


@pytest.mark.parametrize("winrm_fleet", [params()], indirect=True)
@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize("transport,scheme", [("basic", "https"), ("ntlm", "http"), ("ntlm", "https")])
def test_the_same_session_from_both_clients(winrm_fleet, client, transport, scheme):
    persona = winrm_fleet.host("ZCLI01").persona
    session = CLIENTS[client](winrm_fleet, transport, scheme)
    try:
        assert session.run("echo", ["hello", "world"]) == (b"hello world\r\n", b"", 0)
        assert session.run("cmd", ["/c", "exit", "3"])[2] == 3
        out, err, code = session.run("frobnicate")
        assert code == 9009 and b"'frobnicate' is not recognized" in err
        assert session.run("more", stdin=b"line one\r\nline two\r\n") == (b"line one\r\nline two\r\n", b"", 0)
        out, err, code = session.run("bigout", [str(BIG)])  # several Receives, each under the client's MaxEnvelopeSize
        assert (len(out), set(out), code) == (BIG, {ord("x")}, 0)
    finally:
        session.close()
    assert winrm_fleet.host("ZCLI01").shells == {}
    # the shell's Create options reached the persona with every command
    assert len(persona.options) == 5
    for options, skip in persona.options:
        assert skip is False
        assert (options.codepage, dict(options.environment), options.working_directory, options.noprofile) == (
            65001, ENV, WORKDIR, True)


QUOTA = 30


@pytest.mark.parametrize("winrm_fleet", [params()], indirect=True)
def test_shell_quota_holds_under_load(winrm_fleet):
    """8 threads x 30 Creates for one user on one host: exactly MaxShellsPerUser granted, the rest get w:QuotaLimit."""
    granted, refused, errors = [], [], []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker():
        try:
            p = Protocol(winrm_fleet.endpoint("ZCLI01", "https"), transport="basic", username=winrm_fleet.username,
                         password=winrm_fleet.password, ca_trust_path=str(winrm_fleet.ca_cert))
            start.wait(10)
            for _ in range(QUOTA):
                try:
                    shell = p.open_shell()
                except WSManFaultError as fault:
                    with lock:
                        refused.append((fault.fault_subcode, fault.wmierror_code))
                    continue
                with lock:
                    granted.append((p, shell))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert errors == []
    assert len(granted) == QUOTA and len(refused) == 8 * QUOTA - QUOTA
    assert set(refused) == {("w:QuotaLimit", 2150859173)}
    assert len(winrm_fleet.host("ZCLI01").shells) == QUOTA

    # closing shells frees their slots, from any thread
    closers = [threading.Thread(target=lambda pair=pair: pair[0].close_shell(pair[1], close_session=False))
               for pair in granted[:10]]
    for t in closers:
        t.start()
    for t in closers:
        t.join(60)
    again = Protocol(winrm_fleet.endpoint("ZCLI01", "https"), transport="basic", username=winrm_fleet.username,
                     password=winrm_fleet.password, ca_trust_path=str(winrm_fleet.ca_cert))
    reopened = [again.open_shell() for _ in range(10)]
    with pytest.raises(WSManFaultError) as err:
        again.open_shell()
    assert err.value.wmierror_code == 2150859173
    # and the shells still work
    s = winrm.Session(winrm_fleet.endpoint("ZCLI01", "https"), auth=(winrm_fleet.username, winrm_fleet.password),
                      transport="basic", ca_trust_path=str(winrm_fleet.ca_cert))
    with pytest.raises(WSManFaultError):
        s.run_cmd("hostname")  # run_cmd needs a shell of its own: none left
    cid = again.run_command(reopened[0], "hostname")
    assert again.get_command_output(reopened[0], cid) == (b"ZCLI01\r\n", b"", 0)
