"""The rehearsal fleet: emulated Windows hosts behind a real WinRM (WS-Management) endpoint.

EMULATED: no Windows runs here. The endpoint speaks the protocol the real
pywinrm client speaks to Windows; a Windows persona behind it implements the
executables of the command contract (DESIGN.md) with their Windows semantics.
"""

from pathlib import Path

#: where `inv fleet.up` keeps the fleet's state (fleet.json, sandboxes, CA)
DEFAULT_ROOT = Path("build") / "fleet"
