"""Run commands on a Windows server of the inventory over WinRM (pywinrm's ``Protocol``).

pywinrm's ``Session.run_cmd`` opens a shell, a TCP connection and (NTLM) a new
handshake for every command, and neither a ``Session`` nor a ``Protocol`` may
be shared between threads (NTLM sealing keeps per-connection sequence
numbers). So, in pywinrm's own three layers, this module fills the gaps:

* ``WinRMTransport``: one host, used by one thread (enforced: the first
  thread that runs a command owns it). Lazy like Fabric's ``Connection``;
  the first command opens one shell (code page 65001, output decoded as
  UTF-8), every later command reuses it, ``close()`` deletes it (idempotent,
  also a context manager). Each command is polled to completion (a
  ``w:TimedOut`` Receive is polled again) and ended with a terminate Signal
  when it outlasts its timeout.
* ``WinRMPool``: one transport per (host, worker thread), all closed by one
  ``close()``; the credential is resolved once, and the insecure-setting
  warnings are printed once per run.
* Every pywinrm, requests and TLS failure becomes one of the project's
  ``TransportError`` types (``deploy_tasks.errors``), with ``retryable`` set;
  a command's exit status is data (``Result.exited``).

Safe defaults: HTTPS with certificate validation (``winrm_ca_path`` or the
system's CA store); plain HTTP only with message encryption (NTLM, Kerberos,
CredSSP). Basic over HTTP (``winrm_allow_unencrypted``) or an unchecked
certificate (``winrm_cert_validation=ignore``) must be asked for and prints a
warning on every run. After the first authentication rejection the credential
is not used again for any host in this process: domain accounts lock out.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import math
import os
import re
import ssl
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import redact as console
from ..errors import (AuthenticationRejected, CertificateRejected, CommandTimedOut, ConfigError, HostUnreachable,
                      QuotaExceeded, RemoteCommandError, TransportError, WSManFault)
from .base import Result
from .wincmd import argv_line

USER_ENV = "DEPLOY_WINRM_USER"
PASSWORD_ENV = "DEPLOY_WINRM_PASSWORD"

CODEPAGE_UTF8 = 65001
#: WSManFault codes as Windows sends them
FAULT_TIMED_OUT = 2150858793  # w:TimedOut: a Receive found no output within OperationTimeout
FAULT_INVALID_SELECTORS = 2150858843  # the shell (or command) no longer exists: rebooted, idle-expired
FAULT_QUOTA_LIMIT = 2150859173  # w:QuotaLimit: e.g. the 31st shell of a user (WinRM 3.0 default 30)
# MaxConcurrentOperationsPerUser: WinRM counts every command a shell ran until the shell is deleted, so a
# shell reused for ~1500 commands hits it; a fresh shell clears it (the WinRM Ruby gem does the same)
FAULT_OPERATIONS_QUOTA = 2150859174
_SHELL_RESET_FAULTS = (FAULT_INVALID_SELECTORS, FAULT_OPERATIONS_QUOTA)
FAULT_RPC_FAILED = 1726  # a sick WinRM service; transient
_FAULT_NS = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"

#: base64 characters per ``echo`` line in put_bytes: a multiple of 4 (so a last
#: line is never ``ON``/``OFF``) that leaves room for the path under cmd.exe's 8191
PUT_CHUNK = 7600
_SAFE_WINDOWS_PATH = re.compile(r'^[A-Za-z]:\\[^"%<>|*?\r\n\x00-\x1f]*[^\\"%<>|*?\r\n\x00-\x1f .]$')

TRANSPORTS = ("ntlm", "basic", "kerberos", "credssp", "certificate")
_EXTRA = {"kerberos": "HAVE_KERBEROS", "credssp": "HAVE_CREDSSP", "ntlm": "HAVE_NTLM"}
_PIP = {"kerberos": "pip install 'pywinrm[kerberos]' (and a Kerberos client: krb5-user, kinit)",
        "credssp": "pip install 'pywinrm[credssp]'", "ntlm": "pip install requests-ntlm"}


def argv_to_command_line(argv: Sequence[str]) -> str:
    """An argument list as one Windows command line for a program started directly (no cmd.exe).

    The product's quoting (``wincmd.argv_line``: ``CommandLineToArgvW`` rules);
    line breaks are refused as well, since a WinRM Command carries one line.
    """
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a non-empty list of strings, not {argv!r}")
    if any("\x00" in a or "\r" in a or "\n" in a for a in argv):
        raise ValueError(f"a Windows command line cannot carry NUL or line breaks: {argv!r}")
    return argv_line(argv)


# -- credentials -------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    """A WinRM account; the password is registered with the redactor as soon as it exists."""

    user: str
    password: str = field(repr=False)

    def __post_init__(self):
        console.add_secret(self.password)

    @property
    def key(self) -> Tuple[str, str]:
        return (self.user.lower(), hashlib.sha256(self.password.encode("utf-8")).hexdigest())


def credential_from_env(environ: Optional[Mapping[str, str]] = None, interactive: Optional[bool] = None,
                        ask: Callable[[str], str] = getpass.getpass, ask_user: Callable[[str], str] = input) -> Credential:
    """``DEPLOY_WINRM_USER`` / ``DEPLOY_WINRM_PASSWORD``, else a prompt when interactive, else a ConfigError."""
    environ = os.environ if environ is None else environ
    user = (environ.get(USER_ENV) or "").strip()
    password = environ.get(PASSWORD_ENV)
    if user and password:
        return Credential(user, password)
    if interactive is None:
        interactive = sys.stdin.isatty()
    if not interactive:
        missing = " and ".join(n for n, v in ((USER_ENV, user), (PASSWORD_ENV, password)) if not v)
        raise ConfigError(f"WinRM credentials: {missing} not set; set {USER_ENV} and {PASSWORD_ENV} "
                          "(Jenkins: withCredentials), or run in a terminal to be asked")
    if not user:
        user = ask_user("WinRM user (DOMAIN\\user): ").strip()
        if not user:
            raise ConfigError(f"WinRM credentials: no user given (set {USER_ENV})")
    if not password:
        password = ask(f"WinRM password for {user}: ")
        if not password:
            raise ConfigError(f"WinRM credentials: no password given for {user} (set {PASSWORD_ENV})")
    return Credential(user, password)


class _Rejected:
    """Credentials a host refused in this process: never offered again, to any host (accounts lock out)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_key: Dict[Tuple[str, str], str] = {}

    def mark(self, key: Tuple[str, str], host: str) -> None:
        with self._lock:
            self._by_key.setdefault(key, host)

    def who_rejected(self, key: Tuple[str, str]) -> Optional[str]:
        with self._lock:
            return self._by_key.get(key)

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()


