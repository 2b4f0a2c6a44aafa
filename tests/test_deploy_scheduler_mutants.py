"""The deploy scheduler's rules a user relies on, without a fleet: skip reasons, which steps ran, the
state file's content, the re-check of a step that was in flight when the controller died, signals.

The stand-in transport is tests/test_deploy_schedule.py's ``Host``, extended to answer the read-only
``type <lock file>`` / ``type <summary file>`` commands that ``node_state`` issues.
"""

from __future__ import annotations

import json
import os
import signal
import threading

from deploy_tasks.errors import HostUnreachable
from deploy_tasks.runner.deploy import Deployment, Step, StepRecord
from deploy_tasks.steps.deploy import LOCK_FILE, SUMMARY_FILE
from deploy_tasks.transports.base import Result

from test_deploy_schedule import Host


class Node(Host):
    """A ``Host`` that also answers ``type`` of the run lock (held for the first ``lock_polls`` looks,
    or until ``release_lock`` is set) and of ``last_run_summary.yaml`` (``summary``, "" = absent)."""

    def __init__(self, name, lock_polls=0, summary="", **kw):
        super().__init__(name, **kw)
        self.lock_polls = lock_polls
        self.summary = summary
        self.looked = []  # the files ``type`` was asked for, in order
        self.release_lock = None  # a threading.Event: when set the lock is free, whatever lock_polls says

    def run(self, command, check=False, timeout=None):
        if LOCK_FILE in command:
            self.looked.append("lock")
            held = self.lock_polls > 0 if self.release_lock is None else not self.release_lock.is_set()
            self.lock_polls -= 1
            return Result(command, 0 if held else 1, "", "" if held else "The system cannot find the file")
        if SUMMARY_FILE in command:
            self.looked.append("summary")
            return Result(command, 0 if self.summary else 1, self.summary, "")
        raise AssertionError(f"unexpected command {command}")


def deploy(steps, hosts, **kw):
    kw.setdefault("handle_signals", False)
    kw.setdefault("retries", 0)
    kw.setdefault("idle_poll", 0.01)
    return Deployment(steps, lambda h: hosts[h], release=lambda t: None, max_parallel=10, **kw).run()


def by_id(result):
    return {r.id: r for r in result.steps}


def tags_run(host):
    return [r[2] for r in host.runs]


# -- waves / dag and the skip reasons ------------------------------------------------------
TWO_GROUPS = [Step("H1", "a", 1), Step("H2", "b", 1),
              Step("H1", "x", 2, ("H1/a",)), Step("H2", "y", 2, ("H2/b",))]


def test_dag_without_continue_on_error_names_the_failed_dependency_not_a_group():
    hosts = {"H1": Node("H1", fail={"a"}), "H2": Node("H2", delay=0.2)}
    result = by_id(deploy(TWO_GROUPS, hosts, schedule="dag"))
    assert result["H1/a"].status == "failed"
    assert result["H1/x"].status == "skipped"
    # dag has no group barrier: the reason names the failure, never "group 1 did not succeed"
    assert result["H1/x"].error == "not started: H1/a failed"
    assert tags_run(hosts["H2"]) == [["b"]]  # a failure starts nothing new anywhere
    assert result["H2/y"].status == "skipped" and result["H2/y"].error == "not started: H1/a failed"


def test_waves_without_continue_on_error_stop_after_a_failed_group_naming_it():
    hosts = {"H1": Node("H1", fail={"a"}), "H2": Node("H2")}
    result = by_id(deploy(TWO_GROUPS, hosts, schedule="waves"))
    assert result["H2/b"].status == "changed"
    for sid in ("H1/x", "H2/y"):
        assert result[sid].status == "skipped"
        assert result[sid].error == "not started: group 1 did not succeed (H1/a failed)"
    assert tags_run(hosts["H2"]) == [["b"]]


