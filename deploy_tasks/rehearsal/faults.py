"""Fault injection for the rehearsal fleet: per-host faults from a spec file or the Python API.

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
    reboot_down_s: float = 2.0  # issue 4 (persona): how long `shutdown /r` keeps the host away
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
        if "puppet_fail" in values:
            pf = values["puppet_fail"]
            values["puppet_fail"] = tuple([pf] if isinstance(pf, str) else pf)
        return cls(**values)


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
