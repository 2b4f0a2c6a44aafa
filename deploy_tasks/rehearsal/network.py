"""How an emulated host finds and fetches things: its ``hosts`` file, then real HTTP.

Windows looks a name up in ``C:\\Windows\\System32\\drivers\\etc\\hosts``
before DNS; so does the persona, and then connects for real (msiexec's
package download, a Puppet ``File`` with an http source).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from typing import Dict, Optional, Tuple

import requests

from .paths import _RACY_NS, Sandbox

HOSTS_FILE = r"C:\Windows\System32\drivers\etc\hosts"
_HOSTS_TEMPLATE = (b"# Copyright (c) 1993-2009 Microsoft Corp.\r\n#\r\n# This is a sample HOSTS file used by "
                   b"Microsoft TCP/IP for Windows.\r\n#\r\n# localhost name resolution is handled within "
                   b"DNS itself.\r\n")


class Network:
    """Name resolution (hosts file first) and HTTP for one host."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self._lock = threading.Lock()
        self._names: Optional[tuple] = None  # (the hosts file's path and stat, {name: address})

    def lay_out(self) -> None:
        """Write Windows' stock hosts file when the host has none yet."""
        hosts = self.sandbox.to_sandbox(HOSTS_FILE)
        if not hosts.exists():
            hosts.parent.mkdir(parents=True, exist_ok=True)
            hosts.write_bytes(_HOSTS_TEMPLATE)

    def resolve(self, name: str) -> str:
        """The address the host's ``hosts`` file gives ``name``, else ``name`` itself.

        The file's names are kept while its inode, size and mtime are unchanged (every Puppet run resolves
        its server); a file changed within 2 s of reading is read again next time (git's racy rule)."""
        try:
            path = self.sandbox.to_sandbox(HOSTS_FILE)
            st = os.stat(path)
            key = (os.fspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
            names = self._names if self._names is not None and self._names[0] == key else None
            if names is None:
                text = path.read_text(errors="replace")
                table: Dict[str, str] = {}
                for line in text.splitlines():
                    fields = line.split("#", 1)[0].split()
                    for f in fields[1:]:
                        table.setdefault(f.lower(), fields[0])
                names = (key, table)
                if time.time_ns() - st.st_mtime_ns > _RACY_NS:
                    self._names = names
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return name
        return names[1].get(name.lower(), name)

    def add_hosts_entry(self, name: str, address: str) -> None:
        """Add ``address name`` to the host's hosts file."""
        path = self.sandbox.to_sandbox(HOSTS_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(path, "a", newline="") as fh:
            fh.write(f"{address}\t{name}\r\n")

    def http_get(self, url: str, timeout: float = 60) -> Tuple[Optional[bytes], str]:
        """GET ``url`` over real HTTP as this host would: (body, "") or (None, why)."""
        parts = urllib.parse.urlsplit(url)
        address = self.resolve(parts.hostname or "")
        fetch, headers = url, {}
        if address != parts.hostname:  # named in the host's hosts file: connect to that address
            netloc = address + (f":{parts.port}" if parts.port else "")
            fetch, headers = urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"Host": parts.netloc}
        try:
            resp = requests.get(fetch, timeout=timeout, headers=headers)
        except requests.RequestException as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if resp.status_code != 200:
            return None, f"HTTP {resp.status_code} from {url}"
        return resp.content, ""
