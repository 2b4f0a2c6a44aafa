"""Scheduling a deploy: (host, component) steps, one Puppet run per host per batch, waves or the DAG, resumable.

A step is (host, component); it depends on every step of each component it
depends on, on any host. Each step is a runner ``Unit`` (so per-host
serialization, ``max_parallel``, retries with backoff, cancellation and
events are the runner's). When a step's unit starts, it takes with it every
other step of the same host and group whose dependencies have all succeeded
into ONE Puppet run; the units of the
steps it took along then just report the outcome already recorded (the runner
never runs two units of a host at once, so that run has finished by then).

Schedules:

* ``waves`` (the default): group k starts when every step of group k-1 has
  ended; without ``continue_on_error`` it starts only when all of them
  succeeded, else nothing more starts and the rest is reported skipped.
* ``dag``: no barrier between groups: a host's run for group k starts as
  soon as the dependencies of all of that host's group-k steps have ended
  (not when all of group k-1 has, everywhere); without ``continue_on_error``
  a failure starts nothing new anywhere. Batches are the same as in waves
  (one Puppet run per host per group), each starting no later, so dag is
  never slower than waves. A greedy dag (start whatever is ready, batch what
  is ready with it) was measured slower than waves at 300 hosts: with run
  times jittering, the steps of a group on a host became ready at different
  moments and took several runs, each paying the agent's fixed ~2.5 s.

With ``continue_on_error`` a step runs exactly when all its dependencies
succeeded; the others are ``skipped``, naming the dependency that did not.

The timeout of one Puppet run is the SUM of the timeouts of the components it
carries: one agent run applies them one after another, so a batch of three
900 s components may rightly take 2700 s.

State: ``state_path`` (one JSON file per environment) is replaced atomically
whenever a Puppet run starts (its steps are marked ``running``) and whenever a
step ends, with each step's status, times, exit code and error. Steps that
are not part of this run keep their record. With ``resume`` the steps recorded
as succeeded are not run again. A step recorded as ``running`` was in flight
when the controller died: before it runs again its host is re-checked (the
run lock, ``last_run_summary.yaml``), waiting for a run still going to end,
and Puppet is run for it again (idempotent: it changes only what is missing).

Hooks for the integrator (``None`` = not done): ``preflight(steps)`` runs once
before anything changes and raises a ``DeployError`` listing every problem;
``health_check(transport, host, component)`` runs after a component's Puppet
run succeeded on a host and raises a ``DeployError`` (with the check's output)
to fail that step.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .. import outcome
from ..errors import ConfigError, DeployError
from ..redact import redact, registered
from ..steps.deploy import PuppetRun, puppet_command, run_puppet, wait_until_idle
from .engine import Runner
from . import signals
from .model import Unit, now_iso
from .state import _write_atomic

SCHEDULES = ("waves", "dag")
RUNNING = "running"  # in the state file only: a step whose Puppet run had started and not ended
PENDING = "pending"
OUTPUT_LINES_KEPT = 400
_BETWEEN, _END = b",\n ", b"\n]}\n"  # the state file's records are joined by _BETWEEN; _END closes it
IDLE_WRITER = 2.0  # seconds the state file's writer thread waits for work before it ends (a new one starts on demand)
# seconds an outcome may wait for company before the writer writes it, unless a run is waiting for its mark
# (which is written at once, with every outcome so far): runs that end within this of each other share a write
OUTCOME_WINDOW = 0.05


@dataclass(frozen=True)
class Step:
    """One component on one host, in its dependency group."""

    host: str
    component: str
    group: int
    depends_on: tuple = ()  # ids of steps (host/component) that must succeed first
    timeout: float = 1800.0

    @property
    def id(self) -> str:
        return f"{self.host}/{self.component}"


@dataclass
class StepRecord:
    """What happened to a step (what the state file and the reports hold)."""

    host: str
    component: str
    group: int
    status: str = PENDING
    started: Optional[str] = None
    ended: Optional[str] = None
    seconds: float = 0.0
    exit_code: Optional[int] = None
    attempts: int = 0
    error: str = ""
    details: List[str] = field(default_factory=list)
    output: List[str] = field(default_factory=list)  # the Puppet run's output (its last lines)
    run: str = ""  # the command that carried it

    @property
    def id(self) -> str:
        return f"{self.host}/{self.component}"

    @property
    def ok(self) -> bool:
        return self.status in outcome.SUCCEEDED

    def signature(self) -> tuple:
        """Everything the state file holds of this record (to re-serialise only the records that changed)."""
        return (self.status, self.group, self.started, self.ended, self.seconds, self.exit_code, self.attempts,
                self.error, len(self.details), self.details[-1:], self.run, len(self.output),
                self.output[-1:])

    def state_entry(self) -> Dict[str, Any]:
        """The record as the state file keeps it: Puppet's output only for a step that did not succeed
        (a succeeded step's output is in the host's log; kept for all, the file grows with steps x lines
        and is rewritten after every step)."""
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["details"] = list(self.details)
        data["output"] = [] if self.ok else list(self.output)
        data["seconds"] = round(self.seconds, 3)
        return data


def plan_steps(inventory, plan, *, groups: Optional[Iterable[int]] = None, hosts: Optional[Iterable[str]] = None,
               components: Optional[Iterable[str]] = None, default_timeout: float = 1800.0) -> List[Step]:
    """Every mapped (host, component) of ``plan`` in group then workbook order, narrowed as asked.

    Names are matched case-insensitively; an unknown host or component is a ``ConfigError``
    naming it and the known ones.
    """
    all_steps: List[Step] = []
    hosts_of = {}
    for wave in plan.waves:
        for comp in wave.components:
            hosts_of[comp.name] = comp.hosts
    for wave in plan.waves:
        for comp in wave.components:
            timeout = float(inventory.component(comp.name).timeout_s or default_timeout)
            deps = tuple(f"{h}/{d}" for d in comp.depends_on for h in hosts_of.get(d, ()))
            for host in comp.hosts:
                all_steps.append(Step(host, comp.name, wave.group, deps, timeout))
    wanted_hosts = _match("--hosts", hosts, sorted({s.host for s in all_steps}))
    wanted_comps = _match("--components", components, list(hosts_of))
    wanted_groups = set(groups) if groups is not None else None
    if wanted_groups is not None:
        for g in wanted_groups:
            plan.wave(g)  # a ConfigError naming the groups there are
    return [s for s in all_steps
            if (wanted_groups is None or s.group in wanted_groups)
            and (wanted_hosts is None or s.host in wanted_hosts)
            and (wanted_comps is None or s.component in wanted_comps)]


def _match(flag: str, names: Optional[Iterable[str]], known: Sequence[str]) -> Optional[set]:
    if names is None:
        return None
    by_lower = {k.lower(): k for k in known}
    chosen, unknown = set(), []
    for name in names:
        if name.lower() in by_lower:
            chosen.add(by_lower[name.lower()])
        else:
            unknown.append(name)
    if unknown:
        raise ConfigError(f"{flag}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def batches_by_group(steps: Sequence[Step]) -> List[tuple]:
    """(group, host, [components]) in order: the Puppet runs the waves schedule makes."""
    out: Dict[tuple, List[str]] = {}
    for s in steps:
        out.setdefault((s.group, s.host), []).append(s.component)
    return [(g, h, comps) for (g, h), comps in out.items()]


# -- the state file ----------------------------------------------------------------------
def load_state(path: str) -> Dict[str, StepRecord]:
    """The step records of a state file ({} when there is none yet)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        fields = set(StepRecord.__dataclass_fields__)
        return {f"{r['host']}/{r['component']}": StepRecord(**{k: v for k, v in r.items() if k in fields})
                for r in data.get("steps", [])}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"the deploy state file {path} cannot be read ({exc}): move it away to start afresh") from None


