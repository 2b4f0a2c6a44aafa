"""The WinRM transport against the emulated fleet, with the real pywinrm client underneath.

What a user would notice: one shell per host reused and always closed, exit
codes as data, commands that outlast a WS-Man timeout still finish, a
command past its timeout is terminated, every failure is one of the
project's errors with retryability set and without the password, a rejected
credential is not offered to any other host, and the unsafe settings are
refused or loudly warned about.
"""

from __future__ import annotations

import base64
import re
import threading
import time

import pytest
import requests
from winrm.exceptions import (InvalidCredentialsError, WinRMError, WinRMOperationTimeoutError, WinRMTransportError,
                              WSManFaultError)

from deploy_tasks import redact
from deploy_tasks.errors import (AuthenticationRejected, CertificateRejected, CommandTimedOut, ConfigError,
                                 HostUnreachable, QuotaExceeded, RemoteCommandError, TransportError, WSManFault)
from deploy_tasks.rehearsal import server as endpoint
from deploy_tasks.rehearsal.certs import make_ca
from deploy_tasks.rehearsal.persona import WindowsPersona
from deploy_tasks.settings import resolve
from deploy_tasks.transports import winrm as w
from deploy_tasks.transports.base import Transport
from tests.support.fake_persona import FakePersona

pytestmark = pytest.mark.integration

HOSTS = [("ZDB01", "127.0.0.11"), ("ZAPP01", "127.0.0.12")]


def fake(**extra):
    return {"inventory": HOSTS, "persona_factory": FakePersona, **extra}


def windows(**extra):
    return {"inventory": HOSTS, "persona_factory": WindowsPersona, **extra}


FAKE = pytest.mark.parametrize("winrm_fleet", [fake()], indirect=True)
WINDOWS = pytest.mark.parametrize("winrm_fleet", [windows()], indirect=True)


def options(fleet, scheme="https", transport="ntlm", **kw):
    kw.setdefault("operation_timeout_s", 1)
    kw.setdefault("read_timeout_s", 3)
    kw.setdefault("ca_path", str(fleet.ca_cert))
    return w.WinRMOptions(transport=transport, scheme=scheme, **kw)


def connect(fleet, hostname="ZDB01", scheme="https", transport="ntlm", credential=None, dry_run=False, echo=None, **kw):
    host = fleet.host(hostname)
    port = host.https_port if scheme == "https" else host.http_port
    credential = credential or w.Credential(fleet.username, fleet.password)
    return w.WinRMTransport(hostname, host.address, options(fleet, scheme, transport, **kw), port=port,
                            credential=credential, dry_run=dry_run, echo=echo)


@pytest.fixture(autouse=True)
def _fresh_rejections():
    w.forget_rejected_credentials()
    yield
    w.forget_rejected_credentials()


def count_creates(monkeypatch, host):
    creates = []
    real = host._create

    def counting(owner):
        creates.append(owner)
        return real(owner)

    monkeypatch.setattr(host, "_create", counting)
    return creates


def spy_requests(monkeypatch, host):
    """Every decrypted SOAP body the host receives."""
    bodies = []
    real = host.dispatch

    def spying(body, owner):
        bodies.append(body)
        return real(body, owner)

    monkeypatch.setattr(host, "dispatch", spying)
    return bodies


# -- shells -----------------------------------------------------------------------------


@WINDOWS
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_one_shell_reused_for_every_command_and_closed(winrm_fleet, monkeypatch, scheme):
    host = winrm_fleet.host("ZDB01")
    creates = count_creates(monkeypatch, host)
    bodies = spy_requests(monkeypatch, host)
    t = connect(winrm_fleet, scheme=scheme)
    assert isinstance(t, Transport)
    assert creates == [] and host.shells == {}  # lazy: nothing before the first command
    with t:
        for _ in range(5):
            assert t.run("hostname").stdout == "ZDB01\n"
        assert t.run_argv(["whoami"]).ok
        assert len(creates) == 1 and len(host.shells) == 1 and t.shells_opened == 1
    assert host.shells == {}  # Delete sent
    t.close()  # idempotent
    create = next(b for b in bodies if b"transfer/Create<" in b)
    assert re.search(rb'Name="WINRS_CODEPAGE"[^>]*>65001<', create)
    if scheme == "http":
        assert t.options.message_encryption() == "always"


