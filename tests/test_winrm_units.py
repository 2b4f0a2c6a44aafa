"""The WinRM transport's pure parts, exactly: options from settings, every error's full message, file staging.

tests/test_winrm_transport.py drives the real pywinrm client against the
emulated fleet; these pin the words and numbers a user reads (which rule, which
setting, what to do next) that the end-to-end tests only check in part.
"""

from __future__ import annotations

import types

import pytest
import requests
from winrm.exceptions import (BasicAuthDisabledError, InvalidCredentialsError, WinRMError, WinRMOperationTimeoutError,
                              WinRMTransportError, WSManFaultError)

from deploy_tasks.errors import (AuthenticationRejected, CertificateRejected, HostUnreachable, QuotaExceeded,
                                 RemoteCommandError, TransportError, WSManFault)
from deploy_tasks.transports import winrm as w
from deploy_tasks.transports.base import Result

WHERE = "10.0.0.5:5986 (https)"


def test_options_from_settings_without_any_setting_are_the_safe_defaults():
    assert w.options_from_settings(object()) == w.WinRMOptions(
        transport="ntlm", scheme="https", port=0, cert_validation="validate", ca_path="", operation_timeout_s=20,
        read_timeout_s=30, allow_unencrypted=False, cert_pem="", cert_key_pem="", command_timeout_s=1800,
        put_max_bytes=65536)


def test_options_from_settings_take_every_setting():
    settings = types.SimpleNamespace(
        winrm_transport="basic", winrm_scheme="http", winrm_port="5999", winrm_cert_validation="ignore",
        winrm_ca_path="/ca.pem", winrm_operation_timeout_s="7", winrm_read_timeout_s="9",
        winrm_allow_unencrypted=1, winrm_cert_pem="/c.pem", winrm_cert_key_pem="/k.pem", command_timeout_s=60,
        winrm_put_max_bytes="1000")
    assert w.options_from_settings(settings) == w.WinRMOptions(
        transport="basic", scheme="http", port=5999, cert_validation="ignore", ca_path="/ca.pem",
        operation_timeout_s=7, read_timeout_s=9, allow_unencrypted=True, cert_pem="/c.pem", cert_key_pem="/k.pem",
        command_timeout_s=60, put_max_bytes=1000)
    empty = types.SimpleNamespace(winrm_port=None, winrm_ca_path=None, winrm_cert_pem=None, winrm_cert_key_pem=None)
    o = w.options_from_settings(empty)
    assert (o.port, o.ca_path, o.cert_pem, o.cert_key_pem) == (0, "", "", "")


def _fault(code, subcode, message, reason="reason text"):
    response = (f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault><s:Detail>'
                f'<f:WSManFault xmlns:f="{w._FAULT_NS}" Code="{code}"><f:Message>{message}</f:Message>'
                f"</f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>")
    return WSManFaultError(500, "Bad HTTP response", response, reason, "s:Sender", subcode, code)


HOW = ("check DEPLOY_WINRM_USER/DEPLOY_WINRM_PASSWORD, that the account is not locked and is an administrator "
       "there, and that WinRM allows")


