"""Windows Installer packages for the emulated persona: fake MSI files and how the persona reads them.

A real MSI is an OLE2 compound document; the persona checks only the OLE2
signature (D0 CF 11 E0 A1 B1 1A E1), as a first test Windows Installer also
makes, and answers 1620 for anything else. The product a package installs is
read from a marker that :func:`write_fake_msi` embeds, or else from the file
name (``puppet-agent-<version>-x64.msi``, as Puppet ships it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

OLE2_MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")
_MARKER = b"DEPLOY_TASKS_EMULATED_MSI:"
_PUPPET_NAME = re.compile(r"puppet-agent-(\d+(?:\.\d+)*)(?:-x64|-x86)?\.msi$", re.IGNORECASE)

# Windows Installer exit codes the persona uses (winerror.h), with their meaning.
ERROR_SUCCESS = 0
ERROR_INSTALL_FAILURE = 1603  # fatal error during installation
ERROR_INSTALL_ALREADY_RUNNING = 1618  # another installation is already in progress
ERROR_INSTALL_PACKAGE_OPEN_FAILED = 1619  # the package could not be opened
ERROR_INSTALL_PACKAGE_INVALID = 1620  # not a valid Windows Installer package
ERROR_INSTALL_LOG_FAILURE = 1622  # error opening the installation log file
ERROR_INVALID_COMMAND_LINE = 1639  # invalid command line argument
ERROR_SUCCESS_REBOOT_INITIATED = 1641  # the installer has initiated a restart
ERROR_SUCCESS_REBOOT_REQUIRED = 3010  # a restart is required to complete the install

MESSAGES = {
    ERROR_SUCCESS: "The action completed successfully.",
    ERROR_INSTALL_FAILURE: "Fatal error during installation.",
    ERROR_INSTALL_ALREADY_RUNNING: "Another installation is already in progress. Complete that installation "
    "before proceeding with this install.",
    ERROR_INSTALL_PACKAGE_OPEN_FAILED: "This installation package could not be opened. Verify that the package "
    "exists and that you can access it, or contact the application vendor to verify that this is a valid "
    "Windows Installer package.",
    ERROR_INSTALL_PACKAGE_INVALID: "This installation package could not be opened. Contact the application "
    "vendor to verify that this is a valid Windows Installer package.",
    ERROR_INSTALL_LOG_FAILURE: "There was an error opening installation log file. Verify that the specified "
    "log file location exists and that you can write to it.",
    ERROR_INVALID_COMMAND_LINE: "Invalid command line argument. Consult the Windows Installer SDK for detailed "
    "command line help.",
    ERROR_SUCCESS_REBOOT_INITIATED: "The requested operation completed successfully. The system will be "
    "restarted so the changes can take effect.",
    ERROR_SUCCESS_REBOOT_REQUIRED: "The requested operation is successful. Changes will not be effective until "
    "the system is rebooted.",
}


@dataclass(frozen=True)
class Package:
    """What an MSI installs, as far as the persona knows it."""

    product: str
    version: str

    @property
    def is_puppet_agent(self) -> bool:
        return self.product.lower() == "puppet agent"


def write_fake_msi(path: Union[str, Path], product: str = "Puppet Agent", version: str = "7.23.0") -> Path:
    """Write a small file with the OLE2 signature that the emulated persona accepts as an MSI.

    It is not a real Windows Installer database: only the emulated hosts can
    "install" it. The product and version are embedded as a marker.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    marker = _MARKER + json.dumps({"product": product, "version": version}, sort_keys=True).encode() + b"\n"
    body = OLE2_MAGIC + b"\x00" * 504 + marker  # a 512-byte header block, then the marker
    p.write_bytes(body + b"\x00" * (-len(body) % 512))
    return p


def is_msi(data: bytes) -> bool:
    """True when ``data`` starts with the OLE2 compound-document signature."""
    return data[:8] == OLE2_MAGIC


def identify(data: bytes, name: str) -> Package:
    """Read the product from the embedded marker, else from the file name, else name it after the file."""
    at = data.find(_MARKER)
    if at >= 0:
        end = data.find(b"\n", at)
        try:
            info = json.loads(data[at + len(_MARKER) : end if end > 0 else None])
            return Package(str(info["product"]), str(info["version"]))
        except (ValueError, KeyError):
            pass
    base = re.split(r"[\\/]", name)[-1]
    m = _PUPPET_NAME.search(base)
    if m:
        return Package("Puppet Agent", m.group(1))
    return Package(re.sub(r"\.msi$", "", base, flags=re.IGNORECASE) or "Unknown product", "0.0.0")


def version_tuple(version: str) -> tuple:
    out = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        out.append(int(m.group()) if m else 0)
    return tuple(out)


def server_property(version: str) -> str:
    """The MSI property naming the Puppet server: PUPPET_SERVER from agent 7, PUPPET_MASTER_SERVER before."""
    return "PUPPET_SERVER" if version_tuple(version) >= (7,) else "PUPPET_MASTER_SERVER"


def puppet_settings_from_properties(version: str, props: dict) -> dict:
    """The puppet.conf [main] settings a Puppet agent MSI writes from its public properties.

    A property the MSI of that version does not know is ignored, as Windows
    Installer ignores unknown public properties, so the agent then falls back
    to the default server name ``puppet``.
    """
    upper = {k.upper(): v for k, v in props.items()}
    settings = {"server": upper.get(server_property(version)) or "puppet"}
    if upper.get("PUPPET_AGENT_CERTNAME"):
        settings["certname"] = upper["PUPPET_AGENT_CERTNAME"]  # not lowered: Puppet refuses upper case itself
    if upper.get("PUPPET_AGENT_ENVIRONMENT"):
        settings["environment"] = upper["PUPPET_AGENT_ENVIRONMENT"]
    if upper.get("PUPPET_CA_SERVER"):
        settings["ca_server"] = upper["PUPPET_CA_SERVER"]
    return settings


def describe(code: int) -> Optional[str]:
    return MESSAGES.get(code)
