"""Run a command (the test suite) so that, in CI, it leaves running exactly what was running before.

    python -m tests.support.ci_processes [--ci] -- COMMAND...

What the command starts in the background is recorded in the process ledger
(``DEPLOY_TASKS_PROCESS_LEDGER``; deploy_tasks/processes.py). With ``--ci``,
once the command has ended:

1. every process of the ledger is stopped by its record (pid, start time and
   command line checked first), except one that was already running when
   this run began: that one is not ours to stop;
2. the check: this process is a child subreaper (prctl), so whatever the
   command left behind — daemons that detached with setsid or a double fork
   included — is still our descendant. A descendant that is new since the
   snapshot taken at the start (pid and start time) and still runs after a
   short grace is named, and the run fails. Nothing is killed by name or by
   guess: a leftover is a bug to fix in the test or the task that started it.

Without ``--ci`` (a developer's machine) services stay up for the next run.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from deploy_tasks import processes

PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 10.0


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> dict:
    """{pid: start time} of every live (not zombie) descendant of ``root``."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parent[int(entry.name)] = int(fields[1])
    found = {}
    for pid in parent:
        p = parent.get(pid)
        seen = 0
        while p and seen < 64:
            if p == root:
                started = processes.start_time(pid)
                if started is not None:
                    found[pid] = started
                break
            p = parent.get(p)
            seen += 1
    return found


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run(command: list) -> int:
    """Run ``command``, reaping orphans meanwhile; return its exit code."""
    child = subprocess.Popen(command)

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # cannot happen while the command runs; be safe
            return child.poll() or 0
        except InterruptedError:
            continue
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)
            return child.returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.ci_processes")
    parser.add_argument("--ci", action="store_true", help="stop what the ledger lists, then check for leftovers")
    parser.add_argument("--grace", type=float, default=GRACE_S, help="seconds a stopped process may take to go")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    before = processes.snapshot()
    watching = become_subreaper()
    rc = run(command)
    if not args.ci:
        return rc
    spare = list(before.items())
    for record in processes.stop_recorded(spare=spare):
        print(f"stopped {record.name or 'process'} pid {record.pid} (started by this run)", flush=True)
    if not watching:
        print("note: could not become a child subreaper; leftovers are not checked", flush=True)
        return rc
    deadline = time.monotonic() + args.grace
    left = {}
    while True:
        reap()
        left = {pid: t for pid, t in descendants(os.getpid()).items() if before.get(pid) != t}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if left:
        print("these processes started during the run are still running (a test or task started them "
              "without recording them in the process ledger):", flush=True)
        for pid in sorted(left):
            print(f"  pid {pid}: {' '.join(processes.cmdline(pid))[:200]}", flush=True)
        return rc or 1
    print("no process started by this run is left running", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