@pytest.mark.parametrize("exc,options,started,kind,text", [
    (InvalidCredentialsError("rejected"), {}, False, AuthenticationRejected,
     f"{WHERE} rejected user EXAMPLE\\deployer (ntlm authentication) while opening a shell: {HOW} ntlm. "
     "The credential is not used again in this run"),
    (BasicAuthDisabledError("no basic"), {"scheme": "http", "transport": "basic"}, False, AuthenticationRejected,
     f"{WHERE} rejected user EXAMPLE\\deployer (basic authentication) while opening a shell: {HOW} basic; Windows "
     "refuses basic over http unless AllowUnencrypted and Basic are enabled. The credential is not used again in "
     "this run"),
    (InvalidCredentialsError("rejected"), {"scheme": "https", "transport": "basic"}, False, AuthenticationRejected,
     f"{WHERE} rejected user EXAMPLE\\deployer (basic authentication) while opening a shell: {HOW} basic. "
     "The credential is not used again in this run"),
    (InvalidCredentialsError("rejected"), {"scheme": "http", "transport": "ntlm"}, False, AuthenticationRejected,
     f"{WHERE} rejected user EXAMPLE\\deployer (ntlm authentication) while opening a shell: {HOW} ntlm. "
     "The credential is not used again in this run"),
    (InvalidCredentialsError("rejected"), {"transport": "certificate", "cert_pem": "/c.pem"}, False,
     AuthenticationRejected,
     f"{WHERE} rejected the client certificate /c.pem while opening a shell: map it to an account on the host "
     "(winrm create winrm/config/service/certmapping)"),
    (_fault(2150859173, "w:QuotaLimit", "a maximum  of\n30 shells"), {}, False, QuotaExceeded,
     f"{WHERE} refused opening a shell: WS-Man fault 2150859173 (w:QuotaLimit): a maximum of 30 shells (a WinRM "
     "quota: too many shells or commands for this user; retried once other shells close; lower max_parallel or "
     "raise MaxShellsPerUser)"),
    (_fault(5, "w:QuotaLimit", "over"), {}, False, QuotaExceeded,
     f"{WHERE} refused opening a shell: WS-Man fault 5 (w:QuotaLimit): over (a WinRM quota: too many shells or "
     "commands for this user; retried once other shells close; lower max_parallel or raise MaxShellsPerUser)"),
    (_fault(2150858843, None, "gone"), {}, True, WSManFault,
     f"{WHERE} no longer has the shell while opening a shell: WS-Man fault 2150858843: gone (the host rebooted or "
     "the shell expired) (the command had started: its outcome is unknown, check the host before repeating it)"),
    (_fault(1726, "w:InternalError", "RPC failed"), {}, False, WSManFault,
     f"{WHERE} answered opening a shell with WS-Man fault 1726 (w:InternalError): RPC failed"),
    (WinRMOperationTimeoutError(), {"operation_timeout_s": 7, "read_timeout_s": 9}, True, HostUnreachable,
     f"{WHERE} timed out (WS-Man OperationTimeout 7 s) while opening a shell (the command had started: its outcome "
     "is unknown, check the host before repeating it)"),
    (WinRMTransportError("http", 500, ""), {}, False, HostUnreachable, f"{WHERE} answered HTTP 500 while opening a shell"),
    (WinRMTransportError("http", 499, ""), {}, False, TransportError,
     f"{WHERE} answered HTTP 499 while opening a shell: unexpected reply"),
    (WinRMTransportError("http", 400, ""), {}, False, TransportError,
     f"{WHERE} answered HTTP 400 while opening a shell: the host could not read the request (encryption or "
     "envelope mismatch)"),
    (WinRMTransportError("http", 413, ""), {}, False, TransportError,
     f"{WHERE} answered HTTP 413 while opening a shell: the request exceeded the host's MaxEnvelopeSizekb"),
    (WinRMTransportError("http", 404, ""), {}, False, TransportError,
     f"{WHERE} answered HTTP 404 while opening a shell: nothing serves /wsman there: check the WinRM Port and "
     "winrm_scheme"),
    (requests.exceptions.SSLError("hostname mismatch"), {"ca_path": "/ca.pem"}, False, CertificateRejected,
     f"the TLS certificate of {WHERE} did not validate against /ca.pem while opening a shell: hostname mismatch "
     "(set winrm_ca_path to the CA that signs the hosts' WinRM certificates, and reach the host by a name or "
     "address its certificate lists)"),
    (requests.exceptions.SSLError("Certificate verify failed"), {}, False, CertificateRejected,
     f"the TLS certificate of {WHERE} did not validate against the system's CA store while opening a shell: "
     "Certificate verify failed (set winrm_ca_path to the CA that signs the hosts' WinRM certificates, and reach "
     "the host by a name or address its certificate lists)"),
    (requests.exceptions.SSLError("wrong version number"), {}, False, TransportError,
     f"TLS with {WHERE} failed while opening a shell: wrong version number"),
    (requests.exceptions.ConnectTimeout("slow"), {}, False, HostUnreachable,
     f"cannot reach {WHERE}: no answer within 30 s (winrm_read_timeout_s): check the Address, routing and firewalls"),
    (requests.exceptions.ReadTimeout("slow"), {}, True, HostUnreachable,
     f"{WHERE} sent no reply within 30 s (winrm_read_timeout_s) while opening a shell (the command had started: "
     "its outcome is unknown, check the host before repeating it)"),
    (requests.exceptions.ConnectionError("Connection REFUSED"), {}, False, HostUnreachable,
     f"cannot reach {WHERE}: connection refused (is the WinRM service running and listening there, and the WinRM "
     "Port / winrm_scheme right?)"),
    (requests.exceptions.ConnectionError("Name or service not known"), {}, False, HostUnreachable,
     f"cannot resolve {WHERE}: fix the Address in the Servers sheet or DNS"),
    (requests.exceptions.ConnectionError("nodename nor servname provided"), {}, False, HostUnreachable,
     f"cannot resolve {WHERE}: fix the Address in the Servers sheet or DNS"),
    (requests.exceptions.ConnectionError("Failed to resolve 'x'"), {}, False, HostUnreachable,
     f"cannot resolve {WHERE}: fix the Address in the Servers sheet or DNS"),
    (requests.exceptions.ConnectionError("[Errno -2] getaddrinfo failed"), {}, False, HostUnreachable,
     f"cannot resolve {WHERE}: fix the Address in the Servers sheet or DNS"),
    (requests.exceptions.ConnectionError("reset by peer"), {}, True, HostUnreachable,
     f"connection to {WHERE} broke while opening a shell: reset by peer (the command had started: its outcome is "
     "unknown, check the host before repeating it)"),
    (requests.exceptions.ChunkedEncodingError("broken"), {}, False, HostUnreachable,
     f"HTTP to {WHERE} failed while opening a shell: ChunkedEncodingError: broken"),
    (WinRMError("odd"), {}, False, TransportError, f"WinRM with {WHERE} failed while opening a shell: odd"),
    (ConnectionResetError("reset"), {}, True, HostUnreachable,
     f"connection to {WHERE} failed while opening a shell: ConnectionResetError: reset (the command had started: "
     "its outcome is unknown, check the host before repeating it)"),
    (ValueError("spnego"), {}, False, TransportError,
     f"WinRM with {WHERE} failed while opening a shell: ValueError: spnego"),
])
def test_every_error_message_in_full(exc, options, started, kind, text):
    error = w.map_error(exc, host="ZDB01", where=WHERE, doing="opening a shell", options=w.WinRMOptions(**options),
                        user="EXAMPLE\\deployer", command_started=started)
    assert type(error) is kind
    assert str(error) == f"ZDB01: {text}"


