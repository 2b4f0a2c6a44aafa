"""pywinrm's three per-command messages (Command, Receive, Signal), rendered from templates.

pywinrm builds each WS-Man message as a dict and renders it with
``xmltodict.unparse``, which checks every element name character by
character: about a millisecond of CPU per message here. Every command costs
at least three messages (Command, one Receive or more, the terminate Signal),
so with hundreds of hosts finishing a Puppet run at the same moment that
rendering sits on every wave's critical path.

``TemplatedProtocol`` renders each message *shape* once per process (shared by
every host: pywinrm's header names no host, its ``a:To`` is a fixed
placeholder address), with pywinrm's own header builder and xmltodict,
placeholders where the values go, and fills in the escaped values
afterwards: the same bytes pywinrm would send (tests/test_winrm_messages.py
compares them, hostile command text included).
The replies are read exactly as pywinrm reads them (its code, repeated here
because in pywinrm it sits in the same method as the rendering). A value
that would need attribute quoting (never the case for Windows' shell and
command ids) falls back to pywinrm's own method.

Imported only when a WinRM transport is made (pywinrm is a lazy import).
"""

from __future__ import annotations

import base64
import uuid
import xml.etree.ElementTree as ET
from typing import Callable, Dict, Tuple
from xml.sax.saxutils import escape

import xmltodict
from winrm.protocol import Protocol

SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
_ACTIONS = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
TERMINATE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate"

# placeholders: characters xmltodict writes unchanged, never in a real message
_MID, _SHELL, _COMMAND_ID, _TEXT = "@@mid@@", "@@shell@@", "@@command-id@@", "@@text@@"
_ATTRIBUTE_UNSAFE = set("\"'&<>@\n\r\t")


class TemplatedProtocol(Protocol):
    """``winrm.protocol.Protocol`` whose Command, Receive and Signal messages come from templates (module doc)."""

    # Every host's messages of one shape are the same text but for the filled-in values, so one process
    # renders each shape once, not once per host: 300 hosts starting their first Puppet run together each
    # spent ~1 ms of interpreter time per message shape on xmltodict, at the wave's start.
    # (A race renders a shape twice, the same text: harmless.)
    _TEMPLATES: Dict[tuple, str] = {}

    # -- rendering ------------------------------------------------------------------------------
    def _template(self, key: tuple, build: Callable[[], dict]) -> str:
        # the header carries the operation timeout; a subclass may build another header
        key = (type(self),) + key + (int(self.operation_timeout_sec),)
        text = self._TEMPLATES.get(key)
        if text is None:
            text = self._TEMPLATES[key] = xmltodict.unparse(build())
        return text

    def _header(self, action: str) -> dict:
        return {"env:Envelope": self.build_wsman_header(resource_uri=SHELL_URI, action=_ACTIONS + action,
                                                        shell_id=_SHELL, message_id=_MID)}

    def render_command(self, shell_id: str, command: str, console_mode_stdin: bool, skip_cmd_shell: bool,
                       message_id: str) -> str:
        def build() -> dict:
            req = self._header("Command")
            req["env:Envelope"]["env:Header"]["w:OptionSet"] = {"w:Option": [
                {"@Name": "WINRS_CONSOLEMODE_STDIN", "#text": str(console_mode_stdin).upper()},
                {"@Name": "WINRS_SKIP_CMD_SHELL", "#text": str(skip_cmd_shell).upper()},
            ]}
            req["env:Envelope"].setdefault("env:Body", {}).setdefault("rsp:CommandLine", {})["rsp:Command"] = {
                "#text": _TEXT}
            return req

        text = self._template(("Command", bool(console_mode_stdin), bool(skip_cmd_shell)), build)
        return _fill(text, message_id, shell_id, command=command)

    def render_receive(self, shell_id: str, command_id: str, message_id: str) -> str:
        def build() -> dict:
            req = self._header("Receive")
            stream = req["env:Envelope"].setdefault("env:Body", {}).setdefault("rsp:Receive", {}).setdefault(
                "rsp:DesiredStream", {})
            stream["@CommandId"] = _COMMAND_ID
            stream["#text"] = "stdout stderr"
            return req

        return _fill(self._template(("Receive",), build), message_id, shell_id, command_id=command_id)

    def render_signal(self, shell_id: str, command_id: str, message_id: str) -> str:
        def build() -> dict:
            req = self._header("Signal")
            signal = req["env:Envelope"].setdefault("env:Body", {}).setdefault("rsp:Signal", {})
            signal["@CommandId"] = _COMMAND_ID
            signal["rsp:Code"] = TERMINATE
            return req

        return _fill(self._template(("Signal",), build), message_id, shell_id, command_id=command_id)

    # -- the three operations (pywinrm's, with the rendering above) ----------------------------------
    def run_command(self, shell_id, command, arguments=(), console_mode_stdin=True, skip_cmd_shell=False):
        if arguments or not command or not _attribute_safe(shell_id):
            return super().run_command(shell_id, command, arguments, console_mode_stdin, skip_cmd_shell)
        res = self.send_message(self.render_command(shell_id, command, console_mode_stdin, skip_cmd_shell,
                                                    str(uuid.uuid4())))
        root = ET.fromstring(res)
        return next(node for node in root.findall(".//*") if node.tag.endswith("CommandId")).text

    def cleanup_command(self, shell_id, command_id):
        if not (_attribute_safe(shell_id) and _attribute_safe(command_id)):
            return super().cleanup_command(shell_id, command_id)
        message_id = uuid.uuid4()
        res = self.send_message(self.render_signal(shell_id, command_id, str(message_id)))
        root = ET.fromstring(res)
        relates_to = next(node for node in root.findall(".//*") if node.tag.endswith("RelatesTo")).text
        assert uuid.UUID(relates_to.replace("uuid:", "")) == message_id  # as pywinrm checks it

    def get_command_output_raw(self, shell_id, command_id) -> Tuple[bytes, bytes, int, bool]:
        if not (_attribute_safe(shell_id) and _attribute_safe(command_id)):
            return super().get_command_output_raw(shell_id, command_id)
        res = self.send_message(self.render_receive(shell_id, command_id, str(uuid.uuid4())))
        root = ET.fromstring(res)
        stdout, stderr, return_code = [], [], -1
        for node in root.findall(".//*"):
            if not node.tag.endswith("Stream") or not node.text:
                continue
            if node.attrib["Name"] == "stdout":
                stdout.append(base64.b64decode(node.text.encode("ascii")))
            elif node.attrib["Name"] == "stderr":
                stderr.append(base64.b64decode(node.text.encode("ascii")))
        done = len([n for n in root.findall(".//*") if n.get("State", "").endswith("CommandState/Done")]) == 1
        if done:
            return_code = int(next(n for n in root.findall(".//*") if n.tag.endswith("ExitCode")).text or -1)
        return b"".join(stdout), b"".join(stderr), return_code, done


def _attribute_safe(value: str) -> bool:
    return bool(value) and not (_ATTRIBUTE_UNSAFE & set(value))


def _fill(template: str, message_id: str, shell_id: str, *, command: str = "", command_id: str = "") -> str:
    # the values, escaped as xmltodict escapes text (ids are attribute-safe: checked by the callers)
    text = template.replace(_MID, message_id).replace(_SHELL, escape(shell_id))
    if command_id:
        text = text.replace(_COMMAND_ID, command_id)
    if command:
        text = text.replace(_TEXT, escape(command))
    return text
