"""A host's one reboot timer: what ``shutdown /r /t N``, ``shutdown /a`` and an MSI's 1641 schedule or cancel."""

from __future__ import annotations

import threading
from typing import Callable, Optional


class RebootTimer:
    """At most one pending reboot per host; ``reboot`` runs when it fires."""

    #: seconds between the command that reboots answering and the host going away (lets the reply get out)
    grace_s = 0.2

    def __init__(self, reboot: Callable[[], None]):
        self._reboot = reboot
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None

    def schedule(self, delay: float, exclusive: bool = False) -> bool:
        """Reboot in ``delay`` s (never sooner than the grace). False when one is pending already.

        ``exclusive``: ``shutdown /r`` refuses a second shutdown (1190); an MSI
        that initiates a restart joins the pending one.
        """
        with self._lock:
            if self._timer is not None:
                return not exclusive
            self._timer = threading.Timer(max(delay, self.grace_s), self._fire)
            self._timer.daemon = True
            self._timer.start()
            return True

    def abort(self) -> bool:
        """Cancel the pending reboot; False when none was pending."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is None:
            return False
        timer.cancel()
        return True

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
        self._reboot()
