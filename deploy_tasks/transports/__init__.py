"""Transports: how the controller talks to a host (SSH via Fabric, local via Invoke; WinRM later)."""
