"""SIGINT/SIGTERM for a run: the first asks it to cancel (start nothing new), a second goes to what was there before."""

from __future__ import annotations

import signal
import threading
from typing import Callable, Optional


def install(cancel: Callable[[str], None], enabled: bool = True) -> Optional[dict]:
    """Route SIGINT/SIGTERM to ``cancel(signal name)``; the previous handlers, for ``restore``.

    Only from the main thread (Python delivers signals there); elsewhere, or when
    not ``enabled``, nothing is installed and None is returned.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        return None
    previous: dict = {}

    def handler(signum, frame):
        cancel(signal.Signals(signum).name)
        # a second signal goes to what was there before (Ctrl-C twice: stop at once)
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous


def restore(previous: Optional[dict]) -> None:
    """Put back the handlers ``install`` replaced."""
    for sig, old in (previous or {}).items():
        signal.signal(sig, old if old is not None else signal.SIG_DFL)
