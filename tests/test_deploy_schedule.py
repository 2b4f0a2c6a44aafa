"""The deploy scheduler without a fleet: batches per host and group, dag vs waves, the state file's writes.

A stand-in transport answers Puppet runs after a chosen delay per host (the
timing-model fleet in tests/test_deploy.py covers the real WinRM path).
"""

from __future__ import annotations

import json
import threading
import time

from deploy_tasks.runner.deploy import Deployment, Step
from deploy_tasks.transports.base import Result


class Host:
    """Answers ``puppet agent --test --tags ...`` after ``delay`` seconds; records each run."""

    def __init__(self, name, delay=0.0, fail=()):
        self.name = name
        self.delay = delay
        self.fail = set(fail)
        self.runs = []  # (start, end, tags)
        self.busy = threading.Lock()

    def change_argv(self, argv, check=False, timeout=None):
        assert self.busy.acquire(blocking=False), f"{self.name}: two Puppet runs at once"
        try:
            tags = argv[argv.index("--tags") + 1].split(",")
            start = time.monotonic()
            time.sleep(self.delay)
            bad = [t for t in tags if t in self.fail]
            self.runs.append((start, time.monotonic(), tags))
            lines = [f"Error: /Stage[main]/Main/Product::Component[{t}]/Exec[x]: broke" for t in bad]
            return Result(" ".join(argv), 6 if bad else 2, "Notice: Applied catalog\n" + "\n".join(lines), "")
        finally:
            self.busy.release()


def fleet(**delays):
    return {name: Host(name, delay) for name, delay in delays.items()}


# H3's group-2 steps depend on steps of two other hosts that end at different times
STEPS = [Step("H1", "a", 1), Step("H2", "b", 1), Step("H3", "c", 1),
         Step("H3", "x", 2, ("H1/a",)), Step("H3", "y", 2, ("H2/b",)), Step("H1", "z", 2, ("H1/a",))]


def deploy(hosts, schedule, **kw):
    kw.setdefault("handle_signals", False)
    kw.setdefault("retries", 0)
    return Deployment(STEPS, lambda h: hosts[h], release=lambda t: None, schedule=schedule, max_parallel=10,
                      **kw).run()


def test_dag_runs_a_host_s_group_once_when_its_dependencies_end_at_different_times():
    hosts = fleet(H1=0.01, H2=0.25, H3=0.01)
    result = deploy(hosts, "dag")
    assert result.ok
    assert [r[2] for r in hosts["H3"].runs] == [["c"], ["x", "y"]]  # not x alone, then y: one run per group
    # ... and H1's group 2 did not wait for H2's slow group 1 (no barrier between groups)
    h1_group2_start = hosts["H1"].runs[1][0]
    assert h1_group2_start < hosts["H2"].runs[0][1]


def test_waves_wait_for_the_whole_group_and_make_the_same_batches():
    hosts = fleet(H1=0.01, H2=0.25, H3=0.01)
    result = deploy(hosts, "waves")
    assert result.ok
    assert [r[2] for r in hosts["H3"].runs] == [["c"], ["x", "y"]]
    assert hosts["H1"].runs[1][0] >= hosts["H2"].runs[0][1]  # group 2 starts after all of group 1


def test_dag_with_continue_on_error_still_runs_a_step_whose_own_dependencies_succeeded():
    hosts = fleet(H1=0.01, H2=0.05, H3=0.01)
    hosts["H2"].fail = {"b"}
    result = deploy(hosts, "dag", continue_on_error=True)
    by = {r.id: r for r in result.steps}
    assert by["H2/b"].status == "failed"
    assert by["H3/y"].status == "skipped" and "H2/b" in by["H3/y"].error
    assert by["H3/x"].status == "changed" and by["H1/z"].status == "changed"
    assert [r[2] for r in hosts["H3"].runs] == [["c"], ["x"]]  # waited for b to end, then ran without y


def test_the_state_file_holds_each_outcome_and_keeps_output_only_for_failures(tmp_path):
    hosts = fleet(H1=0.01, H2=0.01, H3=0.01)
    hosts["H3"].fail = {"x"}
    state = tmp_path / "state.json"
    result = deploy(hosts, "waves", continue_on_error=True, state_path=str(state))
    data = json.loads(state.read_text())
    saved = {f"{s['host']}/{s['component']}": s for s in data["steps"]}
    assert set(saved) == {s.id for s in STEPS}
    for rec in result.steps:
        assert saved[rec.id]["status"] == rec.status and saved[rec.id]["exit_code"] == rec.exit_code
    assert saved["H3/x"]["status"] == "failed" and any("Product::Component[x]" in line
                                                       for line in saved["H3/x"]["output"])
    assert saved["H1/a"]["status"] == "changed" and saved["H1/a"]["output"] == []
    assert result.steps[0].output  # the reports still get every step's output from the records