def test_error_details_are_kept_for_reports_and_retries():
    quota = w.map_error(_fault(2150859173, "w:QuotaLimit", "too many"), host="h", where=WHERE, doing="x",
                        options=w.WinRMOptions())
    assert (quota.code, quota.subcode, quota.windows_message, quota.retryable) == (
        2150859173, "w:QuotaLimit", "too many", True)
    gone = w.map_error(_fault(2150858843, "w:InvalidSelectors", "gone"), host="h", where=WHERE, doing="x",
                       options=w.WinRMOptions())
    assert (gone.code, gone.subcode, gone.windows_message, gone.retryable) == (
        2150858843, "w:InvalidSelectors", "gone", True)
    started = w.map_error(_fault(2150858843, None, "gone"), host="h", where=WHERE, doing="x",
                          options=w.WinRMOptions(), command_started=True)
    assert (started.subcode, started.retryable) == ("", False)  # a command that started is not repeated blindly
    rpc = w.map_error(_fault(1726, None, "rpc"), host="h", where=WHERE, doing="x", options=w.WinRMOptions())
    other = w.map_error(_fault(5, None, "denied"), host="h", where=WHERE, doing="x", options=w.WinRMOptions())
    assert (rpc.retryable, other.retryable, other.code, other.windows_message) == (True, False, 5, "denied")
    auth = w.map_error(InvalidCredentialsError("no"), host="h", where=WHERE, doing="x",
                       options=w.WinRMOptions(transport="basic"), user="u1")
    assert (auth.user, auth.transport) == ("u1", "basic")
    cert = w.map_error(InvalidCredentialsError("no"), host="h", where=WHERE, doing="x",
                       options=w.WinRMOptions(transport="certificate", cert_pem="/c.pem"), user="u1")
    assert (cert.user, cert.transport) == ("", "certificate")


def test_a_fault_without_a_windows_message_falls_back_to_its_reason():
    exc = WSManFaultError(500, "Bad HTTP response", "not xml", "the reason", "s:Sender", None, 5)
    error = w.map_error(exc, host="h", where=WHERE, doing="x", options=w.WinRMOptions())
    assert str(error) == f"h: {WHERE} answered x with WS-Man fault 5: the reason"
    bare = WSManFaultError(500, "Bad HTTP response", None, None, "s:Sender", None, 5)
    assert str(w.map_error(bare, host="h", where=WHERE, doing="x", options=w.WinRMOptions())) == (
        f"h: {WHERE} answered x with WS-Man fault 5: ")


