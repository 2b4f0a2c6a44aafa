"""The emulated WinRM endpoint: WS-Management "Windows remote shell" over HTTP and HTTPS.

What is real here: HTTP/1.1 with keep-alive, TLS (certificates from the fleet's
CA), Basic auth (off unless the host's ``basic`` setting allows it, as on 2012 R2), NTLM (pyspnego's server-side acceptor, credentials from the
file named by ``NTLM_USER_FILE``) with WinRM message encryption over plain
HTTP, and the WS-Man SOAP exchange the real pywinrm client sends and parses.
What is emulated: Windows behind the protocol. Each WS-Man Command goes to a
``Persona`` (deploy_tasks/rehearsal/base.py), which runs the command line and
is polled for output.

Shell protocol (MS-WSMV): Create -> ShellId; Command -> CommandId; Send feeds
stdin; Receive blocks until output, completion or the client's
OperationTimeout (then the ``w:TimedOut`` fault, code 2150858793, which pywinrm
answers by polling again); Signal terminates a command; Delete closes the
shell. Unknown shells and commands get the ``w:InvalidSelectors`` fault
(2150858843) as on Windows. Every reply carries ``RelatesTo``.

The WinRM service's limits, from the host's settings (faults.py, Windows Server
2012 R2 defaults): MaxShellsPerUser (the next Create gets ``w:QuotaLimit``
2150859173), MaxConcurrentOperationsPerUser (open shells and the commands
run in them, 2150859174), the shell's
idle timeout (the Create's ``IdleTimeOut`` or Winrs IdleTimeout, echoed in the
Create reply; an idle shell is deleted), MaxEnvelopeSizekb (a larger request
gets HTTP 413) and the client's MaxEnvelopeSize (no reply is larger: output
waits for the next Receive). Identify (``Test-WSMan``) and a Get of
``winrm/config`` answer as WinRM 3.0 does; other resource URIs, the PowerShell
one included, get ``w:DestinationUnreachable``.

Message encryption (MS-WSMV 2.2.9.1.1): an empty POST runs the NTLM handshake
(``Authorization: Negotiate <token>``); from then on the TCP connection is the
security context, and bodies are ``multipart/encrypted`` with the 4-byte
little-endian signature length, the 16-byte signature and the sealed data.
"""

from __future__ import annotations

import base64
import functools
import re
import socket
import socketserver
import ssl
import struct
import threading
import time
import uuid
import weakref
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Tuple
from xml.sax.saxutils import escape

from .base import CommandHandle, Persona, ProgramNotFound, ShellOptions
from .faults import HostFaults

NS_S = "http://www.w3.org/2003/05/soap-envelope"
NS_A = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_W = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
NS_RSP = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
NS_X = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
NS_F = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
NS_ID = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd"
NS_CFG = "http://schemas.microsoft.com/wbem/wsman/1/config"
NS_WMI = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError"

ACTION_CREATE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create"
ACTION_DELETE = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete"
ACTION_COMMAND = NS_RSP + "/Command"
ACTION_SEND = NS_RSP + "/Send"
ACTION_RECEIVE = NS_RSP + "/Receive"
ACTION_SIGNAL = NS_RSP + "/Signal"
ACTION_GET = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get"
ACTION_FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
ACTION_ADDRESSING_FAULT = "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault"
RESOURCE_CMD = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
RESOURCE_POWERSHELL = "http://schemas.microsoft.com/powershell/Microsoft.PowerShell"
RESOURCE_CONFIG = NS_CFG
FAULT_DETAIL = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/"
SIGNAL_TERMINATE = NS_RSP + "/signal/terminate"
SIGNAL_CTRL_C = NS_RSP + "/signal/ctrl_c"
STATE_DONE = NS_RSP + "/CommandState/Done"
STATE_RUNNING = NS_RSP + "/CommandState/Running"

#: WSManFault codes as Windows sends them
CODE_TIMED_OUT = 2150858793  # 0x80338029 ERROR_WSMAN_OPERATION_TIMEDOUT
CODE_INVALID_SELECTORS = 2150858843  # 0x8033805B ERROR_WSMAN_UNEXPECTED_SELECTORS
CODE_ACTION_NOT_SUPPORTED = 2150858757  # 0x80338005
CODE_INTERNAL = 1726  # RPC_S_CALL_FAILED, what a sick WinRM service answers with
CODE_UNENCRYPTED = 2150859116  # 0x8033816C: unencrypted traffic is disabled
CODE_QUOTA_MAX_SHELLS = 2150859173  # 0x803381A5 ERROR_WSMAN_QUOTA_MAX_SHELLS
CODE_QUOTA_MAX_OPERATIONS = 2150859174  # 0x803381A6 ERROR_WSMAN_QUOTA_MAX_OPERATIONS
CODE_SCHEMA_VALIDATION = 2150858817  # 0x80338041: the body does not match the schema
CODE_INVALID_HEADER = 2150858767  # 0x8033800F: an invalid SOAP header (OperationTimeout PT-1S)
CODE_INVALID_RESOURCE_URI = 2150858811  # 0x8033803B ERROR_WSMAN_INVALID_RESOURCE_URI
CODE_FILE_NOT_FOUND = 2147942402  # HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND)
CODE_INVALID_PARAMETER = 87  # ERROR_INVALID_PARAMETER, from the cmd shell plugin
#: the shell plugin that answers WinRS faults on Windows (ProviderFault attributes)
CMD_PLUGIN = ("Shell cmd plugin", "%systemroot%\\system32\\winrscmd.dll")

PROTOCOL_SPNEGO = "application/HTTP-SPNEGO-session-encrypted"
ENCRYPTED_CONTENT_TYPE = f'multipart/encrypted;protocol="{PROTOCOL_SPNEGO}";boundary="Encrypted Boundary"'
BOUNDARY = b"--Encrypted Boundary"
SOAP_CONTENT_TYPE = "application/soap+xml;charset=UTF-8"

#: the client's MaxEnvelopeSize when a request names none (WS-Man's 150 KiB, what pywinrm and pypsrp send)
DEFAULT_MAX_ENVELOPE = 153600
#: a keep-alive connection idle this long is closed (Windows: 120 s)
IDLE_TIMEOUT_S = 120.0

_ENVELOPE = (
    '<s:Envelope xml:lang="en-US" xmlns:s="' + NS_S + '" xmlns:a="' + NS_A + '" xmlns:x="' + NS_X
    + '" xmlns:w="' + NS_W + '" xmlns:rsp="' + NS_RSP + '" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
    "<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{message_id}</a:MessageID>"
    "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
    "<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
)


class WSManFault(Exception):
    """A SOAP fault to send back (HTTP 500, as Windows does).

    Windows ends every fault text with a space; ``detail`` is the
    ``w:FaultDetail`` URI's last part, ``provider`` the (provider, path) of the
    ``f:ProviderFault`` wrapping a plugin's message, ``wmi_error`` selects the
    ``MSFT_WmiError`` detail that quota faults carry since WinRM 3.0.
    """

    def __init__(self, code: int, subcode: str, reason: str, message: str = "", sender: bool = True, *,
                 detail: str = "", provider: Optional[Tuple[str, str]] = None, wmi_error: bool = False,
                 action: str = ACTION_FAULT):
        super().__init__(reason)
        self.code = code
        self.subcode = subcode
        self.reason = reason
        self.message = message or reason
        self.sender = sender
        self.detail = detail
        self.provider = provider
        self.wmi_error = wmi_error
        self.action = action
        self.relates_to = ""


