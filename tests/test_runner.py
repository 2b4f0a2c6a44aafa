"""The runner: per-host serialization, max_parallel, failure policy, dependencies, retries, cancellation, events."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from deploy_tasks import outcome
from deploy_tasks.errors import DeployError, RunFailed
from deploy_tasks.runner import RunResult, Runner, Unit
from tests.support.runners import Transient, runner

ROOT = Path(__file__).resolve().parent.parent


def test_one_unit_per_host_at_a_time_and_max_parallel_respected():
    lock = threading.Lock()
    per_host: dict = {}
    active = [0]
    peaks = {"host": 0, "all": 0}

    def work(ctx):
        with lock:
            per_host[ctx.host] = per_host.get(ctx.host, 0) + 1
            active[0] += 1
            peaks["host"] = max(peaks["host"], per_host[ctx.host])
            peaks["all"] = max(peaks["all"], active[0])
        time.sleep(0.02)
        with lock:
            per_host[ctx.host] -= 1
            active[0] -= 1
        return outcome.CHANGED

    units = [Unit(f"h{i % 5}", f"step{i}", work) for i in range(60)]
    result = runner(max_parallel=3).run(units)
    assert result.ok and result.counts() == {"changed": 60}
    assert peaks["host"] == 1  # never two units at once on a host
    assert peaks["all"] == 3  # parallel, but never more than max_parallel
    # a host's units run in the order given
    for host in {u.host for u in units}:
        starts = [r.started for r in result.units if r.host == host]
        assert starts == sorted(starts)


def test_a_failed_host_skips_its_remaining_units_and_other_hosts_go_on():
    def fail(ctx):
        raise DeployError(f"{ctx.host}: nginx -t failed")

    units = [Unit("a", "one", fail), Unit("a", "two", lambda c: "changed"), Unit("b", "one", lambda c: None),
             Unit("b", "two", lambda c: "changed")]
    result = runner(max_parallel=4).run(units)
    assert [u.status for u in result.units] == ["failed", "skipped", "unchanged", "changed"]
    assert result.get("a/two").error == "not started: a/one failed on this host"
    assert not result.ok
    with pytest.raises(RunFailed) as err:
        result.raise_for_failures()
    text = str(err.value)
    assert text.splitlines()[0] == "test: 1 of 4 unit(s) failed, 1 skipped:"
    assert "  a:\n    one failed: a: nginx -t failed\n    two skipped: not started: a/one failed on this host" in text
    assert "b:" not in text and err.value.exit_code == 1


def test_policy_run_starts_nothing_new_and_policy_dependents_only_skips_dependents():
    def fail(ctx):
        raise DeployError("boom")

    units = [Unit("a", "one", fail), Unit("b", "one", lambda c: "changed", depends_on=["a/one"]),
             Unit("c", "one", lambda c: "changed", depends_on=["b/one"]), Unit("a", "two", lambda c: "changed")]
    result = runner(max_parallel=1, on_failure="run").run(units)
    assert [u.status for u in result.units] == ["failed", "skipped", "skipped", "skipped"]
    result = runner(max_parallel=1, on_failure="dependents").run(units)
    assert [u.status for u in result.units] == ["failed", "skipped", "skipped", "changed"]
    assert result.get("b/one").error == "not started: a/one failed"
    assert result.get("c/one").error == "not started: b/one skipped"


def test_dependencies_start_after_what_they_depend_on_succeeded():
    order = []

    def step(name, delay=0.0):
        def fn(ctx):
            order.append(("start", name))
            time.sleep(delay)
            order.append(("end", name))
            return "changed"
        return fn

    units = [Unit("h1", "db", step("db", 0.05)), Unit("h2", "app", step("app"), depends_on=["h1/db"]),
             Unit("h3", "web", step("web"), depends_on=["h2/app", "h1/db"]), Unit("h4", "free", step("free"))]
    result = runner(max_parallel=4).run(units)
    assert result.ok
    assert order.index(("end", "db")) < order.index(("start", "app")) < order.index(("start", "web"))
    assert order.index(("start", "free")) < order.index(("end", "db"))  # independent units do not wait


@pytest.mark.parametrize("units,message", [
    ([Unit("a", "x", None), Unit("a", "x", None)], "two units have the id 'a/x'"),
    ([Unit("a", "x", None, depends_on=["b/y"])], "depends on unknown unit 'b/y'"),
    ([Unit("a", "x", None, depends_on=["a/y"]), Unit("a", "y", None, depends_on=["a/x"])],
     "cycle: a/x -> a/y -> a/x"),
])
def test_bad_unit_graphs_are_refused_before_anything_runs(units, message):
    with pytest.raises(ValueError, match=message):
        runner().run(units)


def test_retryable_errors_are_retried_with_exponential_backoff_and_jitter():
    calls = []
    slept = []

    def flaky(ctx):
        calls.append(ctx.attempt)
        if ctx.attempt < 3:
            raise Transient(f"{ctx.host}: msiexec exit 1618 (another installation is running)")
        return "changed"

    randoms = iter([0.0, 1.0, 1.0])
    events = []
    r = runner(retries=3, backoff=2.0, jitter=0.25, sleep=slept.append, random=lambda: next(randoms),
               listeners=[events.append])
    result = r.run([Unit("win1", "agent", flaky)])
    assert result.ok and calls == [1, 2, 3] and result.units[0].attempts == 3
    assert slept == [1.5, 5.0]  # 2 s * (1 - 25 %), then 4 s * (1 + 25 %)
    assert [(e.kind, e.attempt) for e in events] == [("started", 1), ("retrying", 1), ("started", 2),
                                                    ("retrying", 2), ("started", 3), ("finished", 3)]
    assert events[1].delay == 1.5 and "1618" in events[1].error
    assert r.delay(10) == pytest.approx(60.0 * 1.25)  # capped at backoff_max before the jitter


def test_not_retryable_and_exhausted_retries_fail():
    slept = []

    def always(exc):
        def fn(ctx):
            raise exc
        return fn

    r = runner(retries=2, sleep=slept.append, random=lambda: 0.5)
    result = r.run([Unit("a", "plain", always(DeployError("a: no"))),
                    Unit("b", "transient", always(Transient("b: 1618"))),
                    Unit("c", "forced", always(RuntimeError("quota")), retryable=True),
                    Unit("d", "refused", always(Transient("d: logon rejected")), retryable=lambda e: False)])
    assert [(u.status, u.attempts) for u in result.units] == [("failed", 1), ("failed", 3), ("failed", 3),
                                                              ("failed", 1)]
    assert slept == [2.0, 4.0, 2.0, 4.0]
    assert result.get("c/forced").error == "c: forced: unexpected RuntimeError: quota"


def test_events_arrive_in_order_for_every_unit():
    events = []

    def talk(ctx):
        ctx.output("line one\nline two")
        return "changed"

    def fail(ctx):
        raise DeployError("a: broken")

    r = runner(max_parallel=4, listeners=[events.append])
    r.run([Unit("a", "x", fail), Unit("a", "y", talk), Unit("b", "x", talk), Unit("c", "x", talk)])
    kinds = {}
    for e in events:
        kinds.setdefault(e.unit, []).append(e.kind)
    assert kinds["a/x"] == ["started", "finished"]
    assert kinds["a/y"] == ["finished"]  # skipped: never started
    assert kinds["b/x"] == kinds["c/x"] == ["started", "output", "output", "finished"]
    finished = [e for e in events if e.kind == "finished" and e.unit == "b/x"][0]
    assert finished.result.output == ["line one", "line two"] and finished.result.status == "changed"
    assert all(e.time.endswith("Z") and "T" in e.time for e in events)


def test_a_broken_listener_does_not_break_the_run(capsys):
    def broken(event):
        raise RuntimeError("reporter bug")

    result = runner(listeners=[broken]).run([Unit("a", "x", lambda c: "changed")])
    assert result.ok
    assert "a reporter failed on a started event: RuntimeError: reporter bug" in capsys.readouterr().err


def test_dry_run_reports_would_change_and_step_results_carry_details():
    class Step:
        status = "changed"
        details = ["wrote /etc/x"]

    result = runner(dry_run=True).run([Unit("a", "x", lambda c: Step()), Unit("a", "y", lambda c: None)])
    assert [(u.status, u.details) for u in result.units] == [("would-change", ["wrote /etc/x"]), ("unchanged", [])]
    assert result.ok and result.dry_run


def test_result_round_trips_through_json():
    result = runner().run([Unit("a", "x", lambda c: "changed"), Unit("b", "y", lambda c: (_ for _ in ()).throw(
        DeployError("b: failed")))])
    data = json.loads(result.to_json())
    again = RunResult.from_dict(data)
    assert again.to_dict() == result.to_dict()
    assert data["counts"] == {"changed": 1, "failed": 1} and data["ok"] is False


def test_signal_handlers_are_installed_only_in_the_main_thread_and_restored():
    before = signal.getsignal(signal.SIGINT)
    seen = []
    Runner("t", handle_signals=True).run([Unit("a", "x", lambda c: seen.append(signal.getsignal(signal.SIGINT)))])
    assert seen[0] is not before and signal.getsignal(signal.SIGINT) is before
    out = []
    thread = threading.Thread(target=lambda: out.append(Runner("t").run([Unit("a", "x", lambda c: None)])))
    thread.start()
    thread.join()
    assert out[0].ok and signal.getsignal(signal.SIGINT) is before


SCRIPT = textwrap.dedent("""
    import json, sys, time
    from deploy_tasks.errors import RunFailed
    from deploy_tasks.runner import Runner, Unit

    hold = float(sys.argv[1])
    def slow(ctx):
        print("ready", flush=True)
        time.sleep(hold)
        return "changed"
    units = [Unit("a", "one", slow), Unit("a", "two", lambda c: "changed"), Unit("b", "one", lambda c: "changed",
             depends_on=["a/one"])]
    started = time.monotonic()
    result = Runner("cancel", max_parallel=1, grace=float(sys.argv[2]), poll=0.01).run(units)
    print(json.dumps({"statuses": [u.status for u in result.units], "cancelled": result.cancelled,
                      "seconds": time.monotonic() - started, "errors": [u.error for u in result.units]}), flush=True)
    try:
        result.raise_for_failures()
    except RunFailed as exc:
        sys.exit(exc.exit_code)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_starts_nothing_new_and_lets_the_running_unit_finish(sig):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, "1.0", "30"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["statuses"] == ["changed", "skipped", "skipped"], err
    assert report["cancelled"] == sig.name
    assert report["errors"][1] == f"not started: the run was cancelled ({sig.name})"
    assert proc.returncode == 130


