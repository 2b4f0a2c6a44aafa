"""Run units of work concurrently: ``max_parallel``, one unit per host at a time, failure policy, retries, cancellation.

The scheduler is one loop in the calling thread; units run in daemon worker
threads (at most ``max_parallel`` busy at once), which are reused for the next
unit and between ``run`` calls of one runner, and end after ``IDLE_EXIT``
seconds without work (starting a thread costs milliseconds when hundreds
are busy: a thread per unit put that on every wave's critical path). Daemon
threads, not a ``ThreadPoolExecutor``: after a cancellation's grace period
the run returns even if a unit is stuck in a remote command, and the process
can exit (an executor's threads are joined at interpreter exit).

Failure policy (``on_failure``):

* ``"host"`` (default): a unit that fails skips the remaining units of its
  host; other hosts go on.
* ``"run"``: a failure anywhere starts nothing new anywhere (running units finish).
* ``"dependents"``: only the units that depend on the failed one are skipped.

In every policy a unit whose ``depends_on`` did not succeed is skipped, and
the run fails when any unit failed or was skipped for a failure.

Retries: a unit whose exception is retryable (``Unit.retryable``, else the
runner's ``retryable`` predicate, by default the exception's ``retryable``
attribute) runs again after ``backoff * 2**(attempt-1)`` seconds (at most
``backoff_max``), spread by ``jitter`` (0.25 = +-25 %), up to ``retries``
more times. The host stays reserved while the unit waits.

Cancellation: SIGINT or SIGTERM (handlers installed only when ``run`` is
called in the main thread, and restored afterwards) starts nothing new; the
running units get ``grace`` seconds to finish; units that never started are
``skipped``; a unit still running after the grace period is ``failed``
(its outcome on the host is unknown). A second signal is left to the
previous handler (Ctrl-C twice stops at once).
"""

from __future__ import annotations

import heapq
import queue
import random as _random
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from .. import outcome
from ..errors import DeployError
from ..redact import redact
from . import signals
from .model import Event, RunResult, Unit, UnitResult, now_iso

Listener = Callable[[Event], None]
POLICIES = ("host", "run", "dependents")
IDLE_EXIT = 2.0  # seconds a worker thread waits for its next unit before it ends


def is_retryable(exc: BaseException) -> bool:
    """The default rule: the exception says so itself (``DeployError.retryable``)."""
    return bool(getattr(exc, "retryable", False))


class UnitContext:
    """What a unit's function gets: its unit, attempt, a way to print, and whether the run is being cancelled."""

    def __init__(self, runner: "Runner", unit: Unit, result: UnitResult, attempt: int):
        self._runner = runner
        self.unit = unit
        self.host = unit.host
        self.attempt = attempt
        self.dry_run = runner.dry_run
        self._result = result

    def output(self, line: str) -> None:
        """Record a line the unit prints (kept in the unit's result and sent to listeners as an ``output`` event)."""
        for part in str(line).splitlines() or [""]:
            part = redact(part)
            self._result.output.append(part)
            self._runner._emit(Event("output", self.unit.id, self.unit.host, self.unit.name,
                                     attempt=self.attempt, line=part))

    @property
    def cancelled(self) -> bool:
        """True once the run is being cancelled: a long unit may stop early at a safe point."""
        return self._runner._cancel.is_set()


