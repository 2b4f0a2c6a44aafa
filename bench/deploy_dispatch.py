"""Benchmark: how fast the controller alone starts a wave's Puppet runs (no fleet, no network).

    .venv/bin/python bench/deploy_dispatch.py [--hosts 300] [--command-cpu-ms 0.3] [--repeat 3]

The steps of bench/deploy_makespan.py (the example's 34 components in 6 groups, host i
playing example host i mod 6), deployed in waves by deploy_tasks.runner.deploy.Deployment
through a stand-in transport: each Puppet run spends ``--command-cpu-ms`` of CPU (what
starting a command over WinRM costs the controller; bench/winrm_roundtrip.py measures it)
and then sleeps 0.5 s. What is measured is the controller's own cost of starting runs:
per group, the spread of the moments the runs reach the transport (first to last), which
is the least a group's last host can start after its first, whatever the hosts do.

Rows, each measured in the same run (these machines are noisy: compare ratios):
- no state file: the runner and the deployment only (the baseline);
- state file: as inv deploy runs, each run's "running" mark in the state file (written,
  file replaced) before the run reaches the transport.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def once(steps, hosts: int, cpu_s: float, state: bool):
    from deploy_tasks.runner.deploy import Deployment
    from deploy_tasks.transports.base import Result

    group_of = {s.component: s.group for s in steps}
    starts = {}  # group -> when its runs reached the transport

    class Transport:  # a host that answers at once: the command's CPU on the controller, then the run
        def __init__(self, name):
            self.name = name

        def change_argv(self, argv, check=False, timeout=None):
            starts.setdefault(group_of[argv[-1].split(",")[0]], []).append(time.monotonic())
            t = time.thread_time()
            while time.thread_time() - t < cpu_s:
                pass
            time.sleep(0.5)
            out = "".join(f"Notice: /Stage[main]/X/Product::Component[{c}]/ensure: created\n"
                          for c in argv[-1].split(","))
            return Result(" ".join(argv), 2, out, "", 0.5)

    with tempfile.TemporaryDirectory(prefix="deploy-dispatch-") as tmp:
        deployment = Deployment(steps, Transport, release=lambda t: None, schedule="waves", max_parallel=hosts,
                                handle_signals=False, retries=0,
                                state_path=str(Path(tmp) / "state.json") if state else None)
        t0 = time.monotonic()
        ok = deployment.run().ok
        seconds = time.monotonic() - t0
    assert sum(len(v) for v in starts.values()) == len({(s.host, s.group) for s in steps})  # one run per host and group
    spread = {g: (max(v) - min(v)) * 1000 for g, v in sorted(starts.items())}
    return ok, seconds, spread


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=300)
    p.add_argument("--command-cpu-ms", type=float, default=0.3)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    from deploy_makespan import steps_for

    steps, _ = steps_for(args.hosts)
    print(f"{args.hosts} hosts, {len(steps)} steps, waves; each command {args.command_cpu_ms:g} ms of controller "
          f"CPU then 0.5 s; the spread of each group's run starts in ms (median of {args.repeat}, interleaved)")
    rows = {"no state file": [], "state file": []}
    for _ in range(args.repeat):
        for label, state in (("no state file", False), ("state file", True)):
            ok, seconds, spread = once(steps, args.hosts, args.command_cpu_ms / 1000, state)
            assert ok, label
            rows[label].append(spread)
    base = None
    for label, runs in rows.items():
        med = {g: statistics.median(r[g] for r in runs) for g in runs[0]}
        total = sum(med.values())
        base = base or total
        print(f"  {label:14s} " + " ".join(f"g{g} {v:5.0f}" for g, v in med.items())
              + f"   sum {total:5.0f} ms  ({total / base:.2f}x the first row)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
