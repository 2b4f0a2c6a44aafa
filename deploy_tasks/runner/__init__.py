"""Run units of work (a step on a host) concurrently and collect one ``RunResult``.

``Runner(task, max_parallel=..., retries=..., listeners=[...]).run([Unit(host, name, fn), ...])``;
see ``engine`` for the scheduling rules and docs/execution.md for how tasks use it.
"""

from .engine import POLICIES, Runner, UnitContext, is_retryable
from .model import Event, RunResult, Unit, UnitResult, now_iso
from .state import StateFile

__all__ = ["Runner", "Unit", "UnitContext", "Event", "RunResult", "UnitResult", "POLICIES", "is_retryable",
           "now_iso", "StateFile"]