def test_waves_with_continue_on_error_run_a_step_whose_dependencies_succeeded_beside_a_failure():
    hosts = {"H1": Node("H1", fail={"a"}), "H2": Node("H2")}
    result = by_id(deploy(TWO_GROUPS, hosts, schedule="waves", continue_on_error=True))
    assert result["H1/x"].status == "skipped" and result["H1/x"].error == "not started: its dependency H1/a failed"
    assert result["H2/y"].status == "changed" and result["H2/y"].error == ""
    assert tags_run(hosts["H2"]) == [["b"], ["y"]] and tags_run(hosts["H1"]) == [["a"]]


def test_a_successful_step_has_no_error_and_a_batched_step_names_its_companions():
    steps = [Step("H1", "a", 1), Step("H1", "b", 1), Step("H1", "c", 1)]
    hosts = {"H1": Node("H1")}
    result = by_id(deploy(steps, hosts, schedule="waves"))
    assert tags_run(hosts["H1"]) == [["a", "b", "c"]]
    assert [result[s.id].error for s in steps] == ["", "", ""]
    assert result["H1/a"].details == ["one Puppet run with b, c"]
    assert result["H1/b"].details == ["one Puppet run with a, c"]
    assert all(result[s.id].ended for s in steps)


def test_a_step_whose_host_stays_unreachable_is_failed_with_the_error():
    class Unreachable(Node):
        def change_argv(self, argv, check=False, timeout=None):
            raise HostUnreachable("H1", "connection refused")

    steps = [Step("H1", "a", 1), Step("H2", "b", 1)]
    result = by_id(deploy(steps, {"H1": Unreachable("H1"), "H2": Node("H2")}, schedule="waves",
                          continue_on_error=True))
    assert result["H1/a"].status == "failed" and "connection refused" in result["H1/a"].error
    assert result["H2/b"].status == "changed"


def test_the_warning_about_dependencies_outside_the_run_counts_the_ones_not_shown():
    deps = tuple(f"D{i:02}/base" for i in range(10))
    warned = []
    deploy([Step("H1", "a", 2, deps)], {"H1": Node("H1")}, schedule="waves", warn=warned.append)
    assert len(warned) == 1
    assert warned[0].startswith("10 dependency step(s) outside this run are not recorded as succeeded")
    assert "D07/base and 2 more)" in warned[0] and "D08/base" not in warned[0]


def test_a_failure_attributed_through_the_components_puppet_class_fails_only_that_step():
    class ClassFailure(Node):
        def change_argv(self, argv, check=False, timeout=None):
            super().change_argv(argv, check, timeout)
            return Result(" ".join(argv), 6, "Notice: Applied catalog\n"
                          "Error: /Stage[main]/Profile::Web/Exec[x]: broke", "")

    # the line names the class only (not the component), so only the Components sheet's class ties it
    steps = [Step("H1", "frontend", 1), Step("H1", "db", 1)]
    result = by_id(deploy(steps, {"H1": ClassFailure("H1")}, schedule="waves", continue_on_error=True,
                          classes={"frontend": "profile::web", "db": "profile::db"}))
    assert result["H1/frontend"].status == "failed" and "broke" in result["H1/frontend"].error
    assert result["H1/db"].status != "failed"


# -- the state file --------------------------------------------------------------------------
def test_the_state_file_names_its_task_schema_and_environment(tmp_path):
    state = tmp_path / "state.json"
    deploy([Step("H1", "a", 1)], {"H1": Node("H1")}, schedule="waves", state_path=str(state),
           environment="prod")
    data = json.loads(state.read_text())
    assert (data["schema"], data["task"], data["environment"]) == (1, "deploy", "prod")
    assert [(s["host"], s["component"], s["status"], s["error"]) for s in data["steps"]] == [
        ("H1", "a", "changed", "")]


def write_state(path, records):
    path.write_text(json.dumps({"schema": 1, "task": "deploy", "environment": "",
                                "steps": [r.state_entry() for r in records]}))


