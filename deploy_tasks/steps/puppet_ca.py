"""The Puppet master's CA, as the agent step uses it: list, sign, clean; serialised and batched.

The CA is reached through its HTTP API, the one ``puppetserver ca`` itself
calls (puppetserver-ca 2.4.0: ``lib/puppetserver/ca/certificate_authority.rb``):

- status: ``GET /puppet-ca/v1/certificate_status/<name>`` -> state and fingerprints (404: unknown);
- sign: ``PUT /puppet-ca/v1/certificate_status/<name>`` ``{"desired_state": "signed"}`` -> 204
  (puppetserver 7.9.5 has no bulk ``POST /puppet-ca/v1/sign``, and Debian's auth.conf would deny it);
- clean: the same PUT with ``"revoked"`` (409 for a request that was never signed), then ``DELETE``.

It authenticates as the CLI does, with the master's own certificate and key
(``hostcert``, ``hostprivkey``) and the CA certificate (``localcacert``) as
the trust anchor. auth.conf admits a client to ``certificate_status`` only
when its certificate carries the ``pp_cli_auth`` extension, which puppetserver
gives the master's certificate when it sets up its own CA.

One ``puppetserver ca`` call costs about a second of Ruby start-up; one API
request costs milliseconds (signing: the server's own ~70 ms a certificate).
Where: for a ``local`` master, in this process (``ssl`` + ``http.client``);
over SSH, one ``curl`` command on the master per operation (all names of the
operation on one connection). A master without curl falls back to the CLI,
and the run says so once.

TLS 1.2 at most on the client side: puppetserver 7.9.5 on TLS 1.3 stalls 30 s on
a reused connection, whatever its webserver.conf says.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

from ..errors import DeployError

API = "/puppet-ca/v1"
PORT = 8140
HOSTCERT_SETTINGS = ("certname", "hostcert", "hostprivkey", "localcacert")
_FORBIDDEN_HINT = ("auth.conf admits a client to /puppet-ca/v1/certificate_status only with the pp_cli_auth "
                   "extension in its certificate, which puppetserver gives the master's own certificate when it "
                   "sets up its CA; a master whose certificate came from another CA needs a rule in auth.conf "
                   "allowing its certname on certificate_status (get, put, delete)")
_CURL_EXIT = {6: "could not resolve the name", 7: "connection refused (is puppetserver running?)",
              28: "timed out", 35: "TLS handshake failed", 52: "empty reply", 56: "connection reset",
              58: "the client certificate or key could not be used", 60: "the server's certificate did not "
              "verify against the CA certificate (localcacert)", 77: "the CA certificate could not be read"}


class CaError(DeployError):
    """The master's CA refused or failed an operation; the message names the master, the operation and why."""


@dataclass(frozen=True)
class CaEntry:
    state: str  # requested, signed, revoked, missing
    fingerprint: str = ""


@dataclass(frozen=True)
class HostCert:
    """What the CA is called with: the master's certname, certificate, key and the CA certificate."""

    certname: str
    cert: str
    key: str
    cacert: str


def entry_from_status(data: dict) -> CaEntry:
    """A ``certificate_status`` answer -> CaEntry; the fingerprint is SHA256, what ``puppet agent --fingerprint``
    prints by default (the API's ``fingerprint`` is the same digest)."""
    fp = (data.get("fingerprints") or {}).get("SHA256") or data.get("fingerprint") or ""
    return CaEntry(str(data.get("state") or "missing"), fp.upper())


def _message(body: str) -> str:
    text = " ".join((body or "").split())
    return (text[:300] + "...") if len(text) > 300 else text


# -- how requests reach the CA ------------------------------------------------------------------


