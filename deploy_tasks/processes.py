"""Records of the local processes this project starts, and stopping them by that record only.

A pid alone names a process only while it lives: once it exits, the kernel
hands the number to the next process. So every process the tasks or the tests
start in the background (the rehearsal fleet, the test sshd, a puppetserver
or nginx a test brought up) is recorded with its pid, its start time (field
22 of /proc/<pid>/stat, fixed for the life of a process) and its command
line, and is signalled only after both still match. Nothing here matches
processes by name.

The ledger is a directory of such records (``DEPLOY_TASKS_PROCESS_LEDGER``):
.ci/run points it at a fresh directory and, in CI, stops what it lists at
the end. Only the standard library is used: any layer may import this.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

LEDGER_ENV = "DEPLOY_TASKS_PROCESS_LEDGER"


def start_time(pid: int) -> Optional[str]:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    return stat.rsplit(")", 1)[1].split()[19]


def cmdline(pid: int) -> list:
    """The argument vector of ``pid`` ([] for a zombie, a kernel thread or no such process)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else []


def snapshot() -> dict:
    """Every process visible now: {pid: start time}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            started = start_time(int(entry.name))
            if started is not None:
                found[int(entry.name)] = started
    return found


@dataclass(frozen=True)
class ProcessRecord:
    """Who a process is: pid, start time, and a word its command line must contain (``marker``)."""

    pid: int
    start_time: Optional[str]
    argv: tuple = ()
    marker: str = ""  # e.g. the config file it was started with; default: its argv[0]
    name: str = ""  # what it is, for messages: "sshd", "puppetserver", "rehearsal fleet"
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, pid: int, name: str = "", marker: str = "", **extra) -> "ProcessRecord":
        """Record a running process as it is now."""
        argv = tuple(cmdline(pid))
        return cls(pid, start_time(pid), argv, marker or (argv[0] if argv else ""), name, dict(extra))

    def alive(self) -> bool:
        """Whether the process this record names still runs (same pid, same start time, marker in its argv)."""
        argv = cmdline(self.pid)
        if not argv:
            return False
        if self.marker and not any(self.marker in a for a in argv):
            return False
        return self.start_time is None or start_time(self.pid) == self.start_time

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; only while :meth:`alive`. Returns whether it was running."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():  # exited (a zombie has no command line): collect it if it is our child
                _reap(self.pid)
                return True
            time.sleep(0.05)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            _reap(self.pid)
        return True

    def to_json(self) -> str:
        data = asdict(self)
        data["argv"] = list(self.argv)
        return json.dumps(data) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ProcessRecord":
        data = json.loads(text)
        return cls(int(data["pid"]), data.get("start_time"), tuple(data.get("argv") or ()), data.get("marker", ""),
                   data.get("name", ""), dict(data.get("extra") or {}))

    def save(self, path: Path) -> None:
        """Write the record (0600: it may name private paths) atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Optional["ProcessRecord"]:
        """The record in ``path``, or None when it is missing or unreadable."""
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _reap(pid: int, within: float = 2.0) -> None:
    """Collect the exit status when ``pid`` is our own child, so it does not linger as a zombie.

    Called once the process is seen gone, which it is (its command line empty) a moment before the kernel
    makes it a zombie that can be collected: so wait up to ``within`` seconds for that (a CI run caught the
    child still there right after a single try)."""
    deadline = time.monotonic() + within
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not ours (or collected already)
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.005)


# -- the ledger: where CI finds what to stop -------------------------------------------
def ledger_dir(default: Optional[Path] = None) -> Optional[Path]:
    value = os.environ.get(LEDGER_ENV)
    return Path(value) if value else default


def register(record: ProcessRecord, ledger: Optional[Path] = None) -> Optional[Path]:
    """Add ``record`` to the ledger (when one is set); returns the file written."""
    ledger = ledger or ledger_dir()
    if ledger is None:
        return None
    ledger.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = ledger / f"{record.pid}-{record.start_time}.json"
    record.save(path)
    return path


def unregister(record: ProcessRecord, ledger: Optional[Path] = None) -> None:
    ledger = ledger or ledger_dir()
    if ledger is not None:
        (ledger / f"{record.pid}-{record.start_time}.json").unlink(missing_ok=True)


def recorded(ledger: Optional[Path] = None) -> Iterator[tuple]:
    """(path, record) for every readable record in the ledger."""
    ledger = ledger or ledger_dir()
    if ledger is None or not ledger.is_dir():
        return
    for path in sorted(ledger.glob("*.json")):
        record = ProcessRecord.load(path)
        if record is not None:
            yield path, record


def stop_recorded(ledger: Optional[Path] = None, spare: Sequence[tuple] = ()) -> list:
    """Stop every live process of the ledger, except those in ``spare`` ((pid, start time) pairs).

    Returns what was stopped, as records. A record whose process is gone is dropped.
    """
    stopped = []
    spared = set(spare)
    for path, record in recorded(ledger):
        if (record.pid, record.start_time) in spared:
            continue
        if record.stop():
            stopped.append(record)
        path.unlink(missing_ok=True)
    return stopped
