"""Secrets never printed: a process-wide registry, and plain output that goes through it.

At the bottom of the layers (beside errors.py) because every layer that can
print or log (a transport echoing commands in a dry run, the console, the
reports) must redact, and a transport learns a password before any report
exists.
"""

from __future__ import annotations

import sys
import threading

_secrets: set = set()
lock = threading.Lock()  # also serializes whole lines of output across worker threads


def add_secret(value: str) -> None:
    """Register a value (a password) that must never be printed."""
    if value and len(value) >= 3:
        with lock:
            _secrets.add(value)


def registered() -> frozenset:
    """The secrets registered so far (to tell whether text redacted earlier is still redacted enough)."""
    with lock:
        return frozenset(_secrets)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ********."""
    with lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "********")
    return text


def say(text: str = "", err: bool = False) -> None:
    """Print one redacted line (stdout, or stderr with ``err``), whole, even from several threads."""
    stream = sys.stderr if err else sys.stdout
    text = redact(text)
    with lock:
        print(text, file=stream, flush=True)
