"""A connection's later messages go over it directly (transports/winrm_channel.py), on the wire as pywinrm sends
them; what the direct path cannot carry goes pywinrm's way again, and no message is ever sent twice.

The host here is a scripted HTTP server on loopback (plain HTTP, Basic: the requests are readable on the
wire): each request it reads is recorded with the connection it came on, and answered with the next
scripted reply. The emulated fleet's suites (NTLM over HTTPS) run the same path end to end."""

from __future__ import annotations

import gzip
import socket
import threading
import time

import pytest

pytest.importorskip("winrm")

import requests  # noqa: E402
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError  # noqa: E402
from winrm.protocol import Protocol  # noqa: E402

from deploy_tasks.transports.winrm import _prepare_once, _without_environment_proxies  # noqa: E402


def ok(body: bytes = b"<reply/>", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml;charset=UTF-8\r\n" + extra + \
        b"Content-Length: %d\r\n\r\n" % len(body) + body


class Host:
    """Reads HTTP/1.1 requests on each connection; answers each with the next reply of ``script`` (bytes, or
    "close": close the connection without a reply, or ("sleep", s, bytes))."""

    def __init__(self, script):
        self.script = list(script)
        self.seen = []  # (connection number, head lines, body)
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(sock)
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock, number):
        f = sock.makefile("rb")
        try:
            while True:
                head = []
                line = f.readline()
                if not line:
                    return
                while line not in (b"\r\n", b""):
                    head.append(line.decode("latin-1").rstrip("\r\n"))
                    line = f.readline()
                length = next(int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:"))
                self.seen.append((number, head, f.read(length)))
                reply = self.script.pop(0)
                if reply == "close":
                    sock.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(reply, tuple):
                    time.sleep(reply[1])
                    reply = reply[2]
                sock.sendall(reply)
        except OSError:
            return
        finally:
            f.close()
            sock.close()

    def drop_idle(self):
        """The host closes every open connection (an idle timeout)."""
        for sock in self.open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        time.sleep(0.05)

    def close(self):
        self.listener.close()
        self.drop_idle()


@pytest.fixture
def host():
    made = []

    def make(*script):
        made.append(Host(script))
        return made[-1]

    yield make
    for h in made:
        h.close()


def transport_for(host: Host, fast: bool = True, read_timeout: int = 30):
    transport = Protocol(f"http://127.0.0.1:{host.port}/wsman", transport="basic", username="u", password="p",
                         server_cert_validation="ignore", read_timeout_sec=read_timeout, operation_timeout_sec=read_timeout - 10).transport
    _without_environment_proxies(transport)
    if fast:
        _prepare_once(transport)
    return transport


def channel_of(transport):
    """The channel the transport's next message would take (None: pywinrm's path)."""
    send = transport.send_message
    cells = dict(zip(send.__code__.co_freevars, (c.cell_contents for c in send.__closure__)))
    return cells["made"].get("channel")


def test_later_messages_go_over_the_connection_as_pywinrm_sends_them(host):
    bodies = [b"<s:Envelope>first</s:Envelope>", "<s:Envelope>s\u00e9cond</s:Envelope>".encode(), b"<third/>"]
    wires = {}
    for fast in (False, True):
        h = host(ok(b"<one/>"), ok(b"<two/>"), ok(b"<three/>"))
        transport = transport_for(h, fast)
        assert [transport.send_message(b) for b in bodies] == [b"<one/>", b"<two/>", b"<three/>"]
        assert h.connections == 1
        wires[fast] = [(n, [line.replace(f":{h.port}", ":PORT") for line in head], body) for n, head, body in h.seen]
        if fast:
            assert channel_of(transport) is not None
        transport.close_session()
    for (_, ours, our_body), (_, theirs, their_body) in zip(wires[True], wires[False], strict=True):
        assert ours[0] == theirs[0] == "POST /wsman HTTP/1.1" and "Host: 127.0.0.1:PORT" in ours
        assert sorted(ours[1:]) == sorted(theirs[1:])  # the same headers (requests orders them its own way)
        assert our_body == their_body


def test_a_connection_the_host_closed_while_idle_is_replaced_and_the_message_sent_once(host):
    h = host(ok(b"<one/>"), ok(b"<two/>"))
    transport = transport_for(h)
    assert transport.send_message(b"<a/>") == b"<one/>"
    h.drop_idle()
    assert transport.send_message(b"<b/>") == b"<two/>"
    assert [(n, body) for n, _, body in h.seen] == [(1, b"<a/>"), (2, b"<b/>")]
    assert channel_of(transport) is not None  # and the new connection carries the next ones


UNAUTHORIZED = b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"


def test_a_401_where_the_connection_holds_the_logon_goes_pywinrm_s_way_again(host):
    h = host(ok(b"<one/>"), UNAUTHORIZED, ok(b"<two/>"))
    transport = transport_for(h)
    transport.build_session().auth = None  # the logon is the connection's (NTLM), not a header of each request
    transport.send_message(b"<a/>")
    assert transport.send_message(b"<b/>") == b"<two/>"
    # refused unread by the host, then sent again pywinrm's way (a new connection: ours was closed)
    assert [(n, body) for n, _, body in h.seen] == [(1, b"<a/>"), (1, b"<b/>"), (2, b"<b/>")]


def test_a_401_to_a_request_that_carries_the_credential_is_a_rejection_asked_once(host):
    h = host(ok(b"<one/>"), UNAUTHORIZED, ok(b"<two/>"))
    transport = transport_for(h)
    transport.send_message(b"<a/>")
    with pytest.raises(InvalidCredentialsError):
        transport.send_message(b"<b/>")
    assert [body for _, _, body in h.seen] == [b"<a/>", b"<b/>"]
    assert any(line.startswith("Authorization: Basic ") for line in h.seen[1][1])


def test_a_reply_that_never_comes_is_a_read_timeout_and_the_message_is_not_sent_again(host):
    h = host(ok(b"<one/>"), ("sleep", 3, ok(b"<late/>")), ok(b"<two/>"))
    transport = transport_for(h)
    transport.send_message(b"<a/>")
    channel_of(transport).timeout = 0.5
    with pytest.raises(requests.exceptions.ReadTimeout, match="Read timed out"):
        transport.send_message(b"<b/>")
    assert channel_of(transport) is None
    assert transport.send_message(b"<c/>") == b"<two/>"
    assert [body for _, _, body in h.seen] == [b"<a/>", b"<b/>", b"<c/>"]


def test_a_connection_that_breaks_after_the_message_is_a_connection_error_never_a_resend(host):
    h = host(ok(b"<one/>"), "close", ok(b"<two/>"))
    transport = transport_for(h)
    transport.send_message(b"<a/>")
    with pytest.raises(requests.exceptions.ConnectionError, match="closed the connection without a reply"):
        transport.send_message(b"<b/>")
    assert transport.send_message(b"<c/>") == b"<two/>"
    assert [body for _, _, body in h.seen] == [b"<a/>", b"<b/>", b"<c/>"]


def test_a_fault_comes_back_as_pywinrm_raises_it_and_the_connection_stays(host):
    fault = b"<s:Envelope><s:Body><s:Fault>no such shell</s:Fault></s:Body></s:Envelope>"
    reply = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(fault), fault)
    results = {}
    for fast in (False, True):
        h = host(ok(), reply, ok(b"<after/>"))
        transport = transport_for(h, fast)
        transport.send_message(b"<a/>")
        with pytest.raises(WinRMTransportError) as caught:
            transport.send_message(b"<b/>")
        results[fast] = (caught.value.code, caught.value.response_text)
        assert transport.send_message(b"<c/>") == b"<after/>" and h.connections == 1
    assert results[True] == results[False] == (500, fault.decode())


