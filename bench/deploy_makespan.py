"""Benchmark: inv deploy's makespan on the TIMING-MODEL fleet, waves and dag, against their lower bounds and the seed's method.

    .venv/bin/python bench/deploy_makespan.py [--hosts 6,60,300] [--pin] [--overhead 2.47] [--per-component 0.17]
        [--methods waves,dag,seed] [--edges] [--fleet-processes 2] [--fleet-dir /dev/shm]

The fleet runs in child processes (``--fleet-processes``, default 2: the hosts dealt
among them in turn; ``inv fleet.up`` runs one). Each emulated host stands for a
Windows machine with CPUs of its own; one Python interpreter serving 300 of them
makes their Puppet runs queue for its one interpreter lock, and the runs then last
longer than the model says (measured at 300 hosts with one process: a 4-component
run 3.15 s by the model, up to 3.45 s in the fleet). The hosts' disks are under
``--fleet-dir`` (default /dev/shm, see fleet_dir()). Its persona is the
timing model (deploy_tasks/rehearsal/puppet.py, mode "timing"): a Puppet run costs
``--overhead`` seconds plus ``--per-component`` seconds for each tagged component
(the overhead is added by this script's persona wrapper). Pass the figures measured
on the real-agent fleet (the journal of tests/test_deploy_real.py: run duration
against component count); both are printed with the results.

The inventory: the example's 34 components in 6 groups; host i plays the role of
example host i mod 6 (so every host carries that host's components).

Methods, each measured in the same run:
- waves: deploy_tasks.runner.deploy.Deployment, schedule waves (one run per host per group)
- dag: the same, schedule dag
- seed: the seed's method: a wave barrier, one Puppet run per component, a new
  pywinrm Session (shell, connection, NTLM handshake) per command

Lower bounds: waves = sum over groups of the slowest host's run (overhead + its
components); dag = the critical path with per-host serialization: the longest
dependency chain of steps, each in a run of its own (overhead + one component),
and for each host and each release time r (the earliest a step of it can
start), r + the runs it still needs after r (the longest chain among its steps
that can start no earlier, times the overhead) + those steps' components + the
shortest tail of dependent steps after them. No schedule can beat either.

As `inv deploy` runs: pre-flight first proves every host answers over WinRM on
the host's one shell of the run (WinRMPool.borrow), which the Puppet runs then
reuse; the makespan is the deploy after that (pre-flight's own time, mostly
the TLS and NTLM logon per host, is printed beside it), with the state file
written after every step. "no-overhead": the same schedule replayed with the
model's run times and nothing else, over the same bound (what the policy
itself costs; the rest of the ratio is execution: WinRM round trips, the
emulated fleet, the controller). "over runs": the makespan over that replay,
i.e. over the critical path of the Puppet runs the schedule made, with per-host
serialization (for waves the same as its bound; for dag the issue's "critical
path with per-host serialization" read over the runs dag makes, one per host
and group, where the bound above lets every chained step have a run of its
own: execution alone). Also printed: the controller's CPU time per step and
the emulated fleet's (work that real Windows hosts do on their own CPUs; here
the fleet and the controller share this machine's cores, which at 300 hosts is
what the makespan measures: `--pin` gives each its own core).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent


def addresses(n: int):
    return [(f"BENCH{i:03d}", f"127.0.{20 + i // 250}.{1 + i % 250}") for i in range(n)]


# -- the child: a timing-model fleet with a per-run overhead -----------------------------------
def serve(args) -> None:
    import http.server
    import threading

    from deploy_tasks.rehearsal import msi as msilib
    from deploy_tasks.rehearsal.faults import FleetSpec
    from deploy_tasks.rehearsal.fleet import Fleet
    from deploy_tasks.rehearsal.persona import WindowsPersona

    overhead = args.overhead

    def persona(*a):
        p = WindowsPersona(*a)
        timed = p.puppet._timing_run

        def with_overhead(ctx, opts):
            if ctx.sleep(overhead):
                return 1
            return timed(ctx, opts)

        p.puppet._timing_run = with_overhead
        return p

    root = Path(args.root)
    spec = FleetSpec(mode="timing", timing_default_s=args.per_component)
    # this child's share of the hosts; the account comes from the environment (DEPLOY_WINRM_USER/PASSWORD),
    # the same in every child
    fleet = Fleet(addresses(args.n)[args.part::args.parts], root / "fleet", spec, persona_factory=persona,
                  http_port=0, https_port=0)
    fleet.start()
    msilib.write_fake_msi(root / "pkgs" / "agent.msi")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root / "pkgs"), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/agent.msi"
    for host in fleet.hosts.values():
        line = subprocess.list2cmdline(["msiexec", "/qn", "/i", url, "PUPPET_SERVER=127.0.0.1",
                                        f"PUPPET_AGENT_CERTNAME={host.hostname.lower()}.bench.test"])
        assert host.persona.run(line)[2] == 0
    httpd.shutdown()
    fleet.write_json(root / "fleet.json")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()
    fleet.stop()


def fleet_dir():
    """Where the emulated hosts' disks go by default: /dev/shm when it is a writable tmpfs, else None (the
    temporary directory).

    Each emulated host stands for a Windows machine with a disk of its own. Its Puppet runs write a lock file,
    the run journal and the host's state, each a new file renamed into place; 300 hosts doing that at a wave's
    start on this machine's one ext4 disk spent about a fifth of the fleet's CPU in the kernel finding free
    inodes (perf, 300 hosts: ext4's inode allocator under open(O_CREAT) and rename), CPU the controller then
    lacked. The controller's own state file stays on this disk, as inv deploy keeps it."""
    shm = Path("/dev/shm")
    try:
        fstype = next((line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()
                       if line.split()[1] == str(shm)), "")
    except OSError:
        return None
    return str(shm) if fstype == "tmpfs" and os.access(shm, os.W_OK | os.X_OK) else None


# -- the controller ----------------------------------------------------------------------------
def steps_for(n: int):
    from deploy_tasks.inventory import load_inventory
    from deploy_tasks.plan import make_plan
    from deploy_tasks.runner.deploy import Step

    inv = load_inventory(ROOT / "inventory" / "example.xlsx")
    plan = make_plan(inv)
    example_hosts = [s.hostname for s in inv.windows_servers]
    hosts = [h for h, _ in addresses(n)]
    role = {h: example_hosts[i % len(example_hosts)] for i, h in enumerate(hosts)}
    carriers = {c.name: [h for h in hosts if role[h] in c.hosts] for w in plan.waves for c in w.components}
    steps = []
    for w in plan.waves:
        for c in w.components:
            deps = tuple(f"{h}/{d}" for d in c.depends_on for h in carriers[d])
            steps += [Step(h, c.name, w.group, deps, 600.0) for h in carriers[c.name]]
    return steps, plan


def bounds(steps, plan, o: float, c: float):
    per = {}
    for s in steps:
        per.setdefault((s.group, s.host), 0)
        per[(s.group, s.host)] += 1
    waves = sum(max(o + k * c for (g, _), k in per.items() if g == w.group) for w in plan.waves)
    return waves, dag_bound(steps, o, c)


def dag_bound(steps, o: float, c: float) -> float:
    """The dag schedule's lower bound (see the module docstring); steps are in dependency order."""
    by = {s.id: s for s in steps}
    kids = {}
    for s in steps:
        for d in s.depends_on:
            kids.setdefault(d, []).append(s.id)
    earliest = {}  # a step's earliest start: its dependencies each in a run of their own
    for s in steps:
        earliest[s.id] = max((earliest[d] + o + c for d in s.depends_on if d in by), default=0.0)
    tail = {}  # the shortest time after a step ends until its last dependent chain can end
    for s in reversed(steps):
        tail[s.id] = max((o + c + tail[k] for k in kids.get(s.id, ())), default=0.0)
    ancestors = {}
    for s in steps:
        mine = set()
        for d in s.depends_on:
            if d in by:
                mine |= {d} | ancestors[d]
        ancestors[s.id] = mine
    best = max(earliest[s.id] + o + c + tail[s.id] for s in steps)
    hosts = {}
    for s in steps:
        hosts.setdefault(s.host, []).append(s)
    for mine in hosts.values():
        for r in sorted({earliest[s.id] for s in mine}):
            later = [s for s in mine if earliest[s.id] >= r]
            ids = {s.id for s in later}
            chain = {}
            for s in later:  # in dependency order: the runs a chain of this host's steps needs, one after another
                chain[s.id] = 1 + max((chain[a] for a in ancestors[s.id] if a in ids), default=0)
            need = r + max(chain.values()) * o + len(later) * c + min(tail[s.id] for s in later)
            best = max(best, need)
    return best


def replay(steps, o: float, c: float, schedule: str) -> float:
    """The makespan of the schedule itself: the model's run times and no overhead at all.

    The policy of deploy_tasks.runner.deploy: one run per host per group; waves start group k when
    all of group k-1 has ended, dag when the dependencies of the host's group-k steps have.
    """
    runs = {}
    for s in steps:
        runs.setdefault((s.host, s.group), []).append(s)
    end = {}  # step id -> when its run ended
    free = {}  # host -> when its last run ended
    group_end = {}
    for (host, group), batch in sorted(runs.items(), key=lambda kv: kv[0][1]):
        deps = [end[d] for s in batch for d in s.depends_on]
        ready = group_end.get(group - 1, 0.0) if schedule == "waves" else max(deps, default=0.0)
        finish = max(ready, free.get(host, 0.0)) + o + c * len(batch)
        free[host] = finish
        for s in batch:
            end[s.id] = finish
        group_end[group] = max(group_end.get(group, 0.0), finish)
    return max(end.values())


def edges(root: Path, state: Path, steps, overhead: float, since: float) -> List[str]:
    """Where each group's time went (``--edges``): from the state file (the controller's marks and outcomes)
    and the fleet's Puppet journals (when each run started and finished on its host), in seconds after the
    first run started: the controller starting the group's runs, the hosts starting them (the spread is the
    start lag: WinRM and CPU at the group's start), the hosts finishing, the controller recording the last."""
    from datetime import datetime

    def at(text):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    group = {(s.host, s.component): s.group for s in steps}
    recs = {(r["host"], r["component"]): r for r in json.loads(state.read_text())["steps"]}
    runs = [(r["host"].upper(), at(r["started"]) - overhead, at(r["finished"]), r["tags"])
            for j in root.rglob("puppet-journal.json") for r in json.loads(j.read_text())["runs"]
            if r.get("mode") == "timing" and at(r["started"]) - overhead >= since - 1.0]
    t0 = min(at(r["started"]) for r in recs.values())
    lines, before = [], t0
    for g in sorted(set(group.values())):
        mine = [r for r in runs if group.get((r[0], r[3][0])) == g]
        if not mine:
            continue
        marks = [at(recs[(r[0], r[3][0])]["started"]) for r in mine]
        ended = max(at(recs[(r[0], c)]["ended"]) for r in mine for c in r[3])
        lines.append(f"      group {g}: {len(mine):3d} runs; controller starts {min(marks) - t0:6.2f}-{max(marks) - t0:6.2f}s, "
                     f"hosts start {min(r[1] for r in mine) - t0:6.2f}-{max(r[1] for r in mine) - t0:6.2f}s, "
                     f"hosts end {min(r[2] for r in mine) - t0:6.2f}-{max(r[2] for r in mine) - t0:6.2f}s, "
                     f"recorded by {ended - t0:6.2f}s (start lag {max(r[1] for r in mine) - before:.2f}s)")
        before = ended
    return lines


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (the fleet: 'Windows' work that real hosts do on their own CPUs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fleet_cpu(children) -> float:
    return sum(child_cpu(child.pid) for child in children)


def measure(label, fn, steps, children):
    c0, f0, t0 = cpu(), fleet_cpu(children), time.monotonic()
    ok = fn()
    return {"method": label, "seconds": time.monotonic() - t0, "cpu_ms_per_step": 1000 * (cpu() - c0) / len(steps),
            "fleet_cpu_ms_per_step": 1000 * (fleet_cpu(children) - f0) / len(steps),
            "ok": ok}


def run_size(n: int, args) -> list:
    from deploy_tasks.runner import Runner, Unit
    from deploy_tasks.runner.deploy import Deployment
    from deploy_tasks.transports import winrm as w

    # the controller's files (the state file, the CA bundle) on this machine's disk, as inv deploy keeps them;
    # the emulated hosts' disks under --fleet-dir (see fleet_dir)
    with tempfile.TemporaryDirectory(prefix="deploy-bench-") as tmp, \
            tempfile.TemporaryDirectory(prefix="deploy-bench-fleet-", dir=args.fleet_dir) as fleet_tmp:
        parts = max(1, min(args.fleet_processes, n))
        account = {"DEPLOY_WINRM_USER": "bench", "DEPLOY_WINRM_PASSWORD": secrets.token_urlsafe(18)}
        children = []
        try:
            for i in range(parts):  # each child its own root, CA and share of the hosts (host j in child j mod parts)
                children.append(subprocess.Popen(
                    [sys.executable, __file__, "--serve", "--root", f"{fleet_tmp}/fleet{i}", "--n", str(n), "--part", str(i),
                     "--parts", str(parts), "--overhead", str(args.overhead), "--per-component", str(args.per_component)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    env=dict(os.environ, PYTHONPATH=str(ROOT), **account)))
            if args.pin:  # the fleet (all its processes) on the last core, this controller on the others
                cores = sorted(os.sched_getaffinity(0))
                for child in children:
                    os.sched_setaffinity(child.pid, {cores[-1]})
                os.sched_setaffinity(0, set(cores[:-1]) or {cores[0]})
            ports, cas = {}, []
            for i, child in enumerate(children):
                assert child.stdout.readline().strip() == "ready"
                info = json.loads((Path(fleet_tmp) / f"fleet{i}" / "fleet.json").read_text())
                ports.update({h["hostname"].upper(): (h["address"], h["https_port"]) for h in info["hosts"]})
                cas.append(Path(info["ca_cert"]).read_text())
            bundle = Path(tmp) / "fleet-cas.pem"  # every child's CA: one trust file for the controller
            bundle.write_text("".join(cas))
            info["ca_cert"] = str(bundle)
            options = w.WinRMOptions(transport="ntlm", scheme="https", ca_path=info["ca_cert"])
            credential = w.Credential(info["username"], info["password"])

            from deploy_tasks.inventory.model import Server

            servers = {name: Server(name, address, "windows", ("app",), winrm_port=port)
                       for name, (address, port) in ports.items()}

            steps, plan = steps_for(n)
            results = []
            for schedule in [m for m in ("waves", "dag") if m in args.methods]:
                with w.WinRMPool(options, credential=credential) as pool:
                    # as inv deploy does: pre-flight reaches every host on its one shell of the run
                    t0 = time.monotonic()
                    with ThreadPoolExecutor(max_workers=min(n, 50)) as ex:
                        answered = list(ex.map(lambda name: pool.borrow(servers[name]).run(
                            "puppet --version", check=False).exited, sorted(servers)))
                    preflight = time.monotonic() - t0
                    state = Path(tmp) / f"state-{schedule}.json"

                    def go(schedule=schedule, pool=pool, state=state):
                        return Deployment(steps, lambda host: pool.borrow(servers[host.upper()]),
                                          release=lambda transport: None, schedule=schedule, max_parallel=n,
                                          handle_signals=False, retries=0, state_path=str(state)).run().ok
                    since = time.time()
                    row = measure(schedule, go, steps, children)
                    row["ok"] = row["ok"] and answered.count(0) == len(answered)
                    row["preflight"] = preflight
                    if args.edges:
                        row["edges"] = edges(Path(fleet_tmp), state, steps, args.overhead, since)
                results.append(row)

            import winrm

            def seed_unit(step):
                def fn(ctx):
                    address, port = ports[step.host.upper()]
                    session = winrm.Session(f"https://{address}:{port}/wsman", auth=(info["username"], info["password"]),
                                            transport="ntlm", server_cert_validation="validate",
                                            ca_trust_path=info["ca_cert"])
                    r = session.run_cmd("puppet", ["agent", "--test", "--detailed-exitcodes", "--tags", step.component])
                    if r.status_code not in (0, 2):
                        raise RuntimeError(f"{step.id}: exit {r.status_code}")
                return fn

            def seed():
                ok = True
                for wave in plan.waves:
                    units = [Unit(s.host, s.component, seed_unit(s), key=s.id) for s in steps if s.group == wave.group]
                    ok = Runner("seed", max_parallel=n, handle_signals=False).run(units).ok and ok
                return ok

            if "seed" in args.methods:
                results.append(measure("seed", seed, steps, children))
                results[-1]["preflight"] = 0.0
            wb, db = bounds(steps, plan, args.overhead, args.per_component)
            for r in results:
                r["bound"] = db if r["method"] == "dag" else wb
                # (the seed's runs, one per component, are not the policy's: no replay for it)
                r["model"] = (replay(steps, args.overhead, args.per_component, r["method"])
                              if r["method"] in ("waves", "dag") else None)
                r.update(hosts=n, steps=len(steps))
            return results
        finally:
            for child in children:
                child.stdin.close()  # a child stops its fleet when its stdin ends
            for child in children:
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()  # our own child, by its Popen handle: still that process
                    child.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", default="6,60")
    # measured on the real-agent fleet (tests/test_deploy_real.py, 2026-11-29: journal run durations, first run
    # of each host left out as it downloads the certificate; least squares over 18 runs of 1-3 components)
    p.add_argument("--overhead", type=float, default=2.47, help="seconds per Puppet run (measured on the real-agent fleet)")
    p.add_argument("--per-component", type=float, default=0.17, help="seconds per component in a run (measured likewise)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply both times (shorter runs; the fixed WinRM cost per run then weighs more)")
    p.add_argument("--pin", action="store_true",
                   help="run the emulated fleet on the last CPU core and the controller on the others")
    p.add_argument("--fleet-processes", type=int, default=2,
                   help="processes the emulated fleet is spread over (each host is its own machine; default 2)")
    p.add_argument("--fleet-dir", default=fleet_dir(),
                   help="where the emulated hosts keep their disks (default: /dev/shm when it is a writable "
                        "tmpfs, else the temporary directory; the state file stays on this machine's disk)")
    p.add_argument("--methods", default="waves,dag,seed", help="which to measure (comma-separated; default all three)")
    p.add_argument("--edges", action="store_true",
                   help="also print, per group, when the controller and the hosts started and ended its runs")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args)
        return 0
    if args.fleet_processes < 1:
        p.error("--fleet-processes: at least 1")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - {"waves", "dag", "seed"}
    if unknown:
        p.error(f"--methods: unknown {', '.join(sorted(unknown))} (waves, dag, seed)")
    measured = (args.overhead, args.per_component)
    args.overhead *= args.scale
    args.per_component *= args.scale
    print(f"timing model: {measured[0]:g} s per Puppet run + {measured[1]:g} s per component (measured on the "
          f"real-agent fleet), scaled by {args.scale:g}: {args.overhead:g} s + {args.per_component:g} s; "
          f"the emulated fleet in {args.fleet_processes} process(es) (fewer when fewer hosts), its hosts' disks "
          f"under {args.fleet_dir or tempfile.gettempdir()}"
          f"{', all on one core of their own (--pin)' if args.pin else ''}")
    print(f"{'hosts':>5} {'steps':>5} {'method':>6} {'makespan':>9} {'bound':>7} {'ratio':>6} {'cpu ms/step':>11} "
          f"{'fleet cpu':>9} {'pre-flight':>10} {'no-overhead':>11} {'over runs':>9}  ok")
    for n in [int(x) for x in args.hosts.split(",")]:
        rows = run_size(n, args)
        by = {r["method"]: r for r in rows}
        for r in rows:
            print(f"{r['hosts']:>5} {r['steps']:>5} {r['method']:>6} {r['seconds']:>8.2f}s {r['bound']:>6.2f}s "
                  f"{r['seconds'] / r['bound']:>6.2f} {r['cpu_ms_per_step']:>11.1f} {r['fleet_cpu_ms_per_step']:>9.1f} "
                  f"{r['preflight']:>9.2f}s "
                  + (f"{r['model'] / r['bound']:>11.2f} {r['seconds'] / r['model']:>9.2f}" if r["model"] else
                     f"{'-':>11} {'-':>9}") + f"  {r['ok']}")
            for line in r.get("edges", ()):
                print(line)
        ratios = [f"{a}/{b} {by[a]['seconds'] / by[b]['seconds']:.2f}" for a, b in (("dag", "waves"), ("seed", "waves"))
                  if a in by and b in by]
        print(f"{n:>5}       " + "   ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
