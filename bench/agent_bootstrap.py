"""Benchmark: the agents part of `inv bootstrap` on many hosts, against the seed's method on the same fleet.

    /work/main/.venv/bin/python bench/agent_bootstrap.py [--hosts 300] [--max-parallel 50] [--msi-s 2] [--run-s 1]
                                                         [--ca api|cli|free] [--skip-seed] [--real] [--measure-ca]

The fleet runs in a child process (as `inv fleet.up` runs it) in the persona's TIMING MODEL (no Puppet;
certificates count as signed; the fingerprint is a hash of the certname), with two delays added by this
script: msiexec takes ``--msi-s``, a Puppet agent catalog run takes ``--run-s`` (the CSR submission,
``--waitforcert 0``, is one too). The master's CA is a stand-in (the real ``CertificateAuthority`` with its
batching, its requests replaced by sleeps) costing what the real one costs here: ``--ca api`` (default) the
CA's HTTP API as the agent step calls it, ``--ca cli`` `puppetserver ca` (a master without curl), ``--ca
free`` nothing. ``--measure-ca`` measures those costs on the real puppetserver (API from this process, curl,
CLI) and prints them; the model's figures (``API_COST``, ``CLI_COST``) come from there.

Printed:
- deploy_tasks (AgentRun + the runner, one WinRM shell per host, batched CA): the makespan, and its ratio
  over the lower bound ceil(hosts / max_parallel) x per-host time, where per-host time is what one host
  spends in emulated work (MSI + CSR run + catalog run); target <= 1.15. Controller CPU seconds per host.
- the seed's method on the same fleet: a process pool of ``max_parallel`` processes, a new
  ``winrm.Session.run_cmd`` per command (shell, connection, NTLM handshake each time), msiexec, CSR, one
  `puppetserver ca sign` per host (no fingerprint check), a catalog run: its makespan and CPU, as a ratio.
- ``--real``: the six example hosts on the real-agent fleet with the real puppetserver, from nothing to
  signed with a catalog retrieved (wall time; the seed took 3 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# this tree's deploy_tasks (and tests.support), not whichever one the interpreter's site-packages point at: the
# shared venv has /work/main on its path, so without this a worktree's bench measured main's code
sys.path.insert(0, str(ROOT))

MSI_S = float(os.environ.get("BENCH_MSI_S", "2"))
RUN_S = float(os.environ.get("BENCH_RUN_S", "1"))


def bench_persona(hostname, address, sandbox, faults, spec, on_reboot):
    """The timing-model persona with an MSI that takes MSI_S and agent runs that take RUN_S.

    The delay is added where a command starts (the persona's ``start``, the seam every version of it has),
    so it holds however the persona dispatches its programs."""
    from deploy_tasks.rehearsal.fleet import default_persona_factory

    persona = default_persona_factory(hostname, address, sandbox, faults, spec, on_reboot)
    start = persona.start

    def timed_start(command_line, *args, **kwargs):
        words = command_line.lower().split()
        if words[:1] == ["msiexec"]:
            time.sleep(MSI_S)
        elif words[:2] == ["puppet", "agent"] and "--fingerprint" not in words:
            time.sleep(RUN_S)
            if "--waitforcert" in words:
                # the real agent names its new request's fingerprint in this run's output (the step reads it
                # there); the timing model has no SSL and prints nothing, which would cost the step a
                # `puppet agent --fingerprint` per host that a real node never needs
                command_line += f" & echo Info: Certificate Request fingerprint (SHA256): {_fingerprint(hostname)}"
        return start(command_line, *args, **kwargs)

    persona.start = timed_start
    return persona


def _fingerprint(hostname: str) -> str:
    """The timing model's fingerprint of a host's certificate (the persona's and the stand-in CA's)."""
    import hashlib

    d = hashlib.sha256(("timing-model:" + f"{hostname.lower()}.bench.test").encode()).hexdigest().upper()
    return ":".join(d[i:i + 2] for i in range(0, 64, 2))


def serve(args) -> None:
    """Child process: a timing-model fleet of ``args.hosts`` hosts until stdin closes."""
    from deploy_tasks.rehearsal.faults import FleetSpec
    from deploy_tasks.rehearsal.fleet import Fleet, allocate_addresses

    os.environ["BENCH_MSI_S"], os.environ["BENCH_RUN_S"] = str(args.msi_s), str(args.run_s)
    global MSI_S, RUN_S
    MSI_S, RUN_S = args.msi_s, args.run_s
    hosts = allocate_addresses([(f"ZB{i:03d}", "") for i in range(args.hosts)], first="127.0.20.1")
    fleet = Fleet(hosts, Path(args.root), FleetSpec(mode="timing"), persona_factory=bench_persona,
                  http_port=0, https_port=0, allow_unencrypted=True)
    fleet.start()
    fleet.write_json(Path(args.root) / "fleet.json")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()
    fleet.stop()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class CaCost:
    """What the CA costs: ``turn`` per CA turn (the API: one TLS connection for the turn's list and sign),
    ``fixed`` per operation (the CLI: a process), plus per name ``list_s`` (a status read) or ``sign_s`` (a
    signature: the server's own work, whatever the client); ``backend`` as CertificateAuthority names it."""

    fixed: float
    list_s: float
    sign_s: float
    turn: float = 0.0
    backend: str = "https"

    def describe(self) -> str:
        return (f"{self.turn * 1000:.0f} ms per turn + {self.fixed * 1000:.0f} ms per operation + "
                f"{self.list_s * 1000:.0f} ms per name listed, {self.sign_s * 1000:.0f} ms per name signed")


# measured with --measure-ca against the real puppetserver 7.9.5 here (2 shared cores, other jobs running,
# 2026-11-29): the API from this process 14-16 ms for a list of one name (TLS connection included), +2-5 ms a
# name listed, 17-28 ms a name signed (the server's own work: the CLI and curl pay it too); `puppetserver ca`
# 230-290 ms per call (Ruby start-up; 0.9 s measured earlier on a busier machine)
API_COST = CaCost(turn=0.012, fixed=0.0, list_s=0.005, sign_s=0.022, backend="https")
CLI_COST = CaCost(turn=0.0, fixed=0.26, list_s=0.003, sign_s=0.021, backend="cli")


class StandInCA:
    """The master's CA for the timing model: each operation costs what ``cost`` says; the same batching as the
    real one (the real class, with its HTTP calls replaced by sleeps)."""

    def __new__(cls, cost: CaCost):
        from deploy_tasks.steps.agent import CaEntry, CertificateAuthority

        class _CA(CertificateAuthority):
            def __init__(self):
                super().__init__(shell=None, puppetserver="puppetserver", puppet="puppet", backend=cost.backend)
                self.signed = set()

            def _run_turn(self, action):
                self.connected = False
                super()._run_turn(action)

            def _pay(self, seconds):
                # the turn's connection at its first request (after the waiting names are collected)
                time.sleep(seconds + (0 if self.connected else cost.turn))
                self.connected = True

            @staticmethod
            def fingerprint(name):
                import hashlib

                d = hashlib.sha256(("timing-model:" + name).encode()).hexdigest().upper()
                return ":".join(d[i:i + 2] for i in range(0, 64, 2))

            def _list(self, names, deliver=None):
                self.commands += 1
                self._pay(cost.fixed + cost.list_s * len(names))
                return {n: CaEntry("signed" if n in self.signed else "requested", self.fingerprint(n)) for n in names}

            def _sign(self, names, deliver=None):
                # as over the API: one request per name, each caller told as soon as its name is signed
                self.commands += 1
                self._pay(cost.fixed)
                for n in names:
                    time.sleep(cost.sign_s)
                    self.signed.add(n)
                    if deliver is not None:
                        deliver(n, None)
                return {n: None for n in names}

            def _clean(self, names, deliver=None):
                self.commands += 1
                self._pay(cost.fixed + 2 * cost.sign_s * len(names))
                self.signed.difference_update(names)
                return {n: None for n in names}

            def close(self):
                pass

        return _CA()


def measure_ca(sizes=(1, 20)) -> dict:
    """One list and one sign operation of ``n`` names against the real puppetserver's CA, for each way of
    reaching it (HTTPS from here, curl on the master, the CLI); -> {backend: {n: (list_s, sign_s)}}."""
    import shutil
    import uuid

    from tests.test_puppet_ca import submit_csr

    from deploy_tasks.steps.puppet_ca import CertificateAuthority
    from deploy_tasks.transports.ssh import Shell

    if not shutil.which("puppetserver"):
        raise SystemExit("--measure-ca needs puppetserver on this machine")
    from tests.support import services

    master = services.ensure_puppetserver()
    out = {}
    for backend in ("https", "curl", "cli"):
        out[backend] = {}
        for n in sizes:
            names = [f"m{i}.b{uuid.uuid4().hex[:10]}.example.test" for i in range(n)]
            for name in names:
                submit_csr(master, name)
            ca = CertificateAuthority(Shell("deploy01", "local"), backend=backend)
            ca._list(names[:1])  # choose the backend, read the master's paths: once per run, not per turn
            ca._via and ca._via.end_turn()
            t0 = time.perf_counter()
            entries = ca._list(names)
            t1 = time.perf_counter()
            signed = ca._sign(names)
            t2 = time.perf_counter()
            ca._via and ca._via.end_turn()
            assert all(e.state == "requested" for e in entries.values()) and not any(signed.values()), signed
            out[backend][n] = (t1 - t0, t2 - t1)
            ca._clean(names)
            ca.close()
    return out


def print_measured(measured: dict) -> None:
    (small, large) = sorted(next(iter(measured.values())))
    for backend, by_n in measured.items():
        (l1, s1), (l2, s2) = by_n[small], by_n[large]
        per_list, per_sign = (l2 - l1) / (large - small), (s2 - s1) / (large - small)
        fixed = max(0.0, min(l1 - per_list * small, s1 - per_sign * small))
        print(f"  {backend:5s}: list {small} name(s) {l1 * 1000:6.0f} ms, {large} names {l2 * 1000:6.0f} ms; "
              f"sign {small} {s1 * 1000:6.0f} ms, {large} {s2 * 1000:6.0f} ms -> "
              f"{CaCost(fixed, per_list, per_sign).describe()}")


def _inventory(fleet: dict, domain: str):
    from deploy_tasks.inventory.model import Inventory, Server

    servers = [Server("deploy01", "local", "linux", ("puppet-master", "package-server"))]
    servers += [Server(h["hostname"], h["address"], "windows", ("app",), winrm_port=h["http_port"])
                for h in fleet["hosts"]]
    return Inventory("bench", tuple(servers), (), (), settings={"domain": domain})


def run_ours(fleet: dict, args) -> dict:
    from deploy_tasks import settings as settings_mod
    from deploy_tasks.report.live import ConsoleReporter
    from deploy_tasks.runner import Runner
    from deploy_tasks.tasks._agents import AgentRun
    from deploy_tasks.transports.winrm import Credential, WinRMPool, options_from_settings

    settings = settings_mod.resolve({**settings_mod.declared_defaults(), "domain": "bench.test",
                                     "puppet_agent_msi": "puppet-agent-7.23.0-x64.msi", "package_port": args.package_port,
                                     "winrm_scheme": "http", "winrm_transport": "ntlm", "retries": "0"})
    inventory = _inventory(fleet, "bench.test")
    pool = WinRMPool(options_from_settings(settings), credential=Credential(fleet["username"], fleet["password"]),
                     warn=lambda line: None)
    ca = StandInCA(args.ca_cost)
    agents = AgentRun(inventory, settings, ca=ca, pool=pool)
    quiet = open(os.devnull, "w")
    cpu0, t0 = time.process_time(), time.monotonic()
    result = Runner("bootstrap", max_parallel=args.max_parallel, retries=0, handle_signals=False,
                    listeners=[ConsoleReporter(stream=quiet, interactive=False)]).run(agents.units())
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    agents.close()
    failed = [u for u in result.units if u.status not in ("changed", "unchanged")]
    if failed:
        print(f"  ! {len(failed)} hosts failed, first: {failed[0].host}: {failed[0].error}")
    return {"wall": wall, "cpu": cpu, "ca_commands": ca.commands, "shells": sum(agents.shells.values()),
            "failed": len(failed)}


def _seed_host(job):
    """One host, the seed's way: a new Session.run_cmd for every command."""
    import winrm

    host, port, user, password, certname, url, ca_s = job
    s = winrm.Session(f"http://{host}:{port}/wsman", auth=(user, password), transport="ntlm",
                      message_encryption="always")
    r = s.run_cmd("msiexec", ["/qn", "/norestart", "/i", url, "PUPPET_SERVER=deploy01.bench.test",
                              f"PUPPET_AGENT_CERTNAME={certname}", "PUPPET_AGENT_ENVIRONMENT=production",
                              "/l*v", r"C:\Windows\Temp\agent.log"])
    s.run_cmd("puppet", ["agent", "--test", "--waitforcert", "0"])
    time.sleep(ca_s)  # puppetserver ca sign --certname <certname>, one per host, unchecked
    r = s.run_cmd("puppet", ["agent", "--test"])
    return r.status_code


def run_seed(fleet: dict, args) -> dict:
    import multiprocessing

    jobs = [(h["address"], h["http_port"], fleet["username"], fleet["password"], f"{h['hostname'].lower()}.bench.test",
             f"http://127.0.0.1:{args.package_port}/puppet-agent/puppet-agent-7.23.0-x64.msi", args.ca_s) for h in fleet["hosts"]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, t0 = time.process_time(), time.monotonic()
    with multiprocessing.get_context("fork").Pool(args.max_parallel) as pool:
        codes = pool.map(_seed_host, jobs, chunksize=1)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu0 + (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "failed": sum(1 for c in codes if c not in (0, 2))}


def start_fleet(args, root: Path):
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--root", str(root), "--hosts", str(args.hosts),
                              "--msi-s", str(args.msi_s), "--run-s", str(args.run_s)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
    if child.stdout.readline().strip() != "ready":
        raise SystemExit("the fleet did not start")
    return child, json.loads((root / "fleet.json").read_text())


def fake_msi_server(root: Path):
    """The package server for the timing fleet: the MSI over plain HTTP on 127.0.0.1:<port>."""
    import functools
    import http.server

    from deploy_tasks.rehearsal.msi import write_fake_msi

    write_fake_msi(root / "puppet-agent" / "puppet-agent-7.23.0-x64.msi")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=300)
    parser.add_argument("--max-parallel", type=int, default=50)
    parser.add_argument("--msi-s", type=float, default=2.0)
    parser.add_argument("--run-s", type=float, default=1.0)
    parser.add_argument("--ca", default="api",
                        help="the CA's cost model(s), comma-separated, each a run of deploy_tasks: api (its HTTP "
                             "API, what the agent step uses), cli (puppetserver ca: a master without curl), free")
    parser.add_argument("--measure-ca", action="store_true",
                        help="only time list and sign operations on the real puppetserver (API vs CLI)")
    parser.add_argument("--skip-seed", action="store_true")
    parser.add_argument("--real", action="store_true", help="also the six example hosts on the real-agent fleet")
    parser.add_argument("--real-only", action="store_true", help="only the six example hosts on the real-agent fleet")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args)
    if args.real_only:
        return real_six()
    if args.measure_ca:
        print("the real puppetserver's CA, one list and one sign operation (per-run set-up excluded):")
        return print_measured(measure_ca())
    costs = {"api": API_COST, "cli": CLI_COST, "free": CaCost(0, 0, 0, backend="https")}
    models = [m.strip() for m in args.ca.split(",") if m.strip()]
    if not models or any(m not in costs for m in models):
        parser.error(f"--ca {args.ca}: choose from {', '.join(costs)} (comma-separated)")
    args.ca_cost = costs[models[0]]
    args.ca_s = args.ca_cost.fixed + args.ca_cost.sign_s  # the seed's one unchecked sign per host

    with tempfile.TemporaryDirectory(prefix="bench-agents-") as tmp:
        packages = fake_msi_server(Path(tmp) / "packages")
        args.package_port = packages.server_address[1]  # the package server is "local": 127.0.0.1
        # one host's work: the MSI, the CSR run (--waitforcert 0) and the catalog run, as in the seed's method
        per_host = args.msi_s + 2 * args.run_s
        bound = math.ceil(args.hosts / args.max_parallel) * per_host
        print(f"{args.hosts} hosts, --max-parallel {args.max_parallel}, MSI {args.msi_s:g} s, agent run "
              f"{args.run_s:g} s; per-host emulated work {per_host:g} s (MSI + CSR run + catalog run); lower bound "
              f"{bound:g} s")
        for m in models:
            print(f"  CA model {m}: {costs[m].describe()}")
        runs = [(f"deploy_tasks/{m}", run_ours, costs[m]) for m in models]
        if not args.skip_seed:
            runs.append(("seed method", run_seed, costs[models[0]]))
        for name, runner, cost in runs:
            args.ca_cost = cost
            root = Path(tmp) / name.replace(" ", "-").replace("/", "-")
            child, fleet = start_fleet(args, root)
            fleet_cpu0 = _cpu_s(child.pid)
            try:
                figures = runner(fleet, args)
            finally:
                fleet_cpu = _cpu_s(child.pid) - fleet_cpu0
                child.stdin.close()
                child.wait(60)
            figures["fleet_cpu"] = fleet_cpu
            print(f"{name:17s} makespan {figures['wall']:6.1f} s = {figures['wall'] / bound:.2f} x lower bound; "
                  f"controller CPU {figures['cpu'] / args.hosts * 1000:.0f} ms/host; fleet CPU "
                  f"{fleet_cpu / args.hosts * 1000:.0f} ms/host; failed {figures['failed']}"
                  + (f"; CA commands {figures['ca_commands']}, WinRM shells {figures['shells']}"
                     if "ca_commands" in figures else ""))
            if name.startswith("deploy_tasks") and name.endswith("/" + models[0]):
                ours = figures
            elif name == "seed method":
                print(f"seed / deploy_tasks/{models[0]} (seed: one unchecked sign per host, {args.ca_s * 1000:.0f} ms, "
                      f"in parallel): makespan {figures['wall'] / ours['wall']:.2f}x, controller CPU "
                      f"{figures['cpu'] / ours['cpu']:.2f}x")
        packages.shutdown()
    if args.real:
        real_six()


def real_six() -> None:
    """The six example hosts, real Linux agent behind each, real puppetserver CA: nothing -> signed + catalog."""
    import shutil
    import uuid

    from deploy_tasks import settings as settings_mod
    from deploy_tasks.inventory import load_inventory
    from deploy_tasks.inventory.model import Inventory
    from deploy_tasks.rehearsal.fleet import Fleet, hosts_of
    from deploy_tasks.runner import Runner
    from deploy_tasks.report.live import ConsoleReporter
    from deploy_tasks.steps.agent import CertificateAuthority
    from deploy_tasks.tasks._agents import AgentRun
    from deploy_tasks.transports.ssh import Shell
    from deploy_tasks.transports.winrm import Credential, WinRMPool, options_from_settings

    if not shutil.which("puppet") or not shutil.which("puppetserver"):
        print("real-agent fleet: skipped (needs the Linux puppet agent and puppetserver on this machine)")
        return
    example = load_inventory(ROOT / "inventory" / "example.xlsx")
    domain = f"b{uuid.uuid4().hex[:10]}.example.test"
    with tempfile.TemporaryDirectory(prefix="bench-agents-real-") as tmp:
        packages = fake_msi_server(Path(tmp) / "packages")
        fleet = Fleet(hosts_of(example), Path(tmp) / "fleet", http_port=0, https_port=0).start()
        try:
            ports = {h["hostname"]: h["https_port"] for h in fleet.describe()["hosts"]}
            servers = tuple(dataclasses.replace(s, winrm_port=ports[s.hostname]) if s.is_windows else s
                            for s in example.servers)
            inventory = Inventory("bench", servers, (), (), settings={"domain": domain})
            for s in inventory.windows_servers:
                fleet.host(s.hostname).persona.add_hosts_entry(f"deploy01.{domain}", "127.0.0.1")
            settings = settings_mod.resolve({**settings_mod.declared_defaults(), "domain": domain,
                                             "puppet_agent_msi": "puppet-agent-7.23.0-x64.msi",
                                             "package_port": packages.server_address[1],
                                             "winrm_ca_path": str(fleet.ca_cert)})
            pool = WinRMPool(options_from_settings(settings), credential=Credential(fleet.username, fleet.password))
            ca = CertificateAuthority(Shell("deploy01", "local"))
            agents = AgentRun(inventory, settings, ca=ca, pool=pool)
            quiet = open(os.devnull, "w")
            t0 = time.monotonic()
            result = Runner("bootstrap", max_parallel=6, retries=0, handle_signals=False,
                            listeners=[ConsoleReporter(stream=quiet, interactive=False)]).run(agents.units())
            wall = time.monotonic() - t0
            ok = sum(1 for u in result.units if u.status == "changed")
            print(f"real-agent fleet: 6 example hosts from nothing to signed + catalog retrieved in {wall:.1f} s "
                  f"({ok}/6 done, {ca.commands} CA operations over {ca.backend}; the seed took 180 s: "
                  f"{180 / wall:.1f}x faster)")
            for s in inventory.windows_servers:  # this run's names off the shared master
                ca.clean(s.certname(domain))
            agents.close()
        finally:
            fleet.stop()
            packages.shutdown()


if __name__ == "__main__":
    main()