@pytest.mark.parametrize("reply, connections", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n<rep\r\n3;x=y\r\nly/\r\n1\r\n>\r\n0\r\n\r\n", 1),
    (ok(gzip.compress(b"<reply/>"), b"Content-Encoding: gzip\r\n"), 1),
    (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(), 1),
    (ok(extra=b"Connection: close\r\n"), 2),
])
def test_replies_are_read_as_requests_reads_them(host, reply, connections):
    h = host(ok(), reply, ok(b"<next/>"))
    transport = transport_for(h)
    transport.send_message(b"<a/>")
    assert transport.send_message(b"<b/>") == b"<reply/>"
    assert transport.send_message(b"<c/>") == b"<next/>"
    assert h.connections == connections


def test_a_reply_that_is_not_http_breaks_the_connection(host):
    h = host(ok(), b"SSH-2.0-OpenSSH\r\n\r\n", ok(b"<next/>"))
    transport = transport_for(h)
    transport.send_message(b"<a/>")
    with pytest.raises(requests.exceptions.ConnectionError, match="not an HTTP status line"):
        transport.send_message(b"<b/>")
    assert transport.send_message(b"<c/>") == b"<next/>"


def test_closing_the_session_closes_the_connection_it_took(host):
    h = host(ok(), ok())
    transport = transport_for(h)
    transport.send_message(b"<a/>")
    channel = channel_of(transport)
    transport.close_session()
    assert channel.closed and channel.sock.fileno() == -1 and channel_of(transport) is None


