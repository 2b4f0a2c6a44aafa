"""A WinRM connection's steady state, spoken directly: the request in one write, the reply read by a small reader.

pywinrm sends every WS-Man message through requests, urllib3 and http.client: ~0.33 ms of the controller's
CPU a message (merging headers, cookie jars, the email package parsing each reply's headers, a TLS write
for the head and another for the body), under the interpreter lock that every host's thread shares. At 300
hosts that is what makes the last host of a wave start its Puppet run late (bench/deploy_makespan.py).

Once pywinrm's own path has set a connection up and a message has come back 200 on it (NTLM authenticates
the connection; Basic and certificates are fixed headers), every later message is the same POST with a new
body. A ``Channel`` takes that connection out of urllib3's pool and speaks to it itself: the request head
is made once and written with the body in one write; the reply is read by the small HTTP/1.1 reader below
(a Content-Length or chunked body, as Windows' HTTP.sys sends; gzip/deflate decoded, as requests would; its
own buffer, so bytes left after a reply are seen). A command (Command, Receive, Signal) then costs
0.26-0.27 ms of the controller's CPU instead of 0.97-0.99 (bench/winrm_roundtrip.py, the deploy_tasks
rows, one thread).

What it cannot do leaves the channel, never a message twice:
- before anything is sent: the host closed the idle connection, or sent something unasked (the socket is
  readable, or bytes are left after the last reply) -> ``Left``: the message goes pywinrm's way, which
  connects and logs on again;
- a 401 where the connection carried the logon (NTLM: the host lost it and did nothing) -> ``Left``
  likewise; where the request carries it (Basic), the credential was refused: ``InvalidCredentialsError``
  as pywinrm raises it, not asked again (domain accounts lock out);
- after the message was sent: a timeout, a reset, a reply this reader cannot read or decode -> the error
  requests raises there (``ReadTimeout``, ``ConnectionError``, ``ContentDecodingError``), the connection
  closed. The message is not sent again (a Command sent twice would run twice): the caller reports its
  outcome as unknown. Anything else that stops a message half way (an interrupt) closes the connection
  too: a later message never reads an earlier one's reply;
- any other status: what pywinrm raises (``WinRMTransportError`` with the reply, which pywinrm's
  ``Protocol`` reads as a WS-Man fault), the connection kept unless the host said ``Connection: close``;
- a cookie the host sets goes into the session's jar, as requests keeps it, and the session's later
  messages go pywinrm's way (which sends it).
"""

from __future__ import annotations

import socket
import ssl
import zlib
from typing import Optional
from urllib.parse import urlsplit

MAX_LINE = 65536
MAX_HEADERS = 100


class Left(Exception):
    """The channel cannot carry this message and sent nothing of it: send it pywinrm's way."""


class _Broken(Exception):
    """The reply could not be read (after the message was sent)."""