class Runner:
    """Runs units; see the module docstring. ``sleep`` and ``random`` are injectable for tests."""

    def __init__(self, task: str = "run", *, max_parallel: int = 10, retries: int = 0, backoff: float = 2.0,
                 backoff_max: float = 60.0, jitter: float = 0.25, on_failure: str = "host",
                 retryable: Callable[[BaseException], bool] = is_retryable,
                 listeners: Iterable[Listener] = (), dry_run: bool = False, grace: float = 30.0,
                 handle_signals: bool = True, sleep: Optional[Callable[[float], Any]] = None,
                 random: Callable[[], float] = _random.random, poll: float = 0.05):
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        if on_failure not in POLICIES:
            raise ValueError(f"on_failure must be one of {', '.join(POLICIES)}")
        self.task = task
        self.max_parallel = max_parallel
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.on_failure = on_failure
        self.retryable = retryable
        self.listeners: List[Listener] = list(listeners)
        self.dry_run = dry_run
        self.grace = grace
        self.handle_signals = handle_signals
        self._sleep = sleep
        self._random = random
        self._poll = poll
        self._cancel = threading.Event()
        self._signal: Optional[str] = None
        self._emit_lock = threading.RLock()
        self._abandoned: set = set()
        self._host_locks: Dict[str, threading.Lock] = {}
        self._pool_lock = threading.Lock()
        self._jobs: "queue.SimpleQueue" = queue.SimpleQueue()
        self._idle = 0  # worker threads waiting for a unit

    # -- public ------------------------------------------------------------------------
    def cancel(self, reason: str = "cancel") -> None:
        """Start nothing new; let running units finish (what SIGINT/SIGTERM do)."""
        if self._signal is None:
            self._signal = reason
        self._cancel.set()

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``: exponential, capped, with jitter."""
        base = min(self.backoff_max, self.backoff * (2 ** (attempt - 1)))
        spread = 1.0 + self.jitter * (2.0 * self._random() - 1.0)
        return max(0.0, base * spread)

    def run(self, units: Sequence[Unit], previous: Optional[RunResult] = None) -> RunResult:
        """Run ``units`` and return every unit's result; never raises for a unit's failure.

        ``previous``: an earlier run of the same units (``RunResult.from_dict`` of its state file).
        A unit that succeeded there is not run again: its result is carried over (and units that
        depend on it may start at once); a unit that failed, was skipped or never finished runs.
        """
        units = list(units)
        _check(units)
        self._cancel.clear()
        self._signal = None
        self._abandoned = set()
        result = RunResult(self.task, dry_run=self.dry_run, started=now_iso())
        results = {u.id: UnitResult(u.id, u.host, u.name, depends_on=list(u.depends_on)) for u in units}
        result.units = [results[u.id] for u in units]
        self._host_locks = {u.host: threading.Lock() for u in units}
        clock = time.monotonic()
        todo = [u for u in units if not self._carry_over(u, results[u.id], previous)]
        handlers = signals.install(self.cancel, self.handle_signals)
        try:
            self._schedule(todo, results)
        finally:
            signals.restore(handlers)
        result.ended = now_iso()
        result.seconds = time.monotonic() - clock
        result.cancelled = self._signal
        return result

    def _carry_over(self, unit: Unit, res: UnitResult, previous: Optional[RunResult]) -> bool:
        before = previous.get(unit.id) if previous is not None else None
        if before is None or before.status not in outcome.SUCCEEDED or before.status == outcome.WOULD_CHANGE:
            return False
        res.status = before.status
        res.started, res.ended, res.seconds = before.started, before.ended, before.seconds
        res.attempts, res.details, res.output = before.attempts, list(before.details), list(before.output)
        res.details.append("done in the previous run; not run again")
        self._emit(Event("finished", unit.id, unit.host, unit.name, attempt=res.attempts, result=res))
        return True

    # -- scheduling --------------------------------------------------------------------
    def _schedule(self, units: List[Unit], results: Dict[str, UnitResult]) -> None:
        """Start units as their dependencies end, one per host, at most ``max_parallel``; skip what cannot run.

        Event-driven: a unit's dependencies are counted down as they end and the
        hosts with a startable unit wait in a heap ordered by the units' order,
        so each event costs what it touches (not a scan of every pending unit:
        thousands of steps on hundreds of hosts would make that quadratic).
        Units start in their given order among those startable, as before.
        """
        order = {u.id: i for i, u in enumerate(units)}
        by_id = {u.id: u for u in units}
        pending = set(order)  # neither started nor ended
        waiting: Dict[str, int] = {}  # unit id -> dependencies not ended yet
        dependents: Dict[str, List[str]] = {}
        followers: Dict[str, List[str]] = {}  # unit id -> units ordered after it (whatever its outcome)
        ready: Dict[str, List[tuple]] = {}  # host -> heap of (order, unit id) whose dependencies all ended
        hosts: List[tuple] = []  # heap of (order of the host's first ready unit, host); stale entries skipped
        running: Dict[str, Unit] = {}
        busy_hosts: Dict[str, str] = {}  # host -> unit id running there
        failed_hosts: Dict[str, str] = {}  # host -> id of the unit that failed there
        done: "queue.Queue[str]" = queue.Queue()
        state = {"run_failed": None}
        deadline: Optional[float] = None

        def make_ready(uid: str) -> None:
            host = by_id[uid].host
            heap = ready.setdefault(host, [])
            heapq.heappush(heap, (order[uid], uid))
            if host not in busy_hosts and heap[0][1] == uid:
                heapq.heappush(hosts, (order[uid], host))

        def skip(uids: Iterable[str], why: Optional[str] = None) -> None:
            """Skip ``uids`` (those still pending), then whatever depends on them, in order."""
            work = [(order[u], u) for u in uids if u in pending]
            heapq.heapify(work)
            while work:
                _, uid = heapq.heappop(work)
                if uid not in pending:
                    continue
                unit = by_id[uid]
                reason = why or self._blocker(unit, results, failed_hosts, state["run_failed"]) or "not started"
                pending.discard(uid)
                self._skip(unit, results[uid], reason)
                for k in ended(uid):
                    heapq.heappush(work, (order[k], k))

        def ended(uid: str) -> List[str]:
            """Count ``uid`` down in its dependents; return those it now blocks (it did not succeed)."""
            blocked = []
            ok = results[uid].status in outcome.SUCCEEDED
            for k in dependents.get(uid, ()):
                waiting[k] -= 1
                if k not in pending:
                    continue
                if not ok:
                    blocked.append(k)
                elif waiting[k] == 0:
                    make_ready(k)
            for k in followers.get(uid, ()):
                waiting[k] -= 1
                if k in pending and waiting[k] == 0:
                    make_ready(k)
            return blocked

        for u in units:
            uid = u.id  # a property: not once per dependency (a deployment has hundreds of thousands)
            count = 0
            for d in u.depends_on:
                if d in by_id:
                    dependents.setdefault(d, []).append(uid)
                    count += 1
                elif not results[d].ended:
                    count += 1  # carried over without an end: it never ends (skipped below)
            own = set(u.depends_on)
            for d in u.after:
                if d in by_id and d not in own:
                    followers.setdefault(d, []).append(uid)
                    count += 1
            waiting[uid] = count
        skip([u.id for u in units if self._blocker(u, results, failed_hosts, None) is not None])
        for u in units:
            if u.id in pending and waiting[u.id] == 0:
                make_ready(u.id)

        while pending or running:
            if self._cancel.is_set():
                skip(pending, f"not started: the run was cancelled ({self._signal})")
                if deadline is None:
                    deadline = time.monotonic() + self.grace
            while hosts and len(running) < self.max_parallel:
                first, host = heapq.heappop(hosts)
                heap = ready.get(host)
                while heap and heap[0][1] not in pending:
                    heapq.heappop(heap)  # skipped after it became ready
                if host in busy_hosts or not heap:
                    continue
                if heap[0][0] != first:
                    heapq.heappush(hosts, (heap[0][0], host))
                    continue
                _, uid = heapq.heappop(heap)
                pending.discard(uid)
                busy_hosts[host] = uid
                running[uid] = by_id[uid]
                self._submit(by_id[uid], results[uid], done, len(running))
            if not running:
                if pending:  # nothing can ever start them (should not happen after _check)
                    skip(pending, "not started: its dependencies never finished")
                break
            timeout = self._poll
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - time.monotonic()))
            try:
                finished = done.get(timeout=timeout)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    with self._emit_lock:
                        self._abandoned.update(running)
                    for unit_id in list(running):
                        res = results[unit_id]
                        res.status, res.attempts = outcome.FAILED, max(res.attempts, 1)
                        res.error = (f"{res.host}: {res.name} was still running {self.grace:.0f} s after the run "
                                     f"was cancelled ({self._signal}); what it did on the host is unknown: "
                                     f"check the host, then re-run")
                        res.error_type = "Cancelled"
                        res.ended = now_iso()
                        self._emit(Event("finished", unit_id, res.host, res.name, attempt=res.attempts, result=res))
                    return
                continue
            unit = running.pop(finished)
            res = results[finished]
            busy_hosts.pop(res.host, None)
            heap = ready.get(res.host)
            if heap:
                heapq.heappush(hosts, (heap[0][0], res.host))
            blocked = ended(finished)
            if res.status == outcome.FAILED:
                failed_hosts.setdefault(res.host, finished)
                if state["run_failed"] is None:
                    state["run_failed"] = finished
                if self.on_failure == "run":
                    blocked = list(pending)
                elif self.on_failure == "host":
                    blocked += [u for u in pending if by_id[u].host == unit.host]
            skip(blocked)

    def _submit(self, unit: Unit, res: UnitResult, done: "queue.Queue[str]", running: int) -> None:
        """Hand a unit to an idle worker thread, or start one (workers are kept between ``run`` calls)."""
        with self._pool_lock:
            if self._idle > 0:
                self._idle -= 1
                self._jobs.put((unit, res, done))
                return
        thread = threading.Thread(target=self._worker, args=((unit, res, done),), daemon=True,
                                  name=f"runner-{self.task}-{running}")
        thread.start()

    def _worker(self, job) -> None:
        """A worker thread: run jobs; leave after ``IDLE_EXIT`` seconds without one."""
        while True:
            self._work(*job)
            with self._pool_lock:
                self._idle += 1
            try:
                job = self._jobs.get(timeout=IDLE_EXIT)
                continue
            except queue.Empty:
                pass
            with self._pool_lock:  # a job handed over while the wait timed out is ours: take it
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    self._idle -= 1
                    return

    def _blocker(self, unit: Unit, results, failed_hosts, run_failed) -> Optional[str]:
        """Why ``unit`` must be skipped now, or None."""
        for dep in unit.depends_on:
            status = results[dep].status
            if results[dep].ended and status not in outcome.SUCCEEDED:
                return f"not started: {dep} {status}"
        if self.on_failure == "host" and unit.host in failed_hosts:
            return f"not started: {failed_hosts[unit.host]} failed on this host"
        if self.on_failure == "run" and run_failed is not None:
            return f"not started: {run_failed} failed"
        return None

    def _skip(self, unit: Unit, res: UnitResult, why: str) -> None:
        res.status = outcome.SKIPPED
        res.error = why
        res.ended = now_iso()
        self._emit(Event("finished", unit.id, unit.host, unit.name, result=res))

    # -- one unit, in its own thread ---------------------------------------------------------
    def _work(self, unit: Unit, res: UnitResult, done: "queue.Queue[str]") -> None:
        lock = self._host_locks[unit.host]
        if not lock.acquire(blocking=False):  # the scheduler never lets this happen; say so loudly if it does
            res.status, res.error = outcome.FAILED, f"{unit.host}: internal error: two units at once on one host"
            done.put(unit.id)
            return
        # the unit works on its own copy: a unit abandoned after the grace period must not
        # change a result that has already been reported
        mine = UnitResult(res.id, res.host, res.name, depends_on=list(res.depends_on))
        try:
            mine.started = res.started = now_iso()
            clock = time.monotonic()
            try:
                self._attempts(unit, mine)
            finally:
                mine.seconds = time.monotonic() - clock
                mine.ended = now_iso()
        finally:
            lock.release()
        with self._emit_lock:
            if unit.id in self._abandoned:
                return
            res.__dict__.update(mine.__dict__)
        self._emit(Event("finished", unit.id, unit.host, unit.name, attempt=res.attempts, result=res))
        done.put(unit.id)

    def _attempts(self, unit: Unit, res: UnitResult) -> None:
        attempt = 0
        while True:
            attempt += 1
            res.attempts = attempt
            self._emit(Event("started", unit.id, unit.host, unit.name, attempt=attempt))
            ctx = UnitContext(self, unit, res, attempt)
            try:
                value = unit.fn(ctx)
            except BaseException as exc:  # a unit's failure is data; only the scheduler decides what follows
                if not isinstance(exc, Exception):
                    self.cancel(type(exc).__name__)  # KeyboardInterrupt/SystemExit inside a unit
                if (isinstance(exc, Exception) and attempt <= self.retries and self._is_retryable(unit, exc)
                        and not self._cancel.is_set()):
                    wait = self.delay(attempt)
                    self._emit(Event("retrying", unit.id, unit.host, unit.name, attempt=attempt,
                                     error=redact(_message(unit, exc)), delay=wait))
                    self._wait(wait)
                    if not self._cancel.is_set():
                        continue
                self._fail(unit, res, exc)
                return
            self._succeed(res, value)
            return

    def _is_retryable(self, unit: Unit, exc: Exception) -> bool:
        rule = unit.retryable
        if rule is None:
            return bool(self.retryable(exc))
        if callable(rule):
            return bool(rule(exc))
        return bool(rule)

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            self._cancel.wait(seconds)  # a cancellation ends the wait at once

    def _succeed(self, res: UnitResult, value: Any) -> None:
        status = outcome.UNCHANGED
        details: List[str] = []
        if isinstance(value, str):
            status = value
        elif value is not None:
            status = getattr(value, "status", outcome.UNCHANGED)
            details = list(getattr(value, "details", []) or [])
        if status not in outcome.STATUSES:
            res.error = f"{res.host}: {res.name} returned an unknown status {status!r} (a bug in the step)"
            status = outcome.FAILED
        res.status = outcome.for_dry_run(status, self.dry_run)
        res.details = [redact(str(d)) for d in details]
        error = getattr(value, "error", None)  # a step that recorded its own failure
        if res.status == outcome.FAILED and error and not res.error:
            res.error = redact(str(error))

    def _fail(self, unit: Unit, res: UnitResult, exc: BaseException) -> None:
        res.status = outcome.FAILED
        res.error = redact(_message(unit, exc))
        res.error_type = type(exc).__name__
        res.error_output = redact(str(getattr(exc, "output", "") or ""))

    # -- events and signals ---------------------------------------------------------------
    def _emit(self, event: Event) -> None:
        with self._emit_lock:  # listeners see one event at a time, in the order they happened
            if event.unit in self._abandoned and event.kind != "finished":
                return  # a unit given up on after the grace period: its result is already reported
            for listener in self.listeners:
                try:
                    listener(event)
                except Exception as exc:  # a broken reporter must not break the run
                    from ..redact import say

                    say(f"warning: a reporter failed on a {event.kind} event: {type(exc).__name__}: {exc}", err=True)


def _message(unit: Unit, exc: BaseException) -> str:
    if isinstance(exc, DeployError):
        return str(exc)
    if isinstance(exc, OSError):  # a local file (the MSI, a template dir) that cannot be read
        return f"{unit.host}: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return f"{unit.host}: {unit.name} interrupted"
    return f"{unit.host}: {unit.name}: unexpected {type(exc).__name__}: {exc}"


def _check(units: List[Unit]) -> None:
    """Unit ids are unique, dependencies exist and form no cycle (a programming error, said plainly)."""
    ids = [u.id for u in units]
    seen = set()
    for uid in ids:
        if uid in seen:
            raise ValueError(f"two units have the id {uid!r}")
        seen.add(uid)
    deps = {u.id: list(u.depends_on) + [a for a in u.after if a in seen] for u in units}
    for u in units:
        for d in u.depends_on:
            if d not in seen:
                raise ValueError(f"unit {u.id!r} depends on unknown unit {d!r}")
    # Kahn's algorithm (linear in the edges: a deployment has hundreds of thousands); a cycle is what is left
    indegree = {uid: len(ds) for uid, ds in deps.items()}
    users: Dict[str, List[str]] = {}
    for uid, ds in deps.items():
        for d in ds:
            users.setdefault(d, []).append(uid)
    free = [uid for uid in ids if indegree[uid] == 0]
    while free:
        uid = free.pop()
        for k in users.get(uid, ()):
            indegree[k] -= 1
            if indegree[k] == 0:
                free.append(k)
    left = [uid for uid in ids if indegree[uid] > 0]
    if left:
        raise ValueError("unit dependencies form a cycle: " + " -> ".join(_cycle(left[0], deps, set(left))))


def _cycle(start: str, deps: Dict[str, List[str]], left: set) -> List[str]:
    """A cycle among ``left`` (units Kahn's algorithm could not order), walked from ``start``."""
    path: List[str] = []
    where: Dict[str, int] = {}
    node = start
    while node not in where:
        where[node] = len(path)
        path.append(node)
        node = next(d for d in deps[node] if d in left)  # every unit left waits for another unit left
    return path[where[node]:] + [node]