def test_fault_codes_and_windows_messages_are_read_from_either_envelope():
    # 2012 R2 answers quota faults with an MSFT_WmiError detail instead of an f:WSManFault
    wmi = ('<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault><s:Detail>'
           '<p:MSFT_WmiError xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wmi/root/cimv2/MSFT_WmiError">'
           '<p:Message>The  WS-Management service\ncannot process</p:Message><p:error_Code> 2150859174 </p:error_Code>'
           "</p:MSFT_WmiError></s:Detail></s:Fault></s:Body></s:Envelope>")
    exc = WSManFaultError(500, "Bad HTTP response", wmi, "reason", "s:Sender", "w:QuotaLimit", None)
    assert w.fault_code(exc) == 2150859174
    assert w._windows_message(wmi) == "The WS-Management service cannot process"
    plain = '<Envelope><Body><Message>plain words</Message></Body></Envelope>'
    assert w._windows_message(plain) == "plain words"
    assert w._windows_message("<Envelope/>") == "" and w._windows_message("<<not xml") == ""
    assert w.fault_code(WSManFaultError(500, "m", None, "r", None, None, None)) is None
    assert w.fault_code(_fault(7, None, "x")) == 7
    # the f:WSManFault message wins over any other Message element
    both = (f'<E><Message>other</Message><f:WSManFault xmlns:f="{w._FAULT_NS}"><f:Message>the fault</f:Message>'
            "</f:WSManFault></E>")
    assert w._windows_message(both) == "the fault"


def test_long_error_text_is_shortened_on_one_line():
    assert w._short("a\n  b\tc") == "a b c"
    assert w._short("x" * 300) == "x" * 300
    assert w._short("x" * 301) == "x" * 297 + "..."
    assert w._short("abcdef", limit=5) == "ab..."


def test_shell_output_is_decoded_as_utf8_with_unix_line_ends():
    assert w._decode("é\r\nb\r\n".encode()) == "é\nb\n"
    assert w._decode(b"\xff ok") == "\ufffd ok"
    assert w._decode(b"a\rb") == "a\rb"


class Recorder(w.WinRMTransport):
    """The real transport with its command execution replaced by a script of results (the bytes handling and
    the checks around certutil are what is under test; tests/test_winrm_transport.py runs them for real)."""

    def __init__(self, answers=None, **kwargs):
        super().__init__("WIN1", "10.0.0.5", w.WinRMOptions(put_max_bytes=100), credential=w.Credential("u", "p"),
                         **kwargs)
        self.commands = []
        self.answers = answers or {}

    def _execute(self, command, timeout, skip_cmd_shell):
        self.commands.append(command)
        for prefix, result in self.answers.items():
            if command.startswith(prefix):
                return Result(command, *result)
        return Result(command, 0, "", "")


def test_put_bytes_stages_base64_decodes_with_certutil_and_removes_the_staging_file():
    t = Recorder({"certutil": (0, "Output Length = 5\nCertUtil: -decode command completed successfully.", "")})
    t.put_bytes(b"hello", "C:\\ProgramData\\a.txt")
    assert t.commands == ['>"C:\\ProgramData\\a.txt.b64" echo aGVsbG8=',
                          'certutil -f -decode "C:\\ProgramData\\a.txt.b64" "C:\\ProgramData\\a.txt"',
                          'del /f /q "C:\\ProgramData\\a.txt.b64"']


def test_put_bytes_of_nothing_creates_an_empty_file():
    t = Recorder()
    t.put_bytes(b"", "C:\\ProgramData\\empty.txt")
    assert t.commands == ['type nul> "C:\\ProgramData\\empty.txt"']


def test_put_bytes_reports_a_failed_decode_and_still_removes_the_staging_file():
    t = Recorder({"certutil": (5, "CertUtil: -decode command FAILED", "")})
    with pytest.raises(RemoteCommandError) as err:
        t.put_bytes(b"hello", "C:\\ProgramData\\a.txt")
    assert t.commands[-1] == 'del /f /q "C:\\ProgramData\\a.txt.b64"'
    assert err.value.exit_code_remote == 5 and err.value.output == "CertUtil: -decode command FAILED"
    assert str(err.value).startswith('WIN1: command failed with exit code 5: certutil -f -decode "C:\\ProgramData\\'
                                     'a.txt.b64" "C:\\ProgramData\\a.txt"')
    assert str(err.value).endswith("hint: decoding C:\\ProgramData\\a.txt failed")


