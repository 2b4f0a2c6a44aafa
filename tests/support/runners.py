"""What the runner's tests share: a runner that installs no signal handlers and polls fast, a retryable error."""

from __future__ import annotations

from deploy_tasks.errors import DeployError
from deploy_tasks.runner import Runner


class Transient(DeployError):
    retryable = True


def runner(**options) -> Runner:
    options.setdefault("handle_signals", False)
    options.setdefault("poll", 0.01)
    return Runner("test", **options)