class StepFailedHere(DeployError):
    """A step's Puppet run (or its health check) failed; carries Puppet's output."""

    def __init__(self, record: StepRecord, output: str = ""):
        self.output = output
        super().__init__(f"{record.host}: {record.component} failed: {record.error}")


@dataclass
class DeployResult:
    """Every selected step's record, in plan order, and how the run ended."""

    steps: List[StepRecord]
    started: str
    ended: str
    seconds: float
    schedule: str
    dry_run: bool = False
    cancelled: Optional[str] = None

    @property
    def ok(self) -> bool:
        return not self.cancelled and all(r.ok for r in self.steps)

    @property
    def failed(self) -> List[StepRecord]:
        return [r for r in self.steps if r.status == outcome.FAILED]

    def counts(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for r in self.steps:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts


def _close(transport) -> None:
    close = getattr(transport, "close", None)
    if close is not None:
        close()


class Deployment:
    """Runs deploy steps on Windows hosts (see the module docstring).

    ``connect(host)`` returns a transport for the host; ``release(transport)``
    is called after each Puppet run (default: close it, so a host never has
    more than one shell of ours open). A caller that keeps one transport per
    host for the whole run (``WinRMPool.borrow``) passes a release that keeps it.
    """

    def __init__(self, steps: Sequence[Step], connect: Callable[[str], Any], *, schedule: str = "waves",
                 continue_on_error: bool = False, resume: bool = False, state_path: Optional[str] = None,
                 max_parallel: int = 10, retries: int = 2, backoff: float = 2.0, backoff_max: float = 60.0,
                 grace: float = 300.0, listeners: Iterable[Callable] = (), classes: Optional[Dict[str, str]] = None,
                 preflight: Optional[Callable[[List[Step]], None]] = None,
                 health_check: Optional[Callable[[Any, str, str], None]] = None,
                 environment: str = "", handle_signals: bool = True, idle_poll: float = 2.0,
                 warn: Optional[Callable[[str], None]] = None,
                 release: Optional[Callable[[Any], None]] = None):
        if schedule not in SCHEDULES:
            raise ConfigError(f"--schedule {schedule}: choose {' or '.join(SCHEDULES)}")
        self.steps = list(steps)
        self.connect = connect
        self.release = release or _close
        self.schedule = schedule
        self.continue_on_error = continue_on_error
        self.resume = resume
        self.state_path = state_path
        self.runner_options = dict(max_parallel=max_parallel, retries=retries, backoff=backoff,
                                   backoff_max=backoff_max, grace=grace)
        self.listeners = list(listeners)
        self.classes = dict(classes or {})
        self.preflight = preflight
        self.health_check = health_check
        self.environment = environment
        self.handle_signals = handle_signals
        self.idle_poll = idle_poll
        self.warn = warn
        self._lock = threading.RLock()
        self._by_id = {s.id: s for s in self.steps}
        self._index = {s.id: i for i, s in enumerate(self.steps)}
        self._of_host: Dict[str, List[Step]] = {}
        for s in self.steps:
            self._of_host.setdefault(s.host, []).append(s)
        self._mine = threading.local()  # .generation: the calling thread's last change (see _flush)
        self._wake = threading.Condition(self._lock)  # the writer: something changed
        # threads waiting for a write: (the generation they need on disk, their event); each is woken by the
        # write that carries its change, and only then (a wave's 300 runs wait at once: a wake-all after
        # every write had them all take the lock again, in turn, while other runs waited to mark theirs)
        self._waiters: List[Tuple[int, threading.Event]] = []
        self._writer: Optional[threading.Thread] = None
        self._gathering = False  # the writer is in an outcome's window (OUTCOME_WINDOW)
        self._write_error: Optional[BaseException] = None
        self._generation = 0  # changes to the records so far
        self._written = -1  # the generation the state file holds
        self._fragments: Dict[str, tuple] = {}  # step id -> (signature, its redacted JSON in UTF-8) as last written
        self._redacted_for: frozenset = frozenset()  # the secrets registered when the fragments were redacted
        self._dirty: Optional[set] = None  # ids changed since the last write (None: look at every record)
        self._not_ok: set = set()  # ids of steps this run recorded as failed or skipped
        self._merged: Dict[str, StepRecord] = {}  # what the state file holds: records of other runs, then ours
        self._state: Dict[str, StepRecord] = {}
        self.records: Dict[str, StepRecord] = {}
        self._settled: set = set()  # steps whose outcome this run decided
        self._in_flight_before: set = set()
        self._runner: Optional[Runner] = None
        self._runners: Dict[str, Runner] = {}
        self._cancelled: Optional[str] = None

    # -- public ---------------------------------------------------------------------------
    def cancel(self, reason: str = "cancel") -> None:
        """Start nothing new; running Puppet runs get the grace period (what SIGINT/SIGTERM do)."""
        with self._lock:
            if self._cancelled is None:
                self._cancelled = reason
            runner = self._runner
        if runner is not None:
            runner.cancel(reason)

    def run(self) -> DeployResult:
        started, clock = now_iso(), time.monotonic()
        self._state = load_state(self.state_path) if self.state_path else {}
        todo: List[Step] = []
        for s in self.steps:
            before = self._state.get(s.id)
            if self.resume and before is not None and before.ok and before.status != outcome.WOULD_CHANGE:
                rec = before
                rec.group = s.group
                if "done in a previous run; not run again" not in rec.details:
                    rec.details.append("done in a previous run; not run again")
                self._settled.add(s.id)
            else:
                if before is not None and before.status == RUNNING:
                    self._in_flight_before.add(s.id)
                rec = StepRecord(s.host, s.component, s.group)
                todo.append(s)
            self.records[s.id] = rec
        self._merged = dict(self._state)
        self._merged.update(self.records)
        self._warn_outside(todo)
        if self.preflight is not None and todo:
            self.preflight(todo)
        previous = signals.install(self.cancel, self.handle_signals)
        try:
            if self.schedule == "waves":
                self._waves(todo)
            else:
                self._run_units(todo, on_failure="dependents" if self.continue_on_error else "run", dag=True)
        finally:
            signals.restore(previous)
            with self._lock:
                for s in todo:
                    rec = self.records[s.id]
                    if rec.status == PENDING:
                        self._finish(rec, outcome.SKIPPED, self._why_not_started(s))
                self._save()
            self._flush()
        return DeployResult([self.records[s.id] for s in self.steps], started, now_iso(),
                            time.monotonic() - clock, self.schedule, cancelled=self._cancelled)

    def _warn_outside(self, todo: List[Step]) -> None:
        """A narrowed run (--group, --hosts) does not wait for dependencies outside it: say which are not done."""
        missing = sorted({d for s in todo for d in s.depends_on
                          if d not in self.records and not (d in self._state and self._state[d].ok)})
        if missing and self.warn is not None:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            self.warn(f"{len(missing)} dependency step(s) outside this run are not recorded as succeeded in the "
                      f"state file ({shown}); deploy their groups first unless they are in place")

    # -- schedules ------------------------------------------------------------------------
    def _waves(self, todo: List[Step]) -> None:
        for group in sorted({s.group for s in todo}):
            if self._cancelled:
                return
            earlier = [r for r in self.records.values() if r.group < group]
            bad = [r for r in earlier if r.status == outcome.FAILED or (r.status == outcome.SKIPPED)]
            if bad and not self.continue_on_error:
                return  # group k starts only when every step of group k-1 succeeded
            runnable = []
            for s in (s for s in todo if s.group == group):
                blocker = self._failed_dependency(s)
                if blocker:
                    with self._lock:
                        self._finish(self.records[s.id], outcome.SKIPPED, blocker)
                        self._save([self.records[s.id]])
                else:
                    runnable.append(s)
            self._flush()
            self._run_units(runnable, on_failure="dependents", dag=False)

    def _run_units(self, steps: List[Step], on_failure: str, dag: bool) -> None:
        if not steps:
            return
        ids = {s.id for s in steps}
        # dag: the first step of a host's group (its leader) waits for the dependencies of all of the
        # group's steps there, the others for the leader: its run carries them (one ordering edge each,
        # not the group's dependencies again: at 300 hosts a step has ~150)
        waits: Dict[tuple, set] = {}  # (host, group) -> the dependencies of all its steps
        leader: Dict[tuple, str] = {}
        for s in steps if dag else ():
            waits.setdefault((s.host, s.group), set()).update(d for d in s.depends_on if d in ids)
            leader.setdefault((s.host, s.group), s.id)

        def after(s: Step) -> tuple:
            first = leader[(s.host, s.group)]
            if first != s.id:
                return (first,)
            return tuple(sorted(waits[(s.host, s.group)] - set(s.depends_on)))

        units = [Unit(s.host, s.component, self._unit_fn(s, dag), key=s.id,
                      depends_on=tuple(d for d in s.depends_on if d in ids) if dag else (),
                      after=after(s) if dag else ())
                 for s in steps]  # (waves: no edges, the barrier is between run_units calls)
        runner = self._runner_for(on_failure)
        with self._lock:
            self._runner = runner
            if self._cancelled:
                runner.cancel(self._cancelled)
        result = runner.run(units)
        with self._lock:
            self._runner = None
            if result.cancelled and not self._cancelled:
                self._cancelled = result.cancelled
            for unit in result.units:
                rec = self.records[unit.id]
                if rec.status == PENDING and unit.status == outcome.FAILED:  # retries ran out
                    self._finish(rec, outcome.FAILED, unit.error or "failed")
                elif rec.status == PENDING and unit.status == outcome.SKIPPED:  # cancelled, a dependency failed
                    self._finish(rec, outcome.SKIPPED, unit.error or "not started")
                elif rec.status == RUNNING and unit.status == outcome.FAILED:
                    # abandoned after the grace period: the state keeps "running" so a resume re-checks it
                    rec.error = unit.error or "outcome unknown"
            self._save()
        self._flush()

    def _runner_for(self, on_failure: str) -> Runner:
        """One runner per policy for the whole deployment: its worker threads serve every group."""
        runner = self._runners.get(on_failure)
        if runner is None:
            runner = self._runners[on_failure] = Runner("deploy", on_failure=on_failure, listeners=self.listeners,
                                                        handle_signals=False, **self.runner_options)
        return runner

    # -- one unit -------------------------------------------------------------------------
    def _unit_fn(self, step: Step, dag: bool):
        def fn(ctx):
            with self._lock:
                rec = self.records[step.id]
                if step.id in self._settled:  # carried by an earlier run on this host
                    return self._answer(rec)
                batch = [step] + [o for o in self._of_host[step.host] if o.id != step.id and self._ready(o, step, dag)]
                batch.sort(key=lambda s: self._index[s.id])
                now = now_iso()
                command = puppet_command([x.component for x in batch])
                for s in batch:
                    r = self.records[s.id]
                    r.status, r.started, r.ended, r.attempts = RUNNING, now, None, ctx.attempt
                    r.run = command
                    self._settled.add(s.id)
                self._save([self.records[s.id] for s in batch])
            self._flush()  # on disk before Puppet starts: a resume after a crash re-checks these steps
            try:
                run = self._puppet(ctx, step.host, batch)
            except BaseException as exc:
                with self._lock:
                    retry = bool(getattr(exc, "retryable", False)) and not self._cancelled
                    for s in batch:
                        r = self.records[s.id]
                        if retry:  # the runner tries again: this batch is gathered afresh then
                            self._settled.discard(s.id)
                            r.status, r.started = PENDING, None
                        else:
                            self._finish(r, outcome.FAILED, redact(str(exc)))
                    self._save([self.records[s.id] for s in batch])
                self._flush()
                raise
            self._flush(wait=False)  # written with the next write (a dependent's run waits for its own mark)
            with self._lock:
                return self._answer(self.records[step.id], run)

        return fn

    def _ready(self, other: Step, leader: Step, dag: bool) -> bool:
        """Whether ``other`` may join ``leader``'s Puppet run now."""
        if other.id in self._settled or self.records[other.id].status != PENDING or self._cancelled:
            return False
        if other.group != leader.group:
            return False  # one run per host per group, in both schedules (the module docstring says why)
        return all(self.records[d].ok for d in other.depends_on if d in self.records)

    def _answer(self, rec: StepRecord, run: Optional[PuppetRun] = None):
        if rec.status == outcome.FAILED:
            raise StepFailedHere(rec, "\n".join(rec.output))
        if rec.status == outcome.SKIPPED:
            return outcome.SKIPPED
        return rec.status

    def _puppet(self, ctx, host: str, batch: List[Step]) -> PuppetRun:
        transport = self.connect(host)
        try:
            if any(s.id in self._in_flight_before for s in batch):
                state = wait_until_idle(transport, max(s.timeout for s in batch), poll=self.idle_poll,
                                        cancelled=lambda: ctx.cancelled)
                note = ("was in flight when the controller stopped; re-checked on the host: run lock "
                        + ("still held" if state["running"] == "yes" else "free")
                        + (", last_run_summary.yaml read" if state["last_run_summary"] else
                           ", no last_run_summary.yaml") + "; Puppet run again for it")
                ctx.output(note)
                with self._lock:
                    for s in batch:
                        if s.id in self._in_flight_before:
                            self.records[s.id].details.append(note)
            timeout = sum(s.timeout for s in batch)
            run = run_puppet(transport, [s.component for s in batch], timeout=timeout, classes=self.classes,
                             output=ctx.output)
            checks: Dict[str, str] = {}
            if self.health_check is not None:
                for s in batch:
                    got = run.outcomes.get(s.component)
                    if got is not None and got.status in outcome.SUCCEEDED:
                        try:
                            self.health_check(transport, host, s.component)
                        except DeployError as exc:
                            checks[s.component] = f"health check failed: {exc}"
        finally:
            self.release(transport)
        with self._lock:
            ended = now_iso()
            lines = run.output.splitlines()[-OUTPUT_LINES_KEPT:]
            for s in batch:
                rec = self.records[s.id]
                got = run.outcomes[s.component]
                rec.exit_code = run.exit_code
                rec.seconds = run.seconds
                rec.output = lines
                if len(batch) > 1:
                    rec.details.append(f"one Puppet run with {', '.join(x.component for x in batch if x is not s)}")
                if s.component in checks:
                    self._finish(rec, outcome.FAILED, checks[s.component], ended)
                elif got.status == outcome.FAILED:
                    self._finish(rec, outcome.FAILED, f"puppet exit {run.exit_code}: {got.error}", ended)
                else:
                    self._finish(rec, got.status, "", ended)
            self._save([self.records[s.id] for s in batch])
        return run

    # -- records --------------------------------------------------------------------------
    def _finish(self, rec: StepRecord, status: str, error: str = "", ended: Optional[str] = None) -> None:
        if self._dirty is not None:
            self._dirty.add(rec.id)
        if status not in outcome.SUCCEEDED:
            self._not_ok.add(rec.id)
        rec.status = status
        rec.error = redact(error)
        rec.ended = ended or now_iso()

    def _failed_dependency(self, step: Step) -> str:
        if not self._not_ok:
            return ""  # nothing has failed or been skipped: no need to look at every dependency
        for d in step.depends_on:
            rec = self.records.get(d)
            if rec is not None and not rec.ok:
                return f"not started: its dependency {d} {rec.status}"
        return ""

    def _why_not_started(self, step: Step) -> str:
        if self._cancelled:
            return f"not started: the deploy was cancelled ({self._cancelled})"
        failed = [r for r in self.records.values() if r.status == outcome.FAILED and r.group < step.group]
        if failed and self.schedule == "waves" and not self.continue_on_error:
            return f"not started: group {failed[0].group} did not succeed ({failed[0].id} failed)"
        return self._failed_dependency(step) or "not started"

    def _save(self, records: Optional[Iterable[StepRecord]] = None) -> None:
        """Note that ``records`` (default: any record) changed, under ``self._lock``; ``_flush`` writes them."""
        self._generation += 1
        self._mine.generation = self._generation  # this thread's last change: its _flush waits for no later one
        if records is None:
            self._dirty = None
        elif self._dirty is not None:
            self._dirty.update(r.id for r in records)

    def _flush(self, wait: bool = True) -> None:
        """Have every record as it is now written to the state file; with ``wait``, return once the
        calling thread's own last change (``_save``) is on disk.

        Called (outside ``self._lock``) before a Puppet run starts (waiting: the file holds the
        "running" mark before Puppet starts, so a resume after a crash re-checks the step) and after
        a run ends (not waiting: the outcome follows within ``OUTCOME_WINDOW`` and one write, with the
        outcomes of the runs that end meanwhile; a step that starts after it waits for its own mark,
        written at once with every outcome so far). One writer thread replaces the file: when many runs
        start or end at once, one write carries all of their changes (group commit); each record's
        JSON is kept and only the records that changed are serialised again. A write that fails is
        raised to every thread waiting for it, and to the next ``_flush``.
        """
        if not self.state_path:
            return
        mine = getattr(self._mine, "generation", None)
        written = None
        with self._lock:
            target = self._generation if mine is None else mine
            if self._written < target and self._write_error is None:
                if self._writer is None or not self._writer.is_alive():
                    self._writer = threading.Thread(target=self._write_loop, name="deploy-state-writer", daemon=True)
                    self._writer.start()
                if wait or not self._gathering:  # (an outcome for a gathering writer: taken at its window's end)
                    self._wake.notify()
                if wait:
                    written = threading.Event()
                    self._waiters.append((target, written))
        if written is not None:
            written.wait()  # set by the write that carries ``target`` (or by a failed write)
        error = self._write_error  # set once, before the waiters are woken
        if error is not None and (wait or mine is None):
            raise DeployError(f"the state file {self.state_path} cannot be written "
                              f"({error}); nothing after this is recorded: free the disk (or "
                              f"give another file with --state) and run again with --resume")

    def _write_loop(self) -> None:
        """The state file's one writer (see ``_flush``); ends after ``IDLE_WRITER`` seconds with nothing to write.

        Whatever stops it other than that (a write that fails, a record that cannot be copied or
        serialised: a bug) is the state file's error: raised to every run waiting for a write, and to
        the next ``_flush``; a run never waits for a writer that is gone.
        """
        try:
            self._write_until_idle()
        except BaseException as exc:  # noqa: BLE001 - see above
            with self._lock:
                if self._write_error is None:
                    self._write_error = exc
                self._writer, self._gathering = None, False
                woken, self._waiters = self._waiters, []
            for _, event in woken:
                event.set()

    def _write_until_idle(self) -> None:
        while True:
            with self._lock:
                idle_since = time.monotonic()
                while self._written >= self._generation:
                    # leave only after seeing, under the lock, that nothing is left to write: a change made
                    # between a timed-out wait and taking the lock back would otherwise wait for ever
                    left = idle_since + IDLE_WRITER - time.monotonic()
                    if left <= 0:
                        self._writer = None
                        return
                    self._wake.wait(left)
                # nobody is waiting (outcomes only): let the outcomes of runs ending about now ride one write
                gather = time.monotonic() + OUTCOME_WINDOW
                self._gathering = True  # meanwhile only a run waiting for its mark wakes this thread
                while not self._waiters:
                    left = gather - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                self._gathering = False
                generation = self._generation
                merged = self._merged
                secrets = registered()
                again = secrets != self._redacted_for  # a secret registered since: every record redacted again
                self._redacted_for = secrets
                changed = merged if self._dirty is None or again else self._dirty
                self._dirty = set()
                entries = []  # the changed records as they are now; serialised below, outside the lock
                for sid in changed:
                    rec = merged[sid]
                    sig = rec.signature()
                    cached = self._fragments.get(sid)
                    if cached is None or cached[0] != sig or again:
                        entries.append((sid, sig, rec.state_entry()))
            # JSON and redaction outside the lock: with a wave's runs starting at once, every run's mark
            # waited for it (the fragments are this thread's alone: one writer at a time; _merged is set
            # once per run and only its records change, under the lock, as copied above)
            for sid, sig, entry in entries:
                self._fragments[sid] = (sig, redact(json.dumps(entry, ensure_ascii=False)).encode("utf-8"))
            head = redact(json.dumps({"schema": 1, "task": "deploy", "environment": self.environment,
                                      "updated": now_iso()}, ensure_ascii=False)[:-1])
            # the file's pieces in order, written as they are (never joined: see _write_atomic)
            data = [(head + ', "steps": [\n ').encode("utf-8")]
            for sid in merged:
                data += (self._fragments[sid][1], _BETWEEN)
            if len(data) > 1:
                data[-1] = _END  # (in place of the last record's _BETWEEN)
            else:
                data.append(_END)
            # each record's JSON is redacted on its own: a secret lies within one record's text, unless it
            # spans lines (the records are joined by ",\n "), and then the whole text is redacted as well
            if any("\n" in x for x in secrets):
                data = redact(b"".join(data).decode("utf-8")).encode("utf-8")
            _write_atomic(self.state_path, data)  # a failure: _write_loop raises it to the waiting runs
            with self._lock:
                self._written = generation
                woken = [w for w in self._waiters if w[0] <= generation]
                if woken:
                    self._waiters = [w for w in self._waiters if w[0] > generation]
            for _, event in woken:
                event.set()

    # -- signals --------------------------------------------------------------------------
