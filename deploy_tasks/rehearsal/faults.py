"""The rehearsal fleet's spec: per-host faults and WinRM service settings, from a spec file or the Python API.

Spec file (YAML or JSON), every key optional:

    mode: real            # real: puppet backed by the Linux agent; timing: the timing model (benchmarks)
    defaults: {latency_ms: 0}
    hosts:
      ZDB01:
        down: false                # connections refused
        latency_ms: 200            # added to every WS-Man request
        drop_receive: 1            # drop the TCP connection mid-Receive this many times
        http_500: 1                # answer this many requests with HTTP 500 + a WSManFault
        auth_reject: false         # every request gets 401
        msi_busy_attempts: 2       # msiexec answers 1618 this many times first
        msi_exit_code: 3010        # msiexec succeeds with 3010 (or 1641): reboot required; 1603 (any other) fails
        puppet_fail: [zeo_server]  # puppet runs touching these components fail (exit 4/6 with --detailed-exitcodes)
        slow_command_s: 5          # every command takes at least this long (outlasts a short OperationTimeout)
        reboot_down_s: 2           # after `shutdown /r` (or an MSI's 1641) the host is away this long
        # the host's WinRM service settings (winrm/config); defaults are Windows Server 2012 R2's (WinRM 3.0)
        basic: false                       # Auth/Basic: off on a fresh 2012 R2; true lets Basic in (HTTPS, or HTTP with --allow-unencrypted)
        max_shells_per_user: 30            # Winrs/MaxShellsPerUser: the next Create gets the w:QuotaLimit fault
        max_concurrent_operations_per_user: 1500  # Service/MaxConcurrentOperationsPerUser: a user's open shells + the commands run in them
        max_processes_per_shell: 25        # Winrs/MaxProcessesPerShell: commands alive at once in one shell
        max_memory_per_shell_mb: 1024      # Winrs/MaxMemoryPerShellMB: reported, not measured
        idle_timeout_s: 7200               # Winrs/IdleTimeout: a shell idle this long is deleted (a Create's IdleTimeOut wins)
        max_envelope_size_kb: 500          # MaxEnvelopeSizekb: a larger request gets HTTP 413
        max_timeout_ms: 60000              # MaxTimeoutms: reported in the config
    timing:                        # mode timing only
      default_s: 2.0
      components: {zeo_server: 10.0}

Counters (drop_receive, http_500, msi_busy_attempts) count down as faults fire,
under a lock, so the same fault object can be shared across threads.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import ConfigError


@dataclass
class HostFaults:
    down: bool = False
    latency_ms: int = 0
    drop_receive: int = 0
    http_500: int = 0
    auth_reject: bool = False
    msi_busy_attempts: int = 0
    msi_exit_code: int = 0
    puppet_fail: tuple = ()
    slow_command_s: float = 0.0
    reboot_down_s: float = 2.0  # how long `shutdown /r` keeps the host away
    # WinRM service settings, Windows Server 2012 R2 defaults (`winrm get winrm/config`)
    basic: bool = False
    max_shells_per_user: int = 30
    max_concurrent_operations_per_user: int = 1500
    max_processes_per_shell: int = 25
    max_memory_per_shell_mb: int = 1024
    idle_timeout_s: float = 7200.0
    max_envelope_size_kb: int = 500
    max_timeout_ms: int = 60000
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take(self, counter: str) -> bool:
        """Consume one firing of a counted fault; True when it fires now."""
        with self._lock:
            left = getattr(self, counter)
            if left > 0:
                setattr(self, counter, left - 1)
                return True
            return False

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> "HostFaults":
        known = {f.name for f in fields(cls) if not f.name.startswith("_")}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"{where}: unknown fault(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        values = dict(data)
        for name in _POSITIVE_INTS:
            if name in values:
                value = values[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"{where}: {name} must be a whole number >= 1, not {value!r}")
        if "idle_timeout_s" in values:
            value = values["idle_timeout_s"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
                raise ConfigError(f"{where}: idle_timeout_s must be a number of seconds >= 1 (WinRM's minimum), not {value!r}")
        if "basic" in values and not isinstance(values["basic"], bool):
            raise ConfigError(f"{where}: basic must be true or false, not {values['basic']!r}")
        if "puppet_fail" in values:
            pf = values["puppet_fail"]
            values["puppet_fail"] = tuple([pf] if isinstance(pf, str) else pf)
        return cls(**values)


_POSITIVE_INTS = ("max_shells_per_user", "max_concurrent_operations_per_user", "max_processes_per_shell",
                  "max_memory_per_shell_mb", "max_envelope_size_kb", "max_timeout_ms")


@dataclass
class FleetSpec:
    mode: str = "real"  # "real" or "timing"
    hosts: dict = field(default_factory=dict)  # hostname (lowercase) -> HostFaults
    timing_default_s: float = 2.0
    timing_components: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)  # faults of every host not listed

    def faults_for(self, hostname: str) -> HostFaults:
        key = hostname.lower()
        if key not in self.hosts:
            self.hosts[key] = HostFaults.from_mapping(self.defaults, "fleet spec: defaults")
        return self.hosts[key]

    @classmethod
    def load(cls, path: Optional[str]) -> "FleetSpec":
        if not path:
            return cls()
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"fleet spec {path}: cannot be read ({exc.strerror})") from None
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise ConfigError(f"fleet spec {path}: not valid YAML/JSON ({exc})") from None
        return cls.from_mapping(data or {}, str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "fleet spec") -> "FleetSpec":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping at the top")
        unknown = set(data) - {"mode", "defaults", "hosts", "timing"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        mode = data.get("mode", "real")
        if mode not in ("real", "timing"):
            raise ConfigError(f"{where}: mode must be real or timing, not {mode!r}")
        defaults = data.get("defaults") or {}
        spec = cls(mode=mode, defaults=dict(defaults))
        for hostname, faults in (data.get("hosts") or {}).items():
            merged = {**defaults, **(faults or {})}
            spec.hosts[str(hostname).lower()] = HostFaults.from_mapping(merged, f"{where}: hosts.{hostname}")
        timing = data.get("timing") or {}
        spec.timing_default_s = float(timing.get("default_s", 2.0))
        spec.timing_components = {str(k): float(v) for k, v in (timing.get("components") or {}).items()}
        return spec
