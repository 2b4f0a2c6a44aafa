"""The rehearsal fleet: emulated Windows hosts behind a real WinRM (WS-Management) endpoint.

EMULATED: no Windows runs here. The endpoint speaks the protocol the real
pywinrm client speaks to Windows; a Windows persona behind it implements the
executables of the command contract (DESIGN.md) with their Windows semantics.
"""
