"""Helpers for deploy tests: agents installed on the emulated fleet, a workbook pointing at it, journals read back.

The Puppet agent MSI is served over real HTTP and installed on every host with
``msiexec`` run by the host's own persona (what ``inv bootstrap --only agents``
does over WinRM); certnames carry this test run's id, so runs never share one.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from deploy_tasks.inventory.template import example_sheets, write_workbook
from deploy_tasks.rehearsal import msi as msilib
from deploy_tasks.rehearsal.puppet import read_journal
from tests.support.services import RUN_ID


class PackageServer:
    """A throwaway HTTP server for the agent MSI (the nginx package server's role)."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def certname(hostname: str, tag: str = "dep") -> str:
    return f"{hostname.lower()}-{tag}{RUN_ID}.deploytest.test".replace("_", "-")


def install_agents(fleet, tmp_path: Path, master: str = "127.0.0.1", environment: str = "production",
                   tag: str = "dep", certnames: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Install the agent MSI on every host of ``fleet`` with msiexec; returns hostname -> certname."""
    server = PackageServer(tmp_path / "agent-packages")
    msilib.write_fake_msi(tmp_path / "agent-packages" / "puppet-agent-7.23.0-x64.msi")
    names = {}
    try:
        for host in fleet.hosts.values():
            cert = (certnames or {}).get(host.hostname) or certname(host.hostname, tag)
            argv = ["msiexec", "/qn", "/norestart", "/i", server.url + "/puppet-agent-7.23.0-x64.msi",
                    f"PUPPET_SERVER={master}", f"PUPPET_AGENT_CERTNAME={cert}",
                    f"PUPPET_AGENT_ENVIRONMENT={environment}", "/l*v", r"C:\Windows\Temp\agent.log"]
            out, err, code = host.persona.run(subprocess.list2cmdline(argv))
            assert code == 0, (host.hostname, out, err)
            names[host.hostname] = cert
    finally:
        server.close()
    return names


def fleet_workbook(fleet, path: Path, scheme: str = "https", edit_components=None) -> Path:
    """The example workbook with every Windows server's WinRM Port set to the fleet's port for it."""
    sheets = example_sheets()
    headers, rows = sheets["Servers"]
    rows = [list(r) for r in rows]
    name_col, port_col = headers.index("Hostname"), headers.index("WinRM Port")
    for row in rows:
        try:
            host = fleet.host(str(row[name_col]))
        except Exception:
            continue
        while len(row) <= port_col:
            row.append(None)
        row[port_col] = host.https_port if scheme == "https" else host.http_port
    sheets["Servers"] = (headers, rows)
    if edit_components:
        c_headers, c_rows = sheets["Components"]
        sheets["Components"] = (c_headers, edit_components([list(r) for r in c_rows]))
    return write_workbook(path, sheets, overwrite=True)


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def journals(fleet) -> Dict[str, List[dict]]:
    """hostname -> its Puppet runs (agent runs that applied something or failed), oldest first."""
    return {h.hostname: [r for r in read_journal(h.persona.state_dir) if r.get("outcome") != "already_running"]
            for h in fleet.hosts.values()}


def assert_no_overlap(runs_by_host: Dict[str, List[dict]]) -> None:
    for host, runs in runs_by_host.items():
        spans = sorted((_t(r["started"]), _t(r["finished"])) for r in runs)
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"{host}: two Puppet runs overlapped ({s1}-{e1} and {s2}-{e2})"


def assert_dependencies_first(runs_by_host: Dict[str, List[dict]], inventory) -> None:
    """Every component's run started after every run that applied one of its dependencies (any host) ended."""
    applied: Dict[str, List[tuple]] = {}
    for host, runs in runs_by_host.items():
        for r in runs:
            for comp in r.get("component_order", []):
                applied.setdefault(comp, []).append((host, _t(r["started"]), _t(r["finished"])))
    for host, runs in runs_by_host.items():
        for r in runs:
            for comp in r.get("component_order", []):
                for dep in inventory.component(comp).depends_on:
                    assert dep in applied, f"{host}: {comp} ran but its dependency {dep} never did"
                    last_end = max(end for _, _, end in applied[dep])
                    assert _t(r["started"]) >= last_end, f"{host}: {comp} started before {dep} ended everywhere"