class PythonHttps:
    """Requests from this process (a ``local`` master): one TLS connection per CA turn."""

    kind = "https"

    def __init__(self, where: str, host: HostCert, address: str = "127.0.0.1", port: int = PORT,
                 timeout: float = 60.0):
        self.where, self.host, self.address, self.port, self.timeout = where, host, address, port, timeout
        ctx = ssl.create_default_context(cafile=host.cacert)
        ctx.load_cert_chain(host.cert, host.key)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.context = ctx
        self._conn: Optional[http.client.HTTPSConnection] = None

    def url(self) -> str:
        return f"https://{self.host.certname}:{self.port} (at {self.address})"

    def requests(self, what: str, reqs: Sequence[Tuple[str, str, Optional[dict]]], each=None) -> List[Tuple[int, str]]:
        out = []
        for i, (method, path, body) in enumerate(reqs):
            if self._conn is None:
                self._conn = _Connection(self.host.certname, self.address, self.port, self.context, self.timeout)
            data = json.dumps(body).encode() if body is not None else None
            try:
                self._conn.request(method, path, body=data, headers={
                    "Accept": "application/json", "Content-Type": "application/json",
                    "User-Agent": "deploy_tasks"})
                resp = self._conn.getresponse()
                out.append((resp.status, resp.read().decode("utf-8", "replace")))
            except (OSError, http.client.HTTPException) as exc:
                self.end_turn()
                raise CaError(f"{self.where}: cannot {what} on the master's CA at {self.url()}: "
                              f"{_connection_problem(exc, self.host.cacert)}") from None
            if each is not None:
                each(i, *out[-1])
        return out

    def end_turn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Connection(http.client.HTTPSConnection):
    """Connects to ``address`` but verifies the server as ``host`` (the master's certname is in its certificate
    whatever its address; 127.0.0.1 only when the master step put it there)."""

    def __init__(self, host, address, port, context, timeout):
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # http.client writes a request's headers and body separately: with Nagle's algorithm the body waits for
        # the server's delayed ACK, ~45 ms on every sign (urllib3 sets this too)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _connection_problem(exc: Exception, cacert: str) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate did not verify ({exc.verify_message}) against the CA certificate {cacert}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is puppetserver running? (inv bootstrap --only puppet-master)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"


class CurlOnMaster:
    """Requests from the master itself, by its curl: one command per CA operation, every request of it on one
    connection (curl ``--next``), through the master's shell (SSH, sudo when the user is not root)."""

    kind = "curl"

    def __init__(self, shell, host: HostCert, port: int = PORT):
        self.shell, self.host, self.port = shell, host, port
        self.where = shell.name
        self.marker = f"@@deploy_tasks-ca-{uuid.uuid4().hex}@@"

    def url(self) -> str:
        return f"https://{self.host.certname}:{self.port} (curl on {self.where}, at 127.0.0.1)"

    def command(self, reqs: Sequence[Tuple[str, str, Optional[dict]]]) -> str:
        base = ["-sS", "--tls-max", "1.2", "--max-time", "120", "--cert", self.host.cert, "--key", self.host.key,
                "--cacert", self.host.cacert, "--resolve", f"{self.host.certname}:{self.port}:127.0.0.1",
                "-H", "Accept: application/json", "-w", "\n" + self.marker + " %{http_code}\n"]
        argv = ["curl"]
        for i, (method, path, body) in enumerate(reqs):
            if i:
                argv.append("--next")
            argv += base + ["-X", method]
            if body is not None:
                argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
            argv.append(f"https://{self.host.certname}:{self.port}{path}")
        return " ".join(shlex.quote(a) for a in argv)

    def parse(self, stdout: str, count: int) -> List[Tuple[int, str]]:
        out, rest = [], stdout
        for _ in range(count):
            body, sep, rest = rest.partition("\n" + self.marker + " ")
            if not sep:
                break
            code, _, rest = rest.partition("\n")
            out.append((int(code) if code.strip().isdigit() else 0, body))
        return out

    def requests(self, what: str, reqs: Sequence[Tuple[str, str, Optional[dict]]], each=None) -> List[Tuple[int, str]]:
        got = self.shell.run(self.command(reqs), check=False)
        answers = self.parse(got.stdout, len(reqs))
        if len(answers) < len(reqs) or any(code == 0 for code, _ in answers):
            meaning = _CURL_EXIT.get(got.exited, f"curl exit {got.exited}")
            raise CaError(f"{self.where}: cannot {what} on the master's CA at {self.url()}: {meaning}: "
                          f"{_message(got.stderr) or '(no message)'}")
        for i, answer in enumerate(answers):
            if each is not None:
                each(i, *answer)
        return answers

    def end_turn(self) -> None:
        pass


