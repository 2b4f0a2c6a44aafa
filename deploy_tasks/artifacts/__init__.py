"""The release -> package repository step: safe extraction, manifest, incremental check, publish.

Sits above ``inventory`` (it reads the Components sheet's artifact names) and
below the task layer; ``publish`` opens its own small SSH connection.
"""

from .extract import Job, Outcome, Progress, Result, extract_release, jobs_from_inventory
from .safety import Limits

__all__ = ["Job", "Outcome", "Progress", "Result", "Limits", "extract_release", "jobs_from_inventory"]