REJECTED = _Rejected()


def forget_rejected_credentials() -> None:
    """Allow rejected credentials again (a new run in the same process, or a test)."""
    REJECTED.clear()


# -- options -----------------------------------------------------------------------


@dataclass(frozen=True)
class WinRMOptions:
    """How to reach the Windows hosts: checked once, shared by every transport of a run."""

    transport: str = "ntlm"
    scheme: str = "https"
    port: int = 0  # 0: 5986 for https, 5985 for http (a server's WinRM Port cell wins)
    cert_validation: str = "validate"
    ca_path: str = ""
    operation_timeout_s: int = 20
    read_timeout_s: int = 30
    allow_unencrypted: bool = False
    cert_pem: str = ""
    cert_key_pem: str = ""
    command_timeout_s: Optional[float] = 1800
    put_max_bytes: int = 65536

    def check(self) -> List[str]:
        """Raise ConfigError for an unsafe or impossible combination; return the warnings to print every run."""
        problems = []
        if self.transport not in TRANSPORTS:
            problems.append(f"winrm_transport = {self.transport!r} must be one of {', '.join(TRANSPORTS)}")
        if self.scheme not in ("https", "http"):
            problems.append(f"winrm_scheme = {self.scheme!r} must be https or http")
        if self.read_timeout_s <= self.operation_timeout_s:
            problems.append(f"winrm_read_timeout_s ({self.read_timeout_s}) must exceed winrm_operation_timeout_s "
                            f"({self.operation_timeout_s}): a node may hold a Receive for the whole operation timeout")
        if self.operation_timeout_s < 1:
            problems.append("winrm_operation_timeout_s must be at least 1")
        if self.ca_path and not os.path.exists(self.ca_path):
            problems.append(f"winrm_ca_path {self.ca_path} does not exist (a PEM bundle or a hashed CA directory)")
        if self.scheme == "http":
            if self.transport == "certificate":
                problems.append("winrm_transport certificate needs winrm_scheme https (the client certificate is "
                                "presented in TLS)")
            elif self.transport == "basic" and not self.allow_unencrypted:
                problems.append("winrm_transport basic over winrm_scheme http sends the password and every command "
                                "in clear: use https (5986), or ntlm/kerberos (message encryption), or accept it "
                                "explicitly with winrm_allow_unencrypted = true")
        if self.transport == "certificate":
            for key, value in (("winrm_cert_pem", self.cert_pem), ("winrm_cert_key_pem", self.cert_key_pem)):
                if not value:
                    problems.append(f"winrm_transport certificate needs {key}")
                elif not os.path.isfile(value):
                    problems.append(f"{key} {value} does not exist")
        flag = _EXTRA.get(self.transport)
        if flag and not problems:
            import winrm.transport as wt

            if not getattr(wt, flag, False):
                problems.append(f"winrm_transport {self.transport} needs an extra package: {_PIP[self.transport]}")
        if problems:
            raise ConfigError("WinRM settings:\n  - " + "\n  - ".join(problems))
        return self.insecure_warnings()

    def insecure_warnings(self) -> List[str]:
        warnings = []
        if self.scheme == "https" and self.cert_validation == "ignore":
            warnings.append("WARNING: winrm_cert_validation = ignore: the Windows hosts' certificates are not checked; "
                            "anyone on the network path can pose as a host and capture the WinRM credential")
        if self.scheme == "http" and self.transport == "basic":
            warnings.append("WARNING: winrm_allow_unencrypted = true with basic over http: the WinRM password and "
                            "every command travel in clear text")
        return warnings

    def effective_port(self, server_port: Optional[int] = None) -> int:
        if server_port:
            return int(server_port)
        if self.port:
            return int(self.port)
        return 5986 if self.scheme == "https" else 5985

    def ca_trust(self):
        """What pywinrm's ``ca_trust_path`` gets: the configured CA, else the system store (never env vars)."""
        if self.scheme != "https" or self.cert_validation != "validate":
            return None
        if self.ca_path:
            return self.ca_path
        paths = ssl.get_default_verify_paths()
        for candidate in (paths.cafile, paths.capath):
            if candidate and os.path.exists(candidate):
                return candidate
        return None  # requests' own bundle (certifi)

    def message_encryption(self) -> str:
        if self.scheme == "https":
            return "auto"  # TLS protects the channel; pywinrm adds no second layer over https
        return "never" if self.transport == "basic" else "always"

    @property
    def ca_name(self) -> str:
        return self.ca_path or "the system's CA store"