def test_put_bytes_checks_the_length_certutil_wrote():
    t = Recorder({"certutil": (0, "Output Length = 4", "")})
    with pytest.raises(RemoteCommandError) as err:
        t.put_bytes(b"hello", "C:\\ProgramData\\a.txt")
    assert str(err.value).endswith("hint: C:\\ProgramData\\a.txt: certutil wrote 4 bytes, expected 5")
    assert err.value.exit_code_remote == 0 and err.value.output == "Output Length = 4"
    Recorder({"certutil": (0, "no length line", "")}).put_bytes(b"hello", "C:\\ProgramData\\a.txt")


def test_put_bytes_names_the_file_when_a_staging_command_fails():
    t = Recorder({">": (1, "", "Access is denied.")})
    with pytest.raises(RemoteCommandError) as err:
        t.put_bytes(b"hello", "C:\\ProgramData\\a.txt")
    assert str(err.value).endswith("hint: writing C:\\ProgramData\\a.txt (5 bytes)")


def test_put_bytes_refusals_say_what_and_where():
    t = Recorder()
    with pytest.raises(TransportError) as err:
        t.put_bytes(b"x" * 101, "C:\\big.bin")
    assert str(err.value) == ("WIN1: refusing to push 101 bytes to C:\\big.bin over WinRM (limit winrm_put_max_bytes "
                              "= 100): serve the file from the package server and download it on the host")
    t.put_bytes(b"x" * 100, "C:\\ok.bin")  # at the limit: allowed
    with pytest.raises(TransportError) as err:
        t.put_bytes(b"x", "relative\\x.txt")
    assert str(err.value) == ("WIN1: cannot write 'relative\\\\x.txt': put_bytes takes an absolute Windows path "
                              "(C:\\dir\\file) without quotes, %, wildcards or a trailing dot/space")
    with pytest.raises(TransportError):
        t.put_bytes(b"x", None)


def test_put_bytes_in_a_dry_run_only_says_what_it_would_write():
    lines = []
    t = Recorder(dry_run=True, echo=lines.append)
    t.put_bytes(b"abc", "C:\\ProgramData\\x.txt")
    assert t.commands == [] and lines == ["  [WIN1] would upload 3 bytes to C:\\ProgramData\\x.txt"]


def test_put_file_reads_the_local_file_and_refuses_a_large_one(tmp_path):
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello")
    t = Recorder({"certutil": (0, "Output Length = 5", "")})
    t.put_file(str(small), "C:\\ProgramData\\small.txt")
    assert t.commands[0] == '>"C:\\ProgramData\\small.txt.b64" echo aGVsbG8='
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 101)
    with pytest.raises(TransportError) as err:
        t.put_file(str(big), "C:\\big.bin")
    assert str(err.value) == (f"WIN1: refusing to push {big} (101 bytes) to C:\\big.bin over WinRM (limit "
                              "winrm_put_max_bytes = 100): serve the file from the package server and download it "
                              "on the host")
    at_limit = tmp_path / "limit.bin"
    at_limit.write_bytes(b"y" * 100)
    Recorder().put_file(str(at_limit), "C:\\limit.bin")


def test_a_check_is_yes_no_and_anything_else_is_an_error():
    t = Recorder({"yes": (0, "", ""), "no": (1, "", ""), "broken": (2, "out", "err")})
    assert t.test("yes") is True and t.test("no") is False
    with pytest.raises(RemoteCommandError) as err:
        t.test("broken")
    assert err.value.exit_code_remote == 2 and err.value.command == "broken"
    assert str(err.value).endswith("hint: a check could not run; it is not read as 'absent'")


def test_changes_in_a_dry_run_are_printed_not_run():
    lines = []
    t = Recorder(dry_run=True, echo=lines.append)
    assert t.change("sc stop x") == Result("sc stop x", 0, "", "")
    assert t.change_argv(["msiexec", "/i", "a b.msi"]) == Result('msiexec /i "a b.msi"', 0, "", "")
    assert lines == ["  [WIN1] would run: sc stop x", '  [WIN1] would run: msiexec /i "a b.msi"']
    assert t.commands == []


