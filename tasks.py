"""Invoke entry point: the namespace lives in deploy_tasks.tasks (no logic here)."""

from deploy_tasks.tasks import ns  # noqa: F401
