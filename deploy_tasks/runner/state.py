"""A state file for resuming: the run so far, rewritten atomically each time a unit finishes.

``StateFile(path, task)`` is a runner listener. If the controller dies
mid-run, the file holds every unit that finished (the ones in flight are
absent, so a resumed run checks them again); ``load(path)`` gives the
``RunResult`` to pass as ``Runner.run(units, previous=...)``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import Optional

from ..errors import ConfigError
from .model import Event, RunResult, now_iso


class StateFile:
    def __init__(self, path: str, task: str, dry_run: bool = False):
        self.path = path
        self.result = RunResult(task, dry_run=dry_run, started=now_iso())
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if event.kind != "finished" or event.result is None:
            return
        with self._lock:
            self.result.units = [u for u in self.result.units if u.id != event.unit] + [event.result]
            self.result.ended = now_iso()
            _write_atomic(self.path, self.result.to_json())


def load(path: str) -> Optional[RunResult]:
    """The run a state file recorded, or None when there is none yet."""
    try:
        with open(path, encoding="utf-8") as fh:
            return RunResult.from_dict(json.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"the state file {path} cannot be read ({exc}): move it away to start afresh") from None


def _write_atomic(path: str, text) -> None:
    """Replace ``path`` with ``text`` (str, written as UTF-8, or bytes): a temporary file, then a rename."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8") if isinstance(text, str) else text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