@WINDOWS
def test_http_ntlm_traffic_is_sealed(winrm_fleet):
    t = connect(winrm_fleet, scheme="http")
    with t:
        assert t.run("hostname").ok
        assert t._protocol.transport.encryption is not None


@WINDOWS
def test_a_shell_lost_to_a_reboot_is_replaced_transparently(winrm_fleet):
    host = winrm_fleet.host("ZDB01")
    with connect(winrm_fleet) as t:
        assert t.run("hostname").ok
        host._drop_shells()  # what a reboot or an idle timeout does to the shell
        assert t.run("hostname").stdout == "ZDB01\n"
        assert t.shells_opened == 2 and len(host.shells) == 1
    assert host.shells == {}


@WINDOWS
def test_exit_status_is_data(winrm_fleet):
    with connect(winrm_fleet) as t:
        r = t.run("cmd /c exit 3", check=False)
        assert (r.exited, r.ok) == (3, False) and r.duration > 0
        with pytest.raises(RemoteCommandError) as err:
            t.run("cmd /c exit 3", hint="it should be 0")
        assert err.value.exit_code_remote == 3 and "ZDB01" in str(err.value) and "it should be 0" in str(err.value)
        assert t.test("cmd /c exit 0") is True
        assert t.test("cmd /c exit 1") is False
        with pytest.raises(RemoteCommandError):
            t.test("frobnicate")  # 9009 is not a "no"
        r = t.run("frobnicate", check=False)
        assert r.exited == 9009 and "is not recognized" in r.stderr


@WINDOWS
def test_utf8_output_round_trips(winrm_fleet):
    with connect(winrm_fleet) as t:
        r = t.run("echo héllo ✓ Ωmega")
        assert r.ok
        assert r.stdout == "héllo ✓ Ωmega\n"


# -- long commands and timeouts ------------------------------------------------------------


@FAKE
def test_a_command_longer_than_the_operation_timeout_is_polled_to_completion(winrm_fleet, monkeypatch):
    bodies = spy_requests(monkeypatch, winrm_fleet.host("ZDB01"))
    with connect(winrm_fleet, operation_timeout_s=1, read_timeout_s=2) as t:
        r = t.run("sleep 2.5")
    assert (r.exited, r.stdout) == (0, "slept\n") and r.duration >= 2.4
    receives = [b for b in bodies if b"/windows/shell/Receive<" in b]
    assert len(receives) >= 3  # two w:TimedOut faults polled again, then the output


@FAKE
def test_a_command_past_its_timeout_is_terminated(winrm_fleet):
    persona = winrm_fleet.host("ZDB01").persona
    with connect(winrm_fleet, operation_timeout_s=5, read_timeout_s=8) as t:
        started = time.monotonic()
        with pytest.raises(CommandTimedOut) as err:
            t.run("sleep 30", timeout=2)
        took = time.monotonic() - started
        assert 1.9 <= took < 4  # the Receive was shortened to the deadline, not the 5 s operation timeout
        assert persona.handles[-1].terminated  # Signal terminate reached the host
        assert "did not finish within 2 s" in str(err.value) and "sleep 30" in str(err.value)
        assert err.value.retryable is False
        # the shell survives: the next command runs in it
        assert t.run("hostname").stdout == "ZDB01\n" and t.shells_opened == 1


@FAKE
def test_command_timeout_s_is_the_default_timeout(winrm_fleet):
    with connect(winrm_fleet, command_timeout_s=1, operation_timeout_s=5, read_timeout_s=8) as t:
        with pytest.raises(CommandTimedOut):
            t.run("sleep 30")


