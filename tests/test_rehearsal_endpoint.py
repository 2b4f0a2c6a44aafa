"""The emulated WinRM endpoint, driven by the real pywinrm client (HTTP, TLS, Basic, NTLM, encryption are real).

Windows itself is replaced by a small test persona (tests/support/fake_persona.py)
so that these tests pin the protocol, not the persona's behaviour.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import winrm
from winrm.exceptions import InvalidCredentialsError, WinRMOperationTimeoutError, WSManFaultError
from winrm.protocol import Protocol

from deploy_tasks.rehearsal.certs import make_ca
from deploy_tasks.rehearsal.fleet import allocate_addresses
from tests.support.fake_persona import FakePersona

EXAMPLE_XLSX = Path(__file__).resolve().parent.parent / "inventory" / "example.xlsx"
HOSTS = [("ZDB01", "127.0.0.11"), ("ZAPP01", "127.0.0.12")]


def fleet_params(spec=None, **extra):
    """Most tests drive the endpoint with Basic over HTTPS, so they turn it on (it is off by default, as on 2012 R2)."""
    spec = dict(spec or {})
    spec["defaults"] = {"basic": True, **spec.get("defaults", {})}
    return {"inventory": HOSTS, "persona_factory": FakePersona, "spec": spec, **extra}


def session(fleet, hostname="ZDB01", transport="basic", scheme="https", **kwargs):
    kwargs.setdefault("server_cert_validation", "validate")
    kwargs.setdefault("ca_trust_path", str(fleet.ca_cert))
    return winrm.Session(fleet.endpoint(hostname, scheme), auth=(fleet.username, fleet.password), transport=transport,
                         **kwargs)


def protocol(fleet, hostname="ZDB01", transport="basic", scheme="https", **kwargs):
    kwargs.setdefault("server_cert_validation", "validate")
    kwargs.setdefault("ca_trust_path", str(fleet.ca_cert))
    return Protocol(fleet.endpoint(hostname, scheme), transport=transport, username=fleet.username,
                    password=kwargs.pop("password", fleet.password), **kwargs)


pytestmark = pytest.mark.integration
DEFAULT = pytest.mark.parametrize("winrm_fleet", [fleet_params()], indirect=True)


# -- commands over each transport -------------------------------------------------------


@DEFAULT
def test_run_cmd_and_run_ps_over_basic_https(winrm_fleet):
    s = session(winrm_fleet)
    r = s.run_cmd("echo", ["hello", "world"])
    assert (r.status_code, r.std_out, r.std_err) == (0, b"hello world\r\n", b"")
    # the persona sees the command line as Windows builds it: Command + " " + Arguments
    assert winrm_fleet.host("ZDB01").persona.started[-1] == "echo hello world"
    assert s.run_cmd("cmd /c exit 3").status_code == 3
    r = s.run_cmd("frobnicate")
    assert r.status_code == 9009 and b"'frobnicate' is not recognized" in r.std_err
    ps = s.run_ps("Write-Output 'é ok'")
    assert ps.status_code == 0 and ps.std_out == "Write-Output 'é ok'\r\n".encode()
    failed = s.run_ps("throw 'boom'")
    # pywinrm turned the CLIXML on stderr into the error text
    assert failed.status_code == 1 and failed.std_err == b"throw 'boom'"


@DEFAULT
def test_ntlm_with_message_encryption_over_http(winrm_fleet):
    p = protocol(winrm_fleet, transport="ntlm", scheme="http")
    shell = p.open_shell()
    assert p.transport.encryption is not None, "pywinrm did not set up NTLM message encryption over HTTP"
    wire = []
    real_send = p.transport.session.send

    def recording_send(request, **kwargs):
        response = real_send(request, **kwargs)
        wire.append((request.headers.get("Content-Type"), request.body, response.headers.get("Content-Type"), response.content))
        return response

    p.transport.session.send = recording_send
    cid = p.run_command(shell, "echo", ["sealed-secret"])
    assert p.get_command_output(shell, cid) == (b"sealed-secret\r\n", b"", 0)
    # on the wire both ways: sealed multipart bodies, neither the command nor its base64 output in clear
    assert len(wire) == 2
    for req_type, req_body, resp_type, resp_body in wire:
        assert req_type.startswith("multipart/encrypted") and 'protocol="application/HTTP-SPNEGO-session-encrypted"' in req_type
        assert resp_type.startswith("multipart/encrypted")
        assert b"sealed-secret" not in req_body and b"Envelope" not in req_body
        assert b"c2VhbGVkLXNlY3JldA0K" not in resp_body and b"Envelope" not in resp_body
    p.cleanup_command(shell, cid)
    p.close_shell(shell)
    r = session(winrm_fleet, transport="ntlm", scheme="http").run_cmd("hostname")
    assert (r.status_code, r.std_out) == (0, b"ZDB01\r\n")


@DEFAULT
def test_ntlm_without_encryption_over_http_is_refused(winrm_fleet):
    # like Windows with AllowUnencrypted=false: an authenticated connection still may not send plain SOAP
    s = session(winrm_fleet, transport="ntlm", scheme="http", message_encryption="never")
    with pytest.raises(InvalidCredentialsError):
        s.run_cmd("hostname")


@DEFAULT
def test_ntlm_over_https_with_validation_and_channel_binding(winrm_fleet):
    r = session(winrm_fleet, "ZAPP01", transport="ntlm").run_cmd("hostname")
    assert (r.status_code, r.std_out) == (0, b"ZAPP01\r\n")


@DEFAULT
def test_ntlm_channel_binding_mismatch_is_rejected(winrm_fleet, monkeypatch):
    # a client that binds to another certificate (a TLS man in the middle) fails NTLM
    import requests_ntlm.requests_ntlm as rn

    monkeypatch.setattr(rn, "_get_certificate_hash", lambda der: b"\x00" * 32)
    with pytest.raises(InvalidCredentialsError):
        session(winrm_fleet, transport="ntlm").run_cmd("hostname")


@DEFAULT
def test_basic_over_plain_http_is_refused_by_default(winrm_fleet):
    with pytest.raises(InvalidCredentialsError):
        session(winrm_fleet, scheme="http").run_cmd("hostname")


@pytest.mark.parametrize("winrm_fleet", [fleet_params(allow_unencrypted=True)], indirect=True)
def test_basic_over_plain_http_when_the_fleet_allows_it(winrm_fleet):
    r = session(winrm_fleet, scheme="http").run_cmd("hostname")
    assert (r.status_code, r.std_out) == (0, b"ZDB01\r\n")


@DEFAULT
@pytest.mark.parametrize("transport,scheme", [("basic", "https"), ("ntlm", "http"), ("ntlm", "https")])
def test_wrong_password_gets_401(winrm_fleet, transport, scheme):
    s = winrm.Session(winrm_fleet.endpoint("ZDB01", scheme), auth=(winrm_fleet.username, "not-the-password"),
                      transport=transport, server_cert_validation="validate", ca_trust_path=str(winrm_fleet.ca_cert))
    with pytest.raises(InvalidCredentialsError):
        s.run_cmd("hostname")
    assert winrm_fleet.host("ZDB01").persona.started == []


@DEFAULT
def test_wrong_certificate_authority_fails_validation(winrm_fleet, tmp_path):
    other_ca = make_ca(tmp_path / "other-ca")
    with pytest.raises(requests.exceptions.SSLError):
        session(winrm_fleet, ca_trust_path=str(other_ca.cert)).run_cmd("hostname")
    assert winrm_fleet.host("ZDB01").persona.started == []


# -- protocol details --------------------------------------------------------------------


@DEFAULT
def test_long_command_outlasts_a_one_second_operation_timeout(winrm_fleet):
    p = protocol(winrm_fleet, operation_timeout_sec=1, read_timeout_sec=2)
    shell = p.open_shell()
    cid = p.run_command(shell, "sleep", ["2.5"])
    # a single Receive answers with the w:TimedOut fault after the operation timeout
    started = time.monotonic()
    with pytest.raises(WinRMOperationTimeoutError):
        p.get_command_output_raw(shell, cid)
    assert time.monotonic() - started >= 0.9
    # pywinrm polls again on that fault until the command is done
    assert p.get_command_output(shell, cid) == (b"slept\r\n", b"", 0)
    p.cleanup_command(shell, cid)
    p.close_shell(shell)
    r = session(winrm_fleet, operation_timeout_sec=1, read_timeout_sec=2).run_cmd("sleep 2.2")
    assert (r.status_code, r.std_out) == (0, b"slept\r\n")


@DEFAULT
def test_stdin_through_send(winrm_fleet):
    p = protocol(winrm_fleet, transport="ntlm", scheme="http")
    shell = p.open_shell()
    cid = p.run_command(shell, "more")
    p.send_command_input(shell, cid, "line one\r\n")
    p.send_command_input(shell, cid, b"line two\r\n", end=True)
    assert p.get_command_output(shell, cid) == (b"line one\r\nline two\r\n", b"", 0)
    p.close_shell(shell)


@DEFAULT
def test_large_output_spans_several_receives(winrm_fleet):
    p = protocol(winrm_fleet)
    shell = p.open_shell()
    cid = p.run_command(shell, "bigout", ["400000"])
    first = p.get_command_output_raw(shell, cid)
    assert first[3] is False and 0 < len(first[0]) < 400000  # chunked under the envelope size
    out, err, code = p.get_command_output(shell, cid)
    assert len(first[0]) + len(out) == 400000 and code == 0
    p.close_shell(shell)


@DEFAULT
def test_a_failing_persona_gets_a_500_fault_not_a_dead_server(winrm_fleet):
    with pytest.raises(WSManFaultError) as err:
        session(winrm_fleet).run_cmd("explode")
    assert err.value.code == 500 and err.value.wsman_fault_code == 1726 and "the persona broke" in err.value.response
    assert session(winrm_fleet).run_cmd("hostname").std_out == b"ZDB01\r\n"


@DEFAULT
def test_signal_terminates_a_running_command(winrm_fleet):
    p = protocol(winrm_fleet)
    shell = p.open_shell()
    cid = p.run_command(shell, "sleep", ["30"])
    p.cleanup_command(shell, cid)
    handle = winrm_fleet.host("ZDB01").persona.handles[-1]
    assert handle.terminated
    # the command is gone: Windows answers a Receive for it with InvalidSelectors
    with pytest.raises(WSManFaultError) as err:
        p.get_command_output_raw(shell, cid)
    assert err.value.wsman_fault_code == 2150858843
    p.close_shell(shell)


@DEFAULT
def test_unknown_shell_and_unknown_command_faults(winrm_fleet):
    p = protocol(winrm_fleet)
    shell = p.open_shell()
    with pytest.raises(WSManFaultError) as err:
        p.get_command_output_raw(shell, str(uuid.uuid4()).upper())
    assert err.value.code == 500 and err.value.wsman_fault_code == 2150858843
    assert err.value.fault_subcode == "w:InvalidSelectors"
    p.close_shell(shell, close_session=False)
    with pytest.raises(WSManFaultError) as err:
        p.run_command(shell, "hostname")
    assert err.value.wsman_fault_code == 2150858843
    assert "shell was not found" in err.value.response
    with pytest.raises(WSManFaultError):
        p.close_shell(shell)


@DEFAULT
def test_every_reply_relates_to_its_request(winrm_fleet):
    p = protocol(winrm_fleet)
    seen = []
    real_send = p.transport.send_message

    def spy(message):
        request_id = re.search(rb"<a:MessageID>(uuid:[^<]+)</a:MessageID>", message if isinstance(message, bytes) else message.encode()).group(1)
        try:
            reply = real_send(message)
        except winrm.exceptions.WinRMTransportError as exc:  # faults carry RelatesTo too
            seen.append((request_id, re.search(r"<a:RelatesTo>([^<]+)</a:RelatesTo>", exc.response_text).group(1).encode()))
            raise
        seen.append((request_id, re.search(rb"<a:RelatesTo>([^<]+)</a:RelatesTo>", reply).group(1)))
        return reply

    p.transport.send_message = spy
    shell = p.open_shell()
    cid = p.run_command(shell, "echo", ["x"])
    p.get_command_output(shell, cid)
    p.send_command_input(shell, cid, b"", end=True)
    p.cleanup_command(shell, cid)
    p.close_shell(shell, close_session=False)
    with pytest.raises(WSManFaultError):
        p.close_shell(shell)  # unknown shell: a fault reply
    assert len(seen) == 7 and all(req.upper() == rel.upper() for req, rel in seen)


@DEFAULT
def test_eight_threads_each_with_its_own_session(winrm_fleet):
    errors, results = [], []

    def worker(i):
        try:
            transport, scheme = [("basic", "https"), ("ntlm", "http"), ("ntlm", "https")][i % 3]
            s = session(winrm_fleet, HOSTS[i % 2][0], transport=transport, scheme=scheme)
            for j in range(6):
                r = s.run_cmd("echo", [f"t{i}-{j}"])
                results.append(r.std_out == f"t{i}-{j}\r\n".encode() and r.status_code == 0)
            p = protocol(winrm_fleet, HOSTS[i % 2][0], transport=transport, scheme=scheme)
            shell = p.open_shell()
            for j in range(6):
                cid = p.run_command(shell, "echo", [f"r{i}-{j}"])
                results.append(p.get_command_output(shell, cid) == (f"r{i}-{j}\r\n".encode(), b"", 0))
                p.cleanup_command(shell, cid)
            p.close_shell(shell)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(results) == 8 * 12 and all(results)


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("winrm_fleet", [fleet_params(spec={"hosts": {"ZDB01": {"down": True}}})], indirect=True)
def test_fault_host_down_refuses_connections(winrm_fleet):
    with pytest.raises(requests.exceptions.ConnectionError) as err:
        session(winrm_fleet).run_cmd("hostname")
    assert "refused" in str(err.value).lower()
    assert session(winrm_fleet, "ZAPP01").run_cmd("hostname").std_out == b"ZAPP01\r\n"  # the others are up
    host = winrm_fleet.host("ZDB01")
    host.set_down(False)
    assert session(winrm_fleet).run_cmd("hostname").std_out == b"ZDB01\r\n"
    # an outage in the middle of a command: the connection is cut, the shell and the command survive it
    p = protocol(winrm_fleet)
    shell = p.open_shell()
    cid = p.run_command(shell, "sleep", ["1"])
    host.set_down(True)
    with pytest.raises(requests.exceptions.ConnectionError):
        p.get_command_output(shell, cid)
    host.set_down(False)
    assert protocol(winrm_fleet).get_command_output(shell, cid) == (b"slept\r\n", b"", 0)


@pytest.mark.parametrize("winrm_fleet", [fleet_params(spec={"hosts": {"ZDB01": {"latency_ms": 150}}})], indirect=True)
def test_fault_latency_per_request(winrm_fleet):
    started = time.monotonic()
    assert session(winrm_fleet).run_cmd("hostname").status_code == 0
    # run_cmd is five WS-Man requests (Create, Command, Receive, Signal, Delete), each delayed
    assert time.monotonic() - started >= 5 * 0.15


@pytest.mark.parametrize("winrm_fleet", [fleet_params(spec={"hosts": {"ZDB01": {"drop_receive": 1}}})], indirect=True)
def test_fault_connection_dropped_mid_receive(winrm_fleet):
    with pytest.raises(requests.exceptions.ConnectionError):
        session(winrm_fleet).run_cmd("hostname")
    assert winrm_fleet.host("ZDB01").persona.started == ["hostname"]  # the command did start
    assert winrm_fleet.host("ZDB01").faults.drop_receive == 0
    assert session(winrm_fleet).run_cmd("hostname").std_out == b"ZDB01\r\n"  # once only


@pytest.mark.parametrize("winrm_fleet", [fleet_params(spec={"hosts": {"ZDB01": {"http_500": 2}}})], indirect=True)
@pytest.mark.parametrize("transport,scheme", [("basic", "https"), ("ntlm", "http")])
def test_fault_http_500_with_wsman_fault(winrm_fleet, transport, scheme):
    for _ in range(2):
        with pytest.raises(WSManFaultError) as err:
            session(winrm_fleet, transport=transport, scheme=scheme).run_cmd("hostname")
        assert err.value.code == 500 and err.value.wsman_fault_code == 1726
        assert "http_500" in err.value.response
    assert session(winrm_fleet, transport=transport, scheme=scheme).run_cmd("hostname").status_code == 0


@pytest.mark.parametrize("winrm_fleet", [fleet_params(spec={"hosts": {"ZDB01": {"auth_reject": True}}})], indirect=True)
@pytest.mark.parametrize("transport,scheme", [("basic", "https"), ("ntlm", "http")])
def test_fault_auth_rejected(winrm_fleet, transport, scheme):
    with pytest.raises(InvalidCredentialsError):
        session(winrm_fleet, transport=transport, scheme=scheme).run_cmd("hostname")
    assert winrm_fleet.host("ZDB01").persona.started == []


@DEFAULT
def test_reboot_hook_takes_the_host_away_and_back(winrm_fleet):
    host = winrm_fleet.host("ZDB01")
    booted = host.boot_time
    p = protocol(winrm_fleet)
    shell = p.open_shell()
    assert session(winrm_fleet).run_cmd("shutdown", ["/r", "/t", "0"]).status_code == 0
    deadline = time.monotonic() + 5
    while host.state == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(requests.exceptions.ConnectionError):
        session(winrm_fleet).run_cmd("hostname")
    deadline = time.monotonic() + 10
    while host.state != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session(winrm_fleet).run_cmd("hostname").std_out == b"ZDB01\r\n"
    assert host.boot_time > booted
    # shells do not survive a reboot
    with pytest.raises(WSManFaultError) as err:
        Protocol(winrm_fleet.endpoint("ZDB01"), transport="basic", username=winrm_fleet.username,
                 password=winrm_fleet.password, ca_trust_path=str(winrm_fleet.ca_cert)).run_command(shell, "hostname")
    assert err.value.wsman_fault_code == 2150858843


# -- fleet -------------------------------------------------------------------------------


def test_addresses_outside_loopback_are_allocated():
    hosts = allocate_addresses([("A", "127.0.0.21"), ("B", "10.1.2.3"), ("C", "zdb.example.test"), ("D", "127.0.0.22")])
    addresses = [a for _, a in hosts]
    assert addresses[0] == "127.0.0.21" and addresses[3] == "127.0.0.22"
    assert len(set(addresses)) == 4 and all(a.startswith("127.") for a in addresses)


@DEFAULT
def test_fixture_places_hosts_on_their_own_addresses(winrm_fleet):
    described = winrm_fleet.describe()
    assert [(h["hostname"], h["address"]) for h in described["hosts"]] == HOSTS
    assert described["ca_cert"] == str(winrm_fleet.ca_cert)
    for hostname, _ in HOSTS:
        sandbox = winrm_fleet.host(hostname).persona.sandbox
        assert sandbox.is_dir() and sandbox.name == "C" and sandbox.parent.name == hostname


def _example_spec():
    from deploy_tasks.rehearsal.faults import FleetSpec

    return FleetSpec.from_mapping({"defaults": {"basic": True}, "hosts": {"ZWEB01": {"http_500": 1}}})


@pytest.mark.parametrize("winrm_fleet", [{"inventory": EXAMPLE_XLSX, "spec": _example_spec(), "persona_factory": FakePersona}],
                         indirect=True)
def test_fixture_from_a_workbook_and_a_spec(winrm_fleet):
    from cryptography import x509

    described = winrm_fleet.describe()
    assert [(h["hostname"], h["address"]) for h in described["hosts"]] == [
        ("ZDB01", "127.0.0.11"), ("ZAPP01", "127.0.0.12"), ("ZAPP02", "127.0.0.13"),
        ("ZSRCH01", "127.0.0.14"), ("ZSVC01", "127.0.0.15"), ("ZWEB01", "127.0.0.16")]
    # the certificate names the host as clients know it: hostname, FQDN in the inventory's domain, address
    cert = x509.load_pem_x509_certificate((winrm_fleet.root / "ZWEB01" / "winrm.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "zweb01.example.test" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.16"]
    # the spec's fault is on its host only
    with pytest.raises(WSManFaultError):
        session(winrm_fleet, "ZWEB01").run_cmd("hostname")
    assert session(winrm_fleet, "ZWEB01").run_cmd("hostname").std_out == b"ZWEB01\r\n"
    assert session(winrm_fleet, "ZSVC01").run_cmd("hostname").std_out == b"ZSVC01\r\n"


@pytest.mark.parametrize("winrm_fleet", [fleet_params(username="EXAMPLE\\deployer")], indirect=True)
def test_domain_and_local_account_forms_of_the_user(winrm_fleet):
    ca = str(winrm_fleet.ca_cert)
    for user, transport, scheme in [("EXAMPLE\\deployer", "ntlm", "http"), ("ZDB01\\deployer", "ntlm", "http"),
                                    ("deployer", "ntlm", "https"), ("EXAMPLE\\deployer", "basic", "https")]:
        s = winrm.Session(winrm_fleet.endpoint("ZDB01", scheme), auth=(user, winrm_fleet.password), transport=transport,
                          server_cert_validation="validate", ca_trust_path=ca)
        assert s.run_cmd("hostname").std_out == b"ZDB01\r\n", (user, transport)
    wrong_domain = winrm.Session(winrm_fleet.endpoint("ZDB01", "http"), auth=("OTHER\\deployer", winrm_fleet.password),
                                 transport="ntlm", ca_trust_path=ca)
    with pytest.raises(InvalidCredentialsError):
        wrong_domain.run_cmd("hostname")


def test_service_settings_in_the_fleet_spec():
    from deploy_tasks.errors import ConfigError
    from deploy_tasks.rehearsal.faults import FleetSpec

    spec = FleetSpec.from_mapping({"defaults": {"max_shells_per_user": 5}, "hosts": {"ZDB01": {"basic": True}}})
    zdb, other = spec.faults_for("ZDB01"), spec.faults_for("ZAPP01")
    assert (zdb.basic, zdb.max_shells_per_user, other.basic, other.max_shells_per_user) == (True, 5, False, 5)
    assert (other.idle_timeout_s, other.max_envelope_size_kb, other.max_concurrent_operations_per_user) == (7200.0, 500, 1500)
    for bad, expected in [({"max_shells_per_user": 0}, "max_shells_per_user must be a whole number >= 1"),
                          ({"basic": "yes"}, "basic must be true or false"),
                          ({"idle_timeout_s": 0.5}, "idle_timeout_s must be a number of seconds >= 1")]:
        with pytest.raises(ConfigError, match=expected) as err:
            FleetSpec.from_mapping({"hosts": {"ZDB01": bad}})
        assert "hosts.ZDB01" in str(err.value)


@DEFAULT
def test_idle_timeout_in_milliseconds_is_a_schema_error(winrm_fleet):
    # pywinrm passes idle_timeout through as is; Windows wants an xs:duration (diyan/pywinrm#377)
    p = protocol(winrm_fleet)
    with pytest.raises(WSManFaultError) as err:
        p.open_shell(idle_timeout=3600000)
    assert (err.value.wsman_fault_code, err.value.fault_subcode) == (2150858817, "w:SchemaValidationError")
    shell = p.open_shell(idle_timeout="PT3600S")
    assert winrm_fleet.host("ZDB01").shells[shell].idle_timeout_s == 3600.0
    p.close_shell(shell)


def _parsed(raw: bytes, parse):
    """(ok, close_connection, headers, what was written back) after ``parse`` read the request ``raw``."""
    import io

    from deploy_tasks.rehearsal.server import _Handler

    handler = object.__new__(_Handler)
    handler.rfile, handler.wfile = io.BytesIO(raw), io.BytesIO()
    handler.client_address, handler.request_version = ("127.0.0.1", 1), "HTTP/0.9"
    handler.raw_requestline = handler.rfile.readline(65537)
    ok = parse(handler)
    headers = list(handler.headers.items()) if ok else None
    return ok, handler.close_connection, headers, handler.wfile.getvalue().split(b"\r\n", 1)[0], handler.rfile.read()


@pytest.mark.parametrize("raw", [
    b"POST /wsman HTTP/1.1\r\nHost: 127.0.0.11:5986\r\nContent-Type: application/soap+xml;charset=UTF-8\r\n"
    b"Authorization: Negotiate TlRMTVNTUAAB\r\nContent-Length: 4\r\n\r\nbody",
    b"POST /wsman HTTP/1.1\r\nConnection: close\r\nX-Spaces:   a  b  \r\nX-Empty:\r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n",
    b"POST //wsman HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    b"POST /wsman HTTP/1.0\r\nConnection: keep-alive\r\n\n",
    b"POST /wsman HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
    b"POST /wsman HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n",
    b"POST /wsman HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(99)) + b"\r\n",
    b"POST /wsman HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    b"POST /wsman HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    "POST\xa0/wsman HTTP/1.1\r\n\r\n".encode("latin-1"),
    b"POST /wsman HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET /wsman HTTP/2.0\r\n\r\n",
    b"GET /wsman\r\n\r\n",
])
def test_the_endpoint_reads_request_headers_as_http_server_does(raw):
    from http.server import BaseHTTPRequestHandler

    from deploy_tasks.rehearsal.server import _Handler

    assert _parsed(raw, _Handler.parse_request) == _parsed(raw, BaseHTTPRequestHandler.parse_request)


def test_request_headers_answer_lookups_as_an_http_message_does():
    import email.parser
    import http.client

    from deploy_tasks.rehearsal.server import _Headers

    block = "Host: x\r\nContent-Type: a\r\ncontent-type: b\r\nX-Empty: \r\nAuthorization: Negotiate abc\r\n\r\n"
    theirs = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(block)
    ours = _Headers()
    for name, value in theirs.items():
        ours.add(name, value)
    for name in ("Host", "CONTENT-TYPE", "x-empty", "Authorization", "Missing"):
        assert (ours.get(name), ours.get(name, "d"), ours[name], name in ours, ours.get_all(name)) == (
            theirs.get(name), theirs.get(name, "d"), theirs[name], name in theirs, theirs.get_all(name)), name
    assert ours.items() == theirs.items() and ours.keys() == theirs.keys() and len(ours) == len(theirs)
    assert list(ours) == list(theirs)


def test_a_header_line_without_a_name_is_refused():
    from deploy_tasks.rehearsal.server import _Handler

    for line in (b"no colon here", b" folded: line", b": no name"):
        ok, _, _, status, _ = _parsed(b"POST /wsman HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n",
                                      _Handler.parse_request)
        assert not ok and status.startswith(b"HTTP/1.1 400 ")