def test_changes_pass_check_hint_and_timeout_through():
    seen = []

    class Timed(Recorder):
        def _execute(self, command, timeout, skip_cmd_shell):
            seen.append((command, timeout, skip_cmd_shell))
            return Result(command, 3, "", "")

    t = Timed()
    assert t.change("x", check=False, timeout=5).exited == 3
    assert t.change_argv(["p", "a"], check=False, timeout=6).exited == 3
    assert t.run_argv(["p", "b"], check=False, timeout=7).exited == 3
    assert seen == [("x", 5, False), ("p a", 6, True), ("p b", 7, True)]
    for call in (lambda: t.change("x", hint="h1"), lambda: t.change_argv(["p"], hint="h2"),
                 lambda: t.run_argv(["p"], hint="h3")):
        with pytest.raises(RemoteCommandError) as err:
            call()
        assert str(err.value).endswith(("hint: h1", "hint: h2", "hint: h3"))


def test_argv_to_command_line_refuses_what_a_winrm_command_cannot_carry():
    assert w.argv_to_command_line(["msiexec", "/i", "a b.msi"]) == 'msiexec /i "a b.msi"'
    for argv in ([], ["prog", 3]):
        with pytest.raises(ValueError) as err:
            w.argv_to_command_line(argv)
        assert str(err.value) == f"argv must be a non-empty list of strings, not {argv!r}"
    for bad in ("a\x00b", "a\rb", "a\nb"):
        with pytest.raises(ValueError) as err:
            w.argv_to_command_line(["prog", bad])
        assert str(err.value) == f"a Windows command line cannot carry NUL or line breaks: {['prog', bad]!r}"


def test_a_rejected_credential_is_remembered_by_key_until_cleared():
    rejected = w._Rejected()
    key = w.Credential("EXAMPLE\\u", "pw-rejected-unit").key
    assert rejected.who_rejected(key) is None
    rejected.mark(key, "WIN1")
    rejected.mark(key, "WIN2")
    assert rejected.who_rejected(key) == "WIN1"  # the first host that refused it
    rejected.clear()
    assert rejected.who_rejected(key) is None


def test_a_failing_command_without_a_hint_has_no_hint_line():
    t = Recorder({"bad": (2, "out", "")})
    for call in (lambda: t.run("bad"), lambda: t.run_argv(["bad"]), lambda: t.change("bad"),
                 lambda: t.change_argv(["bad"])):
        with pytest.raises(RemoteCommandError) as err:
            call()
        assert "hint" not in str(err.value) and err.value.host == "WIN1"


def test_a_check_runs_through_cmd_and_its_error_keeps_host_and_output():
    seen = []

    class Checks(Recorder):
        def _execute(self, command, timeout, skip_cmd_shell):
            seen.append(skip_cmd_shell)
            return Result(command, 5, "Access is denied.", "")

    with pytest.raises(RemoteCommandError) as err:
        Checks().test("sc query x")
    assert seen == [False] and seen[0] is False
    assert (err.value.host, err.value.output) == ("WIN1", "Access is denied.")


def test_a_failed_decode_error_names_the_host_and_the_command():
    t = Recorder({"certutil": (5, "FAILED", "")})
    with pytest.raises(RemoteCommandError) as err:
        t.put_bytes(b"hello", "C:\\ProgramData\\a.txt")
    assert err.value.host == "WIN1"
    assert err.value.command == 'certutil -f -decode "C:\\ProgramData\\a.txt.b64" "C:\\ProgramData\\a.txt"'
    t = Recorder({"certutil": (0, "Output Length = 4", "")})
    with pytest.raises(RemoteCommandError) as err:
        t.put_bytes(b"hello", "C:\\ProgramData\\a.txt")
    assert err.value.host == "WIN1" and err.value.command.startswith("certutil -f -decode")


def test_a_staging_file_that_cannot_be_removed_does_not_fail_the_upload():
    t = Recorder({"certutil": (0, "Output Length = 5", ""), "del ": (1, "", "in use")})
    t.put_bytes(b"hello", "C:\\ProgramData\\a.txt")
    assert t.commands[-1] == 'del /f /q "C:\\ProgramData\\a.txt.b64"'


def test_the_windows_message_keeps_the_words_of_nested_elements():
    fault = (f'<E><f:WSManFault xmlns:f="{w._FAULT_NS}"><f:Message>The <f:b>shell</f:b> was lost'
             "</f:Message></f:WSManFault></E>")
    assert w._windows_message(fault) == "The shell was lost"