def test_read_timeout_must_exceed_operation_timeout():
    settings = resolve({"winrm_operation_timeout_s": "30", "winrm_read_timeout_s": "30"})
    with pytest.raises(ConfigError) as err:
        w.WinRMPool(w.options_from_settings(settings), credential=w.Credential("u", "pw-never-shown"))
    assert "winrm_read_timeout_s (30) must exceed winrm_operation_timeout_s (30)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        resolve({"winrm_read_timeout_s": "soon"})
    assert "winrm_read_timeout_s" in str(err.value)
    defaults = w.options_from_settings(resolve({}))
    assert (defaults.operation_timeout_s, defaults.read_timeout_s, defaults.scheme) == (20, 30, "https")
    assert defaults.check() == []


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("winrm_fleet", [fake(spec={"hosts": {"ZDB01": {"down": True}}})], indirect=True)
def test_host_down_is_unreachable_and_retryable(winrm_fleet):
    with connect(winrm_fleet) as t:
        with pytest.raises(HostUnreachable) as err:
            t.run("hostname")
    assert err.value.retryable is True and err.value.host == "ZDB01"
    assert "connection refused" in str(err.value) and "127.0.0.11" in str(err.value)


@pytest.mark.parametrize("winrm_fleet", [fake(spec={"hosts": {"ZDB01": {"http_500": 1}}})], indirect=True)
def test_wsman_fault_carries_its_code_and_windows_message(winrm_fleet):
    with connect(winrm_fleet) as t:
        with pytest.raises(WSManFault) as err:
            t.run("hostname")
        assert err.value.code == 1726 and err.value.retryable is True  # a sick service: transient
        assert "Fault injected by the rehearsal fleet spec" in err.value.windows_message
        assert "WS-Man fault 1726" in str(err.value)
        assert t.run("hostname").ok  # the fault fired once


@pytest.mark.parametrize("winrm_fleet", [fake(spec={"hosts": {"ZDB01": {"drop_receive": 1}}})], indirect=True)
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_dropped_connection_is_retryable_and_says_the_outcome_is_unknown(winrm_fleet, scheme):
    with connect(winrm_fleet, scheme=scheme) as t:
        with pytest.raises(HostUnreachable) as err:
            t.run("hostname")
        assert err.value.retryable and "outcome is unknown" in str(err.value)
        # a new connection (and, over http, a new NTLM context) serves the next command in the same shell
        assert t.run("hostname").stdout == "ZDB01\n" and t.shells_opened == 1


def _listening_socket():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def test_a_silent_host_times_out_retryably():
    silent = _listening_socket()  # accepts, never answers
    try:
        o = w.WinRMOptions(scheme="http", operation_timeout_s=1, read_timeout_s=2)
        with w.WinRMTransport("ZSILENT", "127.0.0.1", o, port=silent.getsockname()[1],
                              credential=w.Credential("deploy", "pw-silent-xyz")) as t:
            with pytest.raises(HostUnreachable) as err:
                t.run("hostname")
        assert err.value.retryable and "no reply within 2 s" in str(err.value)
    finally:
        silent.close()


@pytest.mark.parametrize("winrm_fleet", [fake(spec={"hosts": {"ZDB01": {"auth_reject": True}}})], indirect=True)
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_rejected_credential_is_not_offered_to_any_other_host(winrm_fleet, monkeypatch, capsys, scheme):
    seen = []
    real_post = endpoint._Handler.do_POST

    def recording(handler):
        seen.append(handler.winrm.hostname)
        return real_post(handler)

    monkeypatch.setattr(endpoint._Handler, "do_POST", recording)
    credential = w.Credential(winrm_fleet.username, winrm_fleet.password)
    messages = []
    with connect(winrm_fleet, "ZDB01", scheme=scheme, credential=credential) as t:
        with pytest.raises(AuthenticationRejected) as err:
            t.run("hostname")
        messages.append(str(err.value))
        assert err.value.retryable is False
        assert winrm_fleet.username in str(err.value) and "ntlm" in str(err.value)
        # not even this host again
        count = len(seen)
        with pytest.raises(AuthenticationRejected):
            t.run("hostname")
        assert len(seen) == count
    seen.clear()
    with connect(winrm_fleet, "ZAPP01", scheme=scheme, credential=credential) as other:
        with pytest.raises(AuthenticationRejected) as err:
            other.run("hostname")
        messages.append(str(err.value))
    assert seen == []  # ZAPP01 (healthy) never saw a request with that credential
    assert "host ZDB01 rejected that credential" in str(err.value)
    out = capsys.readouterr()
    for text in messages + [out.out, out.err]:
        assert winrm_fleet.password not in text
    # a different credential is still allowed
    other_credential = w.Credential(winrm_fleet.username + "x", "another-secret-9")
    with connect(winrm_fleet, "ZAPP01", scheme=scheme, credential=other_credential) as t2:
        with pytest.raises(AuthenticationRejected) as err:
            t2.run("hostname")  # wrong user: rejected by the host itself
    assert "not trying" not in str(err.value)