# -- the CA -------------------------------------------------------------------------------------


class CertificateAuthority:
    """The master's CA through its (SSH or local) shell: serialised, batched, over the CA's HTTP API.

    A caller asks about one name; callers that arrive while a CA operation
    runs wait for the lock and are then served together by the next one, so
    300 nodes cost a few dozen CA turns, not 300. ``backend`` forces "https"
    (this process), "curl" (on the master) or "cli" (``puppetserver ca``);
    by default a ``local`` master whose key this process can read is called
    directly, any other through curl on the master, and a master without curl
    through the CLI.
    """

    def __init__(self, shell, puppetserver: Optional[str] = None, puppet: Optional[str] = None, *,
                 backend: Optional[str] = None, port: int = PORT, host_cert: Optional[HostCert] = None):
        self.shell = shell
        self.puppetserver = puppetserver
        self.puppet = puppet
        self.port = port
        self.backend = backend  # None: chosen at the first CA turn
        # one CA turn at a time: ``_busy`` under ``_cond``, which also guards the waiting names and wakes their
        # callers when a result of theirs is delivered (mid-turn: a host goes on as soon as its name is signed)
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: Dict[str, List[dict]] = {a: [] for a in ("list", "match", "sign", "clean")}
        self._config: Optional[str] = None  # the CLI's private puppet.conf on the master
        self._via = None  # PythonHttps or CurlOnMaster
        self.host_cert = host_cert  # None: read on the master (puppet config print ... --section server)
        self.commands = 0  # CA operations run (a list, a sign, a clean; the benchmark and tests read it)
        self.requests = 0  # HTTP requests made to the CA
        self.said: List[str] = []  # what the CA told the user once (e.g. the CLI fallback)
        #: how long the caller that runs a CA turn waits for others first (at most a quarter of the last turn):
        #: worth it when each operation starts a process (the CLI, ~0.3-0.9 s); over the API a turn's own cost
        #: is one TLS connection (~10 ms), so waiting longer than ``api_gather_s`` costs more than it saves
        #: (callers that arrive during a turn are served together by the next one anyway)
        self.gather_s = 0.05
        self.api_gather_s = 0.01
        self._last_s = 1.0  # how long the last CA turn took

    # what callers use
    def status(self, certname: str) -> CaEntry:
        return self._submit("list", certname)

    def sign(self, certname: str) -> None:
        self._submit("sign", certname)

    def sign_if_matching(self, certname: str, fingerprint: str) -> Tuple[CaEntry, bool]:
        """The master's entry for ``certname``; a request whose fingerprint is ``fingerprint`` is signed in the
        same turn of the CA (one list and one sign operation for every name waiting). -> (entry, signed)."""
        return self._submit("match", (certname, fingerprint))

    def clean(self, certname: str) -> None:
        self._submit("clean", certname)

    def close(self) -> None:
        with self._turn():
            if self._via is not None:
                self._via.end_turn()
            if self._config:
                try:
                    self.shell.run(f"rm -rf {shlex.quote(self._config.rsplit('/', 1)[0])}", check=False)
                except Exception:  # noqa: BLE001 - a temporary directory left behind is harmless
                    pass
                self._config = None

    @property
    def dry_run(self) -> bool:
        return bool(getattr(self.shell, "dry_run", False))

    # machinery
    @contextlib.contextmanager
    def _turn(self):
        with self._cond:
            while self._busy:
                self._cond.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _submit(self, action: str, name):
        item = {"name": name, "done": False, "value": None, "error": None}
        with self._cond:
            self._waiting[action].append(item)
            while self._busy and not item["done"]:
                self._cond.wait()
            if not item["done"]:
                self._busy = True  # this caller runs the next turn, for everyone waiting for this action
        if not item["done"]:
            try:
                self._run_turn(action)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
        if item["error"] is not None:
            raise item["error"]
        return item["value"]

    def _run_turn(self, action: str) -> None:
        # let the callers arriving together share this turn; only worth it when turns are slow
        gather = min(self.gather_s, self._last_s / 4)
        if self.backend not in (None, "cli"):
            gather = min(gather, self.api_gather_s)
        if gather > 0.001:
            time.sleep(gather)
        with self._cond:
            items, self._waiting[action] = self._waiting[action], []
        by_name: Dict[object, List[dict]] = {}
        for i in items:
            by_name.setdefault(i["name"], []).append(i)

        def deliver(name, value) -> None:
            with self._cond:
                for i in by_name.get(name, ()):
                    if not i["done"]:
                        i["error" if isinstance(value, Exception) else "value"] = value
                        i["done"] = True
                self._cond.notify_all()

        began = time.monotonic()
        try:
            results = getattr(self, "_" + action)(list(by_name), deliver)
        except Exception as exc:  # noqa: BLE001 - every waiter of this turn not served yet gets the same error
            results = {n: exc for n in by_name}
        finally:
            if self._via is not None:
                self._via.end_turn()
        self._last_s = time.monotonic() - began
        for name, value in results.items():
            deliver(name, value)
        for name, waiting in by_name.items():  # an action that gave no answer must not leave a caller waiting
            if not all(i["done"] for i in waiting):
                deliver(name, CaError(f"{self.shell.name}: the CA gave no answer for {name} (a bug: report it)"))

    def _match(self, pairs: Sequence[Tuple[str, str]], deliver=None) -> Dict[Tuple[str, str], object]:
        """List every name, then sign the requests whose fingerprint is the caller's; each caller gets its answer
        as soon as it is known (a mismatch right after the list, a signature as soon as it is made)."""
        entries = self._list(list(dict.fromkeys(n for n, _ in pairs)))
        matching = {(n, fp) for n, fp in pairs
                    if entries[n].state == "requested" and entries[n].fingerprint == fp.upper()}
        out: Dict[Tuple[str, str], object] = {}

        def give(name, error) -> None:
            for pair in pairs:
                if pair[0] == name and pair not in out:
                    out[pair] = error if isinstance(error, Exception) else (entries[name], pair in matching)
                    if deliver is not None:
                        deliver(pair, out[pair])

        wanted = sorted({n for n, _ in matching})
        for name in dict.fromkeys(n for n, _ in pairs):
            if name not in wanted:
                give(name, None)
        if wanted:
            self._sign(wanted, give)
        return out

    # which way to the CA
    def _prepare(self) -> str:
        """Choose the backend (once): read the master's certificate paths, see whether curl is there."""
        if self.backend == "cli" or self._via is not None:
            return self.backend
        probe = "command -v curl >/dev/null 2>&1 && echo curl=yes || echo curl=no"
        if self.host_cert is None:
            self._layout()
            got = self.shell.run(f"{probe}; {shlex.quote(self.puppet)} config print {' '.join(HOSTCERT_SETTINGS)} "
                                 "--section server",
                                 hint="is Puppet installed on the master? (inv bootstrap --only puppet-master)")
            conf = dict(line.split(" = ", 1) for line in got.stdout.splitlines() if " = " in line)
            missing = [k for k in HOSTCERT_SETTINGS if not conf.get(k, "").strip()]
            if missing:
                raise CaError(f"{self.shell.name}: puppet config print on the master gave no {', '.join(missing)}: "
                              f"{_message(got.output)}")
            self.host_cert = HostCert(*(conf[k].strip() for k in HOSTCERT_SETTINGS))
        else:
            got = self.shell.run(probe)
        has_curl = "curl=yes" in got.stdout
        hc = self.host_cert
        local_ok = (getattr(self.shell, "local", False)
                    and all(os.access(path, os.R_OK) for path in (hc.key, hc.cert, hc.cacert)))
        choice = self.backend or ("https" if local_ok else "curl")
        if choice == "https":
            self._via = PythonHttps(self.shell.name, hc, port=self.port)
        elif has_curl:
            self._via = CurlOnMaster(self.shell, hc, port=self.port)
        else:
            choice = "cli"
            self._say(f"[{self.shell.name}] curl is not installed on the master: the CA is reached through "
                      "`puppetserver ca` instead (about a second per CA operation); install curl there to make "
                      "signing faster")
        self.backend = choice
        return choice

    def _say(self, line: str) -> None:
        self.said.append(line)
        echo = getattr(self.shell, "echo", None)
        if echo is not None:
            echo(line)

    def _layout(self) -> None:
        if self.puppetserver is None or self.puppet is None:
            from . import puppet_master, remote

            layout = puppet_master.layout_for(remote.platform(self.shell))
            self.puppetserver = self.puppetserver or layout.puppetserver
            self.puppet = self.puppet or layout.puppet

    def _api(self, what: str, reqs, each=None) -> List[Tuple[int, str]]:
        """The answers to ``reqs``, in order; ``each(index, code, body)`` as each one arrives."""
        self.requests += len(reqs)
        return self._via.requests(what, reqs, each)

    def _failed(self, what: str, method: str, path: str, code: int, body: str) -> CaError:
        reason = http.client.responses.get(code, "")
        text = (f"{self.shell.name}: the master's CA refused to {what}: {method} {path} -> {code} {reason}: "
                f"{_message(body) or '(no message)'}")
        if code == 403:
            cert = self.host_cert
            text += (f". The CA was called with {cert.cert} (certname {cert.certname}); " if cert else ". ") + \
                _FORBIDDEN_HINT
        return CaError(text)

    # the operations
    def _list(self, names: Sequence[str], deliver=None) -> Dict[str, CaEntry]:
        self.commands += 1
        if self._prepare() == "cli":
            return self._cli_list(names)
        reqs = [("GET", f"{API}/certificate_status/{quote(n, safe='')}", None) for n in names]
        out = {}
        for name, (method, path, _), (code, body) in zip(names, reqs, self._api("list certificates", reqs)):
            if code == 404:
                out[name] = CaEntry("missing")
                continue
            if code != 200:
                raise self._failed(f"read the certificate status of {name}", method, path, code, body)
            try:
                out[name] = entry_from_status(json.loads(body))
            except (ValueError, AttributeError):
                raise CaError(f"{self.shell.name}: the master's CA answered {method} {path} with something that is "
                              f"not a certificate status: {_message(body)}") from None
        return out

    def _sign(self, names: Sequence[str], deliver=None) -> Dict[str, object]:
        """Sign ``names``: name -> None (signed) or the CA's refusal; ``deliver(name, that)`` as each is known."""
        self.commands += 1
        out: Dict[str, object] = {}
        if self._prepare() == "cli":
            out = self._cli_sign(names)
        elif self.dry_run:
            self._say(f"  [{self.shell.name}] would sign {', '.join(names)} on the master's CA")
            out = {n: None for n in names}
        else:
            reqs = [("PUT", f"{API}/certificate_status/{quote(n, safe='')}", {"desired_state": "signed"})
                    for n in names]

            def each(i, code, body) -> None:
                method, path, _ = reqs[i]
                out[names[i]] = None if code == 204 else self._failed(f"sign {names[i]}", method, path, code, body)
                if deliver is not None:
                    deliver(names[i], out[names[i]])

            self._api("sign certificates", reqs, each)
            return out
        if deliver is not None:
            for name, value in out.items():
                deliver(name, value)
        return out

    def _clean(self, names: Sequence[str], deliver=None) -> Dict[str, object]:
        """As ``puppetserver ca clean``: revoke (409: a request never signed, nothing to revoke), then delete."""
        self.commands += 1
        if self._prepare() == "cli":
            return self._cli_clean(names)
        if self.dry_run:
            self._say(f"  [{self.shell.name}] would clean {', '.join(names)} on the master's CA (revoke, delete)")
            return {n: None for n in names}
        reqs = []
        for n in names:
            path = f"{API}/certificate_status/{quote(n, safe='')}"
            reqs += [("PUT", path, {"desired_state": "revoked"}), ("DELETE", path, None)]
        answers = self._api("clean certificates", reqs)
        out: Dict[str, object] = {}
        for i, name in enumerate(names):
            (m1, p1, _), (m2, p2, _) = reqs[2 * i], reqs[2 * i + 1]
            (c1, b1), (c2, b2) = answers[2 * i], answers[2 * i + 1]
            if c1 not in (200, 204, 404, 409):
                out[name] = self._failed(f"revoke {name}", m1, p1, c1, b1)
            elif c2 not in (200, 204, 404):  # 404: nothing left to delete, which is what clean wants
                out[name] = self._failed(f"delete {name}", m2, p2, c2, b2)
            else:
                out[name] = None
        return out

    # the CLI (a master without curl)
    def _cli(self, action: str, names: Sequence[str], *extra: str) -> str:
        conf = self._conf()
        return " ".join(shlex.quote(a) for a in [self.puppetserver, "ca", action, "--config", conf,
                                                 "--certname", ",".join(names), *extra])

    def _conf(self) -> str:
        if self._config is None:
            self._layout()
            got = self.shell.run(f"{shlex.quote(self.puppet)} config print certname ssldir cadir --section server",
                                 hint="is Puppet installed on the master? (inv bootstrap --only puppet-master)")
            conf = dict(line.split(" = ", 1) for line in got.stdout.splitlines() if " = " in line)
            text = ("[main]\n" + "".join(f"{k} = {conf[k].strip()}\n" for k in ("certname", "ssldir", "cadir")
                                         if conf.get(k))
                    + f"server = 127.0.0.1\nca_server = 127.0.0.1\nca_port = {self.port}\n")
            # a private temporary file: reading the CA needs it in a dry run too, and it changes nothing
            made = self.shell.run("d=$(mktemp -d /tmp/deploy_tasks-ca.XXXXXX) && printf %s "
                                  f"{shlex.quote(text)} > \"$d/puppet.conf\" && echo \"$d/puppet.conf\"")
            self._config = made.stdout.strip().splitlines()[-1]
        return self._config

    def _cli_list(self, names: Sequence[str]) -> Dict[str, CaEntry]:
        got = self.shell.run(self._cli("list", names, "--format", "json"), check=False)
        try:
            data = json.loads(got.stdout.strip().splitlines()[-1] if got.stdout.strip() else "")
        except ValueError:
            raise CaError(f"{self.shell.name}: puppetserver ca list failed (exit {got.exited}): "
                          f"{got.output[-600:]}") from None
        out = {n: CaEntry("missing") for n in names}
        for state in ("requested", "signed", "revoked"):
            for entry in data.get(state) or []:
                out[entry.get("name", "")] = entry_from_status({**entry, "state": state})
        return out

    def _cli_sign(self, names: Sequence[str]) -> Dict[str, object]:
        got = self.shell.change(self._cli("sign", names), check=False)
        if self.dry_run:
            return {n: None for n in names}
        return {n: None if f"signed certificate request for {n}" in got.output
                else CaError(f"{self.shell.name}: puppetserver ca sign --certname {n} failed "
                             f"(exit {got.exited}): {got.output[-600:]}") for n in names}

    def _cli_clean(self, names: Sequence[str]) -> Dict[str, object]:
        got = self.shell.change(self._cli("clean", names), check=False)
        if self.dry_run:
            return {n: None for n in names}
        return {n: None if (f"Cleaned files related to {n}" in got.output or f"{n} has been revoked" in got.output)
                else CaError(f"{self.shell.name}: puppetserver ca clean --certname {n} failed "
                             f"(exit {got.exited}): {got.output[-600:]}") for n in names}
