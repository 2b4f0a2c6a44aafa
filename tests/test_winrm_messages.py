"""The templated Command/Receive/Signal messages are byte for byte what pywinrm renders, and read the same."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

pytest.importorskip("winrm")

from winrm import protocol as pywinrm_protocol  # noqa: E402
from winrm.protocol import Protocol  # noqa: E402

from deploy_tasks.transports.winrm_messages import TemplatedProtocol  # noqa: E402

FIXED = uuid.UUID("3c2f7b4e-1d2a-4e5f-9a8b-7c6d5e4f3a2b")
SHELL = "11111111-2222-3333-4444-555555555555"
COMMAND_ID = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"
REPLY_COMMAND = (f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
                 f'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"><s:Body>'
                 f'<rsp:CommandResponse><rsp:CommandId>{COMMAND_ID}</rsp:CommandId></rsp:CommandResponse>'
                 f'</s:Body></s:Envelope>').encode()
REPLY_SIGNAL = (f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
                f'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing"><s:Header>'
                f'<a:RelatesTo>uuid:{FIXED}</a:RelatesTo></s:Header><s:Body/></s:Envelope>').encode()


def reply_receive(done: bool) -> bytes:
    state = "Done" if done else "Running"
    code = "<rsp:ExitCode>3</rsp:ExitCode>" if done else ""
    return (f'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            f'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"><s:Body><rsp:ReceiveResponse>'
            f'<rsp:Stream Name="stdout" CommandId="{COMMAND_ID}">aMOpbGxvCg==</rsp:Stream>'
            f'<rsp:Stream Name="stderr" CommandId="{COMMAND_ID}">ZXJyCg==</rsp:Stream>'
            f'<rsp:Stream Name="stdout" CommandId="{COMMAND_ID}" End="true"></rsp:Stream>'
            f'<rsp:CommandState CommandId="{COMMAND_ID}" '
            f'State="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/{state}">{code}'
            f'</rsp:CommandState></rsp:ReceiveResponse></s:Body></s:Envelope>').encode()


class Recording:
    """Stands in for the HTTP transport: records each message, answers with the reply given."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.sent = []

    def __call__(self, message):
        self.sent.append(message)
        return self.reply


def both(monkeypatch, reply: bytes, timeout: int = 20, endpoint: str = "https://127.0.0.1:5986/wsman"):
    monkeypatch.setattr(pywinrm_protocol.uuid, "uuid4", lambda: FIXED)
    made = []
    for cls in (Protocol, TemplatedProtocol):
        p = cls(endpoint, transport="basic", username="u", password="p",
                operation_timeout_sec=timeout, read_timeout_sec=timeout + 10)
        p.send_message = Recording(reply)
        made.append(p)
    return made


@pytest.fixture
def rendered(monkeypatch):
    """How many messages xmltodict renders from here on (the process's templates start empty), and their keys."""
    from deploy_tasks.transports import winrm_messages

    templates = {}
    monkeypatch.setattr(TemplatedProtocol, "_TEMPLATES", templates)
    calls = []
    unparse = winrm_messages.xmltodict.unparse  # counted for the templates only (pywinrm's own calls are not)
    monkeypatch.setattr(winrm_messages, "xmltodict", SimpleNamespace(unparse=lambda doc: calls.append(1) or unparse(doc)))

    class Rendered:
        @property
        def count(self):
            return len(calls)

        @property
        def keys(self):
            return [k[1:] for k in templates]  # without the class

    return Rendered()


HOSTILE = ['puppet agent --test --tags a,b', 'cmd /c "echo <b> & del x > y" \'q\'', "ünïcødé ✓ %PATH% ^& |",
           "a]]>b <![CDATA[ x ]]>", "@@text@@ @@mid@@ @@shell@@"]


@pytest.mark.parametrize("command", HOSTILE)
@pytest.mark.parametrize("console,skip", [(True, False), (False, True)])
def test_command_message_is_pywinrms_byte_for_byte(monkeypatch, rendered, command, console, skip):
    ref, ours = both(monkeypatch, REPLY_COMMAND)
    assert ref.run_command(SHELL, command, console_mode_stdin=console, skip_cmd_shell=skip) == COMMAND_ID
    assert ours.run_command(SHELL, command, console_mode_stdin=console, skip_cmd_shell=skip) == COMMAND_ID
    theirs_ref, ours_ref = ref.send_message.sent[0], ours.send_message.sent[0]
    assert ours_ref == theirs_ref
    assert rendered.keys == [("Command", console, skip, 20)]  # rendered from the template, not pywinrm
    # rendered twice from the template: the second message carries its own values
    ours.run_command(SHELL.replace("1", "9"), command + "!", console_mode_stdin=console, skip_cmd_shell=skip)
    ref.run_command(SHELL.replace("1", "9"), command + "!", console_mode_stdin=console, skip_cmd_shell=skip)
    assert ours.send_message.sent[1] == ref.send_message.sent[1]


@pytest.mark.parametrize("done", [False, True])
def test_receive_message_and_reading_match_pywinrm(monkeypatch, rendered, done):
    ref, ours = both(monkeypatch, reply_receive(done))
    expected = ref.get_command_output_raw(SHELL, COMMAND_ID)
    assert ours.get_command_output_raw(SHELL, COMMAND_ID) == expected
    assert expected == ("héllo\n".encode(), b"err\n", 3 if done else -1, done)
    assert rendered.keys == [("Receive", 20)]
    assert ours.send_message.sent == ref.send_message.sent