def test_a_message_interrupted_mid_reply_leaves_the_connection_unused(host):
    import signal

    h = host(ok(b"<one/>"), ("sleep", 1.0, ok(b"<reply-to-b/>")), ok(b"<reply-to-c/>"))
    transport = transport_for(h)
    transport.send_message(b"<a/>")

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            transport.send_message(b"<b/>")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert transport.send_message(b"<c/>") == b"<reply-to-c/>"  # not b's reply, still on its way
    assert [(n, body) for n, _, body in h.seen] == [(1, b"<a/>"), (1, b"<b/>"), (2, b"<c/>")]


@pytest.mark.parametrize("reply, error", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 4x\r\n\r\n<x/>", requests.exceptions.ConnectionError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\n<x/>", requests.exceptions.ConnectionError),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope",
     requests.exceptions.ContentDecodingError),
])
def test_a_reply_that_cannot_be_read_is_requests_error_and_the_next_message_reconnects(host, reply, error):
    h = host(ok(), (reply + b"trailing junk"), ok(b"<next/>"))
    transport = transport_for(h)
    transport.send_message(b"<a/>")
    with pytest.raises(error):
        transport.send_message(b"<b/>")
    assert transport.send_message(b"<c/>") == b"<next/>" and h.connections == 2


def test_bytes_the_host_sent_unasked_are_not_read_as_the_next_reply(host):
    h = host(ok(b"<one/>"), ok(b"<two/>") + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n<junk/>", ok(b"<three/>"))
    transport = transport_for(h)
    transport.send_message(b"<a/>")
    assert transport.send_message(b"<b/>") == b"<two/>"
    time.sleep(0.1)
    assert transport.send_message(b"<c/>") == b"<three/>"
    assert [(n, body) for n, _, body in h.seen] == [(1, b"<a/>"), (1, b"<b/>"), (2, b"<c/>")]


def test_a_cookie_the_host_sets_is_kept_and_sent_as_pywinrm_would(host):
    h = host(ok(b"<one/>"), ok(b"<two/>", b"Set-Cookie: lb=node7; Path=/\r\n"), ok(b"<three/>"))
    transport = transport_for(h)
    transport.send_message(b"<a/>")
    assert transport.send_message(b"<b/>") == b"<two/>"
    assert transport.build_session().cookies.get("lb") == "node7"
    assert transport.send_message(b"<c/>") == b"<three/>"
    assert "Cookie: lb=node7" in h.seen[2][1] and channel_of(transport) is None  # pywinrm's way from now on