def test_an_authentication_error_without_a_user_names_none():
    error = w.map_error(InvalidCredentialsError("no"), host="h", where=WHERE, doing="x", options=w.WinRMOptions())
    assert f"{WHERE} rejected user  (ntlm authentication) while x" in str(error)


class Protocol:
    """A pywinrm Protocol stand-in that fails as told and records what was asked of it."""

    def __init__(self, start=None, cleanup=None, opening=None):
        self.start, self.cleanup, self.opening = start, cleanup, opening
        self.sessions_closed = 0
        self.shells_closed = []
        self.transport = self

    def open_shell(self, codepage=None):
        if self.opening is not None:
            raise self.opening
        return "SHELL-2"

    def close_shell(self, shell, close_session=True):
        self.shells_closed.append(shell)

    def run_command(self, shell, command, skip_cmd_shell=False):
        if self.start is not None:
            raise self.start
        return "CMD-1"

    def cleanup_command(self, shell, command_id):
        if self.cleanup is not None:
            raise self.cleanup

    def close_session(self):
        self.sessions_closed += 1


def _with_protocol(protocol) -> w.WinRMTransport:
    t = w.WinRMTransport("WIN1", "10.0.0.5", w.WinRMOptions(), credential=w.Credential("u", "pw-stub-1"))
    t._protocol, t._shell_id = protocol, "SHELL-1"
    return t


def test_a_command_that_cannot_start_says_which_and_why():
    t = _with_protocol(Protocol(start=ValueError("bad")))
    with pytest.raises(TransportError) as err:
        t._start("hostname", False)
    assert str(err.value) == ("WIN1: WinRM with 10.0.0.5:5986 (https) failed while starting hostname: "
                              "ValueError: bad")
    t = _with_protocol(Protocol(start=_fault(5, None, "denied")))
    with pytest.raises(WSManFault) as err:
        t._start("hostname", False)
    assert str(err.value) == "WIN1: 10.0.0.5:5986 (https) answered starting hostname with WS-Man fault 5: denied"


def test_a_failed_terminate_drops_the_shell_so_the_next_command_opens_a_new_one():
    protocol = Protocol(cleanup=ValueError("gone"))
    t = _with_protocol(protocol)
    t._terminate("SHELL-1", "CMD-1")
    assert t._shell_id is None and protocol.sessions_closed == 1
    assert t._shell() == "SHELL-2"


def test_transport_errors_reset_what_they_break():
    protocol = Protocol()
    t = _with_protocol(protocol)
    error = t._error(ConnectionResetError("reset"), "opening a shell")
    assert "outcome is unknown" not in str(error)  # nothing had started
    assert str(error).startswith("WIN1: connection to 10.0.0.5:5986 (https) failed while opening a shell:")
    assert protocol.sessions_closed == 1  # unreachable: a new session next time
    t._error(_fault(5, None, "denied"), "x")
    assert protocol.sessions_closed == 1 and t._shell_id == "SHELL-1"  # a plain fault keeps shell and session
    t._error(_fault(w.FAULT_INVALID_SELECTORS, None, "gone"), "x")
    assert t._shell_id is None and t._shell() == "SHELL-2"
    # no credential loaded yet: the message names no user, and nothing is marked rejected
    fresh = _with_protocol(Protocol())
    assert "rejected user  (ntlm" in str(fresh._error(InvalidCredentialsError("no"), "x"))


def test_pool_defaults_warnings_and_certificate_transports(capsys, tmp_path):
    pool = w.WinRMPool(w.WinRMOptions(scheme="https", cert_validation="ignore"), credential=w.Credential("u", "pw-p1"))
    assert pool.dry_run is False
    assert "winrm_cert_validation = ignore" in capsys.readouterr().err
    pem = tmp_path / "c.pem"
    pem.write_text("x")
    cert = w.WinRMPool(w.WinRMOptions(transport="certificate", cert_pem=str(pem), cert_key_pem=str(pem)))
    t = cert.get("WIN1", "10.0.0.5")
    assert t.user == f"certificate {pem}"
    with pytest.raises(w.ConfigError) as err:
        t.credential()
    assert str(err.value) == "certificate authentication uses no password"


def test_pool_from_settings_passes_dry_run_echo_and_warn():
    lines, warned = [], []
    settings = types.SimpleNamespace(winrm_cert_validation="ignore")
    pool = w.pool_from_settings(settings, dry_run=True, echo=lines.append, warn=warned.append)
    assert pool.dry_run is True and len(warned) == 1
    pool.get("WIN1", "10.0.0.5").change("x")
    assert lines == ["  [WIN1] would run: x"]
    assert w.pool_from_settings(object(), warn=warned.append).dry_run is False