def _timed_out() -> WSManFault:
    text = "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  "
    return WSManFault(CODE_TIMED_OUT, "w:TimedOut", text, sender=False)


_INVALID_SELECTORS = ("The WS-Management service cannot process the request because the request contained invalid "
                      "selectors for the resource. ")


def _shell_not_found(shell_id: str) -> WSManFault:
    return WSManFault(CODE_INVALID_SELECTORS, "w:InvalidSelectors", _INVALID_SELECTORS,
                      f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not found "
                      "on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on "
                      "the server. Provide the correct ShellId or create a new shell and retry the operation. ",
                      detail="UnexpectedSelectors")


def _unexpected_selectors() -> WSManFault:
    return WSManFault(CODE_INVALID_SELECTORS, "w:InvalidSelectors", _INVALID_SELECTORS, detail="UnexpectedSelectors")


def _command_not_found() -> WSManFault:
    return WSManFault(CODE_INVALID_SELECTORS, "w:InvalidSelectors", _INVALID_SELECTORS,
                      "The Windows Remote Shell received a request to perform an operation on a command identifier that does "
                      "not exist. Either the command has completed execution or the client specified an invalid command "
                      "identifier. ", detail="UnexpectedSelectors")


def _invalid_parameter() -> WSManFault:
    """What the cmd shell plugin answers for a request it cannot use (a Receive without CommandId, an unknown signal)."""
    return WSManFault(CODE_INVALID_PARAMETER, "w:InvalidParameter", "The parameter is incorrect. ",
                      detail="InvalidValue", provider=CMD_PLUGIN)


def _invalid_timeout(value: str) -> WSManFault:
    return WSManFault(CODE_INVALID_HEADER, "a:InvalidMessageInformationHeader",
                      "The WS-Management service cannot process the request. The request contains one or more invalid SOAP "
                      "headers. ",
                      f"The WS-Management service cannot process the request. The XML contains an invalid timeout field in "
                      f"the SOAP header: {value}. ", action=ACTION_ADDRESSING_FAULT)


def _schema_validation_error() -> WSManFault:
    """A body that breaks the shell schema, e.g. ``<rsp:IdleTimeOut>3600000</rsp:IdleTimeOut>`` (diyan/pywinrm#377)."""
    text = "The SOAP XML in the message does not match the corresponding XML schema definition. Change the XML and retry. "
    return WSManFault(CODE_SCHEMA_VALIDATION, "w:SchemaValidationError", text)


def _program_not_found() -> WSManFault:
    return WSManFault(CODE_FILE_NOT_FOUND, "w:InternalError", "The system cannot find the file specified. ", sender=False,
                      provider=CMD_PLUGIN)


def _quota_max_shells(limit: int) -> WSManFault:
    return WSManFault(CODE_QUOTA_MAX_SHELLS, "w:QuotaLimit",
                      "The WS-Management service cannot process the request. The maximum number of concurrent shells for "
                      "this user has been exceeded. Close existing shells or raise the quota for this user. ",
                      f"The WS-Management service cannot process the request. This user is allowed a maximum number of "
                      f"{limit} concurrent shells, which has been exceeded. Close existing shells or raise the quota for "
                      "this user. ", wmi_error=True)


def _quota_max_operations(limit: int) -> WSManFault:
    return WSManFault(CODE_QUOTA_MAX_OPERATIONS, "w:QuotaLimit",
                      "The WS-Management service cannot process the request. The maximum number of concurrent operations "
                      "for this user has been exceeded. Close existing operations for this user, or raise the quota for "
                      "this user. ",
                      f"The WS-Management service cannot process the request. This user is allowed a maximum number of "
                      f"{limit} concurrent operations, which has been exceeded. Close existing operations for this user, "
                      "or raise the quota for this user. ", wmi_error=True)


def _resource_not_found(resource_uri: str) -> WSManFault:
    message = ("The WS-Management service cannot process the request because the resource URI is not valid or was not "
               "found. ")
    if resource_uri.lower() == RESOURCE_POWERSHELL.lower():
        message = (f"The resource URI {resource_uri} (PowerShell remoting, PSRP) is not emulated by the rehearsal fleet: "
                   "only the cmd shell (" + RESOURCE_CMD + ") is. Run PowerShell as `powershell -EncodedCommand` in a cmd "
                   "shell (pywinrm's run_ps). ")
    return WSManFault(CODE_INVALID_RESOURCE_URI, "w:DestinationUnreachable",
                      "The WS-Management service cannot process the request. The resource URI is not valid or was not "
                      "found. ", message, detail="InvalidResourceURI")


def internal_error(message: str) -> WSManFault:
    return WSManFault(CODE_INTERNAL, "w:InternalError", "The WS-Management service cannot process the request. ", message,
                      sender=False)


# -- shells and commands -------------------------------------------------------


@dataclass
class _Command:
    command_id: str
    command_line: str
    handle: CommandHandle
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exit_code: Optional[int] = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Shell:
    shell_id: str
    owner: str
    options: ShellOptions
    idle_timeout_s: float
    commands: Dict[str, _Command] = field(default_factory=dict)
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0  # requests being served on this shell: a Receive waiting for output is activity
    commands_run: int = 0  # each Command holds one of the user's operations until the shell is deleted

    def expired(self, now: float) -> bool:
        return self.busy == 0 and now - self.last_used > self.idle_timeout_s


# -- the host ------------------------------------------------------------------


class Credentials:
    """The one local administrator account of the emulated hosts (Basic and NTLM)."""

    def __init__(self, username: str, password: str):
        self.username = username
        self.password = password
        domain, _, user = username.rpartition("\\")
        self.domain = domain
        self.user = user
        self._basic = {
            base64.b64encode(f"{name}:{password}".encode("utf-8")).decode("ascii")
            for name in {username, user}
        }

    def basic_ok(self, token: str) -> bool:
        return token in self._basic

    def ntlm_user_lines(self, hostnames=()) -> str:
        """``DOMAIN:USER:PASSWORD`` lines for NTLM_USER_FILE: the given domain, none, and each host (local account)."""
        domains = dict.fromkeys([self.domain, "", *[h.upper() for h in hostnames]])
        return "".join(f"{d}:{self.user}:{self.password}\n" for d in domains)


