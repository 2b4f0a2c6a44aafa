"""The Windows persona with WinRM's per-user quota fault on chosen hosts (until the endpoint enforces quotas).

``quota_factory({"ZSVC01": -1, "ZAPP01": 2})``: a persona factory for ``winrm_fleet``
whose host ZSVC01 answers every Command with WS-Man fault 2150859173
(``w:QuotaLimit``, what Windows sends for the 31st shell of a user), and ZAPP01 the
first two only; every other host is the plain persona.
"""

from __future__ import annotations

import threading

from deploy_tasks.rehearsal.fleet import default_persona_factory
from deploy_tasks.rehearsal.server import WSManFault

QUOTA_LIMIT = 2150859173


def quota_factory(quota: dict):
    remaining = {h.lower(): n for h, n in quota.items()}
    lock = threading.Lock()

    def factory(hostname, address, sandbox, faults, spec, on_reboot):
        persona = default_persona_factory(hostname, address, sandbox, faults, spec, on_reboot)
        if hostname.lower() not in remaining:
            return persona
        start = persona.start

        def start_with_quota(command_line, *args, **kwargs):
            with lock:
                left = remaining[hostname.lower()]
                if left:
                    remaining[hostname.lower()] = left - 1 if left > 0 else left
            if left:
                raise WSManFault(QUOTA_LIMIT, "w:QuotaLimit",
                                 "The WS-Management service cannot process the request. This user is allowed a "
                                 "maximum number of 30 concurrent shells, which has been exceeded.")
            return start(command_line, *args, **kwargs)

        persona.start = start_with_quota
        return persona

    return factory
