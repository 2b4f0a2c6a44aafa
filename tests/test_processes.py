"""Process records: a process is signalled only while its pid, start time and command line still match."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import time

import pytest

from deploy_tasks import processes
from deploy_tasks.processes import ProcessRecord
from deploy_tasks.steps import puppet_master


@pytest.fixture
def sleeper():
    procs = []

    def start(*argv):
        proc = subprocess.Popen(list(argv) or ["sleep", "60"])
        procs.append(proc)
        deadline = time.monotonic() + 5
        while not processes.cmdline(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_record_names_one_process_and_stops_only_it(sleeper):
    proc = sleeper()
    record = ProcessRecord.of(proc.pid, name="sleep")
    assert record.alive() and record.argv == ("sleep", "60") and record.start_time
    # the same pid with another start time is another process (a reused pid): left alone
    stale = dataclasses.replace(record, start_time=str(int(record.start_time) - 1))
    assert not stale.alive() and stale.stop() is False
    assert proc.poll() is None
    # nor is a process whose command line lacks the marker
    assert not dataclasses.replace(record, marker="sshd_config").alive()
    assert record.stop() is True
    assert processes.start_time(proc.pid) is None  # gone, and reaped: stop() collects its own children
    assert not record.alive() and record.stop() is False


def test_a_record_round_trips_through_its_file(tmp_path, sleeper):
    proc = sleeper()
    record = ProcessRecord.of(proc.pid, name="sleep", marker="sleep", port=2222)
    record.save(tmp_path / "r.json")
    assert oct((tmp_path / "r.json").stat().st_mode & 0o777) == "0o600"
    again = ProcessRecord.load(tmp_path / "r.json")
    assert again == record and again.extra == {"port": 2222}
    (tmp_path / "bad.json").write_text("{not json")
    assert ProcessRecord.load(tmp_path / "bad.json") is None and ProcessRecord.load(tmp_path / "none") is None


def test_the_ledger_stops_what_it_lists_except_what_it_is_told_to_spare(tmp_path, sleeper):
    ours, spared, other = sleeper(), sleeper(), sleeper()
    ledger = tmp_path / "ledger"
    for proc in (ours, spared):
        processes.register(ProcessRecord.of(proc.pid, name="sleep"), ledger)
    gone = ProcessRecord.of(sleeper().pid)
    processes.register(gone, ledger)
    gone.stop()
    keep = ProcessRecord.of(spared.pid)
    stopped = processes.stop_recorded(ledger, spare=[(keep.pid, keep.start_time)])
    assert [r.pid for r in stopped] == [ours.pid]
    assert processes.start_time(ours.pid) is None and spared.poll() is None and other.poll() is None
    # the spared record stays listed; the stopped and the vanished ones are dropped
    assert [r.pid for _, r in processes.recorded(ledger)] == [spared.pid]


def test_snapshot_sees_this_process_with_its_start_time():
    import os

    snap = processes.snapshot()
    assert snap[os.getpid()] == processes.start_time(os.getpid())


# -- puppetserver: the JVM, not the pid of the runuser that launched it ---------------------------
@pytest.mark.skipif(not shutil.which("pgrep"), reason="pgrep (procps) is not installed")
def test_the_master_s_liveness_asks_the_jvm(tmp_path, monkeypatch, sleeper, request):
    jar = str(tmp_path / "puppetserver.jar")
    layout = dataclasses.replace(puppet_master.DEBIAN, jar=jar)
    other = dataclasses.replace(puppet_master.DEBIAN, jar=str(tmp_path / "other.jar"))
    pidfile = tmp_path / "puppetserver.pid"
    monkeypatch.setattr(puppet_master, "PIDFILE", str(pidfile))
    # a launcher (as runuser) whose child is a program named java running the jar
    java = f"exec -a java {sys.executable} -c 'import time; time.sleep(60)' -jar {jar}"
    launcher = sleeper("bash", "-c", f"bash -c \"{java}\" & wait")
    deadline = time.monotonic() + 5
    child = ""
    while not child and time.monotonic() < deadline:
        child = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.strip()
    assert child
    deadline = time.monotonic() + 5
    while processes.cmdline(int(child))[:1] != ["java"] and time.monotonic() < deadline:  # it execs into "java"
        time.sleep(0.05)
    # the launcher's child outlives the launcher: stop it too, by its record
    request.addfinalizer(ProcessRecord.of(int(child), marker="java").stop)

    def jvm(lay=layout, launcher_counts=False):
        proc = subprocess.run(["sh", "-c", puppet_master.jvm_pid_command(lay, launcher_counts)],
                              capture_output=True, text=True)
        return proc.returncode, proc.stdout.strip()

    pidfile.write_text(f"{launcher.pid}\n")
    assert jvm() == (0, child)
    assert jvm(other) == (1, "")  # a java running another jar is not the master
    pidfile.write_text(f"{sleeper().pid}\n")  # the pid now names an unrelated process
    assert jvm() == (1, "") and jvm(launcher_counts=True) == (1, "")
    pidfile.write_text("12ab; rm -rf /\n")
    assert jvm() == (1, "")
    pidfile.unlink()
    assert jvm() == (1, "")


# -- .ci/run's wrapper: in CI, the run leaves running exactly what ran before it ------------------
def ci_run(tmp_path, script: str, ledger):
    import os

    env = dict(os.environ, DEPLOY_TASKS_PROCESS_LEDGER=str(ledger))
    return subprocess.run([sys.executable, "-m", "tests.support.ci_processes", "--ci", "--grace", "1", "--", sys.executable, "-c",
                           script], capture_output=True, text=True, env=env, timeout=60,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))


DAEMON = """
import subprocess, sys
from deploy_tasks import processes
p = subprocess.Popen(["sleep", "300"], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # detached, as a service is
{register}
print("daemon", p.pid)
"""


def test_ci_run_stops_what_the_ledger_lists(tmp_path):
    before = processes.snapshot()
    proc = ci_run(tmp_path, DAEMON.format(register="processes.register(processes.ProcessRecord.of(p.pid))"),
                  tmp_path / "ledger")
    pid = int(proc.stdout.split("daemon ")[1].split()[0])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"stopped process pid {pid}" in proc.stdout
    assert "no process started by this run is left running" in proc.stdout
    assert processes.start_time(pid) is None
    # what ran before still runs, the same processes
    after = processes.snapshot()
    assert all(after.get(p) == t for p, t in before.items() if processes.start_time(p) == t)


def test_ci_run_names_what_was_left_unrecorded_and_fails(tmp_path):
    proc = ci_run(tmp_path, DAEMON.format(register=""), tmp_path / "ledger")
    pid = int(proc.stdout.split("daemon ")[1].split()[0])
    try:
        assert proc.returncode == 1
        assert f"pid {pid}: sleep 300" in proc.stdout and "still running" in proc.stdout
    finally:
        ProcessRecord.of(pid, marker="sleep").stop()


def test_ci_run_spares_a_recorded_process_that_ran_before_it(tmp_path, sleeper):
    older = sleeper()
    ledger = tmp_path / "ledger"
    processes.register(ProcessRecord.of(older.pid), ledger)
    proc = ci_run(tmp_path, "pass", ledger)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert older.poll() is None and "stopped" not in proc.stdout


def test_ci_run_passes_the_command_s_exit_code(tmp_path):
    assert ci_run(tmp_path, "raise SystemExit(3)", tmp_path / "ledger").returncode == 3