def options_from_settings(settings) -> WinRMOptions:
    """WinRMOptions from resolved ``Settings`` (or anything with those attributes)."""
    g = lambda key, default=None: getattr(settings, key, default)  # noqa: E731
    return WinRMOptions(
        transport=g("winrm_transport", "ntlm"), scheme=g("winrm_scheme", "https"), port=int(g("winrm_port", 0) or 0),
        cert_validation=g("winrm_cert_validation", "validate"), ca_path=g("winrm_ca_path", "") or "",
        operation_timeout_s=int(g("winrm_operation_timeout_s", 20)), read_timeout_s=int(g("winrm_read_timeout_s", 30)),
        allow_unencrypted=bool(g("winrm_allow_unencrypted", False)), cert_pem=g("winrm_cert_pem", "") or "",
        cert_key_pem=g("winrm_cert_key_pem", "") or "", command_timeout_s=g("command_timeout_s", 1800),
        put_max_bytes=int(g("winrm_put_max_bytes", 65536)))


# -- the transport -----------------------------------------------------------------


class WinRMTransport:
    """Commands and files on one Windows host, over one reused WinRM shell; for one thread only."""

    def __init__(self, name: str, address: str, options: WinRMOptions, *, port: Optional[int] = None,
                 credential: "Credential | Callable[[], Credential] | None" = None, dry_run: bool = False,
                 echo: Optional[Callable[[str], None]] = None):
        self.name = name  # the inventory hostname: what the user reads in messages
        self.address = address
        self.options = options
        self.port = options.effective_port(port)
        self.dry_run = dry_run
        # every line is redacted here, whatever echo does with it (a report, a log file)
        sink = echo or (lambda line: console.say(line))
        self.echo = lambda line: sink(console.redact(line))
        self._credential_source = credential if credential is not None else credential_from_env
        self._credential: Optional[Credential] = None
        self._protocol = None
        self._shell_id: Optional[str] = None
        self._owner: Optional[int] = None
        self._lock = threading.Lock()
        self.shells_opened = 0  # how many WS-Man Creates this transport sent (reuse is the point)

    # -- where ------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.options.scheme}://{host}:{self.port}/wsman"

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port} ({self.options.scheme})"

    @property
    def user(self) -> str:
        if self.options.transport == "certificate":
            return f"certificate {self.options.cert_pem}"
        return self.credential().user

    def credential(self) -> Credential:
        if self._credential is None:
            source = self._credential_source
            self._credential = source if isinstance(source, Credential) else source()
        return self._credential

    # -- lifecycle ----------------------------------------------------------------
    def __enter__(self) -> "WinRMTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete the shell on the host and drop the connection. Idempotent; callable from any thread."""
        with self._lock:
            protocol, shell_id = self._protocol, self._shell_id
            self._shell_id = None
            self._protocol = None
            if protocol is None:
                return
            try:
                if shell_id is not None and not self._is_rejected():
                    protocol.close_shell(shell_id, close_session=False)
            except Exception:  # noqa: BLE001 - the host is gone or the shell expired: nothing left to free
                pass
            finally:
                try:
                    protocol.transport.close_session()
                except Exception:  # noqa: BLE001
                    pass

    def hand_over(self) -> None:
        """Make the calling thread this transport's user. Only for work that never overlaps on the host (the
        runner runs one unit per host at a time): pywinrm must not be used by two threads at once."""
        self._owner = threading.get_ident()

    def _own(self) -> None:
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise RuntimeError(f"{self.name}: this WinRM transport belongs to another worker thread; pywinrm is not "
                               "thread-safe (NTLM sealing): take one per thread from WinRMPool.get()")

    def _is_rejected(self) -> bool:
        if self.options.transport == "certificate" or self._credential is None:
            return False
        return REJECTED.who_rejected(self._credential.key) is not None

    def _refuse_if_rejected(self) -> None:
        if self.options.transport == "certificate":
            return
        cred = self.credential()
        first = REJECTED.who_rejected(cred.key)
        if first is not None:
            raise AuthenticationRejected(
                self.name, f"not trying user {cred.user} ({self.options.transport}): host {first} rejected that "
                           f"credential earlier in this run and another attempt could lock the account; fix "
                           f"{USER_ENV}/{PASSWORD_ENV} and run again", user=cred.user, transport=self.options.transport)

    def _make_protocol(self):
        from .winrm_messages import TemplatedProtocol as Protocol  # pywinrm's, cheaper per command message

        o = self.options
        o.check()  # a transport made without a pool is held to the same safe defaults
        kwargs = dict(transport=o.transport, server_cert_validation=o.cert_validation, ca_trust_path=o.ca_trust(),
                      read_timeout_sec=o.read_timeout_s, operation_timeout_sec=o.operation_timeout_s,
                      message_encryption=o.message_encryption(), proxy=None)
        if o.transport == "certificate":
            kwargs.update(cert_pem=o.cert_pem, cert_key_pem=o.cert_key_pem)
        else:
            cred = self.credential()
            kwargs.update(username=cred.user, password=cred.password)
        try:
            protocol = Protocol(self.endpoint, **kwargs)
        except Exception as exc:  # noqa: BLE001 - pywinrm validates its arguments with assorted exceptions
            raise TransportError(self.name, f"WinRM client for {self.where} cannot be set up: "
                                            f"{console.redact(str(exc))}") from None
        _without_environment_proxies(protocol.transport)
        _prepare_once(protocol.transport)
        return protocol

    def _shell(self) -> str:
        if self._shell_id is None:
            self._refuse_if_rejected()
            if self._protocol is None:
                self._protocol = self._make_protocol()
            self._shell_id = self._call("opening a shell", self._protocol.open_shell, codepage=CODEPAGE_UTF8)
            self.shells_opened += 1
        return self._shell_id

    # -- commands -------------------------------------------------------------------
    def run(self, command: str, *, check: bool = True, hint: str = "", timeout: Optional[float] = None) -> Result:
        """Run a read-only command line through cmd.exe (also in a dry run). ``check``: a non-zero exit raises."""
        return self._checked(self._execute(command, timeout, skip_cmd_shell=False), check, hint)

    def run_argv(self, argv: Sequence[str], *, check: bool = True, hint: str = "",
                 timeout: Optional[float] = None) -> Result:
        """Run a program with these arguments, quoted by Windows' rules, without cmd.exe (no %VAR%, no &&)."""
        command = argv_to_command_line(argv)
        return self._checked(self._execute(command, timeout, skip_cmd_shell=True), check, hint)

    def test(self, command: str) -> bool:
        """A yes/no check: exit 0 = yes, 1 = no; anything else is an error, never a no."""
        result = self._execute(command, None, skip_cmd_shell=False)
        if result.exited in (0, 1):
            return result.exited == 0
        raise RemoteCommandError(self.name, command, result.exited, result.output,
                                 "a check could not run; it is not read as 'absent'")

    def change(self, command: str, *, check: bool = True, hint: str = "", timeout: Optional[float] = None) -> Result:
        """Run a command line that alters the host; in a dry run print it instead."""
        if self.dry_run:
            self.echo(f"  [{self.name}] would run: {command}")
            return Result(command, 0, "", "")
        return self.run(command, check=check, hint=hint, timeout=timeout)

    def change_argv(self, argv: Sequence[str], *, check: bool = True, hint: str = "",
                    timeout: Optional[float] = None) -> Result:
        """``run_argv`` for a program that alters the host; in a dry run print it instead."""
        if self.dry_run:
            self.echo(f"  [{self.name}] would run: {argv_to_command_line(argv)}")
            return Result(argv_to_command_line(argv), 0, "", "")
        return self.run_argv(argv, check=check, hint=hint, timeout=timeout)

    def _checked(self, result: Result, check: bool, hint: str) -> Result:
        if check and not result.ok:
            raise RemoteCommandError(self.name, result.command, result.exited, result.output, hint)
        return result

    def _execute(self, command: str, timeout: Optional[float], skip_cmd_shell: bool) -> Result:
        """Start ``command`` in the shell and poll it to completion; terminate it past ``timeout``."""
        from winrm.exceptions import WinRMOperationTimeoutError

        self._own()
        timeout = timeout or self.options.command_timeout_s
        with self._lock:
            started = time.monotonic()
            shell, command_id = self._start(command, skip_cmd_shell)
            protocol = self._protocol
            deadline = started + timeout if timeout else None
            out: List[bytes] = []
            err: List[bytes] = []
            operation_timeout = self.options.operation_timeout_s
            try:
                while True:
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self._terminate(shell, command_id)
                            raise CommandTimedOut(self.name, command, timeout, _decode(b"".join(out) + b"".join(err)))
                        # a Receive blocks up to OperationTimeout: never past the command's deadline
                        protocol.operation_timeout_sec = max(1, min(operation_timeout, math.ceil(left)))
                    # (no credential check here: polling rides the authenticated connection, and
                    # abandoning a running command would lose its outcome)
                    try:
                        o, e, code, done = protocol.get_command_output_raw(shell, command_id)
                    except WinRMOperationTimeoutError:
                        continue  # w:TimedOut: still running, nothing new; poll again
                    except Exception as exc:  # noqa: BLE001 - mapped below, one place
                        raise self._error(exc, f"reading the output of {command}", command_started=True) from None
                    out.append(o)
                    err.append(e)
                    if done:
                        break
            finally:
                protocol.operation_timeout_sec = operation_timeout
            # Windows keeps a finished command until it is signalled: release it (as run_cmd does)
            self._terminate(shell, command_id)
            return Result(command, code, _decode(b"".join(out)), _decode(b"".join(err)), time.monotonic() - started)

    def _start(self, command: str, skip_cmd_shell: bool) -> Tuple[str, str]:
        from winrm.exceptions import WSManFaultError

        for attempt in (1, 2):
            shell = self._shell()
            self._refuse_if_rejected()
            try:
                return shell, self._protocol.run_command(shell, command, skip_cmd_shell=skip_cmd_shell)
            except WSManFaultError as exc:
                if fault_code(exc) in _SHELL_RESET_FAULTS and attempt == 1:
                    # the shell is gone (host rebooted, shell idle-expired) or has used up its operations quota:
                    # the command never started; a new shell (the old one closed, so it frees its quota)
                    if fault_code(exc) == FAULT_OPERATIONS_QUOTA:
                        self._delete_shell_quietly(shell)
                    self._shell_id = None
                    continue
                raise self._error(exc, f"starting {command}") from None
            except Exception as exc:  # noqa: BLE001
                raise self._error(exc, f"starting {command}") from None
        raise AssertionError("unreachable")

    def _delete_shell_quietly(self, shell: str) -> None:
        try:
            self._protocol.close_shell(shell)
        except Exception:  # noqa: BLE001 - a shell that cannot be deleted expires on its idle timeout
            pass

    def _terminate(self, shell: str, command_id: str) -> None:
        """Signal terminate; a failure only costs the shell (a new one is opened next time)."""
        try:
            self._protocol.cleanup_command(shell, command_id)
        except Exception:  # noqa: BLE001
            self._shell_id = None
            try:
                self._protocol.transport.close_session()
            except Exception:  # noqa: BLE001
                pass

    def _call(self, doing: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - pywinrm's errors have no common base
            raise self._error(exc, doing) from None

    def _error(self, exc: BaseException, doing: str, command_started: bool = False) -> TransportError:
        error = map_error(exc, host=self.name, where=self.where, doing=doing, options=self.options,
                          user=(self._credential.user if self._credential else ""), command_started=command_started)
        if isinstance(error, AuthenticationRejected) and self._credential is not None:
            REJECTED.mark(self._credential.key, self.name)
        if isinstance(error, WSManFault) and error.code == FAULT_INVALID_SELECTORS:
            self._shell_id = None
        if isinstance(error, (HostUnreachable, AuthenticationRejected)) and self._protocol is not None:
            # a new TCP connection needs a new NTLM security context: start a fresh session next time
            try:
                self._protocol.transport.close_session()
            except Exception:  # noqa: BLE001
                pass
        return error

    # -- files ------------------------------------------------------------------------
    def put_file(self, local_path: str, path: str) -> None:
        """Copy a small controller file (``winrm_put_max_bytes``); large ones come from the package server."""
        size = os.path.getsize(local_path)
        if size > self.options.put_max_bytes:
            raise TransportError(self.name, f"refusing to push {local_path} ({size} bytes) to {path} over WinRM "
                                            f"(limit winrm_put_max_bytes = {self.options.put_max_bytes}): serve "
                                            "the file from the package server and download it on the host")
        with open(local_path, "rb") as fh:
            self.put_bytes(fh.read(), path)

    def put_bytes(self, data: bytes, path: str) -> None:
        """Write a small file: base64 lines echoed into ``<path>.b64``, decoded by ``certutil``, then removed.

        Nothing large goes over WinRM (6-10x slower than HTTP from the package
        server): above ``winrm_put_max_bytes`` this refuses.
        """
        if not _SAFE_WINDOWS_PATH.match(path or ""):
            raise TransportError(self.name, f"cannot write {path!r}: put_bytes takes an absolute Windows path "
                                            "(C:\\dir\\file) without quotes, %, wildcards or a trailing dot/space")
        if len(data) > self.options.put_max_bytes:
            raise TransportError(self.name, f"refusing to push {len(data)} bytes to {path} over WinRM (limit "
                                            f"winrm_put_max_bytes = {self.options.put_max_bytes}): serve the file "
                                            "from the package server and download it on the host")
        if self.dry_run:
            self.echo(f"  [{self.name}] would upload {len(data)} bytes to {path}")
            return
        for command in put_commands(data, path):
            self.run(command, hint=f"writing {path} ({len(data)} bytes)")
        if not data:
            return
        staged = path + ".b64"
        try:
            decoded = self.run(f'certutil -f -decode "{staged}" "{path}"', check=False)
        finally:
            self.run(f'del /f /q "{staged}"', check=False)
        if not decoded.ok:
            raise RemoteCommandError(self.name, decoded.command, decoded.exited, decoded.output,
                                     f"decoding {path} failed")
        m = re.search(r"Output Length = (\d+)", decoded.stdout)
        if m and int(m.group(1)) != len(data):
            raise RemoteCommandError(self.name, decoded.command, decoded.exited, decoded.output,
                                     f"{path}: certutil wrote {m.group(1)} bytes, expected {len(data)}")


def put_commands(data: bytes, path: str) -> List[str]:
    """The cmd.exe lines that stage ``data`` as base64 lines in ``<path>.b64`` (or create ``path`` empty)."""
    if not data:
        return [f'type nul> "{path}"']
    text = base64.b64encode(data).decode("ascii")
    staged = path + ".b64"
    # redirection first: `echo ...1>f` would read the chunk's last digit as a handle number
    return [f'{">" if i == 0 else ">>"}"{staged}" echo {text[i:i + PUT_CHUNK]}' for i in range(0, len(text), PUT_CHUNK)]


def _decode(raw: bytes) -> str:
    """Shell output (code page 65001) as text, line ends as on the SSH side."""
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n")


# -- errors ----------------------------------------------------------------------------


def fault_code(exc) -> Optional[int]:
    """A WSManFaultError's code: ``f:WSManFault Code=`` (what pywinrm reads) or, as 2012 R2 answers quota
    faults, the ``MSFT_WmiError`` detail's ``error_Code``."""
    if exc.wsman_fault_code is not None:
        return exc.wsman_fault_code
    m = re.search(r"<(?:\w+:)?error_Code\b[^>]*>\s*(\d+)\s*<", exc.response or "")
    return int(m.group(1)) if m else None


def _windows_message(response: str) -> str:
    """The ``f:Message`` text of a WSManFault envelope (Windows' own words), or ''."""
    try:
        root = ET.fromstring(response)
    except Exception:  # noqa: BLE001
        return ""
    node = root.find(f".//{{{_FAULT_NS}}}Message")
    if node is None:  # 2012 R2's quota faults carry an MSFT_WmiError instead of an f:WSManFault
        node = next((n for n in root.iter() if n.tag.endswith("}Message") or n.tag == "Message"), None)
    if node is None:
        return ""
    return " ".join("".join(node.itertext()).split())


def map_error(exc: BaseException, *, host: str, where: str, doing: str, options: WinRMOptions, user: str = "",
              command_started: bool = False) -> TransportError:
    """A pywinrm / requests / TLS failure as the project's error, with what to do next; never a secret."""
    import requests
    from winrm.exceptions import (AuthenticationError, WinRMError, WinRMOperationTimeoutError, WinRMTransportError,
                                  WSManFaultError)

    text = console.redact(str(exc))
    unknown = (" (the command had started: its outcome is unknown, check the host before repeating it)"
               if command_started else "")
    if isinstance(exc, AuthenticationError):  # InvalidCredentialsError, BasicAuthDisabledError: HTTP 401
        if options.transport == "certificate":
            return AuthenticationRejected(host, f"{where} rejected the client certificate {options.cert_pem} while "
                                                f"{doing}: map it to an account on the host (winrm create "
                                                "winrm/config/service/certmapping)", user="", transport="certificate")
        extra = ""
        if options.scheme == "http" and options.transport == "basic":
            extra = "; Windows refuses basic over http unless AllowUnencrypted and Basic are enabled"
        return AuthenticationRejected(
            host, f"{where} rejected user {user} ({options.transport} authentication) while {doing}: check "
                  f"{USER_ENV}/{PASSWORD_ENV}, that the account is not locked and is an administrator there, and "
                  f"that WinRM allows {options.transport}{extra}. The credential is not used again in this run",
            user=user, transport=options.transport)
    if isinstance(exc, WSManFaultError):
        code = fault_code(exc)
        subcode = exc.fault_subcode or ""
        message = _windows_message(exc.response or "") or (exc.reason or "")
        message = console.redact(message)
        label = f"WS-Man fault {code}" + (f" ({subcode})" if subcode else "")
        if code == FAULT_QUOTA_LIMIT or subcode.endswith("QuotaLimit"):
            return QuotaExceeded(host, f"{where} refused {doing}: {label}: {message} (a WinRM quota: too many "
                                       "shells or commands for this user; retried once other shells close; "
                                       "lower max_parallel or raise MaxShellsPerUser)",
                                 code=code, subcode=subcode, windows_message=message)
        if code == FAULT_INVALID_SELECTORS:
            return WSManFault(host, f"{where} no longer has the shell while {doing}: {label}: {message} (the host "
                                    f"rebooted or the shell expired){unknown}", code=code, subcode=subcode,
                              windows_message=message, retryable=not command_started)
        return WSManFault(host, f"{where} answered {doing} with {label}: {message}{unknown}", code=code,
                          subcode=subcode, windows_message=message, retryable=code == FAULT_RPC_FAILED)
    if isinstance(exc, WinRMOperationTimeoutError):
        return HostUnreachable(host, f"{where} timed out (WS-Man OperationTimeout {options.operation_timeout_s} s) "
                                     f"while {doing}{unknown}")
    if isinstance(exc, WinRMTransportError):
        code = exc.code
        hints = {404: "nothing serves /wsman there: check the WinRM Port and winrm_scheme",
                 400: "the host could not read the request (encryption or envelope mismatch)",
                 413: "the request exceeded the host's MaxEnvelopeSizekb"}
        msg = f"{where} answered HTTP {code} while {doing}"
        if isinstance(code, int) and code >= 500:
            return HostUnreachable(host, f"{msg}{unknown}")
        return TransportError(host, f"{msg}: {hints.get(code, 'unexpected reply')}")
    if isinstance(exc, requests.exceptions.SSLError):
        if "certificate" in text.lower() or "hostname" in text.lower():
            return CertificateRejected(host, f"the TLS certificate of {where} did not validate against "
                                             f"{options.ca_name} while {doing}: {_short(text)} (set winrm_ca_path to "
                                             "the CA that signs the hosts' WinRM certificates, and reach the host "
                                             "by a name or address its certificate lists)")
        return TransportError(host, f"TLS with {where} failed while {doing}: {_short(text)}")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return HostUnreachable(host, f"cannot reach {where}: no answer within {options.read_timeout_s} s "
                                     "(winrm_read_timeout_s): check the Address, routing and firewalls")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return HostUnreachable(host, f"{where} sent no reply within {options.read_timeout_s} s "
                                     f"(winrm_read_timeout_s) while {doing}{unknown}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        low = text.lower()
        if "refused" in low:
            return HostUnreachable(host, f"cannot reach {where}: connection refused (is the WinRM service running "
                                         "and listening there, and the WinRM Port / winrm_scheme right?)")
        if "name or service not known" in low or "nodename nor servname" in low or "failed to resolve" in low \
                or "getaddrinfo" in low:
            return HostUnreachable(host, f"cannot resolve {where}: fix the Address in the Servers sheet or DNS")
        return HostUnreachable(host, f"connection to {where} broke while {doing}: {_short(text)}{unknown}")
    if isinstance(exc, requests.exceptions.RequestException):
        return HostUnreachable(host, f"HTTP to {where} failed while {doing}: {type(exc).__name__}: "
                                     f"{_short(text)}{unknown}")
    if isinstance(exc, WinRMError):
        return TransportError(host, f"WinRM with {where} failed while {doing}: {_short(text)}")
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return HostUnreachable(host, f"connection to {where} failed while {doing}: {type(exc).__name__}: "
                                     f"{_short(text)}{unknown}")
    return TransportError(host, f"WinRM with {where} failed while {doing}: {type(exc).__name__}: {_short(text)}")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the pool --------------------------------------------------------------------------


class WinRMPool:
    """One WinRMTransport per (host, worker thread) for a run; ``close()`` closes every one.

    The credential is resolved once (environment or one prompt) and shared;
    the warnings for insecure settings are printed when the pool is made,
    i.e. once on every run.
    """

    def __init__(self, options: WinRMOptions, *, credential: "Credential | Callable[[], Credential] | None" = None,
                 dry_run: bool = False, echo: Optional[Callable[[str], None]] = None,
                 warn: Optional[Callable[[str], None]] = None):
        warnings = options.check()
        warn = warn or (lambda line: console.say(line, err=True))
        for line in warnings:
            warn(line)
        self.options = options
        self.dry_run = dry_run
        self.echo = echo
        self._source = credential if credential is not None else credential_from_env
        self._credential: Optional[Credential] = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._all: List[WinRMTransport] = []
        self._by_host: Dict[Tuple[str, str, Optional[int]], WinRMTransport] = {}
        self._generation = 0

    def credential(self) -> Credential:
        with self._lock:  # one prompt, even when every worker needs it at once
            if self._credential is None:
                source = self._source
                self._credential = source if isinstance(source, Credential) else source()
            return self._credential

    def get(self, name: str, address: str, port: Optional[int] = None) -> WinRMTransport:
        """This thread's transport for host ``name`` (made on first use)."""
        with self._lock:
            generation = self._generation
        if getattr(self._local, "generation", None) != generation:
            # first use in this thread, or the pool was closed since: its old transports are closed
            self._local.transports = {}
            self._local.generation = generation
        mine = self._local.transports
        key = (name.lower(), address, port)
        transport = mine.get(key)
        if transport is None:
            transport = self._make(name, address, port)
            mine[key] = transport
            with self._lock:
                self._all.append(transport)
        return transport

    def borrow(self, server) -> WinRMTransport:
        """The one transport of an inventory ``Server`` for work that never overlaps on that host, handed to
        the calling thread: one shell per host for the whole run, whichever worker runs the host's next unit.

        The caller guarantees the serialization (the runner's lock per host does); do not close it between
        units: ``close()`` of the pool closes it at the end.
        """
        key = (server.hostname.lower(), server.network_address, getattr(server, "winrm_port", None))
        with self._lock:
            transport = self._by_host.get(key)
            if transport is None:
                transport = self._by_host[key] = self._make(server.hostname, key[1], key[2])
                self._all.append(transport)
            transport.hand_over()
        return transport

    def _make(self, name: str, address: str, port: Optional[int]) -> WinRMTransport:
        credential = None if self.options.transport == "certificate" else self.credential
        return WinRMTransport(name, address, self.options, port=port, credential=credential or self._none,
                              dry_run=self.dry_run, echo=self.echo)

    def for_server(self, server) -> WinRMTransport:
        """The transport for an inventory ``Server`` (its WinRM Port cell wins over winrm_port)."""
        return self.get(server.hostname, server.network_address, getattr(server, "winrm_port", None))

    @staticmethod
    def _none() -> Credential:
        raise ConfigError("certificate authentication uses no password")

    @property
    def shells_opened(self) -> int:
        with self._lock:
            return sum(t.shells_opened for t in self._all)

    def close(self) -> None:
        """Close every transport (after the workers are done). Idempotent."""
        with self._lock:
            transports, self._all = self._all, []
            self._by_host = {}
            self._generation += 1
        for transport in transports:
            transport.close()

    def __enter__(self) -> "WinRMPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pool_from_settings(settings, *, dry_run: bool = False, echo=None, warn=None) -> WinRMPool:
    """A WinRMPool from resolved settings (checked; warnings printed)."""
    return WinRMPool(options_from_settings(settings), dry_run=dry_run, echo=echo, warn=warn)


_SESSION_BUILD = threading.Lock()


def _without_environment_proxies(transport) -> None:
    """Every requests session pywinrm builds for ``transport`` (again after each ``close_session``) ignores the
    environment's proxy settings: ``proxy=None`` already means no proxy, and with ``trust_env`` requests asks
    ``should_bypass_proxies`` on every message, which sets and deletes ``os.environ['no_proxy']`` around a scan
    of the environment: not thread-safe (a host of a parallel run failed with ``KeyError: 'no_proxy'``) and
    ~1 ms of CPU a WinRM message. pywinrm's own ``build_session`` does that once more while it builds the
    session, so builds are serialised."""
    build = transport.build_session

    def build_session():
        session = transport.session  # built already: no lock (one global lock taken per message by hundreds
        if session is not None:      # of hosts' threads made a convoy: the holder preempted, all others queued)
            return session
        with _SESSION_BUILD:
            session = build()
        session.trust_env = False
        return session

    transport.build_session = build_session


#: authentication whose prepared request does not change from one message to the next (NTLM over HTTPS
#: authenticates the connection; Basic and certificates are fixed headers). Kerberos and CredSSP are left out:
#: their auth makes a new token per request
_PREPARE_ONCE_AUTH = ("ntlm", "basic", "plaintext", "certificate", "ssl")


def _prepare_once(transport) -> None:
    """Every message of ``transport`` is a POST of a new body to the one endpoint: pywinrm has requests prepare
    each from scratch (merge the session's headers, cookies, auth and hooks, parse the URL: 61 us a message).
    The session's prepared request is made once and copied with the new body instead (4 us): the same method,
    URL, headers, body and hooks (tests/test_winrm_messages.py). Message encryption (NTLM over HTTP), cookies
    from the server and the other authentications take pywinrm's own path.

    After a message has come back on a connection, the next ones go over it directly (``winrm_channel``: a
    command costs ~0.27 ms of CPU instead of ~0.98); whatever that path cannot carry goes this way again."""
    if transport.auth_method not in _PREPARE_ONCE_AUTH:
        return
    import requests

    from .winrm_channel import Channel, Left

    send = transport.send_message
    close_session = transport.close_session
    made: Dict[str, Any] = {}

    def drop_channel():
        channel = made.pop("channel", None)
        if channel is not None:
            channel.close()

    def send_message(message):
        session = transport.build_session()
        if transport.encryption or session.cookies:
            drop_channel()
            return send(message)
        if isinstance(message, str):
            message = message.encode("utf-8")
        channel = made.get("channel")
        if channel is not None:
            if channel.session is session and not channel.closed:
                try:
                    return channel.send(message)
                except Left:
                    pass  # nothing of it was sent: it goes requests' way below
                finally:
                    if channel.closed:
                        made.pop("channel", None)
            else:
                drop_channel()
        if made.get("session") is not session:
            made.update(session=session, request=session.prepare_request(
                requests.Request("POST", transport.endpoint, data=b"")))
        prepared = made["request"].copy()
        prepared.prepare_body(message, None)  # the body and its Content-Length
        response = transport._send_message_request(session, prepared)
        text = transport._get_message_response_text(response)
        if not session.cookies:
            made["channel"] = Channel.take(session, made["request"], transport.read_timeout_sec)
        return text

    def close():
        drop_channel()
        close_session()

    transport.send_message = send_message
    transport.close_session = close