@WINDOWS
def test_https_with_the_wrong_ca_is_refused(winrm_fleet, tmp_path):
    other = make_ca(tmp_path / "other-ca")
    with connect(winrm_fleet, ca_path=str(other.cert)) as t:
        with pytest.raises(CertificateRejected) as err:
            t.run("hostname")
    assert err.value.retryable is False and str(other.cert) in str(err.value)
    assert winrm_fleet.host("ZDB01").shells == {}  # refused before any WS-Man request


@WINDOWS
def test_https_with_the_system_store_refuses_the_fleets_private_ca(winrm_fleet):
    with connect(winrm_fleet, ca_path="") as t:
        assert t.options.ca_name == "the system's CA store"
        with pytest.raises(CertificateRejected):
            t.run("hostname")


@WINDOWS
def test_ignoring_certificates_works_and_warns_on_every_run(winrm_fleet):
    warnings = []
    o = options(winrm_fleet, cert_validation="ignore", ca_path="")
    for _ in range(2):
        with w.WinRMPool(o, credential=w.Credential(winrm_fleet.username, winrm_fleet.password),
                         warn=warnings.append) as pool:
            host = winrm_fleet.host("ZDB01")
            assert pool.get("ZDB01", host.address, host.https_port).run("hostname").ok
    assert len(warnings) == 2 and "winrm_cert_validation = ignore" in warnings[0]


@pytest.mark.parametrize("winrm_fleet", [fake(allow_unencrypted=True, spec={"defaults": {"basic": True}})], indirect=True)
def test_basic_over_http_is_refused_unless_explicitly_allowed(winrm_fleet, monkeypatch):
    credential = w.Credential(winrm_fleet.username, winrm_fleet.password)
    with pytest.raises(ConfigError) as err:
        w.WinRMPool(options(winrm_fleet, scheme="http", transport="basic"), credential=credential)
    assert "winrm_allow_unencrypted" in str(err.value) and winrm_fleet.password not in str(err.value)
    warnings = []
    o = options(winrm_fleet, scheme="http", transport="basic", allow_unencrypted=True)
    with w.WinRMPool(o, credential=credential, warn=warnings.append) as pool:
        host = winrm_fleet.host("ZDB01")
        assert pool.get("ZDB01", host.address, host.http_port).run("hostname").stdout == "ZDB01\n"
    assert len(warnings) == 1 and "clear text" in warnings[0]
    # from settings too: the same refusal, and the key is not a workbook key (the workbook is untrusted)
    from deploy_tasks.settings import BY_NAME

    assert BY_NAME["winrm_allow_unencrypted"].workbook is False
    with pytest.raises(ConfigError):
        w.pool_from_settings(resolve({"winrm_scheme": "http", "winrm_transport": "basic"}))


@pytest.mark.parametrize("transport,extra", [("kerberos", "pywinrm[kerberos]"), ("credssp", "pywinrm[credssp]")])
def test_missing_extras_are_named(monkeypatch, transport, extra):
    import winrm.transport as wt

    monkeypatch.setattr(wt, "HAVE_KERBEROS", False)
    monkeypatch.setattr(wt, "HAVE_CREDSSP", False)
    with pytest.raises(ConfigError) as err:
        w.WinRMOptions(transport=transport).check()
    assert extra in str(err.value)