def test_a_unit_still_running_after_the_grace_period_fails_and_the_process_can_exit():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, "60", "0.3"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["statuses"] == ["failed", "skipped", "skipped"], err
    assert "still running 0 s after the run was cancelled (SIGTERM)" in report["errors"][0]
    assert proc.returncode == 130 and waited < 15  # not the unit's 60 s


def test_a_state_file_lets_a_second_run_resume_where_the_first_stopped(tmp_path):
    from deploy_tasks.runner import StateFile
    from deploy_tasks.runner.state import load

    path = str(tmp_path / "state" / "deploy.json")
    ran = []
    broken = {"app": True}

    def step(name):
        def fn(ctx):
            ran.append(name)
            if broken.get(name):
                raise Transient(f"{ctx.host}: {name} failed")
            return "changed"
        return fn

    units = [Unit("h1", "db", step("db")), Unit("h2", "app", step("app"), depends_on=["h1/db"]),
             Unit("h2", "web", step("web"), depends_on=["h2/app"])]
    assert load(path) is None
    first = runner(listeners=[StateFile(path, "deploy")]).run(units)
    assert [u.status for u in first.units] == ["changed", "failed", "skipped"] and ran == ["db", "app"]
    broken.clear()
    ran.clear()
    second = runner(listeners=[StateFile(path, "deploy")]).run(units, previous=load(path))
    assert ran == ["app", "web"]  # db succeeded before: carried over, not run again
    assert [u.status for u in second.units] == ["changed", "changed", "changed"] and second.ok
    assert second.units[0].details[-1] == "done in the previous run; not run again"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DeployError, match="cannot be read"):
        load(str(tmp_path / "bad.json"))