def test_the_operation_timeout_in_the_header_follows_the_protocol(monkeypatch):
    ref, ours = both(monkeypatch, reply_receive(False))
    for seconds in (20, 3, 20):  # the transport lowers it near a command's deadline, then restores it
        ref.operation_timeout_sec = ours.operation_timeout_sec = seconds
        ref.get_command_output_raw(SHELL, COMMAND_ID)
        ours.get_command_output_raw(SHELL, COMMAND_ID)
    assert ours.send_message.sent == ref.send_message.sent
    assert "PT3S" in ours.send_message.sent[1] and "PT20S" in ours.send_message.sent[2]


def test_signal_message_matches_and_checks_relates_to(monkeypatch, rendered):
    ref, ours = both(monkeypatch, REPLY_SIGNAL)
    monkeypatch.setattr("deploy_tasks.transports.winrm_messages.uuid.uuid4", lambda: FIXED)
    ref.cleanup_command(SHELL, COMMAND_ID)
    ours.cleanup_command(SHELL, COMMAND_ID)
    assert ours.send_message.sent == ref.send_message.sent and rendered.keys == [("Signal", 20)]
    ours.send_message.reply = REPLY_SIGNAL.replace(str(FIXED).encode(), str(uuid.UUID(int=1)).encode())
    with pytest.raises(AssertionError):
        ours.cleanup_command(SHELL, COMMAND_ID)


@pytest.mark.parametrize("shell", ['x"y', "a&b", "x@@text@@"])
def test_ids_that_need_quoting_go_through_pywinrm_itself(monkeypatch, rendered, shell):
    ref, ours = both(monkeypatch, REPLY_COMMAND)
    ref.run_command(shell, "dir")
    ours.run_command(shell, "dir")
    assert ours.send_message.sent == ref.send_message.sent and not rendered.keys


def test_every_host_shares_the_rendered_shapes_and_still_sends_pywinrm_s_bytes(monkeypatch, rendered):
    """One process renders each shape once, not once per host: the header names no host (pywinrm's a:To is
    a fixed placeholder). Hosts on other addresses and ports get pywinrm's bytes from the same templates."""
    messages = {}
    for endpoint in ("https://127.0.0.1:5986/wsman", "http://10.1.2.3:5985/wsman", "https://zapp01.corp.example:443/wsman"):
        for reply, go in ((REPLY_COMMAND, lambda p: p.run_command(SHELL, "puppet agent --test", skip_cmd_shell=True)),
                          (reply_receive(True), lambda p: p.get_command_output_raw(SHELL, COMMAND_ID)),
                          (REPLY_SIGNAL, lambda p: p.cleanup_command(SHELL, COMMAND_ID))):
            ref, ours = both(monkeypatch, reply, endpoint=endpoint)
            monkeypatch.setattr("deploy_tasks.transports.winrm_messages.uuid.uuid4", lambda: FIXED)
            assert go(ours) == go(ref)
            assert ours.send_message.sent == ref.send_message.sent
            messages.setdefault(endpoint, []).append(ours.send_message.sent[0])
    assert rendered.count == 3  # Command, Receive, Signal: once each, for all three hosts
    assert len({tuple(m) for m in messages.values()}) == 1

    class Other(TemplatedProtocol):  # a subclass may build another header: its own templates
        def build_wsman_header(self, *a, **kw):
            header = super().build_wsman_header(*a, **kw)
            header["env:Header"]["w:Locale"]["@xml:lang"] = "de-DE"
            return header

    other = Other("https://127.0.0.1:5986/wsman", transport="basic", username="u", password="p")
    other.send_message = Recording(REPLY_COMMAND)
    other.run_command(SHELL, "puppet agent --test", skip_cmd_shell=True)
    assert rendered.count == 4 and 'xml:lang="de-DE"' in other.send_message.sent[0]


@pytest.mark.parametrize("auth", ["ntlm", "basic"])
def test_a_session_s_request_prepared_once_is_the_request_pywinrm_prepares(auth):
    from types import SimpleNamespace

    from deploy_tasks.transports.winrm import _prepare_once, _without_environment_proxies

    sent = {}
    for name, fast in (("pywinrm", False), ("once", True)):
        transport = Protocol("https://127.0.0.1:5986/wsman", transport=auth, username="u", password="p",
                             server_cert_validation="ignore").transport
        _without_environment_proxies(transport)
        if fast:
            _prepare_once(transport)
        requests = sent[name] = []
        transport._send_message_request = lambda session, prepared, out=requests: (
            out.append(prepared) or SimpleNamespace(content=b"<reply/>"))
        session = transport.build_session()
        prepare = session.prepare_request
        prepared_anew = []
        session.prepare_request = lambda request: prepared_anew.append(request) or prepare(request)
        for body in ("<s:Envelope>first</s:Envelope>", "<s:Envelope>s\u00e9cond, longer</s:Envelope>".encode()):
            assert transport.send_message(body) == b"<reply/>"
        assert len(prepared_anew) == (1 if fast else 2)
    for ours, theirs in zip(sent["once"], sent["pywinrm"], strict=True):
        assert (ours.method, ours.url, ours.body) == (theirs.method, theirs.url, theirs.body)
        assert dict(ours.headers) == dict(theirs.headers)
        assert ours.headers["Content-Length"] == str(len(theirs.body))
        assert [getattr(h, "__name__", h) for h in ours.hooks["response"]] == [
            getattr(h, "__name__", h) for h in theirs.hooks["response"]]


def test_kerberos_keeps_pywinrm_s_own_path():
    from deploy_tasks.transports.winrm import _prepare_once

    transport = Protocol("https://127.0.0.1:5986/wsman", transport="basic", username="u", password="p").transport
    own = transport.send_message
    transport.auth_method = "kerberos"
    _prepare_once(transport)
    assert transport.send_message == own