def test_impossible_or_incomplete_settings_are_refused(tmp_path):
    cases = [
        (dict(transport="certificate", scheme="http", cert_pem="x", cert_key_pem="y"), "needs winrm_scheme https"),
        (dict(transport="certificate"), "needs winrm_cert_pem"),
        (dict(transport="certificate", cert_pem=str(tmp_path / "no.pem"), cert_key_pem=str(tmp_path / "no.key")),
         "does not exist"),
        (dict(ca_path=str(tmp_path / "missing-ca.pem")), "winrm_ca_path"),
        (dict(transport="telnet"), "winrm_transport"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(ConfigError) as err:
            w.WinRMOptions(**kwargs).check()
        assert expected in str(err.value), kwargs


# -- the error mapping, table-driven (pywinrm's errors do not share a base) -----------------------


def _fault(code, subcode, message):
    response = (f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault><s:Detail>'
                f'<f:WSManFault xmlns:f="{w._FAULT_NS}" Code="{code}"><f:Message>{message}</f:Message>'
                f"</f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>")
    return WSManFaultError(500, "Bad HTTP response", response, "reason", "s:Sender", subcode, code)


@pytest.mark.parametrize("exc,kind,retryable,text", [
    (_fault(2150859173, "w:QuotaLimit", "The WS-Management service cannot process the request. This user is allowed "
            "a maximum number of 30 concurrent shells, which has been exceeded."), QuotaExceeded, True, "30 concurrent"),
    (_fault(2150858843, "w:InvalidSelectors", "the shell was not found"), WSManFault, True, "no longer has the shell"),
    (_fault(2150858778, "w:AccessDenied", "Access is denied."), WSManFault, False, "WS-Man fault 2150858778"),
    (InvalidCredentialsError("the specified credentials were rejected by the server"), AuthenticationRejected, False,
     "rejected user EXAMPLE\\deployer (ntlm authentication)"),
    (WinRMOperationTimeoutError(), HostUnreachable, True, "OperationTimeout"),
    (WinRMTransportError("http", 503, ""), HostUnreachable, True, "HTTP 503"),
    (WinRMTransportError("http", 404, ""), TransportError, False, "check the WinRM Port"),
    (requests.exceptions.ConnectTimeout("timed out"), HostUnreachable, True, "no answer within"),
    (requests.exceptions.ReadTimeout("read timed out"), HostUnreachable, True, "no reply within"),
    (requests.exceptions.ConnectionError("Connection refused"), HostUnreachable, True, "connection refused"),
    (requests.exceptions.ChunkedEncodingError("broken"), HostUnreachable, True, "ChunkedEncodingError"),
    (requests.exceptions.SSLError("certificate verify failed"), CertificateRejected, False, "did not validate"),
    (WinRMError("something odd"), TransportError, False, "something odd"),
    (ValueError("spnego said no"), TransportError, False, "ValueError"),
])
def test_every_pywinrm_error_maps_to_a_project_error(exc, kind, retryable, text):
    redact.add_secret("pw-in-the-table-1")
    error = w.map_error(exc, host="ZDB01", where="127.0.0.11:5986 (https)", doing="opening a shell",
                        options=w.WinRMOptions(), user="EXAMPLE\\deployer")
    assert type(error) is kind and error.host == "ZDB01"
    assert getattr(error, "retryable", None) is retryable
    assert text in str(error) and "pw-in-the-table-1" not in str(error)


@pytest.mark.parametrize("winrm_fleet", [fake()], indirect=True)
def test_the_31st_shell_is_a_quota_fault_when_the_fleet_enforces_it(winrm_fleet):
    transports = [connect(winrm_fleet) for _ in range(31)]
    try:
        for t in transports[:30]:
            assert t.run("hostname").ok
        try:
            transports[30].run("hostname")
        except QuotaExceeded as err:
            assert err.retryable and err.code == 2150859173
        else:
            pytest.fail("the fleet granted a 31st shell to one user")
        transports[0].close()  # a shell closes: the quota has room again
        assert transports[30].run("hostname").ok
    finally:
        for t in transports:
            t.close()
    assert winrm_fleet.host("ZDB01").shells == {}


# -- credentials ---------------------------------------------------------------------------------


def test_credentials_from_the_environment_are_redacted():
    c = w.credential_from_env({"DEPLOY_WINRM_USER": "EXAMPLE\\deployer", "DEPLOY_WINRM_PASSWORD": "s3cret-env-77"})
    assert (c.user, c.password) == ("EXAMPLE\\deployer", "s3cret-env-77")
    assert "s3cret-env-77" not in repr(c)
    assert redact.redact("pw=s3cret-env-77") == "pw=********"


def test_credentials_missing_without_a_terminal_is_one_clear_error():
    with pytest.raises(ConfigError) as err:
        w.credential_from_env({}, interactive=False)
    assert "DEPLOY_WINRM_USER and DEPLOY_WINRM_PASSWORD not set" in str(err.value)
    with pytest.raises(ConfigError) as err:
        w.credential_from_env({"DEPLOY_WINRM_USER": "deployer"}, interactive=False)
    assert "DEPLOY_WINRM_PASSWORD not set" in str(err.value) and "USER" not in str(err.value).split("not set")[0]


def test_credentials_are_asked_for_in_a_terminal():
    asked = []
    c = w.credential_from_env({"DEPLOY_WINRM_USER": "deployer"}, interactive=True,
                              ask=lambda prompt: asked.append(prompt) or "typed-pw-555")
    assert c.password == "typed-pw-555" and asked == ["WinRM password for deployer: "]
    assert "typed-pw-555" not in redact.redact("typed-pw-555")


def test_a_pool_asks_for_the_credential_once(monkeypatch):
    calls = []

    def source():
        calls.append(1)
        time.sleep(0.05)
        return w.Credential("deployer", "pw-once-only")

    pool = w.WinRMPool(w.WinRMOptions(), credential=source)
    threads = [threading.Thread(target=pool.credential) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1]


# -- threads -----------------------------------------------------------------------------------


@WINDOWS
def test_one_transport_per_host_per_thread_and_all_closed(winrm_fleet):
    credential = w.Credential(winrm_fleet.username, winrm_fleet.password)
    pool = w.WinRMPool(options(winrm_fleet, scheme="http"), credential=credential)
    errors, got = [], []

    def worker(i):
        try:
            for hostname, address in HOSTS:
                t = pool.get(hostname, address, winrm_fleet.host(hostname).http_port)
                for j in range(4):
                    r = t.run(f"echo w{i}-{j}")
                    got.append(r.stdout == f"w{i}-{j}\n")
                assert pool.get(hostname, address, winrm_fleet.host(hostname).http_port) is t
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(got) == 32 and all(got)
    assert pool.shells_opened == 8  # 4 threads x 2 hosts, not one per command
    assert sum(len(winrm_fleet.host(h).shells) for h, _ in HOSTS) == 8
    pool.close()
    pool.close()
    assert all(winrm_fleet.host(h).shells == {} for h, _ in HOSTS)


@WINDOWS
def test_a_transport_used_from_a_second_thread_is_refused(winrm_fleet):
    with connect(winrm_fleet) as t:
        assert t.run("hostname").ok
        caught = []
        thread = threading.Thread(target=lambda: caught.append(_raises(lambda: t.run("hostname"))))
        thread.start()
        thread.join()
        assert isinstance(caught[0], RuntimeError) and "another worker thread" in str(caught[0])


def _raises(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


# -- commands, dry run, files -----------------------------------------------------------------------


@FAKE
def test_run_argv_quotes_by_windows_rules_and_skips_cmd(winrm_fleet, monkeypatch):
    bodies = spy_requests(monkeypatch, winrm_fleet.host("ZDB01"))
    with connect(winrm_fleet) as t:
        r = t.run_argv(["echo", "two words", 'say "hi"', ""])
    assert winrm_fleet.host("ZDB01").persona.started[-1] == 'echo "two words" "say \\"hi\\"" ""'
    assert r.ok
    command = next(b for b in bodies if b"/windows/shell/Command<" in b)
    assert re.search(rb'Name="WINRS_SKIP_CMD_SHELL"[^>]*>TRUE<', command)
    with pytest.raises(ValueError):
        w.argv_to_command_line(["echo", "line\nbreak"])


@FAKE
def test_dry_run_prints_changes_and_still_reads(winrm_fleet):
    printed = []
    persona = winrm_fleet.host("ZDB01").persona
    with connect(winrm_fleet, dry_run=True, echo=printed.append) as t:
        assert t.change("msiexec /i x.msi").exited == 0
        assert t.change_argv(["msiexec", "/i", "C:\\a b\\x.msi"]).ok
        t.put_bytes(b"abc", "C:\\ProgramData\\x.txt")
        assert t.run("hostname").stdout == "ZDB01\n"  # reads run
    assert persona.started == ["hostname"]
    assert printed == ["  [ZDB01] would run: msiexec /i x.msi", '  [ZDB01] would run: msiexec /i "C:\\a b\\x.msi"',
                       "  [ZDB01] would upload 3 bytes to C:\\ProgramData\\x.txt"]


@WINDOWS
@pytest.mark.parametrize("size", [0, 1, 5000, 20000])
def test_put_bytes_writes_small_files_exactly(winrm_fleet, size):
    data = bytes((i * 7 + 3) % 256 for i in range(size))
    sandbox = winrm_fleet.host("ZDB01").persona.sandbox
    (sandbox / "ProgramData").mkdir(exist_ok=True)
    with connect(winrm_fleet) as t:
        t.put_bytes(data, "C:\\ProgramData\\payload.bin")
        assert t.shells_opened == 1
    assert (sandbox / "ProgramData" / "payload.bin").read_bytes() == data
    assert not (sandbox / "ProgramData" / "payload.bin.b64").exists()


@FAKE
def test_put_bytes_refuses_large_files_and_unsafe_paths(winrm_fleet):
    with connect(winrm_fleet, put_max_bytes=1000) as t:
        with pytest.raises(TransportError) as err:
            t.put_bytes(b"x" * 1001, "C:\\big.bin")
        assert "winrm_put_max_bytes = 1000" in str(err.value) and "package server" in str(err.value)
        for bad in ["relative\\x", 'C:\\a"b', "C:\\%TEMP%\\x", "C:\\dir\\", "C:\\x.", "C:\\a\nb"]:
            with pytest.raises(TransportError):
                t.put_bytes(b"x", bad)
    assert winrm_fleet.host("ZDB01").persona.started == []


def test_put_commands_stay_under_the_command_line_limit():
    data = bytes(range(256)) * 100
    lines = w.put_commands(data, "C:\\ProgramData\\" + "d" * 200 + "\\f.bin")
    assert lines[0].startswith('>"C:\\') and all(l.startswith('>>"') for l in lines[1:])
    assert all(len(l) <= 8191 for l in lines)
    joined = "".join(l.split(" echo ", 1)[1] for l in lines)
    assert base64.b64decode(joined) == data
    assert w.put_commands(b"", "C:\\e.txt") == ['type nul> "C:\\e.txt"']


@pytest.mark.parametrize("winrm_fleet", [fake(spec={"hosts": {"ZDB01": {"http_500": 1, "drop_receive": 1},
                                                               "ZAPP01": {"down": True}}})], indirect=True)
def test_the_password_appears_in_no_message(winrm_fleet, monkeypatch, capsys, tmp_path):
    # the credential comes the production way: environment -> pool -> transports
    monkeypatch.setenv("DEPLOY_WINRM_USER", winrm_fleet.username)
    monkeypatch.setenv("DEPLOY_WINRM_PASSWORD", winrm_fleet.password)
    printed = []
    db, app = winrm_fleet.host("ZDB01"), winrm_fleet.host("ZAPP01")
    messages = []

    def failure(fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            messages.append(str(exc))
            return exc
        raise AssertionError("expected a failure")

    with w.WinRMPool(options(winrm_fleet, operation_timeout_s=1, read_timeout_s=3), dry_run=True,
                     echo=printed.append) as pool:
        t = pool.get("ZDB01", db.address, db.https_port)
        assert isinstance(failure(lambda: t.run("hostname")), WSManFault)
        assert isinstance(failure(lambda: t.run("hostname")), HostUnreachable)
        assert isinstance(failure(lambda: t.run("sleep 30", timeout=1)), CommandTimedOut)
        assert isinstance(failure(lambda: t.run("cmd /c exit 5")), RemoteCommandError)
        t.change(f"net user deploy {winrm_fleet.password}")  # a command carrying it: printed redacted
        assert isinstance(failure(lambda: pool.get("ZAPP01", app.address, app.https_port).run("hostname")),
                          HostUnreachable)
    other = make_ca(tmp_path / "other-ca")
    messages.append(str(failure(lambda: connect(winrm_fleet, ca_path=str(other.cert)).run("hostname"))))
    wrong = w.Credential(winrm_fleet.username, winrm_fleet.password + "-old")
    messages.append(str(failure(lambda: connect(winrm_fleet, credential=wrong).run("hostname"))))
    out = capsys.readouterr()
    assert printed == ["  [ZDB01] would run: net user deploy ********"]
    for text in messages + printed + [out.out, out.err]:
        assert winrm_fleet.password not in text
    assert redact.redact(winrm_fleet.password) == "********"


@pytest.mark.parametrize("winrm_fleet", [fake(spec={"defaults": {"max_concurrent_operations_per_user": 4}})],
                         indirect=True)
def test_a_shell_that_used_up_its_operations_quota_is_replaced(winrm_fleet):
    # WinRM counts a user's shells and every command run in them (MaxConcurrentOperationsPerUser): a
    # reused shell eventually gets fault 2150859174; the transport deletes it and opens a fresh one
    with connect(winrm_fleet) as t:
        outputs = [t.run("hostname").stdout for _ in range(10)]
        assert outputs == ["ZDB01\n"] * 10
        assert t.shells_opened >= 2


@FAKE
def test_borrowed_transport_is_one_per_host_and_follows_the_worker_that_runs_the_host(winrm_fleet):
    # the runner runs one unit per host at a time, on whichever worker thread is free: borrow() hands the
    # host's one transport (one shell) to that thread; two threads at once on one transport stays refused
    import threading

    from deploy_tasks.inventory.model import Server

    host = winrm_fleet.host("ZDB01")
    server = Server("ZDB01", host.address, "windows", ("db",), winrm_port=host.https_port)
    seen = []
    with w.WinRMPool(options(winrm_fleet), credential=w.Credential(winrm_fleet.username, winrm_fleet.password)) as pool:
        for _ in range(3):
            worker = threading.Thread(target=lambda: seen.append(pool.borrow(server).run("hostname").stdout))
            worker.start()
            worker.join()
        assert seen == ["ZDB01\n"] * 3
        assert pool.shells_opened == 1
        transport = pool.borrow(server)
        errors = []
        other = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, transport.run, "hostname")))
        other.start()
        other.join()
        assert errors and "another worker thread" in str(errors[0].value)


@FAKE
def test_parallel_hosts_never_touch_the_process_environment(winrm_fleet, monkeypatch):
    # requests' proxy lookup sets and deletes os.environ['no_proxy'] around every message unless the session
    # ignores the environment: with threads that raced into KeyError: 'no_proxy' (6 commands here: 20+ changes)
    import os

    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    touched = []
    real_setitem = type(os.environ).__setitem__

    def watching(self, key, value):
        if self is os.environ and key.lower() == "no_proxy":
            touched.append(value)
        return real_setitem(self, key, value)

    monkeypatch.setattr(type(os.environ), "__setitem__", watching)
    errors = []

    def host(name):
        try:
            with connect(winrm_fleet, name) as t:
                for _ in range(3):
                    assert t.run("echo hi").stdout.strip() == "hi"
                assert t._protocol.transport.build_session().trust_env is False
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=host, args=(h,)) for h, _ in HOSTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # only while pywinrm builds a host's session (once per connection, serialised), never per message
    assert not errors and len(touched) <= len(HOSTS)