# -- resume and the in-flight re-check ------------------------------------------------------
def test_resume_rechecks_only_the_step_that_was_in_flight_and_runs_it_again(tmp_path):
    state = tmp_path / "state.json"
    write_state(state, [StepRecord("H1", "a", 1, status="running"),
                        StepRecord("H2", "b", 1, status="failed", error="puppet exit 6")])
    hosts = {"H1": Node("H1", lock_polls=2, summary="---\nversion: 1\n"), "H2": Node("H2")}
    result = by_id(deploy([Step("H1", "a", 1), Step("H2", "b", 1)], hosts, schedule="waves", resume=True,
                          state_path=str(state)))
    assert hosts["H1"].looked == ["lock", "summary"] * 3  # held, held, free: waited for the run to end
    assert hosts["H2"].looked == []  # a step that merely failed before is not re-checked
    assert tags_run(hosts["H1"]) == [["a"]] and tags_run(hosts["H2"]) == [["b"]]
    assert result["H1/a"].status == "changed" and result["H2/b"].status == "changed"
    assert result["H1/a"].details == [
        "was in flight when the controller stopped; re-checked on the host: run lock free, "
        "last_run_summary.yaml read; Puppet run again for it"]
    assert result["H2/b"].details == []


def test_the_recheck_note_says_when_the_lock_was_still_held_and_no_summary_was_there(tmp_path):
    state = tmp_path / "state.json"
    write_state(state, [StepRecord("H1", "a", 1, status="running")])
    node = Node("H1", lock_polls=10 ** 6)
    result = by_id(deploy([Step("H1", "a", 1, timeout=0.05), Step("H1", "b", 1, timeout=0.05)], {"H1": node},
                          schedule="waves", resume=True, state_path=str(state)))
    assert tags_run(node) == [["a", "b"]]
    assert result["H1/a"].details == [
        "was in flight when the controller stopped; re-checked on the host: run lock still held, "
        "no last_run_summary.yaml; Puppet run again for it", "one Puppet run with b"]
    assert result["H1/b"].details == ["one Puppet run with a"]  # b was not in flight: no re-check note


def test_cancelling_ends_the_wait_for_a_held_run_lock(tmp_path):
    state = tmp_path / "state.json"
    write_state(state, [StepRecord("H1", "a", 1, status="running")])
    node = Node("H1")
    node.release_lock = threading.Event()  # held until the test ends
    deployment = Deployment([Step("H1", "a", 1, timeout=60)], lambda h: node, release=lambda t: None,
                            resume=True, state_path=str(state), handle_signals=False, retries=0, idle_poll=0.01)
    results = []
    runner = threading.Thread(target=lambda: results.append(deployment.run()), daemon=True)
    runner.start()
    for _ in range(500):  # until the wait has polled the held lock twice
        if len(node.looked) >= 4:
            break
        threading.Event().wait(0.01)
    assert node.looked[:4] == ["lock", "summary"] * 2 and node.runs == []
    deployment.cancel("test")
    runner.join(20)  # the lock is held for 60 s: only the cancel hook can end the wait before
    node.release_lock.set()
    assert results and results[0].cancelled == "test"


# -- signals ---------------------------------------------------------------------------------
def test_sigint_during_a_deploy_cancels_it_and_the_previous_handler_is_put_back():
    seen = []

    def before(signum, frame):
        seen.append(signum)

    class Interrupting(Node):
        def change_argv(self, argv, check=False, timeout=None):
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(0.2)  # the main thread runs the handler meanwhile
            return super().change_argv(argv, check, timeout)

    old = signal.signal(signal.SIGINT, before)
    try:
        assert deploy(TWO_GROUPS[:1], {"H1": Node("H1")}, schedule="waves", handle_signals=True).ok
        assert signal.getsignal(signal.SIGINT) is before  # a deploy without a signal puts it back too
        result = deploy(TWO_GROUPS[:1] + TWO_GROUPS[2:3], {"H1": Interrupting("H1")}, schedule="waves",
                        handle_signals=True)
        assert result.cancelled == "SIGINT"
        assert by_id(result)["H1/x"].status == "skipped"
        assert by_id(result)["H1/x"].error == "not started: the deploy was cancelled (SIGINT)"
        assert signal.getsignal(signal.SIGINT) is before
        assert seen == []
    finally:
        signal.signal(signal.SIGINT, old)