def test_a_unit_given_up_on_after_the_grace_period_cannot_change_the_reported_result():
    events = []

    def slow(ctx):
        time.sleep(0.6)
        ctx.output("late line")
        return "changed"

    r = runner(grace=0.1, listeners=[events.append])
    timer = threading.Timer(0.1, r.cancel)
    timer.start()
    result = r.run([Unit("a", "slow", slow), Unit("b", "next", lambda c: "changed", depends_on=["a/slow"])])
    assert [u.status for u in result.units] == ["failed", "skipped"] and result.cancelled == "cancel"
    reported = len(events)
    time.sleep(0.8)  # the abandoned unit finishes now
    assert result.units[0].status == "failed" and "late line" not in result.units[0].output
    assert len(events) == reported
    with pytest.raises(RunFailed) as err:
        result.raise_for_failures()
    assert err.value.exit_code == 130 and "cancelled by cancel" in str(err.value)


def test_after_orders_a_unit_behind_others_whatever_their_outcome():
    order = []

    def step(name, fail=False, delay=0.0):
        def fn(ctx):
            order.append(("start", name))
            time.sleep(delay)
            order.append(("end", name))
            if fail:
                raise DeployError(f"{name} broke")
            return "changed"
        return fn

    units = [Unit("h1", "slow", step("slow", fail=True, delay=0.05)), Unit("h2", "dep", step("dep")),
             Unit("h3", "x", step("x"), depends_on=["h2/dep"], after=["h1/slow", "elsewhere/not-in-this-run"]),
             Unit("h4", "y", step("y"), depends_on=["h1/slow"])]
    result = runner(max_parallel=4, on_failure="dependents").run(units)
    by = {u.id: u for u in result.units}
    assert by["h3/x"].status == "changed"  # ordered after a failure, not skipped for it
    assert order.index(("end", "slow")) < order.index(("start", "x"))
    assert by["h4/y"].status == "skipped" and "h1/slow failed" in by["h4/y"].error