class Channel:
    """One host's authenticated connection, taken out of urllib3's pool. Used by one thread at a time (the
    transport's lock); closed with its session, when the host closes it, or after anything unexpected
    (``closed``: the caller drops the channel)."""

    def __init__(self, conn, session, request, timeout: float):
        self.conn = conn
        self.session = session
        self.request = request  # the session's prepared request (its URL and headers; cookies go into the jar)
        self.closed = False
        self.sock = conn.sock
        self._buf = bytearray()  # read from the connection, not yet parsed
        self.timeout = timeout
        parts = urlsplit(request.url)
        host = parts.hostname or ""
        default = 443 if parts.scheme == "https" else 80
        self.where = f"{host}:{parts.port or default}"
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port not in (None, default)
                                                            else "")
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {netloc}"]
        lines += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() not in ("content-length", "host")]
        self._authorizes = any(k.lower() == "authorization" for k in request.headers)
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")

    @classmethod
    def take(cls, session, request, timeout: float) -> Optional["Channel"]:
        """The connection that just carried ``session``'s last message (``request``: the session's prepared
        request), out of the pool; None if there is not exactly one pool (one endpoint) or no idle
        connection in it."""
        try:
            pools = session.get_adapter(request.url).poolmanager.pools
            keys = list(pools.keys())
            if len(keys) != 1:
                return None
            pool = pools[keys[0]]
            conn = pool._get_conn(timeout=0)  # the last one returned: the one the message and its logon used
        except Exception:  # noqa: BLE001 - a urllib3 without these internals: stay on pywinrm's path
            return None
        if conn is None:
            return None
        if getattr(conn, "sock", None) is None or _readable(conn.sock):
            conn.close()
            return None
        return cls(conn, session, request, timeout)

    def close(self) -> None:
        """Close the connection (idempotent); ``closed`` tells the caller to drop the channel."""
        if not self.closed:
            self.closed = True
            self._buf.clear()
            self.conn.close()

    # -- one message ------------------------------------------------------------------
    def send(self, body: bytes) -> bytes:
        """POST ``body``; the reply's body (200). Raises ``Left`` (nothing sent: go pywinrm's way), requests'
        ``ReadTimeout``/``ConnectionError``/``ContentDecodingError`` (sent, no usable reply: connection
        closed) or pywinrm's ``WinRMTransportError`` (another status)."""
        import requests
        from winrm.exceptions import InvalidCredentialsError, WinRMTransportError

        if self._buf or _pending(self.sock) or _readable(self.sock):
            # closed by the host while idle, or it sent something unasked: nothing here can be trusted
            self.close()
            raise Left("the host closed the idle connection")
        done = False
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(self._head + str(len(body)).encode("ascii") + b"\r\n\r\n" + body)
            status, data, keep, cookies = self._reply()
            done = True
        except (socket.timeout, TimeoutError):
            raise requests.exceptions.ReadTimeout(
                f"{self.where}: Read timed out. (read timeout={self.timeout})") from None
        except zlib.error as exc:
            raise requests.exceptions.ContentDecodingError(
                f"{self.where}: the reply could not be decoded: {exc}") from None
        except (_Broken, OSError, ssl.SSLError, ValueError, OverflowError, MemoryError) as exc:
            raise requests.exceptions.ConnectionError(
                f"{self.where}: connection broken: {type(exc).__name__}: {exc}") from None
        finally:
            if not done:  # whatever stopped it (an interrupt too): the connection is mid-message, never reused
                self.close()
        if cookies:  # kept as requests keeps them; with cookies the session's messages go pywinrm's way
            _store_cookies(self.session, self.request, cookies)
            keep = False
        if not keep:
            self.close()  # the host said so (or cookies): the next message connects again (pywinrm's way)
        if status == 200:
            return data
        if status == 401:
            self.close()
            if self._authorizes:  # Basic: the credential itself was refused; asking again would count twice
                raise InvalidCredentialsError("the specified credentials were rejected by the server")
            raise Left("401: the connection's logon is gone")
        raise WinRMTransportError("http", status, data.decode("utf-8", "replace"))

    # -- reading ----------------------------------------------------------------------
    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buf += chunk
        return bool(chunk)

    def _line(self) -> bytes:
        """The next line (with its line break; short or empty at the end of the connection)."""
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buf[:end + 1])
                del self._buf[:end + 1]
                return line
            if len(self._buf) > MAX_LINE:
                raise _Broken("a reply line is longer than 64 KiB")
            start = len(self._buf)
            if not self._fill():
                line = bytes(self._buf)
                self._buf.clear()
                return line

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise _Broken(f"the reply ended after {len(self._buf)} of {n} bytes")
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _reply(self):
        while True:
            line = self._line()
            if not line:
                raise _Broken("the host closed the connection without a reply")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise _Broken(f"not an HTTP status line: {line[:80]!r}")
            status = int(parts[1])
            length, chunked, keep, encoding, cookies = None, False, parts[0] != b"HTTP/1.0", b"", []
            for _ in range(MAX_HEADERS + 1):
                header = self._line()
                if header in (b"\r\n", b"\n"):
                    break
                if not header.endswith(b"\n"):
                    raise _Broken("the reply's headers were cut off")
                name, _, value = header.partition(b":")
                name, value = name.strip().lower(), value.strip()
                if name == b"content-length":
                    length = int(value)
                    if length < 0:
                        raise _Broken(f"a negative Content-Length: {length}")
                elif name == b"transfer-encoding":
                    chunked = value.lower().endswith(b"chunked")
                elif name == b"connection":
                    keep = b"close" not in value.lower() if keep else b"keep-alive" in value.lower()
                elif name == b"content-encoding":
                    encoding = value.lower()
                elif name == b"set-cookie":
                    cookies.append(value.decode("latin-1"))
            else:
                raise _Broken(f"more than {MAX_HEADERS} reply headers")
            if 100 <= status < 200:
                continue  # an interim reply: the real one follows
            break
        if chunked:
            data = self._chunks()
        elif length is not None:
            data = self._exact(length)
        elif status in (204, 304):
            data = b""
        else:  # delimited by the end of the connection
            while self._fill():
                pass
            data, keep = bytes(self._buf), False
            self._buf.clear()
        if encoding in (b"gzip", b"x-gzip"):
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
        elif encoding == b"deflate":
            try:
                data = zlib.decompress(data)
            except zlib.error:
                data = zlib.decompress(data, -zlib.MAX_WBITS)
        elif encoding not in (b"", b"identity"):
            raise _Broken(f"a reply encoded as {encoding.decode('latin-1')}")
        return status, data, keep, cookies

    def _chunks(self) -> bytes:
        out = []
        while True:
            size = int(self._line().split(b";", 1)[0].strip(), 16)
            if size == 0:
                for _ in range(MAX_HEADERS + 1):  # trailers, then the blank line
                    if self._line() in (b"\r\n", b"\n", b""):
                        return b"".join(out)
                raise _Broken("too many trailers")
            chunk = self._exact(size)
            if self._line() not in (b"\r\n", b"\n"):
                raise _Broken("a chunk was cut off")
            out.append(chunk)


def _store_cookies(session, request, values) -> None:
    """Put a reply's Set-Cookie values into the session's jar, as requests does for a reply it reads."""
    import http.client
    from types import SimpleNamespace

    from requests.cookies import extract_cookies_to_jar

    headers = http.client.HTTPMessage()
    for value in values:
        headers["Set-Cookie"] = value
    extract_cookies_to_jar(session.cookies, request, SimpleNamespace(_original_response=SimpleNamespace(msg=headers)))


def _pending(sock) -> int:
    """Bytes TLS has decrypted and not handed over yet (0 for a plain socket)."""
    pending = getattr(sock, "pending", None)
    return pending() if pending is not None else 0


def _readable(sock) -> bool:
    """Whether an idle connection has something to read: the host closed it (or broke protocol)."""
    from urllib3.util.wait import wait_for_read  # poll(), not select(): any number of descriptors

    try:
        return bool(wait_for_read(sock, timeout=0.0))
    except (OSError, ValueError):
        return True