# -- what listeners (the progress display, the reports) hear --------------------------------
def test_listeners_hear_each_step_by_component_and_a_failure_with_puppets_output():
    events = []
    hosts = {"H1": Node("H1", fail={"b"})}
    deploy([Step("H1", "a", 1), Step("H1", "b", 1)], hosts, schedule="waves", continue_on_error=True,
           listeners=[events.append])
    finished = {e.name: e.result for e in events if e.kind == "finished"}
    assert set(finished) == {"a", "b"}
    assert finished["a"].status == "changed"
    assert finished["b"].status == "failed"
    assert "Product::Component[b]/Exec[x]: broke" in finished["b"].error_output


# -- a run that outlives the grace period after a cancel -------------------------------------
def test_a_run_still_going_after_the_grace_period_stays_running_in_the_state_file(tmp_path):
    gate = threading.Event()

    class Stuck(Node):
        def change_argv(self, argv, check=False, timeout=None):
            gate.wait(30)
            return super().change_argv(argv, check, timeout)

    state = tmp_path / "state.json"
    deployment = Deployment([Step("H1", "a", 1)], lambda h: Stuck("H1"), release=lambda t: None,
                            state_path=str(state), handle_signals=False, retries=0, grace=0.1)
    threading.Timer(0.2, deployment.cancel, ("test",)).start()
    try:
        result = deployment.run()
    finally:
        gate.set()
    record = by_id(result)["H1/a"]
    assert result.cancelled == "test"
    assert record.status == "running"  # a resume re-checks the host before running it again
    assert "still running" in record.error
    saved = json.loads(state.read_text())["steps"][0]
    assert saved["status"] == "running" and "still running" in saved["error"]


# -- retries, an interrupt inside a step, the counts and the dry run's batches ---------------
def test_an_unreachable_host_is_retried_after_the_backoff_and_then_deployed():
    class Flaky(Node):
        def change_argv(self, argv, check=False, timeout=None):
            if not self.looked:
                self.looked.append("refused")
                raise HostUnreachable("H1", "connection refused")
            return super().change_argv(argv, check, timeout)

    node = Flaky("H1")
    result = deploy([Step("H1", "a", 1)], {"H1": node}, schedule="waves", retries=1, backoff=0.01, backoff_max=0.01)
    assert result.ok and tags_run(node) == [["a"]]
    assert by_id(result)["H1/a"].attempts == 2


def test_an_interrupt_inside_a_step_cancels_the_deploy_and_says_so():
    class Interrupted(Node):
        def change_argv(self, argv, check=False, timeout=None):
            raise KeyboardInterrupt()

    result = deploy(TWO_GROUPS[:1] + TWO_GROUPS[2:3], {"H1": Interrupted("H1")}, schedule="waves")
    assert result.cancelled == "KeyboardInterrupt" and not result.ok
    assert by_id(result)["H1/x"].error == "not started: the deploy was cancelled (KeyboardInterrupt)"


def test_the_counts_and_the_dry_runs_batches():
    from deploy_tasks.runner.deploy import batches_by_group

    result = deploy(TWO_GROUPS, {"H1": Node("H1", fail={"a"}), "H2": Node("H2")}, schedule="waves",
                    continue_on_error=True)
    assert result.counts() == {"failed": 1, "changed": 2, "skipped": 1}
    steps = TWO_GROUPS + [Step("H1", "w", 2)]
    assert batches_by_group(steps) == [(1, "H1", ["a"]), (1, "H2", ["b"]), (2, "H1", ["x", "w"]), (2, "H2", ["y"])]