class WinRMHost:
    """One emulated Windows host: HTTP (5985) and HTTPS (5986) listeners on its own address."""

    def __init__(self, hostname: str, address: str, persona: Persona, faults: HostFaults, credentials: Credentials, *,
                 http_port: int = 5985, https_port: int = 5986, ssl_context: Optional[ssl.SSLContext] = None,
                 cert_sha256: Optional[bytes] = None, allow_unencrypted: bool = False):
        self.hostname = hostname
        self.address = address
        self.persona = persona
        self.faults = faults
        self.credentials = credentials
        self.http_port = http_port
        self.https_port = https_port
        self.ssl_context = ssl_context
        self.cert_sha256 = cert_sha256
        self.allow_unencrypted = allow_unencrypted
        self.boot_time = time.time()
        self.shells: Dict[str, _Shell] = {}
        self._lock = threading.Lock()
        self._servers: list = []
        self._connections: set = set()
        self._state = "stopped"  # running, down, stopped
        self._reboot_timer: Optional[threading.Timer] = None

    # -- lifecycle -------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    def start(self) -> "WinRMHost":
        """Listen on both ports (unless the host is configured down: then connections are refused)."""
        if self.faults.down:
            self._state = "down"
            return self
        self._listen()
        return self

    def _listen(self) -> None:
        servers = [_Server((self.address, self.http_port), self, tls=False)]
        self.http_port = servers[0].server_address[1]
        if self.ssl_context is not None:
            servers.append(_Server((self.address, self.https_port), self, tls=True))
            self.https_port = servers[1].server_address[1]
        for server in servers:
            server.acceptor = threading.Thread(target=server.accept_loop, daemon=True,
                                               name=f"winrm-{self.hostname}-{server.server_address[1]}")
            server.acceptor.start()
        self._servers = servers
        self._state = "running"
        _REAPER.watch(self)

    def _unlisten(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.stop_accepting()
        with self._lock:
            conns = list(self._connections)
            self._connections.clear()
        for conn in conns:
            _abort(conn)

    def _drop_shells(self) -> None:
        with self._lock:
            shells = list(self.shells.values())
            self.shells.clear()
        for shell in shells:
            for cmd in shell.commands.values():
                _terminate(cmd.handle)

    def stop(self) -> None:
        """Stop listening, drop every connection and shell."""
        _REAPER.forget(self)
        if self._reboot_timer is not None:
            self._reboot_timer.cancel()
        self._unlisten()
        self._drop_shells()
        self._state = "stopped"

    def reboot(self, seconds: float) -> None:
        """The RebootHook: refuse connections for ``seconds``, then come back with a new boot time.

        Runs the teardown in its own thread: it is called from inside a command
        (``shutdown /r``) whose Receive may be served by one of the threads it stops.
        """
        def go_down():
            if self._state != "running":
                return
            self._state = "down"
            self._unlisten()
            self._drop_shells()
            self._reboot_timer = threading.Timer(max(0.0, seconds), self._come_back)
            self._reboot_timer.daemon = True
            self._reboot_timer.start()

        threading.Thread(target=go_down, name=f"reboot-{self.hostname}", daemon=True).start()

    def _come_back(self, rebooted: bool = True) -> None:
        if self._state != "down":
            return
        if rebooted:
            self.boot_time = time.time()
        try:
            self._listen()
        except OSError:
            self._state = "down"  # the address went away meanwhile: stay down

    def set_down(self, down: bool) -> None:
        """Take the host off the network (connections refused, open connections cut) or bring it back.

        A network outage, not a reboot: shells and running commands survive it.
        """
        self.faults.down = down
        if down and self._state == "running":
            self._state = "down"
            self._unlisten()
        elif not down and self._state == "down":
            self._come_back(rebooted=False)

    # -- connection bookkeeping ------------------------------------------------
    def _track(self, conn) -> None:
        with self._lock:
            self._connections.add(conn)

    def _untrack(self, conn) -> None:
        with self._lock:
            self._connections.discard(conn)

    # -- WS-Man operations -------------------------------------------------------
    def dispatch(self, body: bytes, owner: str) -> bytes:
        """Handle one SOAP request; return the reply envelope (raise WSManFault for a fault)."""
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise WSManFault(2150858799, "s:InvalidMessage",
                             "The WS-Management service cannot process the request because the XML is invalid. ",
                             f"XML parse error: {exc}") from None
        header = root.find(f"{{{NS_S}}}Header")
        soap_body = root.find(f"{{{NS_S}}}Body")
        if header is None or soap_body is None:
            raise WSManFault(2150858799, "s:InvalidMessage", "The request is not a SOAP envelope. ")
        if soap_body.find(f"{{{NS_ID}}}Identify") is not None:
            return identify_envelope(authenticated=True)
        action = (header.findtext(f"{{{NS_A}}}Action") or "").strip()
        message_id = (header.findtext(f"{{{NS_A}}}MessageID") or "").strip()
        try:
            request = _Request(header, soap_body, owner, _operation_timeout(header), _max_envelope(header), message_id)
            reply_action, reply_body = self._operation(action, request)
        except WSManFault as fault:
            fault.relates_to = message_id
            raise
        except Exception as exc:  # the emulated Windows failed: a 500 fault, as a sick WinRM service answers
            fault = internal_error(f"{self.hostname}: {type(exc).__name__}: {exc}")
            fault.relates_to = message_id
            raise fault from None
        return _envelope(reply_action, message_id, reply_body)

    def _new_operation(self, owner: str) -> None:
        """MaxConcurrentOperationsPerUser, checked where an operation begins (Create, Command); call under the lock.

        WinRM counts a shell and every Command run in it against this quota
        until the shell is deleted, so a shell reused for ~1500 commands gets
        the fault (2150859174) and clients reset their shell on it (WinRb/WinRM's
        lib/winrm/shells/base.rb, FAULTS_FOR_RESET: "Maximum commands per user
        exceeded"; WinRb/WinRM#197).
        """
        held = sum(1 + s.commands_run for s in self.shells.values() if s.owner == owner)
        if held >= self.faults.max_concurrent_operations_per_user:
            raise _quota_max_operations(self.faults.max_concurrent_operations_per_user)

    def _operation(self, action: str, request: "_Request") -> Tuple[str, str]:
        if action == ACTION_RECEIVE:
            return self._receive(request)
        if action == ACTION_COMMAND:
            return self._command(request)
        if action == ACTION_SIGNAL:
            return self._signal(request)
        if action == ACTION_CREATE:
            return self._create(request)
        if action == ACTION_DELETE:
            return self._delete(request)
        if action == ACTION_SEND:
            return self._send(request)
        if action == ACTION_GET:
            return self._get(request)
        raise WSManFault(CODE_ACTION_NOT_SUPPORTED, "a:ActionNotSupported",
                         "The action is not supported by the service. ",
                         f"The WS-Management service cannot process the request. The action {action!r} is not supported. ")

    def _reap(self, now: float) -> None:
        """Delete shells idle longer than their idle timeout (Winrs IdleTimeout), as the WinRM service does."""
        with self._lock:
            gone = [s for s in self.shells.values() if s.expired(now)]
            for shell in gone:
                self.shells.pop(shell.shell_id, None)
        for shell in gone:
            for cmd in list(shell.commands.values()):
                _terminate(cmd.handle)

    def _shell(self, request: "_Request") -> _Shell:
        shell_id = None
        selectors = request.header.find(f"{{{NS_W}}}SelectorSet")
        for sel in (selectors if selectors is not None else ()):
            if sel.get("Name") != "ShellId":
                raise _unexpected_selectors()
            shell_id = (sel.text or "").strip()
        if shell_id is None:
            raise _unexpected_selectors()
        now = time.monotonic()
        self._reap(now)
        with self._lock:
            shell = self.shells.get(shell_id.upper())
            if shell is None:
                raise _shell_not_found(shell_id)
            shell.last_used = now
        return shell

    def _create(self, request: "_Request") -> Tuple[str, str]:
        resource_uri = (request.header.findtext(f"{{{NS_W}}}ResourceURI") or "").strip()
        if resource_uri.lower() != RESOURCE_CMD:
            raise _resource_not_found(resource_uri)
        opts = _option_set(request.header)
        shell_el = request.body.find(f"{{{NS_RSP}}}Shell")
        if shell_el is None:
            raise _invalid_parameter()
        try:
            codepage = int(opts.get("WINRS_CODEPAGE", "437"))
        except ValueError:
            raise _invalid_parameter() from None
        environment = {v.get("Name") or "": v.text or "" for v in shell_el.iterfind(f"{{{NS_RSP}}}Environment/{{{NS_RSP}}}Variable")}
        working_directory = shell_el.findtext(f"{{{NS_RSP}}}WorkingDirectory")
        idle_text = shell_el.findtext(f"{{{NS_RSP}}}IdleTimeOut")
        idle = self.faults.idle_timeout_s
        if idle_text is not None:
            idle = _duration_s(idle_text)
            if idle is None:
                raise _schema_validation_error()
        options = ShellOptions(codepage=codepage, environment=environment, working_directory=working_directory or None,
                               noprofile=_true(opts.get("WINRS_NOPROFILE", "false")),
                               consolemode_stdin=_true(opts.get("WINRS_CONSOLEMODE_STDIN", "true")))
        now = time.monotonic()
        self._reap(now)
        shell_id = str(uuid.uuid4()).upper()
        with self._lock:
            limit = self.faults.max_shells_per_user
            if sum(1 for s in self.shells.values() if s.owner == request.owner) >= limit:
                raise _quota_max_shells(limit)
            self._new_operation(request.owner)
            self.shells[shell_id] = _Shell(shell_id, request.owner, options, idle, last_used=now)
        address = (request.header.findtext(f"{{{NS_A}}}To") or "").strip() or f"http://{self.hostname}:5985/wsman"
        echo = ""
        if environment:
            echo += "<rsp:Environment>" + "".join(
                f'<rsp:Variable Name="{escape(k, _ATTR)}">{escape(v)}</rsp:Variable>' for k, v in environment.items()
            ) + "</rsp:Environment>"
        if working_directory:
            echo += f"<rsp:WorkingDirectory>{escape(working_directory)}</rsp:WorkingDirectory>"
        input_streams = shell_el.findtext(f"{{{NS_RSP}}}InputStreams") or "stdin"
        output_streams = shell_el.findtext(f"{{{NS_RSP}}}OutputStreams") or "stdout stderr"
        body = (
            f"<x:ResourceCreated><a:Address>{escape(address)}</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{RESOURCE_CMD}</w:ResourceURI><w:SelectorSet><w:Selector Name=\"ShellId\">{shell_id}"
            f"</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"
            f'<rsp:Shell xmlns:rsp="{NS_RSP}"><rsp:ShellId>{shell_id}</rsp:ShellId><rsp:ResourceUri>{RESOURCE_CMD}</rsp:ResourceUri>'
            f"<rsp:Owner>{escape(request.owner)}</rsp:Owner><rsp:ClientIP>{self.address}</rsp:ClientIP>{echo}"
            f"<rsp:IdleTimeOut>PT{idle:.3f}S</rsp:IdleTimeOut><rsp:InputStreams>{escape(input_streams)}</rsp:InputStreams>"
            f"<rsp:OutputStreams>{escape(output_streams)}</rsp:OutputStreams><rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>"
            f"<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"
        )
        return "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", body

    def _delete(self, request: "_Request") -> Tuple[str, str]:
        shell = self._shell(request)
        with self._lock:
            self.shells.pop(shell.shell_id, None)
        for cmd in list(shell.commands.values()):
            _terminate(cmd.handle)
        return "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", ""

    def _command(self, request: "_Request") -> Tuple[str, str]:
        shell = self._shell(request)
        line = request.body.find(f"{{{NS_RSP}}}CommandLine")
        if line is None:
            raise _invalid_parameter()
        parts = [(line.findtext(f"{{{NS_RSP}}}Command") or "").strip()]
        parts += [a.text or "" for a in line.findall(f"{{{NS_RSP}}}Arguments")]
        command_line = " ".join(p for p in parts if p)
        skip_cmd_shell = _true(_option_set(request.header).get("WINRS_SKIP_CMD_SHELL", "false"))
        with self._lock:
            self._new_operation(shell.owner)
            shell.commands_run += 1  # taken before the program starts, so that threads cannot overshoot together
        try:
            handle = self.persona.start(command_line, options=shell.options, skip_cmd_shell=skip_cmd_shell)
        except BaseException as exc:
            with self._lock:
                shell.commands_run -= 1  # nothing started: no operation held
            if isinstance(exc, ProgramNotFound):
                raise _program_not_found() from None
            if isinstance(exc, (WSManFault, KeyboardInterrupt, SystemExit)):
                raise
            # the persona is emulated Windows: its bug is a 500, not a dead server
            raise internal_error(f"the emulated host failed to start {command_line!r}: {type(exc).__name__}: {exc}") from None
        command_id = str(uuid.uuid4()).upper()
        shell.commands[command_id] = _Command(command_id, command_line, handle)
        return NS_RSP + "/CommandResponse", f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"

    def _find_command(self, shell: _Shell, command_id: Optional[str]) -> _Command:
        if not command_id:
            raise _invalid_parameter()
        cmd = shell.commands.get(command_id.strip().upper())
        if cmd is None:
            raise _command_not_found()
        return cmd

    def _send(self, request: "_Request") -> Tuple[str, str]:
        shell = self._shell(request)
        send = request.body.find(f"{{{NS_RSP}}}Send")
        streams = send.findall(f"{{{NS_RSP}}}Stream") if send is not None else []
        for stream in streams:
            cmd = self._find_command(shell, stream.get("CommandId"))
            data = base64.b64decode(stream.text or "")
            eof = (stream.get("End") or "").lower() == "true"
            cmd.handle.send_input(data, eof=eof)
        return NS_RSP + "/SendResponse", "<rsp:SendResponse/>"

    def _signal(self, request: "_Request") -> Tuple[str, str]:
        shell = self._shell(request)
        signal = request.body.find(f"{{{NS_RSP}}}Signal")
        if signal is None:
            raise _invalid_parameter()
        code = (signal.findtext(f"{{{NS_RSP}}}Code") or "").strip()
        if code not in SIGNALS:
            raise _invalid_parameter()
        cmd = self._find_command(shell, signal.get("CommandId"))
        _terminate(cmd.handle)
        if code == SIGNAL_TERMINATE:
            shell.commands.pop(cmd.command_id, None)
        return NS_RSP + "/SignalResponse", "<rsp:SignalResponse/>"

    def _receive(self, request: "_Request") -> Tuple[str, str]:
        shell = self._shell(request)
        desired = request.body.find(f"{{{NS_RSP}}}Receive/{{{NS_RSP}}}DesiredStream")
        cmd = self._find_command(shell, desired.get("CommandId") if desired is not None else None)
        with self._lock:
            shell.busy += 1
        try:
            return self._receive_output(cmd, request)
        finally:
            with self._lock:
                shell.busy -= 1
                shell.last_used = time.monotonic()

    def _receive_output(self, cmd: _Command, request: "_Request") -> Tuple[str, str]:
        with cmd.lock:
            if not cmd.stdout and not cmd.stderr and cmd.exit_code is None:
                out, err, code = cmd.handle.read(request.timeout_s)
                cmd.stdout += out
                cmd.stderr += err
                if code is None and (out or err):
                    # most commands end right after their last output: save the client a Receive round trip
                    out, err, code = cmd.handle.read(0.0)
                    cmd.stdout += out
                    cmd.stderr += err
                cmd.exit_code = code
            if not cmd.stdout and not cmd.stderr and cmd.exit_code is None:
                raise _timed_out()
            # the reply never exceeds the client's MaxEnvelopeSize: what does not fit waits for the next Receive
            room = request.max_envelope - _receive_overhead(cmd.command_id, request.message_id)
            take_out = min(len(cmd.stdout), max(3, room // 4 * 3))
            room -= -(-take_out // 3) * 4
            take_err = min(len(cmd.stderr), max(0, room // 4 * 3))
            out = bytes(cmd.stdout[:take_out])
            del cmd.stdout[:take_out]
            err = bytes(cmd.stderr[:take_err])
            del cmd.stderr[:take_err]
            done = cmd.exit_code is not None and not cmd.stdout and not cmd.stderr
            return NS_RSP + "/ReceiveResponse", _receive_body(cmd.command_id, out, err, cmd.exit_code if done else None)

    def _get(self, request: "_Request") -> Tuple[str, str]:
        resource_uri = (request.header.findtext(f"{{{NS_W}}}ResourceURI") or "").strip()
        if resource_uri.lower() != RESOURCE_CONFIG:
            raise _resource_not_found(resource_uri)
        return "http://schemas.xmlsoap.org/ws/2004/09/transfer/GetResponse", config_body(self.faults, self.allow_unencrypted)


@dataclass
class _Request:
    header: ET.Element
    body: ET.Element
    owner: str
    timeout_s: float
    max_envelope: int
    message_id: str


_ATTR = {'"': "&quot;"}
SIGNALS = (SIGNAL_TERMINATE, SIGNAL_CTRL_C, NS_RSP + "/signal/ctrl_break")


def _true(value: str) -> bool:
    return value.strip().lower() == "true"


def _option_set(header) -> Dict[str, str]:
    """The request's wsman:OptionSet as {NAME: value}."""
    options = header.find(f"{{{NS_W}}}OptionSet")
    if options is None:
        return {}
    return {(o.get("Name") or "").upper(): (o.text or "") for o in options.findall(f"{{{NS_W}}}Option")}


def _operation_timeout(header) -> float:
    """The OperationTimeout header in seconds (60 when absent); a malformed or negative one gets Windows' fault."""
    text = header.findtext(f"{{{NS_W}}}OperationTimeout")
    if text is None:
        return 60.0
    seconds = _duration_s(text)
    if seconds is None:
        raise _invalid_timeout(text.strip())
    return seconds


def _max_envelope(header) -> int:
    text = (header.findtext(f"{{{NS_W}}}MaxEnvelopeSize") or "").strip()
    try:
        return int(text) if text else DEFAULT_MAX_ENVELOPE
    except ValueError:
        return DEFAULT_MAX_ENVELOPE


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return _ENVELOPE.format(action=action, message_id=str(uuid.uuid4()).upper(), relates_to=escape(relates_to),
                            body=body).encode("utf-8")


def _receive_overhead(command_id: str, message_id: str) -> int:
    """Bytes of a Receive reply around its base64 output (both streams present, exit code at its longest)."""
    return _overhead(len(command_id), len(escape(message_id)))


@functools.lru_cache(maxsize=64)
def _overhead(command_id_len: int, relates_to_len: int) -> int:
    skeleton = _receive_body("C" * command_id_len, b"x", b"x", 4294967295)
    envelope = _ENVELOPE.format(action=NS_RSP + "/ReceiveResponse", message_id="M" * 36, relates_to="R" * relates_to_len,
                                body=skeleton)
    return len(envelope.encode("utf-8")) - 8


def _receive_body(command_id: str, out: bytes, err: bytes, exit_code: Optional[int]) -> str:
    parts = ["<rsp:ReceiveResponse>"]
    if out:
        parts.append(f'<rsp:Stream Name="stdout" CommandId="{command_id}">{base64.b64encode(out).decode("ascii")}</rsp:Stream>')
    if err:
        parts.append(f'<rsp:Stream Name="stderr" CommandId="{command_id}">{base64.b64encode(err).decode("ascii")}</rsp:Stream>')
    if exit_code is None:
        parts.append(f'<rsp:CommandState CommandId="{command_id}" State="{STATE_RUNNING}"/>')
    else:
        parts.append(f'<rsp:Stream Name="stdout" CommandId="{command_id}" End="true"></rsp:Stream>')
        parts.append(f'<rsp:Stream Name="stderr" CommandId="{command_id}" End="true"></rsp:Stream>')
        parts.append(f'<rsp:CommandState CommandId="{command_id}" State="{STATE_DONE}">'
                     f"<rsp:ExitCode>{int(exit_code)}</rsp:ExitCode></rsp:CommandState>")
    parts.append("</rsp:ReceiveResponse>")
    return "".join(parts)


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def _duration_s(text: Optional[str]) -> Optional[float]:
    """xs:duration as WS-Man uses it (``PT20S``, ``PT20.000S``, ``P0DT0H0M0S``) -> seconds; None when malformed."""
    match = _DURATION.match((text or "").strip())
    if not match or not any(g is not None for g in match.groups()):
        return None
    d, h, m, sec = (float(g) if g else 0.0 for g in match.groups())
    return d * 86400 + h * 3600 + m * 60 + sec


def identify_envelope(authenticated: bool) -> bytes:
    """The answer to WS-Man Identify (``Test-WSMan``): WinRM 3.0 names its OS version only to an authenticated client."""
    version = "OS: 6.3.9600 SP: 0.0 Stack: 3.0" if authenticated else "OS: 0.0.0 SP: 0.0 Stack: 3.0"
    return (
        f'<s:Envelope xmlns:s="{NS_S}" xmlns:wsmid="{NS_ID}"><s:Header/><s:Body><wsmid:IdentifyResponse>'
        "<wsmid:ProtocolVersion>http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd</wsmid:ProtocolVersion>"
        f"<wsmid:ProductVendor>Microsoft Corporation</wsmid:ProductVendor><wsmid:ProductVersion>{version}</wsmid:ProductVersion>"
        "</wsmid:IdentifyResponse></s:Body></s:Envelope>"
    ).encode("utf-8")


def config_body(faults: HostFaults, allow_unencrypted: bool = False) -> str:
    """``winrm get winrm/config`` as a Get of the config resource answers it: 2012 R2's defaults, the fleet's settings."""
    def b(value: bool) -> str:
        return "true" if value else "false"

    return (
        f'<cfg:Config xmlns:cfg="{NS_CFG}"><cfg:MaxEnvelopeSizekb>{faults.max_envelope_size_kb}</cfg:MaxEnvelopeSizekb>'
        f"<cfg:MaxTimeoutms>{faults.max_timeout_ms}</cfg:MaxTimeoutms><cfg:MaxBatchItems>32000</cfg:MaxBatchItems>"
        "<cfg:MaxProviderRequests>4294967295</cfg:MaxProviderRequests>"
        "<cfg:Client><cfg:NetworkDelayms>5000</cfg:NetworkDelayms><cfg:URLPrefix>wsman</cfg:URLPrefix>"
        "<cfg:AllowUnencrypted>false</cfg:AllowUnencrypted><cfg:Auth><cfg:Basic>true</cfg:Basic><cfg:Digest>true</cfg:Digest>"
        "<cfg:Kerberos>true</cfg:Kerberos><cfg:Negotiate>true</cfg:Negotiate><cfg:Certificate>true</cfg:Certificate>"
        "<cfg:CredSSP>false</cfg:CredSSP></cfg:Auth><cfg:DefaultPorts><cfg:HTTP>5985</cfg:HTTP><cfg:HTTPS>5986</cfg:HTTPS>"
        "</cfg:DefaultPorts><cfg:TrustedHosts></cfg:TrustedHosts></cfg:Client>"
        "<cfg:Service><cfg:RootSDDL>O:NSG:BAD:P(A;;GA;;;BA)(A;;GR;;;IU)S:P(AU;FA;GA;;;WD)(AU;SA;GXGW;;;WD)</cfg:RootSDDL>"
        "<cfg:MaxConcurrentOperations>4294967295</cfg:MaxConcurrentOperations>"
        f"<cfg:MaxConcurrentOperationsPerUser>{faults.max_concurrent_operations_per_user}</cfg:MaxConcurrentOperationsPerUser>"
        "<cfg:EnumerationTimeoutms>240000</cfg:EnumerationTimeoutms><cfg:MaxConnections>300</cfg:MaxConnections>"
        "<cfg:MaxPacketRetrievalTimeSeconds>120</cfg:MaxPacketRetrievalTimeSeconds>"
        f"<cfg:AllowUnencrypted>{b(allow_unencrypted)}</cfg:AllowUnencrypted>"
        f"<cfg:Auth><cfg:Basic>{b(faults.basic)}</cfg:Basic><cfg:Kerberos>true</cfg:Kerberos><cfg:Negotiate>true</cfg:Negotiate>"
        "<cfg:Certificate>false</cfg:Certificate><cfg:CredSSP>false</cfg:CredSSP>"
        "<cfg:CbtHardeningLevel>Relaxed</cfg:CbtHardeningLevel></cfg:Auth>"
        "<cfg:DefaultPorts><cfg:HTTP>5985</cfg:HTTP><cfg:HTTPS>5986</cfg:HTTPS></cfg:DefaultPorts>"
        "<cfg:IPv4Filter>*</cfg:IPv4Filter><cfg:IPv6Filter>*</cfg:IPv6Filter>"
        "<cfg:EnableCompatibilityHttpListener>false</cfg:EnableCompatibilityHttpListener>"
        "<cfg:EnableCompatibilityHttpsListener>false</cfg:EnableCompatibilityHttpsListener>"
        "<cfg:CertificateThumbprint></cfg:CertificateThumbprint><cfg:AllowRemoteAccess>true</cfg:AllowRemoteAccess>"
        "</cfg:Service><cfg:Winrs><cfg:AllowRemoteShellAccess>true</cfg:AllowRemoteShellAccess>"
        f"<cfg:IdleTimeout>{int(faults.idle_timeout_s * 1000)}</cfg:IdleTimeout><cfg:MaxConcurrentUsers>10</cfg:MaxConcurrentUsers>"
        "<cfg:MaxShellRunTime>2147483647</cfg:MaxShellRunTime>"
        f"<cfg:MaxProcessesPerShell>{faults.max_processes_per_shell}</cfg:MaxProcessesPerShell>"
        f"<cfg:MaxMemoryPerShellMB>{faults.max_memory_per_shell_mb}</cfg:MaxMemoryPerShellMB>"
        f"<cfg:MaxShellsPerUser>{faults.max_shells_per_user}</cfg:MaxShellsPerUser></cfg:Winrs></cfg:Config>"
    )


_FAULT_ENVELOPE = (
    '<s:Envelope xml:lang="en-US" xmlns:s="' + NS_S + '" xmlns:a="' + NS_A + '" xmlns:x="' + NS_X
    + '" xmlns:e="http://schemas.xmlsoap.org/ws/2004/08/eventing" xmlns:n="http://schemas.xmlsoap.org/ws/2004/09/enumeration"'
    ' xmlns:w="' + NS_W + '" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
    "<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{message_id}</a:MessageID>"
    "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
    "<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
)


def _wmi_error(fault: WSManFault) -> str:
    """The MSFT_WmiError detail of a quota fault, field for field as WinRM 3.0 sends it."""
    nil = "xsi:nil='true' xsi:type='cim:cimString'"
    message = escape(fault.message)
    return (
        "<p:MSFT_WmiError b:IsCIM_Error='true' xmlns:b='http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd' "
        "xmlns:cim='http://schemas.dmtf.org/wbem/wscim/1/common' xmlns:p='" + NS_WMI + "' xsi:type='p:MSFT_WmiError_Type' "
        "xmlns:xsi='http://www.w3.org/2001/XMLSchema-instance'>"
        "<p:CIMStatusCode xsi:type='cim:cimUnsignedInt'>27</p:CIMStatusCode>"
        f"<p:CIMStatusCodeDescription {nil}/><p:ErrorSource {nil}/>"
        "<p:ErrorSourceFormat xsi:type='cim:cimUnsignedShort'>0</p:ErrorSourceFormat>"
        "<p:ErrorType xsi:type='cim:cimUnsignedShort'>0</p:ErrorType>"
        f"<p:Message xsi:type='cim:cimString'>{message}</p:Message>"
        f"<p:MessageID xsi:type='cim:cimString'>HRESULT 0x{fault.code:08x}</p:MessageID>"
        f"<p:OtherErrorSourceFormat {nil}/><p:OtherErrorType {nil}/><p:OwningEntity {nil}/>"
        "<p:PerceivedSeverity xsi:type='cim:cimUnsignedShort'>0</p:PerceivedSeverity>"
        "<p:ProbableCause xsi:type='cim:cimUnsignedShort'>0</p:ProbableCause>"
        f"<p:ProbableCauseDescription {nil}/>"
        "<p:error_Category xsi:type='cim:cimUnsignedInt'>30</p:error_Category>"
        f"<p:error_Code xsi:type='cim:cimUnsignedInt'>{fault.code}</p:error_Code>"
        "<p:error_Type xsi:type='cim:cimString'>HRESULT</p:error_Type>"
        f"<p:error_WindowsErrorMessage xsi:type='cim:cimString'>{message}</p:error_WindowsErrorMessage>"
        "</p:MSFT_WmiError>"
    )


def fault_envelope(fault: WSManFault, machine: str) -> bytes:
    code = "s:Sender" if fault.sender else "s:Receiver"
    if fault.wmi_error:
        detail = _wmi_error(fault)
    else:
        message = escape(fault.message)
        if fault.provider:
            provider, path = fault.provider
            message = f'<f:ProviderFault provider="{escape(provider)}" path="{escape(path)}">{message}</f:ProviderFault>'
        detail = (f'<f:WSManFault xmlns:f="{NS_F}" Code="{fault.code}" Machine="{escape(machine)}">'
                  f"<f:Message>{message}</f:Message></f:WSManFault>")
        if fault.detail:
            detail = f"<w:FaultDetail>{FAULT_DETAIL}{fault.detail}</w:FaultDetail>" + detail
    body = (
        f'<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{fault.subcode}</s:Value></s:Subcode></s:Code>'
        f'<s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason>'
        f"<s:Detail>{detail}</s:Detail></s:Fault>"
    )
    return _FAULT_ENVELOPE.format(action=fault.action, message_id=str(uuid.uuid4()).upper(),
                                  relates_to=escape(fault.relates_to or ""), body=body).encode("utf-8")


def _terminate(handle: CommandHandle) -> None:
    try:
        handle.terminate()
    except Exception:  # noqa: BLE001 - a persona failing to stop must not take the endpoint down
        pass


def _abort(conn) -> None:
    """Drop a TCP connection the way a vanished host or a broken network does."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


class _Reaper:
    """One thread for every host of the process: deletes shells past their idle timeout about once a second.

    (Requests reap too, so a shell is never served past its timeout; this only
    stops the commands of shells nobody talks to any more.)
    """

    def __init__(self):
        self._hosts: "weakref.WeakSet[WinRMHost]" = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def watch(self, host: WinRMHost) -> None:
        with self._lock:
            self._hosts.add(host)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="winrm-idle-reaper", daemon=True)
                self._thread.start()

    def forget(self, host: WinRMHost) -> None:
        with self._lock:
            self._hosts.discard(host)

    def _run(self) -> None:
        while True:
            time.sleep(1.0)
            with self._lock:
                hosts = list(self._hosts)
            now = time.monotonic()
            for host in hosts:
                if host.shells:
                    try:
                        host._reap(now)
                    except Exception:  # noqa: BLE001 - one host's persona must not stop the others' reaping
                        pass


_REAPER = _Reaper()


# -- HTTP --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, host: WinRMHost, tls: bool):
        self.winrm = host
        self.tls = tls
        self.closing = False
        self.acceptor: Optional[threading.Thread] = None
        super().__init__(address, _Handler)

    def server_bind(self):
        # HTTPServer.server_bind does a reverse DNS lookup of the address: seconds each for 127.0.x.y without a name
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.winrm.hostname
        self.server_port = self.server_address[1]

    def accept_loop(self) -> None:
        """Accept connections until stop_accepting(); blocks in accept(), so an idle host costs no CPU.

        (serve_forever would poll every host's sockets several times a second:
        with hundreds of emulated hosts that alone keeps a core busy.)
        """
        while not self.closing:
            try:
                request, client_address = self.get_request()
            except OSError:
                if self.closing:
                    return
                continue
            self.process_request(request, client_address)  # ThreadingMixIn: one thread per connection

    def stop_accepting(self) -> None:
        self.closing = True
        try:
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        except OSError:
            pass
        self.server_close()
        if self.acceptor is not None and self.acceptor is not threading.current_thread():
            self.acceptor.join(5)

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.tls:
            # the handshake happens in the connection's own thread, not in the accept loop
            sock = self.winrm.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        pass  # a client that hangs up or fails TLS validation is not the server's error


class _Headers:
    """A request's headers as ``HTTPMessage`` answers the lookups made of them: ``get`` (the first of that
    name, any case), ``[]`` (None when absent), ``in``, ``items`` and ``get_all`` in the order received."""

    __slots__ = ("_items", "_first")

    def __init__(self):
        self._items: list = []
        self._first: Dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))
        self._first.setdefault(name.lower(), value)

    def get(self, name: str, default=None):
        return self._first.get(name.lower(), default)

    def __getitem__(self, name: str):
        return self._first.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def get_all(self, name: str, failobj=None):
        found = [v for k, v in self._items if k.lower() == name.lower()]
        return found or failobj

    def items(self) -> list:
        return list(self._items)

    def keys(self) -> list:
        return [k for k, _ in self._items]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._items)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every reply stalls ~40 ms (headers and body in separate segments + delayed ACK)
    timeout = IDLE_TIMEOUT_S
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""

    def setup(self):
        super().setup()
        self.winrm: WinRMHost = self.server.winrm
        self.ntlm = None  # the established NTLM context: this connection's security context
        self.ntlm_pending = None
        self.owner = ""
        if self.server.tls:
            # bounded by the idle timeout set above; a failure closes the socket (finish() does not run)
            self.connection.do_handshake()
        self.winrm._track(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.winrm._untrack(self.connection)

    def log_message(self, format, *args):  # noqa: A002 - no per-request logging (hot path)
        pass

    _MAX_LINE = 65536  # http.client's limits, which http.server applies
    _MAX_HEADERS = 100

    def parse_request(self) -> bool:
        """http.server's, with the headers of an ordinary HTTP/1.x request read by a plain loop into a
        ``_Headers`` (looked up as an ``HTTPMessage`` is). http.server has the email package parse them and
        answer each lookup: the largest part of this fleet's CPU per request, which at 300 hosts competes
        with the controller's on the same cores. The same limits, errors and connection handling as
        http.server (tests/test_rehearsal_endpoint.py compares them); a request line of any other shape
        goes to http.server's own parser."""
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = requestline.split()  # (as http.server splits it)
        if len(words) != 3 or words[2] not in ("HTTP/1.1", "HTTP/1.0"):
            return super().parse_request()
        self.requestline = requestline
        command, path, version = words
        self.command, self.request_version = command, version
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        self.close_connection = version == "HTTP/1.0"
        headers = _Headers()
        for count in range(1, self._MAX_HEADERS + 2):  # (the blank line counts, as http.client counts it)
            line = self.rfile.readline(self._MAX_LINE + 1)
            if len(line) > self._MAX_LINE:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
                return False
            if count > self._MAX_HEADERS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            text = line.decode("iso-8859-1").rstrip("\r\n")
            name, colon, value = text.partition(":")
            if not colon or not name or name != name.strip():  # (a folded line too: RFC 7230 allows a 400)
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad header line {text[:40]!r}")
                return False
            headers.add(name, value.lstrip(" \t"))  # (trailing blanks kept, as the email package keeps them)
        self.headers = headers
        connection = (headers.get("Connection") or "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if (version == "HTTP/1.1" and (headers.get("Expect") or "").lower() == "100-continue"
                and not self.handle_expect_100()):
            return False
        return True

    def do_GET(self):
        self._reply(405, b"", close=False)

    def do_POST(self):  # noqa: C901 - the order of the checks is the protocol
        host = self.winrm
        faults = host.faults
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000.0)
        if faults.down or host.state != "running":
            self.close_connection = True
            _abort(self.connection)
            return
        if self.path.split("?")[0].rstrip("/").lower() != "/wsman":
            self._reply(404, b"", close=False)
            return
        if (self.headers.get("WSMANIDENTIFY") or "").strip().lower() == "unauthenticated" and b"Identify" in body:
            # Test-WSMan's default: Identify without credentials, answered without the OS version
            self._reply(200, identify_envelope(authenticated=False), content_type=SOAP_CONTENT_TYPE)
            return
        if not self._authenticate():
            return
        encrypted = "multipart/encrypted" in (self.headers.get("Content-Type") or "")
        if encrypted:
            if self.ntlm is None:
                self._challenge()
                return
            try:
                body = self._unwrap(body)
            except Exception:  # noqa: BLE001 - a tampered or out-of-sequence message
                self._reply(400, b"", close=True)
                return
        elif body and not self.server.tls and not host.allow_unencrypted:
            # WinRM's AllowUnencrypted=false: plain SOAP over HTTP is refused
            self._challenge()
            return
        if not body:
            # the empty POST that completes the NTLM handshake before encryption starts
            self._reply(200, b"", close=False)
            return
        if len(body) > faults.max_envelope_size_kb * 1024:
            # over MaxEnvelopeSizekb: WinRM refuses the request before reading it as SOAP
            self._reply(413, b"", close=False)
            return
        if faults.http_500 and faults.take("http_500"):
            fault = internal_error("Fault injected by the rehearsal fleet spec (http_500).")
            self._soap(500, fault_envelope(fault, host.hostname), encrypted)
            return
        if faults.drop_receive and b"/windows/shell/Receive<" in body and faults.take("drop_receive"):
            self.close_connection = True
            _abort(self.connection)
            return
        try:
            reply = host.dispatch(body, self.owner)
            status = 200
        except WSManFault as fault:
            reply, status = fault_envelope(fault, host.address), 500
        if host.state != "running":
            # the host went down (rebooted) while this request ran: the reply never arrives
            self.close_connection = True
            _abort(self.connection)
            return
        self._soap(status, reply, encrypted)

    # -- auth -------------------------------------------------------------------
    def _authenticate(self) -> bool:
        """True when the request may proceed; otherwise the reply (a 401) has been sent."""
        auth = self.headers.get("Authorization")
        rejecting = self.winrm.faults.auth_reject  # fault: the account is refused (locked out, password changed)
        if not auth:
            if self.ntlm is not None and not rejecting:
                return True
            self._challenge()
            return False
        scheme, _, token = auth.strip().partition(" ")
        scheme_l = scheme.lower()
        if scheme_l == "basic":
            if not self.winrm.faults.basic:
                self._challenge()  # Auth/Basic=false, the service's default
                return False
            if not self.server.tls and not self.winrm.allow_unencrypted:
                self._challenge()  # Basic over plain HTTP is refused like AllowUnencrypted=false
                return False
            if rejecting or not self.winrm.credentials.basic_ok(token.strip()):
                self._challenge()
                return False
            self.owner = self.winrm.credentials.username
            return True
        if scheme_l in ("negotiate", "ntlm"):
            return self._ntlm_step(scheme, token.strip())
        self._challenge()
        return False

    def _ntlm_step(self, scheme: str, token_b64: str) -> bool:
        import spnego
        from spnego.channel_bindings import GssChannelBindings

        try:
            token = base64.b64decode(token_b64)
        except ValueError:
            self._challenge()
            return False
        message_type = token[8:12] if token.startswith(b"NTLMSSP\x00") else b""
        if message_type == b"\x01\x00\x00\x00":
            self.ntlm = None
            bindings = None
            if self.server.tls and self.winrm.cert_sha256:
                bindings = GssChannelBindings(application_data=b"tls-server-end-point:" + self.winrm.cert_sha256)
            ctx = spnego.server(hostname=self.winrm.hostname, service="http", protocol="ntlm", channel_bindings=bindings)
            try:
                challenge = ctx.step(token)
            except Exception:  # noqa: BLE001
                self._challenge()
                return False
            self.ntlm_pending = ctx
            self._reply(401, b"", close=False, extra=[("WWW-Authenticate", f"{scheme} {base64.b64encode(challenge).decode()}")])
            return False
        if message_type == b"\x03\x00\x00\x00" and self.ntlm_pending is not None:
            ctx, self.ntlm_pending = self.ntlm_pending, None
            if self.winrm.faults.auth_reject:
                self._challenge()
                return False
            try:
                ctx.step(token)
            except Exception:  # noqa: BLE001 - wrong password, wrong channel binding, unknown user
                self._challenge()
                return False
            if not ctx.complete:
                self._challenge()
                return False
            self.ntlm = ctx
            self.owner = self.winrm.credentials.username
            return True
        self._challenge()
        return False

    # -- message encryption -----------------------------------------------------
    def _unwrap(self, body: bytes) -> bytes:
        parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
        message = b""
        for i in range(0, len(parts) - 1, 2):
            header, payload = parts[i].strip(), parts[i + 1]
            expected = int(header.split(b"Length=")[1])
            if payload.endswith(BOUNDARY + b"--\r\n"):
                payload = payload[: -len(BOUNDARY + b"--\r\n")]
            data = payload.replace(b"\tContent-Type: application/octet-stream\r\n", b"", 1)
            sig_len = struct.unpack("<i", data[:4])[0]
            plain = self.ntlm.unwrap_winrm(data[4:4 + sig_len], data[4 + sig_len:])
            if len(plain) != expected:
                raise ValueError("encrypted length does not match OriginalContent")
            message += plain
        return message

    def _wrap(self, message: bytes) -> bytes:
        res = self.ntlm.wrap_winrm(message)
        return b"".join((
            BOUNDARY, b"\r\n\tContent-Type: ", PROTOCOL_SPNEGO.encode(), b"\r\n",
            b"\tOriginalContent: type=", SOAP_CONTENT_TYPE.encode(), b";Length=", str(len(message)).encode(), b"\r\n",
            BOUNDARY, b"\r\n\tContent-Type: application/octet-stream\r\n",
            struct.pack("<i", len(res.header)), res.header, res.data,
            BOUNDARY, b"--\r\n",
        ))

    # -- replies ------------------------------------------------------------------
    def _soap(self, status: int, envelope: bytes, encrypted: bool) -> None:
        if encrypted:
            self._reply(status, self._wrap(envelope), content_type=ENCRYPTED_CONTENT_TYPE)
        else:
            self._reply(status, envelope, content_type=SOAP_CONTENT_TYPE)

    def _challenge(self) -> None:
        """401 with the schemes Windows offers; a half-done NTLM handshake is forgotten."""
        self.ntlm_pending = None
        offered = [("WWW-Authenticate", "Negotiate")]
        if self.winrm.faults.basic:
            offered.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
        self._reply(401, b"", close=False, extra=offered)

    _REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                413: "Request Entity Too Large", 500: "Internal Server Error"}

    def _reply(self, status: int, body: bytes, *, content_type: Optional[str] = None, close: bool = False,
               extra=()) -> None:
        # one write: status line, headers and body leave in one segment
        lines = [f"HTTP/1.1 {status} {self._REASONS.get(status, 'Error')}", "Server: Microsoft-HTTPAPI/2.0",
                 f"Content-Length: {len(body)}"]
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines += [f"{k}: {v}" for k, v in extra]
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
