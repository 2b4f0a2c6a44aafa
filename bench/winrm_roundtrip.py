"""Benchmark: commands per second through the emulated WinRM endpoint, with the real pywinrm client.

    /work/main/.venv/bin/python bench/winrm_roundtrip.py [--seconds 3] [--threads 1,8] [--hosts 4]

The fleet runs in a child process (as `inv fleet.up` runs it), so client and
server each get a core. Windows is the test persona (tests/support/fake_persona.py:
``echo`` answers at once), so the figures are the protocol's cost: HTTP, TLS,
NTLM + message encryption, SOAP, the shell life cycle.

Measured, each for 1 and 8 client threads (every thread its own Session/Protocol):
- run_cmd: ``Session.run_cmd`` (Create, Command, Receive, Signal, Delete, and for
  NTLM a new connection + handshake every time: pywinrm closes it with the shell)
- reused shell: ``Protocol.open_shell`` once, then run_command / get_command_output /
  cleanup_command per command (what deploy_tasks' transport does)
for Basic over HTTPS and NTLM over HTTP with message encryption; then deploy_tasks' own transport
(WinRMTransport.run_argv, NTLM over HTTPS, shell reused) with every message through pywinrm's requests path,
and "direct": as it runs, the connection spoken to directly after its first message
(transports/winrm_channel.py). Each row also prints the client's CPU per command.
Baseline, measured in the same run: a bare HTTPS POST round trip (requests, Basic,
keep-alive) to the same server at 1 thread. Ratios are against it (cmd/s over req/s).
Targets for the 8-thread reused-shell rows: >= 200 cmd/s Basic, >= 100 cmd/s NTLM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def serve(args) -> None:
    """Child process: run a fleet with the test persona until stdin closes."""
    from deploy_tasks.rehearsal.faults import FleetSpec
    from deploy_tasks.rehearsal.fleet import Fleet, load_factory

    hosts = [(f"BENCH{i:02d}", f"127.0.9.{10 + i}") for i in range(args.hosts)]
    # Basic is off on a 2012 R2 host until enabled; a reused shell runs thousands of commands here, past the
    # ~1500 operations WinRM allows before the client must open a new shell, which would measure the quota, not the protocol
    spec = FleetSpec.from_mapping({"defaults": {"basic": True, "max_concurrent_operations_per_user": 10 ** 9}})
    fleet = Fleet(hosts, Path(args.root), spec, persona_factory=load_factory(args.persona), http_port=0, https_port=0)
    fleet.start()
    fleet.write_json(Path(args.root) / "fleet.json")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()
    fleet.stop()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run_threads(n: int, seconds: float, make_worker, server_pid: int = 0) -> tuple:
    """Run ``n`` workers for ``seconds``; return (operations per second, server CPU share of one core,
    client CPU ms per operation)."""
    stop = threading.Event()
    counts = [0] * n
    errors = []

    def loop(i):
        try:
            op = make_worker(i)
            while not stop.is_set():
                op()
                counts[i] += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"thread {i}: {type(exc).__name__}: {exc}")
            stop.set()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    cpu0 = _cpu_s(server_pid) if server_pid else 0.0
    client0 = _client_cpu_s()
    started = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - started
    cpu = (_cpu_s(server_pid) - cpu0) if server_pid else 0.0
    client = _client_cpu_s() - client0
    if errors:
        raise SystemExit("benchmark failed: " + "; ".join(errors[:3]))
    return sum(counts) / elapsed, cpu / elapsed, 1000 * client / max(1, sum(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--threads", default="1,8", help="client thread counts, comma separated")
    parser.add_argument("--hosts", type=int, default=4, help="emulated hosts (threads spread over them)")
    parser.add_argument("--persona", default="tests.support.fake_persona:FakePersona", help="persona factory module:callable")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return

    import requests
    import winrm
    from winrm.protocol import Protocol

    root = Path(tempfile.mkdtemp(prefix="winrm-bench-"))
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--root", str(root), "--hosts", str(args.hosts),
                              "--persona", args.persona], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)),
                             cwd=str(ROOT))
    try:
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("the benchmark fleet did not start")
        fleet = json.loads((root / "fleet.json").read_text())
        user, password, ca = fleet["username"], fleet["password"], fleet["ca_cert"]
        hosts = fleet["hosts"]

        def url(i, scheme):
            h = hosts[i % len(hosts)]
            return f"{scheme}://{h['address']}:{h['http_port' if scheme == 'http' else 'https_port']}/wsman"

        def bare_post(i):
            s = requests.Session()
            s.auth = (user, password)
            s.verify = ca
            s.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify
            target = url(i, "https")
            return lambda: s.post(target, data=b"").raise_for_status()

        def run_cmd(transport, scheme):
            def make(i):
                s = winrm.Session(url(i, scheme), auth=(user, password), transport=transport, ca_trust_path=ca,
                                  server_cert_validation="validate")

                def op():
                    r = s.run_cmd("echo", ["bench"])
                    assert r.status_code == 0 and r.std_out == b"bench\r\n", r
                return op
            return make

        def reused(transport, scheme):
            def make(i):
                p = Protocol(url(i, scheme), transport=transport, username=user, password=password, ca_trust_path=ca,
                             server_cert_validation="validate")
                shell = p.open_shell()

                def op():
                    cid = p.run_command(shell, "echo", ["bench"])
                    out = p.get_command_output(shell, cid)
                    p.cleanup_command(shell, cid)
                    assert out == (b"bench\r\n", b"", 0), out
                return op
            return make

        def ours():
            """deploy_tasks' WinRMTransport, NTLM over HTTPS, each thread its own host's transport (the channel
            on or off: see ``_channel``)."""
            from deploy_tasks.transports import winrm as w

            def make(i):
                h = hosts[i % len(hosts)]
                t = w.WinRMTransport(f"H{i}", h["address"], w.WinRMOptions(transport="ntlm", scheme="https",
                                                                         ca_path=ca),
                                     port=h["https_port"], credential=w.Credential(user, password))

                def op():
                    r = t.run_argv(["echo", "bench"])
                    assert r.exited == 0 and r.stdout == "bench\n", r
                return op
            return make

        threads = [int(t) for t in args.threads.split(",")]
        print(f"emulated WinRM endpoint, real pywinrm client; {os.cpu_count()} cores; {args.hosts} hosts; "
              f"{args.seconds:g} s per row")
        print("(server CPU: the fleet process's CPU time over the row, in cores; the client is one Python process)")
        baseline, cpu, client = _run_threads(1, args.seconds, bare_post, child.pid)
        print(f"{'baseline: bare HTTPS POST (requests, Basic, keep-alive)':42s} {'1':>3s} thr {baseline:8.1f} req/s  "
              f"1.00x  server CPU {cpu:.2f}  client CPU {client:.3f} ms/req")
        rows = [
            ("run_cmd        Basic/HTTPS", run_cmd("basic", "https")),
            ("reused shell   Basic/HTTPS", reused("basic", "https")),
            ("run_cmd        NTLM/HTTP + encryption", run_cmd("ntlm", "http")),
            ("reused shell   NTLM/HTTP + encryption", reused("ntlm", "http")),
            ("deploy_tasks   NTLM/HTTPS, pywinrm path", ours()),
            ("deploy_tasks   NTLM/HTTPS, direct", ours()),
        ]
        results = {}
        for name, make in rows:
            for n in threads:
                with _channel(not name.endswith("pywinrm path")):
                    rate, cpu, client = _run_threads(n, args.seconds, make, child.pid)
                results[(name, n)] = (rate, client)
                print(f"{name:42s} {n:>3d} thr {rate:8.1f} cmd/s  {rate / baseline:.2f}x  server CPU {cpu:.2f}  "
                      f"client CPU {client:.3f} ms/cmd")
        top = max(threads)
        results = {k: v[0] for k, v in results.items()} | {("cpu",) + k: v[1] for k, v in results.items()}
        slow, fast = (results.get(("cpu", f"deploy_tasks   NTLM/HTTPS, {m}", 1)) for m in ("pywinrm path", "direct"))
        if slow and fast:
            print(f"deploy_tasks, 1 thread: client CPU a command (Command, Receive, Signal), direct / pywinrm path: "
                  f"{fast / slow:.2f}")
        for auth in ("Basic/HTTPS", "NTLM/HTTP + encryption"):
            rc, rs = results.get((f"run_cmd        {auth}", top)), results.get((f"reused shell   {auth}", top))
            if rc and rs:
                print(f"reused shell vs run_cmd, {auth}, {top} threads: {rs / rc:.2f}x")
        basic = results.get(("reused shell   Basic/HTTPS", top))
        ntlm = results.get(("reused shell   NTLM/HTTP + encryption", top))
        if basic is not None and ntlm is not None:
            print(f"targets at {top} threads (reused shell): Basic {basic:.0f} cmd/s (>= 200: "
                  f"{'met' if basic >= 200 else 'NOT met'}), NTLM+encryption {ntlm:.0f} cmd/s (>= 100: "
                  f"{'met' if ntlm >= 100 else 'NOT met'})")
    finally:
        child.stdin.close()
        child.wait(30)


@contextlib.contextmanager
def _channel(on: bool):
    """deploy_tasks' transports take their connection out of the pool (on), or never do (every message through
    pywinrm's requests path), for the rows run inside."""
    from deploy_tasks.transports import winrm_channel

    take = winrm_channel.Channel.take
    if not on:
        winrm_channel.Channel.take = classmethod(lambda cls, *a, **kw: None)
    try:
        yield
    finally:
        winrm_channel.Channel.take = take


if __name__ == "__main__":
    main()