def test_pool_transports_follow_the_servers_name_address_and_port():
    server = types.SimpleNamespace(hostname="Win1", network_address="10.0.0.5", winrm_port=5999)
    pool = w.WinRMPool(w.WinRMOptions(), credential=w.Credential("u", "pw-p2"))
    for t in (pool.for_server(server), pool.borrow(server)):
        assert (t.name, t.address, t.port) == ("Win1", "10.0.0.5", 5999)
    bare = types.SimpleNamespace(hostname="Win2", network_address="10.0.0.6")
    assert pool.for_server(bare).port == 5986 and pool.borrow(bare).port == 5986
    # closed pools hand out new transports, every time
    first = pool.get("WIN3", "10.0.0.7")
    pool.close()
    second = pool.get("WIN3", "10.0.0.7")
    assert second is not first
    pool.close()
    assert pool.get("WIN3", "10.0.0.7") is not second


def test_credentials_asked_in_a_terminal_and_refused_when_blank():
    asked = []
    cred = w.credential_from_env({}, interactive=True, ask=lambda p: "pw-asked-1",
                                 ask_user=lambda p: asked.append(p) or " EXAMPLE\\u ")
    assert (cred.user, cred.password) == ("EXAMPLE\\u", "pw-asked-1") and asked == ["WinRM user (DOMAIN\\user): "]
    with pytest.raises(w.ConfigError) as err:
        w.credential_from_env({}, interactive=True, ask=lambda p: "x", ask_user=lambda p: " ")
    assert str(err.value) == "WinRM credentials: no user given (set DEPLOY_WINRM_USER)"
    with pytest.raises(w.ConfigError) as err:
        w.credential_from_env({"DEPLOY_WINRM_USER": "u"}, interactive=True, ask=lambda p: "")
    assert str(err.value) == "WinRM credentials: no password given for u (set DEPLOY_WINRM_PASSWORD)"
    with pytest.raises(w.ConfigError) as err:
        w.credential_from_env({"DEPLOY_WINRM_USER": "u"}, interactive=False)
    assert str(err.value) == ("WinRM credentials: DEPLOY_WINRM_PASSWORD not set; set DEPLOY_WINRM_USER and "
                              "DEPLOY_WINRM_PASSWORD (Jenkins: withCredentials), or run in a terminal to be asked")


def test_in_a_terminal_the_credentials_are_asked_for_and_without_one_not(monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(""))
    cred = w.credential_from_env({}, ask=lambda p: "pw-tty-1", ask_user=lambda p: "u")
    assert (cred.user, cred.password) == ("u", "pw-tty-1")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a tty
    with pytest.raises(w.ConfigError, match="not set"):
        w.credential_from_env({}, ask=lambda p: pytest.fail("asked"), ask_user=lambda p: pytest.fail("asked"))


def test_a_shell_that_cannot_be_opened_says_so():
    t = _with_protocol(Protocol(opening=ValueError("no shell")))
    t._shell_id = None
    with pytest.raises(TransportError) as err:
        t._shell()
    assert str(err.value) == ("WIN1: WinRM with 10.0.0.5:5986 (https) failed while opening a shell: "
                              "ValueError: no shell")


def test_closing_deletes_the_shell_unless_its_credential_was_rejected():
    protocol = Protocol()
    _with_protocol(protocol).close()  # no credential loaded yet: nothing was rejected
    assert protocol.shells_closed == ["SHELL-1"] and protocol.sessions_closed == 1
    protocol = Protocol()
    t = _with_protocol(protocol)
    try:
        w.REJECTED.mark(t.credential().key, "WIN0")
        t.close()  # another try with a rejected credential could lock the account
        assert protocol.shells_closed == [] and protocol.sessions_closed == 1
    finally:
        w.forget_rejected_credentials()


def test_a_closed_pool_lends_new_transports():
    server = types.SimpleNamespace(hostname="Win1", network_address="10.0.0.5", winrm_port=None)
    pool = w.WinRMPool(w.WinRMOptions(), credential=w.Credential("u", "pw-p3"))
    first = pool.borrow(server)
    assert pool.borrow(server) is first
    pool.close()
    assert pool.borrow(server) is not first
