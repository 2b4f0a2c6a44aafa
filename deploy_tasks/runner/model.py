"""What the runner runs and what it returns: ``Unit``, ``Event``, ``UnitResult``, ``RunResult``.

Plain data: a ``RunResult`` serialises to JSON (``to_dict``) and back
(``from_dict``), so a later run (a resumed deploy, ``inv report --merge``)
can read what an earlier one did.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union

from .. import outcome
from ..errors import RunFailed
from ..redact import redact

if TYPE_CHECKING:  # the engine imports this module; only the annotation needs the context type
    from .engine import UnitContext

#: a unit's retry rule: True/False, or a predicate over the exception it raised
Retryable = Union[None, bool, Callable[[BaseException], bool]]


def now_iso() -> str:
    """The current time, ISO 8601 in UTC with milliseconds (what reports and timestamped lines show)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Unit:
    """One unit of work: ``fn`` run on ``host``; ``name`` says what (a step, a component batch).

    ``fn(ctx)`` receives a ``UnitContext`` and returns the unit's outcome:
    ``None`` (unchanged), a status of ``deploy_tasks.outcome``, or an object
    with ``status`` (and optionally ``details``, a list of what changed),
    such as a step's ``StepResult``. It raises to fail.

    ``depends_on``: ids of units that must succeed first (a failed or
    skipped one skips this unit). ``after``: ids of units of the same run
    that must have ended first, whatever their outcome (an ordering, not a
    dependency; other ids are ignored).
    ``retryable`` overrides the runner's rule for this unit. ``id`` defaults
    to ``host/name``.
    """

    host: str
    name: str
    fn: Callable[["UnitContext"], Any]
    depends_on: Sequence[str] = ()
    retryable: Retryable = None
    key: str = ""
    after: Sequence[str] = ()

    @property
    def id(self) -> str:
        return self.key or f"{self.host}/{self.name}"


@dataclass(frozen=True)
class Event:
    """Something that happened to a unit, delivered to every listener in the order it happened.

    ``kind``: ``started`` (attempt n begins), ``output`` (a line the unit
    printed: ``line``), ``retrying`` (attempt ``attempt`` failed with
    ``error``; the next starts after ``delay`` seconds), ``finished``
    (``result`` is the unit's ``UnitResult``; a skipped unit has no
    ``started``).
    """

    kind: str
    unit: str  # the unit's id
    host: str
    name: str
    time: str = field(default_factory=now_iso)
    attempt: int = 0
    line: str = ""
    error: str = ""
    delay: float = 0.0
    result: Optional["UnitResult"] = None


@dataclass
class UnitResult:
    """One unit's outcome, in the one vocabulary, with its timings, error and output."""

    id: str
    host: str
    name: str
    status: str = outcome.SKIPPED
    started: Optional[str] = None  # ISO 8601; None when the unit never started
    ended: Optional[str] = None
    seconds: float = 0.0
    attempts: int = 0
    details: List[str] = field(default_factory=list)
    error: Optional[str] = None  # the message the user reads (redacted)
    error_type: Optional[str] = None
    error_output: str = ""  # the failing command's output, when the error carries one
    output: List[str] = field(default_factory=list)  # lines the unit printed
    depends_on: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in outcome.SUCCEEDED

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass
class RunResult:
    """Every unit of one run (in the order given), with the run's own timings.

    Like Fabric's ``GroupResult``: every unit finishes (or is skipped), then
    ``raise_for_failures`` raises one ``RunFailed`` with a per-host summary.
    """

    task: str
    units: List[UnitResult] = field(default_factory=list)
    started: Optional[str] = None
    ended: Optional[str] = None
    seconds: float = 0.0
    dry_run: bool = False
    cancelled: Optional[str] = None  # the signal's name (SIGINT, SIGTERM) when the run was cancelled

    SCHEMA = 1

    @property
    def ok(self) -> bool:
        return not self.cancelled and all(u.ok for u in self.units)

    def by_status(self, status: str) -> List[UnitResult]:
        return [u for u in self.units if u.status == status]

    @property
    def failed(self) -> List[UnitResult]:
        return self.by_status(outcome.FAILED)

    @property
    def skipped(self) -> List[UnitResult]:
        return self.by_status(outcome.SKIPPED)

    def get(self, unit_id: str) -> Optional[UnitResult]:
        return next((u for u in self.units if u.id == unit_id), None)

    def counts(self) -> Dict[str, int]:
        counts: Dict[str, int] = {}
        for u in self.units:
            counts[u.status] = counts.get(u.status, 0) + 1
        return counts

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": self.SCHEMA,
            "task": self.task,
            "ok": self.ok,
            "dry_run": self.dry_run,
            "cancelled": self.cancelled,
            "started": self.started,
            "ended": self.ended,
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "units": [u.to_dict() for u in self.units],
        }

    def to_json(self) -> str:
        """The whole result as JSON, every string redacted."""
        return redact(json.dumps(self.to_dict(), indent=2, ensure_ascii=False)) + "\n"

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RunResult":
        fields = set(UnitResult.__dataclass_fields__)
        units = [UnitResult(**{k: v for k, v in u.items() if k in fields}) for u in data.get("units", [])]
        return cls(task=data.get("task", ""), units=units, started=data.get("started"), ended=data.get("ended"),
                   seconds=data.get("seconds", 0.0), dry_run=data.get("dry_run", False),
                   cancelled=data.get("cancelled"))

    def summary(self) -> str:
        """What went wrong, grouped by host, each error in full (Fabric's ``str()`` of a GroupException is a dict repr)."""
        failed, skipped = self.failed, self.skipped
        head = []
        if self.cancelled:
            head.append(f"{self.task}: cancelled by {self.cancelled}")
        parts = []
        if failed:
            parts.append(f"{len(failed)} of {len(self.units)} unit(s) failed")
        if skipped:
            parts.append(f"{len(skipped)} skipped")
        if parts:
            head.append(f"{self.task}: " + ", ".join(parts) + ":")
        lines = head
        hosts: Dict[str, List[UnitResult]] = {}
        for u in self.units:
            if not u.ok:
                hosts.setdefault(u.host, []).append(u)
        for host, units in hosts.items():
            lines.append(f"  {host}:")
            for u in units:
                text = (u.error or u.status).splitlines() or [u.status]
                lines.append(f"    {u.name} {u.status}: {text[0]}")
                lines += [f"      {line}" for line in text[1:]]
        return redact("\n".join(lines))

    def raise_for_failures(self) -> None:
        """Raise one ``RunFailed`` (exit code 130 when cancelled) unless every unit succeeded."""
        if self.ok:
            return
        raise RunFailed(self.summary(), self, exit_code=130 if self.cancelled else 1)
