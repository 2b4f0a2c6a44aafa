"""A host's recorded state: installed products, services, boot times, pending reboot, the PATH, resources.

It lives in ``<state_dir>/state.json``, written atomically after every change
so a fleet restarted on the same directory finds its hosts as they were. Every
reader gets a copy; every change goes through ``update``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Callable, Dict, List


class HostState:
    """The state store of one emulated host."""

    def __init__(self, state_dir: Path, system_path: List[str]):
        self.file = Path(state_dir) / "state.json"
        self._lock = threading.RLock()
        try:
            self._state = json.loads(self.file.read_text())
        except (OSError, ValueError):
            self._state = {"products": {}, "services": {}, "path": list(system_path), "pending_reboot": False}
        self._text = json.dumps(self._state)  # as last saved, in its own order: a snapshot is one decode of it

    def update(self, fn: Callable[[dict], None]) -> None:
        """Apply ``fn`` to the state and save it, under the host's lock; if ``fn`` raises, nothing changes."""
        with self._lock:
            try:
                fn(self._state)
            except BaseException:
                self._state = json.loads(self._text)  # a change that failed half way is not kept
                raise
            tmp = self.file.with_suffix(".tmp")
            # no indent: with one, json falls back to its pure-Python encoder, and this runs on every
            # change of every emulated host (the fleet's CPU competes with the controller's in benches)
            tmp.write_text(json.dumps(self._state, sort_keys=True))
            os.replace(tmp, self.file)
            self._text = json.dumps(self._state)

    def snapshot(self) -> dict:
        """A copy of the whole state."""
        with self._lock:
            return json.loads(self._text)

    def get(self, key: str, default=None):
        """A copy of one entry."""
        with self._lock:
            return json.loads(json.dumps(self._state.get(key, default)))

    def booted(self, boot_time: str, rebooted: bool = True) -> None:
        """Record a boot. After a reboot no reboot is pending, automatic services run and the others are stopped.

        ``rebooted=False``: the fleet starting on existing state: the host keeps what it had.
        """

        def boot(state: dict) -> None:
            state["boot_time"] = boot_time
            state.setdefault("boots", []).append(boot_time)
            if not rebooted:
                return
            state["pending_reboot"] = False
            for svc in state["services"].values():
                svc["state"] = "running" if svc.get("start_type") in ("automatic", "delayed") else "stopped"

        self.update(boot)

    @property
    def products(self) -> Dict[str, dict]:
        return self.get("products", {})

    @property
    def services(self) -> Dict[str, dict]:
        return self.get("services", {})
