"""The deploy scheduler without a fleet: batches per host and group, dag vs waves, the state file's writes.

A stand-in transport answers Puppet runs after a chosen delay per host (the
timing-model fleet in tests/test_deploy.py covers the real WinRM path).
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import uuid

import pytest

from deploy_tasks.errors import DeployError
from deploy_tasks.redact import add_secret
from deploy_tasks.runner import deploy as deploy_module
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


class Witness(Host):
    """A host that reads the state file as each of its Puppet runs starts."""

    def __init__(self, name, state, seen, delay=0.01):
        super().__init__(name, delay)
        self.state, self.seen = state, seen

    def change_argv(self, argv, check=False, timeout=None):
        data = json.loads(self.state.read_text())
        self.seen.append((self.name, argv[argv.index("--tags") + 1].split(","),
                          {f"{s['host']}/{s['component']}": s["status"] for s in data["steps"]}))
        return super().change_argv(argv, check, timeout)


def test_a_run_starts_only_when_the_state_file_holds_its_mark_and_its_dependencies_outcomes(tmp_path):
    state, seen = tmp_path / "state.json", []
    hosts = {name: Witness(name, state, seen) for name in ("H1", "H2", "H3")}
    for schedule in ("waves", "dag"):
        seen.clear()
        assert deploy(hosts, schedule, state_path=str(state)).ok
        by_id = {s.id: s for s in STEPS}
        assert sorted(c for _, tags, _ in seen for c in tags) == sorted(s.component for s in STEPS)
        for host, tags, on_disk in seen:
            for c in tags:
                step = by_id[f"{host}/{c}"]
                assert on_disk[step.id] == "running", (schedule, step.id, on_disk)
                for d in step.depends_on:  # ended before this run, written no later than this run's mark
                    assert on_disk[d] == "changed", (schedule, step.id, d, on_disk)
        final = {f"{s['host']}/{s['component']}": s["status"] for s in json.loads(state.read_text())["steps"]}
        assert set(final.values()) == {"changed"}


def test_runs_that_start_and_end_together_share_the_state_file_s_writes(tmp_path, monkeypatch):
    writes = []
    real = deploy_module._write_atomic

    def slow(path, text):  # a slow disk: what changes meanwhile rides the next write
        writes.append(path)
        time.sleep(0.02)
        real(path, text)

    monkeypatch.setattr(deploy_module, "_write_atomic", slow)
    steps = [Step(f"H{i:02d}", "a", 1) for i in range(40)]
    hosts = {s.host: Host(s.host, 0.05) for s in steps}
    result = Deployment(steps, lambda h: hosts[h], release=lambda t: None, schedule="waves", max_parallel=40,
                        handle_signals=False, retries=0, state_path=str(tmp_path / "state.json")).run()
    assert result.ok and len(hosts["H00"].runs) == 1
    # 40 "running" marks and 40 outcomes: one write carries whatever changed while the previous one
    # was on its way (one write per change would be 80)
    assert 2 <= len(writes) <= 10, len(writes)
    saved = json.loads((tmp_path / "state.json").read_text())["steps"]
    assert {s["status"] for s in saved} == {"changed"} and len(saved) == 40


def test_outcomes_of_runs_that_end_together_share_one_write_even_on_a_fast_disk(tmp_path, monkeypatch):
    outcome_writes = []
    real = deploy_module._write_atomic

    def counted(path, data):
        text = b"".join(data) if isinstance(data, list) else data
        if b'"status": "changed"' in text:  # a write that carries an outcome
            outcome_writes.append(time.monotonic())
        real(path, data)

    monkeypatch.setattr(deploy_module, "_write_atomic", counted)
    # a window far wider than the spread of 40 ends, even on a loaded machine (the deploy's is 50 ms)
    monkeypatch.setattr(deploy_module, "OUTCOME_WINDOW", 0.5)
    steps = [Step(f"H{i:02d}", "a", 1) for i in range(41)]
    hosts = {s.host: Host(s.host, 0.3) for s in steps}  # started together, 40 end within a few ms ...
    hosts["H40"].delay = 2.0  # ... and one later (the deploy's own last write comes after it)
    result = Deployment(steps, lambda h: hosts[h], release=lambda t: None, schedule="waves", max_parallel=41,
                        handle_signals=False, retries=0, state_path=str(tmp_path / "state.json")).run()
    assert result.ok
    ends = sorted(h.runs[0][1] for h in hosts.values())[:40]
    assert ends[-1] - ends[0] < deploy_module.OUTCOME_WINDOW, "the runs did not end together; nothing to share"
    # the 40 outcomes: the first waits OUTCOME_WINDOW for the others and they share its write (without the
    # window, measured: 19-25 writes)
    together = [t for t in outcome_writes if t < hosts["H40"].runs[0][1]]
    assert len(together) == 1, len(together)
    assert together[0] - ends[0] >= deploy_module.OUTCOME_WINDOW * 0.9
    saved = json.loads((tmp_path / "state.json").read_text())["steps"]
    assert {s["status"] for s in saved} == {"changed"}


@pytest.mark.parametrize("form", ["pieces", "bytes", "str"])
@pytest.mark.parametrize("short", [False, True])
def test_the_state_file_is_written_byte_for_byte(tmp_path, monkeypatch, short, form):
    from deploy_tasks.runner import state as state_module

    chunks = [b'{"steps": [\n '] + [f'{{"n": {i}}}'.encode() + b",\n " for i in range(2999)] + [b"", b"\n]}\n"]
    whole = b"".join(chunks)
    if short:  # the kernel may write less than asked (a signal, a nearly full disk): the rest follows
        monkeypatch.setattr(state_module.os, "writev", lambda fd, bufs: os.write(fd, b"".join(bufs)[:37]))
        real_write = os.write
        monkeypatch.setattr(state_module.os, "write", lambda fd, data: real_write(fd, bytes(data)[:1000]))
    path = tmp_path / "state.json"
    state_module._write_atomic(str(path), {"pieces": chunks, "bytes": whole, "str": whole.decode()}[form])
    assert path.read_bytes() == whole
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize("form", ["pieces", "bytes", "str"])
def test_a_state_file_write_that_comes_up_short_fails_and_keeps_the_file_it_would_replace(tmp_path, monkeypatch,
                                                                                          form):
    from deploy_tasks.runner import state as state_module

    path = tmp_path / "state.json"
    path.write_text('{"steps": []}\n')

    def full(fd, data):  # the disk fills after 100 bytes
        raise OSError(errno.ENOSPC, "No space left on device")

    real_write = os.write  # (state_module.os is os: patched below for everyone)
    monkeypatch.setattr(state_module.os, "writev", lambda fd, bufs: real_write(fd, b"".join(bufs)[:100]))
    monkeypatch.setattr(state_module.os, "write", full)
    data = [b"x" * 5000, b"y" * 5000]
    with pytest.raises(OSError, match="No space left"):
        state_module._write_atomic(str(path), {"pieces": data, "bytes": b"".join(data), "str": "x" * 10000}[form])
    assert path.read_text() == '{"steps": []}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_state_file_that_cannot_be_written_stops_the_deploy_before_any_run(tmp_path, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(deploy_module, "_write_atomic", full)
    hosts = fleet(H1=0.01, H2=0.01, H3=0.01)
    with pytest.raises(DeployError, match=r"the state file .*state.json cannot be written \(.*No space left"):
        deploy(hosts, "waves", state_path=str(tmp_path / "state.json"))
    assert not any(h.runs for h in hosts.values())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["serialised", "copied"])
def test_a_record_the_writer_cannot_take_stops_the_deploy_and_wakes_every_waiting_run(tmp_path, monkeypatch, where):
    # the writer copies a changed record under the lock, serialises it outside and wakes only the runs whose
    # change it wrote: a failure in either (a bug) must still reach every run waiting for its mark, not
    # leave them waiting for ever
    if where == "serialised":
        real = deploy_module.json.dumps

        def dumps(obj, *a, **kw):
            if isinstance(obj, dict) and obj.get("status") == "running":
                raise TypeError("Object of type X is not JSON serializable")
            return real(obj, *a, **kw)

        monkeypatch.setattr(deploy_module.json, "dumps", dumps)
        said = "not JSON serializable"
    else:
        def state_entry(self):
            raise RecursionError("the record cannot be copied")

        monkeypatch.setattr(deploy_module.StepRecord, "state_entry", state_entry)
        said = "cannot be copied"
    hosts = fleet(H1=0.01, H2=0.01, H3=0.01)
    with pytest.raises(DeployError, match=rf"the state file .*state.json cannot be written \(.*{said}"):
        deploy(hosts, "waves", state_path=str(tmp_path / "state.json"))
    assert not any(h.runs for h in hosts.values())


@pytest.mark.timeout(60)
def test_a_change_made_as_the_idle_writer_leaves_is_still_written(tmp_path, monkeypatch):
    # The writer leaves after IDLE_WRITER seconds with nothing to write. A run that marks a change between
    # the writer's timed-out wait and its taking the lock back sees the writer alive (so starts none) and
    # waits: the writer must see that change before it leaves (the old loop left, and the run waited for ever).
    monkeypatch.setattr(deploy_module, "IDLE_WRITER", 0.2)
    d = Deployment([], connect=None, state_path=str(tmp_path / "state.json"), handle_signals=False)
    d._merged = {}

    class Preempted(threading.Condition):  # the writer preempted after its wait timed out, before the lock
        late = None

        def wait(self, timeout=None):
            woke = super().wait(timeout)
            if not woke and Preempted.late is not None:
                late, Preempted.late = Preempted.late, None
                saved = self._release_save()
                late()
                time.sleep(0.2)
                self._acquire_restore(saved)
            return woke

    d._wake = Preempted(d._lock)

    def change_and_flush():
        with d._lock:
            d._save()
        d._flush()

    change_and_flush()  # the first write; the writer then idles
    runs = []

    def late():
        runs.append(threading.Thread(target=change_and_flush, daemon=True))
        runs[0].start()

    Preempted.late = late
    deadline = time.monotonic() + 5
    while not runs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runs, "the writer never idled out"
    runs[0].join(5)
    assert not runs[0].is_alive(), "the run waits for a write that never comes"
    assert d._written == d._generation


def test_a_secret_registered_mid_run_is_redacted_from_records_written_before_it(tmp_path):
    secret = f"pw-{uuid.uuid4().hex}"

    class Leaky(Host):  # its run fails and prints the secret (group 1)
        def change_argv(self, argv, check=False, timeout=None):
            result = super().change_argv(argv, check, timeout)
            return Result(result.command, 6, f"Error: /Stage[main]/Main/Product::Component[a]/Exec[x]: {secret}\n", "")

    class Learns(Host):  # learns that it is a secret (group 2), after the failure was written
        def change_argv(self, argv, check=False, timeout=None):
            assert secret in state.read_text()  # written before anyone knew
            add_secret(secret)
            return super().change_argv(argv, check, timeout)

    state = tmp_path / "state.json"
    steps = [Step("H1", "a", 1), Step("H2", "b", 2)]
    hosts = {"H1": Leaky("H1"), "H2": Learns("H2")}
    result = Deployment(steps, lambda h: hosts[h], release=lambda t: None, schedule="waves", max_parallel=2,
                        handle_signals=False, retries=0, continue_on_error=True, state_path=str(state)).run()
    assert [r.status for r in result.steps] == ["failed", "changed"]
    text = state.read_text()
    assert secret not in text and "********" in text
    assert json.loads(text)["steps"][0]["status"] == "failed"
