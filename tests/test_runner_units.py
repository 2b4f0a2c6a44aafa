"""The runner's small rules, one at a time: retry decisions, waits, events' fields, how a unit's value or exception becomes its result."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from deploy_tasks.errors import DeployError, RemoteCommandError
from deploy_tasks.redact import add_secret
from deploy_tasks.runner import Runner, Unit, is_retryable
from tests.support.runners import Transient, runner


def test_an_exception_is_retryable_only_when_it_says_so():
    assert is_retryable(Transient("a: 1618")) is True
    assert is_retryable(DeployError("a: no")) is False
    assert is_retryable(ValueError("no attribute at all")) is False
    # the default rule, through the runner: a plain exception is not retried
    calls = []

    def fail(ctx):
        calls.append(ctx.attempt)
        raise ValueError("bad value")

    result = runner(retries=2, sleep=lambda s: None).run([Unit("a", "x", fail)])
    assert calls == [1] and result.units[0].attempts == 1


def test_a_retry_predicate_sees_the_exception_raised():
    seen = []

    def decide(exc):
        seen.append(exc)
        return "again" in str(exc)

    def flaky(ctx):
        if ctx.attempt == 1:
            raise DeployError("a: try again")
        if ctx.attempt == 2:
            raise DeployError("a: give up")
        return "changed"

    result = runner(retries=5, sleep=lambda s: None).run([Unit("a", "x", flaky, retryable=decide)])
    assert [str(e) for e in seen] == ["a: try again", "a: give up"]
    assert result.units[0].status == "failed" and result.units[0].attempts == 2


def test_a_short_backoff_is_not_rounded_up_and_never_negative():
    r = runner(backoff=0.1, jitter=0.0)
    assert r.delay(1) == pytest.approx(0.1)
    assert r.delay(2) == pytest.approx(0.2)
    assert runner(backoff=0.1, jitter=2.0, random=lambda: 0.0).delay(1) == 0.0  # 1 - 200 %: clamped at 0


def test_a_retry_without_an_injected_sleep_waits_the_backoff_then_runs_again():
    starts = []

    def flaky(ctx):
        starts.append(time.monotonic())
        if ctx.attempt == 1:
            raise Transient("a: busy")
        return "changed"

    result = runner(retries=1, backoff=0.2, jitter=0.0).run([Unit("a", "x", flaky)])
    assert result.ok and result.units[0].attempts == 2
    assert 0.15 <= starts[1] - starts[0] < 5


def test_a_cancellation_ends_a_backoff_wait_at_once():
    def busy(ctx):
        raise Transient("a: busy")

    r = runner(retries=3, backoff=30.0, jitter=0.0)
    threading.Timer(0.2, r.cancel).start()
    started = time.monotonic()
    result = r.run([Unit("a", "x", busy)])
    assert time.monotonic() - started < 10  # not the 30 s backoff
    assert result.units[0].status == "failed" and result.units[0].attempts == 1
    assert result.cancelled == "cancel"


def test_output_events_carry_the_unit_and_an_empty_line_is_kept():
    events = []

    def talk(ctx):
        ctx.output("")
        ctx.output("two\nthree")
        return None

    result = runner(listeners=[events.append]).run([Unit("web1", "nginx", talk)])
    lines = [e for e in events if e.kind == "output"]
    assert [(e.unit, e.host, e.name, e.attempt, e.line) for e in lines] == [
        ("web1/nginx", "web1", "nginx", 1, ""), ("web1/nginx", "web1", "nginx", 1, "two"),
        ("web1/nginx", "web1", "nginx", 1, "three")]
    assert result.units[0].output == ["", "two", "three"]


def test_a_skipped_unit_reports_its_host_name_and_result():
    events = []

    def fail(ctx):
        raise DeployError("db1: broken")

    r = runner(listeners=[events.append])
    result = r.run([Unit("db1", "mysql", fail), Unit("app1", "tomcat", lambda c: "changed", depends_on=["db1/mysql"])])
    skipped = [e for e in events if e.unit == "app1/tomcat"]
    assert len(skipped) == 1
    event = skipped[0]
    assert (event.kind, event.host, event.name) == ("finished", "app1", "tomcat")
    assert event.result is result.get("app1/tomcat") and event.result.status == "skipped"
    assert event.result.error == "not started: db1/mysql failed"


def test_a_value_without_a_status_reads_unchanged_and_without_details_none():
    class Bare:
        pass

    class NoDetails:
        status = "changed"
        details = None

    result = runner().run([Unit("a", "x", lambda c: Bare()), Unit("b", "x", lambda c: NoDetails())])
    assert [(u.status, u.details, u.error) for u in result.units] == [("unchanged", [], None), ("changed", [], None)]


def test_a_failure_keeps_the_exception_type_and_its_redacted_output():
    secret = f"pw-{uuid.uuid4().hex}"  # unique: the secrets registry lives for the whole process
    add_secret(secret)

    def remote(ctx):
        raise RemoteCommandError(ctx.host, "msiexec /i a.msi", 1603, output=f"line one\npassword {secret}")

    def plain(ctx):
        raise Transient("b: busy")

    result = runner().run([Unit("a", "install", remote), Unit("b", "install", plain)])
    a, b = result.units
    assert a.error_type == "RemoteCommandError" and b.error_type == "Transient"
    assert a.error_output == "line one\npassword ********"
    assert b.error_output == ""
    assert secret not in a.error and "exit code 1603" in a.error


def test_an_unknown_status_fails_the_unit_naming_it():
    result = runner().run([Unit("a", "x", lambda c: "done"), Unit("a", "y", lambda c: "changed")])
    assert result.units[0].status == "failed"
    assert result.units[0].error == "a: x returned an unknown status 'done' (a bug in the step)"
    assert result.units[1].status == "skipped"  # a failure like any other: the host's next unit is skipped


def test_a_step_that_recorded_its_own_failure_keeps_its_error():
    class Failed:
        status = "failed"
        details = ["checked the service"]
        error = "a: the service did not start"

    result = runner().run([Unit("a", "x", lambda c: Failed())])
    unit = result.units[0]
    assert (unit.status, unit.error, unit.details) == ("failed", "a: the service did not start", ["checked the service"])
    assert not result.ok


def test_a_succeeded_steps_error_attribute_is_not_an_error():
    class Done:
        status = "changed"
        error = "left over from a check"

    result = runner().run([Unit("a", "x", lambda c: Done())])
    assert (result.units[0].status, result.units[0].error) == ("changed", None)


def test_every_event_names_its_unit_host_and_step():
    events = []

    def flaky(ctx):
        if ctx.attempt == 1:
            raise Transient("web1: busy")
        return "changed"

    r = runner(retries=1, sleep=lambda s: None, listeners=[events.append])
    result = r.run([Unit("web1", "nginx", flaky), Unit("web2", "nginx", lambda c: None)])
    assert result.ok
    web1 = [(e.kind, e.unit, e.host, e.name, e.attempt) for e in events if e.host == "web1"]
    assert web1 == [("started", "web1/nginx", "web1", "nginx", 1), ("retrying", "web1/nginx", "web1", "nginx", 1),
                    ("started", "web1/nginx", "web1", "nginx", 2), ("finished", "web1/nginx", "web1", "nginx", 2)]
    assert [e.unit for e in events if e.host == "web2"] == ["web2/nginx", "web2/nginx"]
    finished = [e for e in events if e.kind == "finished"]
    assert all(e.result is result.get(e.unit) for e in finished)


def test_a_unit_carried_over_from_the_previous_run_reports_it():
    from deploy_tasks.runner import RunResult

    def flaky(ctx):
        if ctx.attempt == 1:
            raise Transient("db1: busy")
        return "changed"

    first = runner(retries=1, sleep=lambda s: None).run([Unit("db1", "mysql", flaky)])
    previous = RunResult.from_dict(first.to_dict())
    events = []
    second = runner(listeners=[events.append]).run([Unit("db1", "mysql", flaky)], previous=previous)
    assert [(e.kind, e.unit, e.host, e.name, e.attempt) for e in events] == [
        ("finished", "db1/mysql", "db1", "mysql", 2)]
    assert events[0].result is second.units[0] and second.units[0].status == "changed"


def test_a_dependency_listed_after_its_dependent_still_runs_first():
    order = []

    def step(name):
        def fn(ctx):
            order.append(name)
            time.sleep(0.05)
            return "changed"
        return fn

    units = [Unit("app1", "tomcat", step("tomcat"), depends_on=["db1/mysql"]), Unit("db1", "mysql", step("mysql"))]
    result = runner(max_parallel=2).run(units)
    assert result.ok and order == ["mysql", "tomcat"]
    assert result.units[0].depends_on == ["db1/mysql"]  # kept in the result (reports and resume read it)
    assert all(0 <= u.seconds < 5 for u in result.units)


def test_a_dependency_the_previous_run_left_unfinished_skips_its_dependents():
    from deploy_tasks.runner import RunResult

    # a hand-edited or truncated state file: "changed" but never ended
    previous = RunResult.from_dict({"task": "test", "units": [
        {"id": "db1/mysql", "host": "db1", "name": "mysql", "status": "changed", "ended": None}]})
    ran = []
    result = runner().run([Unit("db1", "mysql", lambda c: ran.append(1)),
                           Unit("app1", "tomcat", lambda c: ran.append(2), depends_on=["db1/mysql"])],
                          previous=previous)
    assert ran == []
    assert result.units[1].status == "skipped"
    assert result.units[1].error == "not started: its dependencies never finished"


def test_units_run_in_daemon_threads_named_for_the_runner():
    seen = []
    runner().run([Unit("web1", "nginx", lambda c: seen.append(threading.current_thread()))])
    # a daemon thread: a unit stuck in a remote command cannot keep the process from exiting
    assert seen[0].daemon is True and seen[0].name.startswith("runner-test-")


def test_a_cancelled_run_skips_what_has_not_started_and_lets_running_units_finish():
    events = []

    def slow(ctx):
        time.sleep(0.4)
        return "changed"

    r = runner(grace=10.0, listeners=[events.append])
    threading.Timer(0.1, r.cancel).start()
    result = r.run([Unit("a", "one", slow), Unit("a", "two", lambda c: "changed")])
    assert [u.status for u in result.units] == ["changed", "skipped"]
    assert result.units[1].error == "not started: the run was cancelled (cancel)"
    assert result.cancelled == "cancel" and not result.ok


def test_a_unit_abandoned_after_the_grace_period_is_reported_failed_with_what_to_do():
    events = []

    def stuck(ctx):
        time.sleep(1.6)
        return "changed"

    # a poll longer than the grace: the grace still ends on time, not at the next poll
    r = runner(grace=0.1, poll=1.0, listeners=[events.append])
    threading.Timer(0.1, r.cancel).start()
    started = time.monotonic()
    result = r.run([Unit("web1", "nginx", stuck)])
    assert time.monotonic() - started < 1.5
    unit = result.units[0]
    assert (unit.status, unit.attempts, unit.error_type) == ("failed", 1, "Cancelled")
    assert unit.error == ("web1: nginx was still running 0 s after the run was cancelled (cancel); what it did "
                          "on the host is unknown: check the host, then re-run")
    assert unit.ended and unit.ended.endswith("Z")
    finished = [e for e in events if e.kind == "finished"]
    assert [(e.unit, e.host, e.name, e.attempt) for e in finished] == [("web1/nginx", "web1", "nginx", 1)]
    assert finished[0].result is unit


def test_an_interrupt_inside_a_unit_cancels_the_run():
    def interrupted(ctx):
        raise KeyboardInterrupt

    result = runner(max_parallel=1).run([Unit("a", "x", interrupted), Unit("b", "y", lambda c: "changed")])
    assert result.cancelled == "KeyboardInterrupt"
    assert [(u.status, u.error) for u in result.units] == [
        ("failed", "a: x interrupted"), ("skipped", "not started: the run was cancelled (KeyboardInterrupt)")]


def test_a_second_unit_on_a_busy_host_fails_loudly_instead_of_waiting():
    import queue

    from deploy_tasks.runner.model import UnitResult

    # the scheduler never starts two units on one host; if it ever did, the unit says so at once
    r = runner()
    lock = threading.Lock()
    lock.acquire()
    r._host_locks = {"a": lock}
    unit = Unit("a", "x", lambda c: "changed")
    res = UnitResult(unit.id, "a", "x")
    done = queue.Queue()
    worker = threading.Thread(target=r._work, args=(unit, res, done), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive()
    assert (res.status, res.error) == ("failed", "a: internal error: two units at once on one host")
    assert done.get_nowait() == "a/x"


def test_the_defaults_a_task_gets():
    r = Runner()
    assert (r.task, r.max_parallel, r.retries, r.backoff, r.backoff_max, r.jitter) == ("run", 10, 0, 2.0, 60.0, 0.25)
    assert (r.on_failure, r.dry_run, r.grace, r.handle_signals, r._poll) == ("host", False, 30.0, True, 0.05)
    assert Runner(random=lambda: 1.0).delay(1) == pytest.approx(2.5)  # 2 s + 25 % jitter
    result = Runner(handle_signals=False).run([Unit("a", "x", lambda c: None)])
    assert result.task == "run"


def test_at_most_ten_units_at_once_by_default():
    lock = threading.Lock()
    active, peak = [0], [0]

    def work(ctx):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.1)
        with lock:
            active[0] -= 1

    Runner(handle_signals=False, poll=0.01).run([Unit(f"h{i}", "x", work) for i in range(14)])
    assert peak[0] == 10


@pytest.mark.parametrize("options,message", [
    ({"max_parallel": 0}, "max_parallel must be at least 1"),
    ({"on_failure": "never"}, "on_failure must be one of host, run, dependents"),
])
def test_bad_runner_options_are_refused_plainly(options, message):
    with pytest.raises(ValueError) as err:
        Runner(**options)
    assert str(err.value) == message


def test_a_unit_sees_whether_the_run_is_a_dry_run():
    seen = []
    runner(dry_run=True).run([Unit("a", "x", lambda c: seen.append(c.dry_run))])
    runner().run([Unit("a", "x", lambda c: seen.append(c.dry_run))])
    assert seen == [True, False]


def test_a_run_records_when_it_started_and_ended():
    result = runner().run([Unit("a", "x", lambda c: time.sleep(0.05))])
    assert result.started.endswith("Z") and result.ended.endswith("Z") and result.started <= result.ended
    assert 0.04 <= result.seconds < 5


def test_a_signal_to_the_process_cancels_a_run_in_the_main_thread():
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)

    def first(ctx):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs in the main thread meanwhile
        return "changed"

    result = Runner("t", poll=0.01, max_parallel=1).run([Unit("a", "one", first), Unit("b", "two", lambda c: None)])
    assert result.cancelled == "SIGTERM"
    assert [u.status for u in result.units] == ["changed", "skipped"]
    assert signal.getsignal(signal.SIGTERM) is before


def test_handle_signals_false_leaves_the_handlers_alone():
    import signal

    before = signal.getsignal(signal.SIGINT)
    seen = []
    runner(handle_signals=False).run([Unit("a", "x", lambda c: seen.append(signal.getsignal(signal.SIGINT)))])
    assert seen == [before]


def test_a_deep_diamond_of_dependencies_is_checked_in_linear_time():
    # each layer: two units that depend on both units of the layer below; visiting a unit twice would
    # make the check exponential in the depth
    units = [Unit("h", "l0a", lambda c: None), Unit("h", "l0b", lambda c: None)]
    for layer in range(1, 40):
        below = [f"h/l{layer - 1}a", f"h/l{layer - 1}b"]
        units += [Unit("h", f"l{layer}a", lambda c: None, depends_on=below),
                  Unit("h", f"l{layer}b", lambda c: None, depends_on=below)]
    started = time.monotonic()
    result = runner().run(units)
    assert result.ok and len(result.units) == 80
    assert time.monotonic() - started < 10