def test_worker_threads_are_reused_across_units_and_runs():
    seen = set()

    def fn(ctx):
        seen.add(threading.get_ident())
        time.sleep(0.002)
        return "unchanged"

    r = runner(max_parallel=4)
    for _ in range(3):  # as a deployment runs its groups one after another on one runner
        result = r.run([Unit(f"h{i}", f"u{j}", fn) for i in range(8) for j in range(5)])
        assert result.ok and len(result.units) == 40
    assert 1 <= len(seen) <= 4  # at most max_parallel threads ever, not one per unit


def test_wide_dependencies_on_hundreds_of_hosts_run_every_level_after_the_one_before():
    # 300 hosts x 3 levels, every unit depending on every unit of the level before (180,000 edges;
    # the event-driven scheduler counts them down instead of rescanning every pending unit per event)
    hosts = [f"h{i:03d}" for i in range(300)]
    ended = {}

    def fn(ctx):
        level = int(ctx.unit.name[1:])
        assert all(ended.get((h, level - 1)) for h in hosts) if level else True
        ended[(ctx.host, level)] = True
        return "unchanged"

    units = [Unit(h, f"l{level}", fn, depends_on=[f"{d}/l{level - 1}" for d in hosts] if level else ())
             for level in range(3) for h in hosts]
    result = runner(max_parallel=50).run(units)
    assert result.ok and result.counts() == {"unchanged": 900}
