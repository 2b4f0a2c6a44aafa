"""``puppet`` on an emulated Windows host: the real Linux agent for certificates, an emulated catalog apply.

Mode ``real`` (the default): the Debian ``puppet`` binary, run with a per-host
confdir/ssldir/vardir under the host's state directory and the certname,
server and environment the agent MSI was installed with, does everything that
involves keys and certificates for real: ``puppet ssl bootstrap`` makes the key
and submits the CSR (what ``puppet agent --test --waitforcert N`` does first),
``puppet agent --fingerprint`` prints the real fingerprint, the master signs it
with ``puppetserver ca sign``. The catalog is then fetched with the node's own
certificate from ``POST /puppet/v3/catalog/<certname>`` with Windows facts, so
the real server compiles it for a Windows node. Applying it is EMULATED into the
host's sandbox (``C:\\``) by ``catalog.py``: File writes content, Service records
a state that ``sc query`` shows, Exec and everything else are recorded; --tags,
--noop, the run lock, relationships (failed dependencies skip) and idempotence
behave as Puppet's do.

Mode ``timing`` (``FleetSpec.mode == "timing"``): a TIMING MODEL for benchmarks
with hundreds of hosts; no Puppet at all. Each tag of ``--tags`` is a component
that "takes" ``spec.timing_components[c]`` (or ``timing_default_s``) seconds,
changes on its first successful run and not after; certificates count as signed
at once and the fingerprint is a hash of the certname.

Every run is recorded in ``<state_dir>/puppet-journal.json``; see
:func:`read_journal`, :meth:`PuppetAgent.journal` and :meth:`PuppetAgent.applied`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import requests

from .catalog import CatalogApplier
from .process import Host, Process, now

PUPPET_BIN = r"C:\Program Files\Puppet Labs\Puppet\bin"  # what the agent MSI adds to the PATH

WIN_CONFDIR = "C:/ProgramData/PuppetLabs/puppet/etc"
WIN_VARDIR = "C:/ProgramData/PuppetLabs/puppet/cache"
WIN_LOGDIR = "C:/ProgramData/PuppetLabs/puppet/var/log"
WIN_RUNDIR = "C:/ProgramData/PuppetLabs/puppet/var/run"
WIN_LOCKFILE = WIN_VARDIR + "/state/agent_catalog_run.lock"
WIN_DEFAULTS = {
    "confdir": WIN_CONFDIR, "vardir": WIN_VARDIR, "ssldir": WIN_CONFDIR + "/ssl", "logdir": WIN_LOGDIR,
    "rundir": WIN_RUNDIR, "codedir": "C:/ProgramData/PuppetLabs/code", "statedir": WIN_VARDIR + "/state",
    "agent_catalog_run_lockfile": WIN_LOCKFILE, "runinterval": "1800", "serverport": "8140",
    "masterport": "8140", "waitforcert": "120", "noop": "false", "splay": "false", "certname": "",
    "server": "puppet", "environment": "production", "ca_server": "$server",
}


def write_windows_puppet_conf(host: Host) -> None:
    """Write C:\\ProgramData\\PuppetLabs\\puppet\\etc\\puppet.conf from the recorded settings, as the MSI does."""
    path = host.to_sandbox(WIN_CONFDIR + "/puppet.conf")
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = host.state_value("puppet_settings") or {}
    lines = ["[main]"] + [f"{k}={v}" for k, v in sorted(settings.items())]
    path.write_text("\r\n".join(lines) + "\r\n")


def read_journal(state_dir) -> List[dict]:
    """Every Puppet run recorded for the host whose state directory is ``state_dir`` (oldest first)."""
    try:
        return json.loads((Path(state_dir) / "puppet-journal.json").read_text())["runs"]
    except (OSError, ValueError, KeyError):
        return []


def deployed_components(state_dir) -> List[Tuple[int, str, str]]:
    """(run number, component, outcome) in the order runs applied them; outcome changed/unchanged/failed/noop."""
    rows = []
    for run in read_journal(state_dir):
        for comp in run.get("component_order", []):
            rows.append((run["run"], comp, run["components"][comp]["outcome"]))
    return rows


def windows_facts(hostname: str, certname: str, address: str, environment: str, version: str) -> dict:
    """The facts a Windows Server 2012 R2 agent presents (the part a manifest is likely to look at)."""
    domain = certname.split(".", 1)[1] if "." in certname else ""
    host = hostname.lower()
    fqdn = f"{host}.{domain}" if domain else host
    return {
        "kernel": "windows", "kernelversion": "6.3.9600", "kernelrelease": "6.3.9600", "kernelmajversion": "6.3",
        "osfamily": "windows", "operatingsystem": "windows", "operatingsystemrelease": "2012 R2",
        "operatingsystemmajrelease": "2012 R2",
        "os": {"family": "windows", "name": "windows", "architecture": "x64", "hardware": "x86_64",
               "release": {"full": "2012 R2", "major": "2012 R2"},
               "windows": {"product_name": "Windows Server 2012 R2 Standard", "edition_id": "ServerStandard",
                           "installation_type": "Server", "release_id": "", "system32": "C:\\Windows\\system32"}},
        "hostname": host, "fqdn": fqdn, "domain": domain, "ipaddress": address,
        "networking": {"hostname": host, "fqdn": fqdn, "domain": domain, "ip": address},
        "architecture": "x64", "hardwareisa": "x64", "hardwaremodel": "x86_64", "is_virtual": True,
        "system32": "C:\\Windows\\system32", "path": "C:\\Windows\\system32;C:\\Windows",
        "identity": {"user": f"{host}\\administrator", "privileged": True},
        "timezone": "Coordinated Universal Time", "puppetversion": version, "aio_agent_version": version,
        "clientcert": certname, "clientversion": version, "clientnoop": False,
        "agent_specified_environment": environment, "rehearsal_emulated": True,
    }


class _Options:
    def __init__(self):
        self.test = self.noop = self.detailed = self.fingerprint = self.onetime = False
        self.tags: List[str] = []
        self.waitforcert: Optional[str] = None
        self.overrides: Dict[str, str] = {}


def _parse_agent(args: List[str]) -> Tuple[Optional[_Options], str]:
    o = _Options()
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, inline = a.partition("=")
        def value():
            nonlocal i
            if eq:
                return inline
            i += 1
            if i >= len(args):
                raise ValueError(f"missing argument: {name}")
            return args[i]
        try:
            if a in ("--test", "-t"):
                o.test = o.detailed = o.onetime = True
            elif a == "--noop":
                o.noop = True
            elif a == "--no-noop":
                o.noop = False
            elif a == "--detailed-exitcodes":
                o.detailed = True
            elif a == "--fingerprint":
                o.fingerprint = True
            elif a in ("--onetime", "-o", "--no-daemonize", "--verbose", "-v", "--debug", "-d", "--no-splay",
                       "--no-usecacheonfailure", "--show_diff", "--trace"):
                o.onetime = o.onetime or a in ("--onetime", "-o")
            elif name == "--tags":
                o.tags = [t.strip().lower() for t in value().split(",") if t.strip()]
            elif name == "--waitforcert" or name == "-w":
                o.waitforcert = value()
            elif name in ("--server", "--certname", "--environment", "--digest"):
                o.overrides[name[2:]] = value()
            else:
                return None, f"invalid option: {a}"
        except ValueError as exc:
            return None, str(exc)
        i += 1
    return o, ""


class PuppetAgent:
    """The ``puppet`` command of one emulated host (installed by the Puppet agent MSI)."""

    def __init__(self, host: Host):
        self.host = host
        self.home = (host.state_dir / "puppet").absolute()  # the real Linux agent's per-host directories (absolute: it runs with cwd=home)
        self.journal_file = host.state_dir / "puppet-journal.json"
        self._run_lock = threading.Lock()
        self._journal_lock = threading.Lock()

    # -- settings -----------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.host.spec.mode

    def version(self) -> Optional[str]:
        product = self.host.installed_products().get("Puppet Agent")
        return product["version"] if product else None

    def settings(self) -> Dict[str, str]:
        return dict(self.host.state_value("puppet_settings") or {})

    def setting(self, key: str) -> str:
        s = self.settings()
        if key in s:
            return s[key]
        if key == "ca_server":
            return s.get("server", "puppet")
        return WIN_DEFAULTS.get(key, "")

    # -- entry point ------------------------------------------------------------
    def run(self, proc: Process, argv: List[str], line: str) -> int:
        """``puppet <subcommand> ...``."""
        return self.main(proc, argv[1:])

    def main(self, proc: Process, args: List[str]) -> int:
        certname = self.setting("certname")
        if certname != certname.lower() and args[:1] not in (["--version"], ["help"], []):
            proc.err("Error: Could not initialize global default settings: Certificate names must be lower case\n")
            return 1
        if not args or args[0] in ("help", "--help", "-h"):
            proc.out("Usage: puppet <subcommand> [options] <action> [options]\n\n"
                    "Emulated subcommands: agent, config, ssl, --version\n")
            return 0
        if args[0] in ("--version", "-V"):
            proc.out((self.version() or "") + "\n")
            return 0
        if args[0] == "agent":
            return self._agent(proc, args[1:])
        if args[0] == "config":
            return self._config(proc, args[1:])
        if args[0] == "ssl":
            return self._ssl(proc, args[1:])
        proc.err(f"Error: Unknown Puppet subcommand '{args[0]}' (the emulated persona has agent, config and ssl)\n")
        return 1

    def _config(self, proc: Process, args: List[str]) -> int:
        rest = []
        i = 0
        while i < len(args):
            if args[i] in ("--section", "-s"):
                i += 2
                continue
            if args[i].startswith("--section="):
                i += 1
                continue
            rest.append(args[i])
            i += 1
        if rest and rest[0] == "print":
            keys = rest[1:]
            if not keys or keys == ["all"]:
                keys = sorted(set(WIN_DEFAULTS) | set(self.settings()))
            if len(keys) == 1:
                proc.out(self.setting(keys[0]) + "\n")
            else:
                proc.out("".join(f"{k} = {self.setting(k)}\n" for k in sorted(keys)))
            return 0
        if rest and rest[0] == "set" and len(rest) == 3:
            key, val = rest[1], rest[2]
            if key not in WIN_DEFAULTS and key not in ("ca_port",):
                proc.err(f"Warning: No such setting '{key}' (the emulated persona records it anyway)\n")

            def put(state: dict) -> None:
                state.setdefault("puppet_settings", {})[key] = val

            self.host.update_state(put)
            write_windows_puppet_conf(self.host)
            return 0
        proc.err("Error: the emulated persona supports 'puppet config print <key>...' and "
                "'puppet config set <key> <value>'\n")
        return 1

    def _ssl(self, proc: Process, args: List[str]) -> int:
        """``puppet ssl submit_request|bootstrap|download_cert|verify|show|clean``: the real agent's, per host."""
        actions = ("submit_request", "generate_request", "bootstrap", "download_cert", "verify", "show", "clean")
        if not args or args[0] not in actions:
            proc.err(f"Error: puppet ssl: unknown or missing action; use one of {', '.join(actions)}\n")
            return 1
        opts, problem = _parse_agent([a for a in args[1:] if not a.startswith("--localca")])
        if opts is None:
            proc.err(f"Error: Could not parse application options: {problem}\n")
            return 1
        if self.mode == "timing":
            proc.out(f"Notice: (timing model) puppet ssl {args[0]}: certificates count as signed\n")
            return 0
        if not self._real_puppet():
            return self._no_real_puppet(proc)
        extra = ["--waitforcert", opts.waitforcert] if opts.waitforcert is not None else []
        return self._run_real(proc, ["ssl", args[0], *extra], self._effective(opts))

    # -- puppet agent ------------------------------------------------------------------
    def _agent(self, proc: Process, args: List[str]) -> int:
        opts, problem = _parse_agent(args)
        if opts is None:
            proc.err(f"Error: Could not parse application options: {problem}\n")
            return 1
        if opts.fingerprint:
            return self._fingerprint(proc, opts)
        if not opts.onetime:
            proc.err("Error: the emulated persona runs one-shot agent runs only (--test or --onetime); "
                    "the daemon is the 'puppet' service\n")
            return 1
        if not self._run_lock.acquire(blocking=False):
            proc.out(f"Notice: Run of Puppet configuration client already in progress; skipping  "
                    f"({WIN_LOCKFILE} exists)\n")
            self._record({"outcome": "already_running", "tags": opts.tags, "noop": opts.noop, "exit_code": 1,
                          "started": now(), "finished": now()})
            return 1
        lock_path = self.host.to_sandbox(WIN_LOCKFILE)
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock_path.write_text(str(os.getpid()))
            if self.mode == "timing":
                return self._timing_run(proc, opts)
            return self._real_run(proc, opts)
        finally:
            try:
                lock_path.unlink()
            except OSError:
                pass
            self._run_lock.release()

    def _effective(self, opts: _Options) -> Dict[str, str]:
        s = {"certname": self.setting("certname") or self.host.hostname.lower(),
             "server": self.setting("server"), "environment": self.setting("environment"),
             "serverport": self.setting("serverport") or "8140"}
        s.update(opts.overrides)
        # the Linux agent cannot read the emulated host's hosts file, so it is given the address
        s["connect"] = self.host.resolve(s["server"])
        return s

    # -- the real Linux agent ------------------------------------------------------
    def _real_puppet(self) -> Optional[str]:
        return shutil.which("puppet") or ("/usr/bin/puppet" if os.path.exists("/usr/bin/puppet") else None)

    def _real_dirs(self) -> Dict[str, Path]:
        return {"confdir": self.home / "etc", "ssldir": self.home / "etc" / "ssl", "vardir": self.home / "var",
                "logdir": self.home / "log", "rundir": self.home / "run", "codedir": self.home / "code"}

    def _to_windows_text(self, text: str) -> str:
        for key, path in sorted(self._real_dirs().items(), key=lambda kv: -len(str(kv[1]))):
            text = text.replace(str(path), WIN_DEFAULTS[key])
        return text

    def _run_real(self, proc: Process, args: List[str], eff: Dict[str, str], timeout: float = 600) -> int:
        """Run the Linux agent with this host's directories; its output, paths made Windows', goes to proc."""
        exe = self._real_puppet()
        dirs = self._real_dirs()
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        conf = dirs["confdir"] / "puppet.conf"
        conf.write_text("[main]\n" + "".join(f"{k} = {dirs[k]}\n" for k in ("ssldir", "vardir", "logdir", "rundir",
                                                                          "codedir"))
                        + f"color = false\nkeylength = 2048\ncertname = {eff['certname']}\nserver = {eff['connect']}\n"
                        f"masterport = {eff['serverport']}\nenvironment = {eff['environment']}\n")
        cmd = [exe, *args, "--confdir", str(dirs["confdir"])]
        env = dict(os.environ, HOME=str(self.home), LANG="C.UTF-8")
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 env=env, cwd=str(self.home))
        result: Dict[str, bytes] = {}

        def collect() -> None:
            result["out"], result["err"] = child.communicate()

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while reader.is_alive():
            if proc.cancelled or time.monotonic() > deadline:
                child.kill()
                reader.join()
                return 1
            reader.join(0.1)
        for stream, write in (("out", proc.out), ("err", proc.err)):
            text = result.get(stream, b"").decode("utf-8", "replace")
            # Facter on Linux complains about /proc in sandboxes; a Windows agent never would
            text = "\n".join(l for l in text.splitlines() if "/proc/" not in l and "facter" not in l.lower())
            if text.strip():
                write(self._to_windows_text(text) + "\n")
        return child.returncode

    def _fingerprint(self, proc: Process, opts: _Options) -> int:
        eff = self._effective(opts)
        if self.mode == "timing":
            digest = hashlib.sha256(("timing-model:" + eff["certname"]).encode()).hexdigest().upper()
            proc.out("(SHA256) " + ":".join(digest[i : i + 2] for i in range(0, 64, 2)) + "\n")
            return 0
        if not self._real_puppet():
            return self._no_real_puppet(proc)
        args = ["agent", "--fingerprint"] + (["--digest", eff["digest"]] if "digest" in eff else [])
        return self._run_real(proc, args, eff)

    def _no_real_puppet(self, proc: Process) -> int:
        proc.err("Error: this emulated host's puppet is backed by the Linux puppet agent, which is not installed "
                "here (apt-get install puppet-agent), or start the fleet with mode: timing\n")
        return 1

    def signed_cert(self, certname: str) -> Optional[Path]:
        p = self._real_dirs()["ssldir"] / "certs" / f"{certname}.pem"
        return p if p.exists() else None

    def _real_run(self, proc: Process, opts: _Options) -> int:
        if not self._real_puppet():
            return self._no_real_puppet(proc)
        eff = self._effective(opts)
        started = now()
        entry = {"started": started, "tags": opts.tags, "noop": opts.noop, "environment": eff["environment"],
                 "certname": eff["certname"], "server": eff["server"], "mode": "real"}
        if not self.signed_cert(eff["certname"]):
            wait = opts.waitforcert if opts.waitforcert is not None else "120"
            code = self._run_real(proc, ["ssl", "bootstrap", "--waitforcert", wait], eff)
            if code != 0 or not self.signed_cert(eff["certname"]):
                self._record({**entry, "outcome": "no_certificate", "exit_code": 1, "finished": now()})
                return 1
        node_env, problem = self._node_environment(eff)
        if node_env is None:
            proc.err(f"Warning: Unable to fetch my node definition, but the agent run will continue:\n"
                    f"Warning: {problem}\n")
        elif node_env != eff["environment"]:
            proc.out(f"Notice: Local environment: '{eff['environment']}' doesn't match server specified node "
                    f"environment '{node_env}', switching agent to '{node_env}'.\n")
            eff["environment"] = node_env
        proc.out(f"Info: Using environment '{eff['environment']}'\nInfo: Retrieving pluginfacts\n"
                "Info: Retrieving plugin\nInfo: Loading facts\n")
        catalog, problem = self._fetch_catalog(eff, opts)
        tries = 0
        while catalog is not None and catalog.get("environment") and catalog["environment"] != eff["environment"]:
            if tries > 3:
                catalog, problem = None, f"Catalog environment didn't stabilize after {tries} fetches, aborting run"
                break
            proc.out(f"Notice: Local environment: '{eff['environment']}' doesn't match server specified environment "
                    f"'{catalog['environment']}', restarting agent run with environment '{catalog['environment']}'\n")
            eff["environment"] = catalog["environment"]
            catalog, problem = self._fetch_catalog(eff, opts)
            tries += 1
        entry["environment"] = eff["environment"]
        if catalog is None:
            proc.err(f"Error: Could not retrieve catalog from remote server: {problem}\n")
            proc.err("Warning: Not using cache on failed catalog\n")
            proc.err("Error: Could not retrieve catalog; skipping run\n")
            self._record({**entry, "outcome": "error", "message": problem, "exit_code": 1, "finished": now()})
            return 1
        proc.out(f"Info: Caching catalog for {eff['certname']}\n"
                f"Info: Applying configuration version '{catalog.get('version', '')}'\n")
        t0 = time.monotonic()
        applier = CatalogApplier(self.host, proc, catalog, opts.tags, opts.noop, eff["environment"],
                                 lambda source: self.fetch_file_content(eff, source))
        applier.apply()
        proc.out(f"Notice: Applied catalog in {time.monotonic() - t0:.2f} seconds\n")
        code = applier.exit_code(opts.detailed)
        self._record({**entry, **applier.summary(), "exit_code": code, "finished": now()})
        return code

    def _fetch_catalog(self, eff: Dict[str, str], opts: _Options) -> Tuple[Optional[dict], str]:
        certname = eff["certname"]
        version = self.version() or "7.23.0"
        facts = {"name": certname,
                 "values": windows_facts(self.host.hostname, certname, self.host.address,
                                         eff["environment"], version),
                 "timestamp": now(), "expiration": now()}
        url = f"https://{eff['connect']}:{eff['serverport']}/puppet/v3/catalog/{urllib.parse.quote(certname)}"
        # The agent URI-encodes the facts itself and the form encoding comes on top (Puppet::Configurer::FactHandler)
        data = {"facts_format": "application/json", "facts": urllib.parse.quote(json.dumps(facts)),
                "transaction_uuid": hashlib.sha1(now().encode()).hexdigest()}
        return self._server_json(eff, "POST", url, {"environment": eff["environment"]}, data, "catalog", 120)

    def _server_json(self, eff: Dict[str, str], method: str, url: str, params: dict, data: Optional[dict],
                     what: str, timeout: float) -> Tuple[Optional[dict], str]:
        """Call the master's API with the node's own certificate, as the agent does: (JSON, "") or (None, error)."""
        ssl = self._real_dirs()["ssldir"]
        certname = eff["certname"]
        try:
            resp = requests.request(method, url, params=params, data=data, timeout=timeout,
                                    cert=(str(ssl / "certs" / f"{certname}.pem"),
                                          str(ssl / "private_keys" / f"{certname}.pem")),
                                    verify=str(ssl / "certs" / "ca.pem"), headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            return None, f"Failed to open TCP connection to {eff['server']}:{eff['serverport']} ({exc})"
        if resp.status_code != 200:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            return None, f"Error {resp.status_code} on SERVER: {message}"
        try:
            return resp.json(), ""
        except ValueError:
            return None, f"the server's {what} is not JSON"

    def _node_environment(self, eff: Dict[str, str]) -> Tuple[Optional[str], str]:
        """The environment the server assigns this node (``GET /puppet/v3/node``), as the agent asks first."""
        certname = eff["certname"]
        url = f"https://{eff['connect']}:{eff['serverport']}/puppet/v3/node/{urllib.parse.quote(certname)}"
        params = {"environment": eff["environment"], "configured_environment": eff["environment"]}
        node, error = self._server_json(eff, "GET", url, params, None, "node definition", 60)
        if node is None:
            return None, error
        return node.get("environment") or eff["environment"], ""

    def fetch_file_content(self, eff: Dict[str, str], source: str) -> Optional[bytes]:
        """Fetch a ``puppet:///modules/...`` source with the node's certificate (the file_content API)."""
        m = re.match(r"^puppet://[^/]*/(.+)$", source)
        if not m:
            return None
        ssl = self._real_dirs()["ssldir"]
        certname = eff["certname"]
        url = f"https://{eff['connect']}:{eff['serverport']}/puppet/v3/file_content/{m.group(1)}"
        try:
            resp = requests.get(url, params={"environment": eff["environment"]}, timeout=60,
                                cert=(str(ssl / "certs" / f"{certname}.pem"),
                                      str(ssl / "private_keys" / f"{certname}.pem")),
                                verify=str(ssl / "certs" / "ca.pem"))
        except requests.RequestException:
            return None
        return resp.content if resp.status_code == 200 else None

    # -- the timing model ----------------------------------------------------------------
    def _timing_run(self, proc: Process, opts: _Options) -> int:
        """TIMING MODEL: each tag is a component taking its configured time; no Puppet involved."""
        eff = self._effective(opts)
        entry = {"started": now(), "tags": opts.tags, "noop": opts.noop, "environment": eff["environment"],
                 "certname": eff["certname"], "server": eff["server"], "mode": "timing"}
        proc.out(f"Info: Using environment '{eff['environment']}'\nInfo: (timing model) no catalog is compiled\n")
        spec = self.host.spec
        failing = set(self.host.faults.puppet_fail)
        done = set(self.host.state_value("timing_applied", []))
        components, order, resources = {}, [], []
        changed = failed = 0
        for comp in opts.tags:
            if proc.sleep(spec.timing_components.get(comp, spec.timing_default_s)):
                break
            if comp in failing:
                outcome = "failed"
                failed += 1
                proc.err(f"Error: (timing model) component {comp}: emulated fault puppet_fail\n")
            elif opts.noop:
                outcome = "noop" if comp not in done else "unchanged"
            elif comp in done:
                outcome = "unchanged"
            else:
                outcome = "changed"
                changed += 1
                done.add(comp)
                proc.out(f"Notice: (timing model) component {comp}: applied\n")
            order.append(comp)
            components[comp] = {"outcome": outcome, "resources": [f"Component[{comp}]"],
                                "changed": int(outcome == "changed"), "failed": int(outcome == "failed"),
                                "skipped": 0}
            resources.append({"resource": f"Component[{comp}]", "component": comp, "status": outcome})
        self.host.update_state(lambda s: s.__setitem__("timing_applied", sorted(done)))
        code = (2 if changed else 0) | (4 if failed else 0)
        if not opts.detailed:
            code = 1 if failed else 0
        outcome = "failed" if failed else ("changed" if changed else "unchanged")
        self._record({**entry, "outcome": outcome, "components": components, "component_order": order,
                      "resources": resources, "exit_code": code, "finished": now()})
        return code

    # -- the journal ---------------------------------------------------------------------
    def _record(self, run: dict) -> None:
        with self._journal_lock:
            runs = read_journal(self.host.state_dir)
            run = {"run": len(runs) + 1, "host": self.host.hostname, "components": {}, "component_order": [],
                   "resources": [], **run}
            runs.append(run)
            tmp = self.journal_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"runs": runs}))  # no indent: json's C encoder (see state.py)
            os.replace(tmp, self.journal_file)

    def journal(self) -> List[dict]:
        """Every run on this host, oldest first (see the module docstring for the fields)."""
        return read_journal(self.host.state_dir)

    def applied(self, component: Optional[str] = None) -> List[dict]:
        """The resources changed by non-noop runs, in application order, each with its run number."""
        rows = []
        for run in self.journal():
            for r in run.get("resources", []):
                if r["status"] == "changed" and (component is None or r["component"] == component):
                    rows.append({"run": run["run"], **r})
        return rows
