"""Pre-flight: prove a deploy's plan before anything changes, and list every problem at once.

``preflight(inventory, settings, targets, master=..., winrm_pool=..., manifest=..., environment_dir=...)``
runs four checks and returns a ``PreflightResult`` (``problems``, ``skipped``,
``passed``); ``raise_for_problems()`` turns problems into one
``PreflightFailed``. Nothing here changes a host: see docs/deploy-preflight.md.

1. environment  the environment published on the master (``environments/<env>``)
                holds exactly the files of the generated one: a sha256 per file on
                the master (``find | sha256sum`` over the master's transport) against
                the same computed on the controller from the files publish-config sends.
2. artifacts    the package server serves every artifact the targets need, and its
                bytes have the manifest's sha256 (HTTP GET from the controller,
                hashed while streaming; nothing is kept).
3. agents       every target host answers over WinRM and its Puppet agent holds a
                certificate the master's CA signed: ``puppet agent --fingerprint`` on
                the node against the certificate the CA serves for that certname
                (``GET /puppet-ca/v1/certificate/<certname>``, TLS checked against
                the master's CA certificate, read over the master's transport).
4. catalogs     every target node's catalog compiles on the real master with that
                node's own facts: the node runs ``puppet agent --test --noop``
                (its own certificate, its own facts, the environment being
                deployed). A noop run applies nothing; Puppet still caches the
                catalog and sends a noop report (see the design note).

A check that cannot run says so in ``skipped`` (the host did not answer, so
its agent was not asked; no manifest, so no sha256 to compare), never silently.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import shlex
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote, urlsplit

from ..errors import AuthenticationRejected, ConfigError, DeployError, PreflightFailed, TransportError
from ..transports.wincmd import cmd_line

ENVIRONMENT, ARTIFACT, WINRM, AGENT, CATALOG = "environment", "artifact", "winrm", "agent", "catalog"
PUPPET_PORT = 8140
#: what each check proves, for a deploy that skips the pre-flight to say what it did not prove
CHECKS = {
    ENVIRONMENT: "the environment published on the Puppet master is the generated one (sha256 of every file)",
    ARTIFACT: "the package server serves every artifact with the manifest's sha256",
    WINRM: "every target host answers over WinRM",
    AGENT: "every target host's Puppet agent holds the certificate the master signed",
    CATALOG: "every target node's catalog compiles on the master with its own facts (noop run)",
}
_FINGERPRINT = re.compile(r"\(SHA256\)\s+((?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2})")
MAX_LISTED = 8  # file names listed per environment problem


@dataclass(frozen=True)
class Problem:
    """One thing that would make the deploy fail, located, with what to do about it."""

    check: str  # environment / artifact / winrm / agent / catalog
    message: str
    hint: str = ""
    host: str = ""
    component: str = ""
    artifact: str = ""

    @property
    def where(self) -> str:
        parts = [f"host {self.host}" if self.host else "", f"component {self.component}" if self.component else "",
                 f"artifact {self.artifact}" if self.artifact else ""]
        return ", ".join(p for p in parts if p) or self.check

    def __str__(self) -> str:
        return f"[{self.check}] {self.where}: {self.message}" + (f" ({self.hint})" if self.hint else "")

    def as_dict(self) -> dict:
        return {"check": self.check, "host": self.host, "component": self.component, "artifact": self.artifact,
                "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class Skipped:
    """A check that could not run, and why (it proves nothing either way)."""

    check: str
    reason: str
    host: str = ""

    def __str__(self) -> str:
        return f"[{self.check}] {'host ' + self.host + ': ' if self.host else ''}not checked: {self.reason}"


@dataclass
class PreflightResult:
    problems: List[Problem] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    passed: List[str] = field(default_factory=list)  # one line per check that passed, for the log

    @property
    def ok(self) -> bool:
        return not self.problems

    def extend(self, other: "PreflightResult") -> None:
        self.problems += other.problems
        self.skipped += other.skipped
        self.passed += other.passed

    def raise_for_problems(self) -> None:
        if self.problems:
            raise PreflightFailed(self.problems, self.skipped)


def targets_for(inventory, hosts: Optional[Iterable[str]] = None,
                components: Optional[Iterable[str]] = None) -> Dict[str, Tuple[str, ...]]:
    """{hostname: components} of the Mapping sheet, narrowed to ``hosts`` / ``components`` when given."""
    want_hosts = {h.lower() for h in hosts} if hosts else None
    want = set(components) if components else None
    out: Dict[str, List[str]] = {}
    for a in inventory.mapping:
        if want_hosts is not None and a.hostname.lower() not in want_hosts:
            continue
        if want is not None and a.component not in want:
            continue
        out.setdefault(a.hostname, []).append(a.component)
    return {h: tuple(c) for h, c in out.items()}


# -- 1. the published environment ------------------------------------------------------------------------------

def file_digests(files: Mapping[str, bytes]) -> Dict[str, str]:
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def environment_digest(digests: Mapping[str, str]) -> str:
    """One sha256 over (path, file sha256) pairs in path order: equal on both sides iff the files are."""
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + digests[rel].encode() + b"\n")
    return h.hexdigest()


def listing_command(path: str) -> str:
    """The POSIX command printing ``<sha256>  ./<path>`` for every file under ``path`` (a symlink is followed)."""
    return (f"cd {shlex.quote(path)}/ && find . -type f -print0 | LC_ALL=C sort -z | "
            f"xargs -0 -r sha256sum --")


def parse_listing(text: str) -> Dict[str, str]:
    """sha256sum's lines as {relative path: sha256}; a name sha256sum had to escape (\\n, \\\\) keeps its escape."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^\\?([0-9a-f]{64}) [ *](.+)$", line)
        if m:
            rel = m.group(2)
            out[rel[2:] if rel.startswith("./") else rel] = m.group(1)
    return out


def check_environment(master, settings, source: str, modules_dir: Optional[str] = None,
                      layout=None) -> PreflightResult:
    """The master's ``environments/<env>`` holds exactly the files publish-config would send from ``source``."""
    from . import publish, puppet_master, remote

    result = PreflightResult()
    env = settings.environment
    try:
        local = file_digests(publish.collect(source, modules_dir))
    except ConfigError as exc:
        result.problems.append(Problem(ENVIRONMENT, str(exc), "run inv generate-config, then inv publish-config"))
        return result
    if master is None:
        result.skipped.append(Skipped(ENVIRONMENT, "no transport to the Puppet master was given"))
        return result
    try:
        layout = layout or puppet_master.layout_for(remote.platform(master))
        path = f"{layout.environments}/{env}"
        if not master.test(f"test -d {shlex.quote(path)}"):
            result.problems.append(Problem(ENVIRONMENT, f"environment {env} is not published on the master "
                                           f"{master.name} ({path} does not exist)",
                                           "run inv publish-config", host=master.name))
            return result
        listing = master.run(listing_command(path), check=False, timeout=300)
    except DeployError as exc:
        result.problems.append(Problem(ENVIRONMENT, f"the master could not be asked: {exc}",
                                       "check that the master answers over SSH (inv bootstrap --dry-run)",
                                       host=getattr(master, "name", "")))
        return result
    if not listing.ok:
        result.problems.append(Problem(ENVIRONMENT, f"listing {path} on the master failed (exit {listing.exited}): "
                                       f"{listing.output[-300:]}", "check the master's code dir", host=master.name))
        return result
    published = parse_listing(listing.stdout)
    mine, theirs = environment_digest(local), environment_digest(published)
    if mine == theirs:
        result.passed.append(f"environment {env} on {master.name} matches the generated one (sha256 {mine[:16]})")
        return result
    changed = sorted(r for r in local if r in published and local[r] != published[r])
    missing = sorted(r for r in local if r not in published)
    extra = sorted(r for r in published if r not in local)
    details = []
    for label, names in (("differ", changed), ("missing on the master", missing), ("only on the master", extra)):
        if names:
            shown = ", ".join(names[:MAX_LISTED]) + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
            details.append(f"{len(names)} file{'s' if len(names) != 1 else ''} {label}: {shown}")
    result.problems.append(Problem(
        ENVIRONMENT, f"environment {env} published on {master.name} is not the generated one "
                     f"(sha256 {theirs[:16]} there, {mine[:16]} generated from {source}): " + "; ".join(details),
        "run inv publish-config to publish what inv generate-config wrote (or generate-config, if the "
        "published one is the one you want)", host=master.name))
    return result


# -- 2. artifacts on the package server -------------------------------------------------------------------------

def _http_sha256(url: str, timeout: float, chunk: int = 1 << 20) -> Tuple[int, str, int]:
    """(HTTP status, sha256 of the body, bytes) of a GET, streamed; no proxy (the package server is ours)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        h = hashlib.sha256()
        size = 0
        while True:
            data = resp.read(chunk)
            if not data:
                break
            h.update(data)
            size += len(data)
        return resp.status, h.hexdigest(), size
    finally:
        conn.close()


def check_artifacts(inventory, settings, components: Iterable[str], manifest, *, base_url: Optional[str] = None,
                    timeout: float = 60.0, workers: int = 4) -> PreflightResult:
    """Every artifact of ``components`` is served with the manifest's sha256 (GET from the controller)."""
    from ..configgen.render import artifact_url, package_base_url

    result = PreflightResult()
    names = sorted(set(components))
    if manifest is None:
        result.skipped.append(Skipped(ARTIFACT, "no artifact manifest (repository manifest.json): nothing to compare "
                                                "the package server's files with; run inv extract-artifacts"))
        return result
    base = base_url or package_base_url(inventory, settings)
    jobs = []
    for name in names:
        comp = inventory.component(name)
        sha, why = manifest.sha256(comp.name, comp.version, comp.artifact)
        if sha is None:
            result.problems.append(Problem(ARTIFACT, why, "run inv extract-artifacts for this release",
                                           component=comp.name, artifact=comp.artifact))
            continue
        jobs.append((comp, sha, artifact_url(base, settings.environment, comp)))
    unreachable = threading.Event()

    def fetch(job):
        comp, sha, url = job
        if unreachable.is_set():
            return None
        try:
            return job, _http_sha256(url, timeout)
        except (OSError, http.client.HTTPException) as exc:
            unreachable.set()
            return job, exc

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs) or 1))) as pool:
        outcomes = list(pool.map(fetch, jobs))
    down = [o for o in outcomes if o is not None and isinstance(o[1], BaseException)]
    if down:
        (_, _, url), exc = down[0]
        result.problems.append(Problem(ARTIFACT, f"the package server at {base} did not answer ({exc})",
                                       "run inv bootstrap --only package-server, and check package_port",
                                       host=inventory.package_server.hostname))
        result.skipped.append(Skipped(ARTIFACT, f"{len(jobs)} artifact(s) not verified: the package server is down"))
        return result
    for (comp, sha, url), (status, got, size) in outcomes:
        where = dict(component=comp.name, artifact=comp.artifact)
        if status == 404:
            result.problems.append(Problem(ARTIFACT, f"missing on the package server: GET {url} -> 404",
                                           "run inv extract-artifacts --publish (or check package_root)", **where))
        elif status != 200:
            result.problems.append(Problem(ARTIFACT, f"GET {url} -> HTTP {status}",
                                           "check the package server (inv bootstrap --only package-server)", **where))
        elif got != sha:
            result.problems.append(Problem(ARTIFACT, f"the package server serves {size} bytes with sha256 {got}, "
                                           f"the manifest says {sha}",
                                           "re-publish the repository (inv extract-artifacts --publish); nodes "
                                           "would refuse this file", **where))
        else:
            result.passed.append(f"artifact {comp.artifact} served with the manifest's sha256")
    return result


# -- 3 and 4. the hosts: WinRM, signed agent, catalog -----------------------------------------------------------

class _VerifiedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address, with the certificate checked for a name (the master's certname, not its address)."""

    def __init__(self, address: str, port: int, context: ssl.SSLContext, server_name: str, timeout: float):
        super().__init__(address, port, context=context, timeout=timeout)
        self._server_name = server_name

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name)


class MasterCA:
    """The certificates the master's CA has signed, read from its public API (no client credential needed)."""

    def __init__(self, address: str, certname: str, ca_pem: str, port: int = PUPPET_PORT, timeout: float = 30.0):
        self.address, self.certname, self.port, self.timeout = address, certname, port, timeout
        self.context = ssl.create_default_context(cadata=ca_pem)

    @classmethod
    def from_master(cls, master, inventory, settings, **kw) -> "MasterCA":
        """Read the CA certificate on the master (``puppet config print localcacert``) over its transport."""
        from . import puppet_master, remote

        layout = puppet_master.layout_for(remote.platform(master))
        path = master.run(f"{layout.puppet} config print localcacert --section server").stdout.strip()
        pem = master.run(f"cat {shlex.quote(path)}").stdout
        server = inventory.puppet_master
        return cls(server.network_address, server.certname(str(settings.domain or "")), pem, **kw)

    def fingerprint(self, certname: str) -> Optional[str]:
        """The SHA256 fingerprint (``AB:CD:...``) of ``certname``'s signed certificate, None when unsigned."""
        conn = _VerifiedHTTPS(self.address, self.port, self.context, self.certname, self.timeout)
        try:
            conn.request("GET", f"/puppet-ca/v1/certificate/{quote(certname)}", headers={"Accept": "text/plain"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise ConfigError(f"the master's CA answered HTTP {resp.status} for {certname}: {body[:200]!r}")
        der = ssl.PEM_cert_to_DER_cert(body.decode("ascii"))
        digest = hashlib.sha256(der).hexdigest().upper()
        return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def agent_fingerprint_command() -> str:
    return cmd_line(["puppet", "agent", "--fingerprint"])


def noop_command(environment: str, components: Sequence[str]) -> str:
    """The node's own catalog run that changes nothing: compiled by the master, evaluated in noop, limited by tags."""
    argv = ["puppet", "agent", "--test", "--noop", "--waitforcert", "0", "--environment", environment]
    if components:
        argv += ["--tags", ",".join(components)]
    return cmd_line(argv)


def _error_lines(output: str, limit: int = 4) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith("Error")]
    return " | ".join(lines[:limit]) or output.strip()[-400:]


def check_host(transport, server, components: Sequence[str], settings, ca: Optional[MasterCA],
               *, compile_catalog: bool = True) -> PreflightResult:
    """WinRM answers, the agent's certificate is the one the CA signed, the node's catalog compiles (noop run)."""
    result = PreflightResult()
    host = server.hostname
    certname = server.certname(str(settings.domain or ""))
    try:
        out = transport.run(agent_fingerprint_command(), check=False, timeout=120)
    except AuthenticationRejected as exc:
        result.problems.append(Problem(WINRM, f"the WinRM credential was rejected: {exc}",
                                       "fix DEPLOY_WINRM_USER/DEPLOY_WINRM_PASSWORD before retrying: every try "
                                       "counts towards the account's lockout", host=host))
        result.skipped.append(Skipped(AGENT, "the host refused the credential", host))
        return result
    except TransportError as exc:
        result.problems.append(Problem(WINRM, f"does not answer over WinRM: {exc}",
                                       "check that the host is up, its WinRM listener and port (Servers sheet, "
                                       "winrm_port/winrm_scheme) and the firewall", host=host))
        result.skipped.append(Skipped(AGENT, "the host did not answer", host))
        result.skipped.append(Skipped(CATALOG, "the host did not answer", host))
        return result
    result.passed.append(f"{host} answers over WinRM")
    match = _FINGERPRINT.search(out.stdout)
    if out.exited != 0 or match is None:
        missing = out.exited == 9009 or "not recognized" in out.output
        result.problems.append(Problem(
            AGENT, "no Puppet agent installed" if missing
            else f"`puppet agent --fingerprint` failed (exit {out.exited}): {_error_lines(out.output)}",
            "install and sign the agent first (inv bootstrap, agents part)", host=host))
        result.skipped.append(Skipped(CATALOG, "the node has no usable agent", host))
        return result
    node_print = match.group(1).upper()
    if ca is None:
        result.skipped.append(Skipped(AGENT, "the master's CA was not reachable: signature not verified", host))
    else:
        try:
            signed = ca.fingerprint(certname)
        except (OSError, http.client.HTTPException, ConfigError, ssl.SSLError) as exc:
            result.skipped.append(Skipped(AGENT, f"the master's CA did not answer for {certname}: {exc}", host))
            signed = ""
        if signed is None:
            result.problems.append(Problem(AGENT, f"the master has not signed a certificate for {certname}",
                                           "sign it after comparing fingerprints (inv bootstrap, agents part); "
                                           "never turn on autosign", host=host))
            result.skipped.append(Skipped(CATALOG, "the agent is not signed, so it cannot ask for a catalog", host))
            return result
        if signed and signed != node_print:
            result.problems.append(Problem(
                AGENT, f"the node's fingerprint ({node_print[:23]}...) is not that of the certificate the master "
                       f"signed for {certname} ({signed[:23]}...)",
                "if it was signed just now, the node has not fetched it: finish the handshake (inv bootstrap, "
                "agents part: puppet ssl download_cert); otherwise the node's SSL directory or the CA was "
                "replaced: clean the certname on both and sign again", host=host))
            result.skipped.append(Skipped(CATALOG, "the node's certificate does not match the master's", host))
            return result
        if signed:
            result.passed.append(f"{host}: agent certificate {certname} signed by the master")
    if not compile_catalog:
        result.skipped.append(Skipped(CATALOG, "catalog compilation was not asked for", host))
        return result
    try:
        run = transport.run(noop_command(settings.environment, components), check=False,
                            timeout=float(settings.command_timeout_s))
    except TransportError as exc:
        result.problems.append(Problem(CATALOG, f"the noop run did not finish: {exc}",
                                       "re-run the pre-flight; check the host", host=host))
        return result
    text = run.output
    if run.exited in (0, 2):
        result.passed.append(f"{host}: catalog compiles for {certname} in {settings.environment}")
    elif "already in progress" in text:
        result.skipped.append(Skipped(CATALOG, "a Puppet run is in progress on the node; its catalog was not "
                                               "compiled now", host))
    elif "Could not retrieve catalog" in text or run.exited == 1:
        result.problems.append(Problem(CATALOG, f"the catalog of {certname} does not compile on the master in "
                                                f"environment {settings.environment}: {_error_lines(text)}",
                                       "fix the Puppet code or Hiera data named above, then inv generate-config "
                                       "and inv publish-config", host=host, component=",".join(components)))
    else:
        result.problems.append(Problem(CATALOG, f"the catalog compiled, but its noop run reports failures "
                                                f"(exit {run.exited}): {_error_lines(text)}",
                                       "fix what the errors name on the node before deploying",
                                       host=host, component=",".join(components)))
    return result


def check_hosts(inventory, settings, targets: Mapping[str, Sequence[str]], winrm_pool, *,
                ca: Optional[MasterCA] = None, compile_catalog: bool = True,
                workers: Optional[int] = None) -> PreflightResult:
    """``check_host`` on every target, in parallel (the host's one WinRM shell of the run, from the pool)."""
    result = PreflightResult()
    servers = []
    for hostname in targets:
        try:
            servers.append(inventory.server(hostname))
        except KeyError:
            result.problems.append(Problem(WINRM, "not a server of the inventory", "check --hosts", host=hostname))

    def one(server):
        try:
            # borrow: the host's one shell of the run, still open when the deploy's first Puppet run
            # borrows it (one connection and logon per host, paid here, not on the first group's path)
            return check_host(winrm_pool.borrow(server), server, tuple(targets[server.hostname]), settings, ca,
                              compile_catalog=compile_catalog)
        except DeployError as exc:  # a setting or a quoting problem: still one located line
            r = PreflightResult()
            r.problems.append(Problem(WINRM, str(exc), host=server.hostname))
            return r

    n = workers or int(getattr(settings, "max_parallel", 10) or 10)
    with ThreadPoolExecutor(max_workers=max(1, min(n, len(servers) or 1))) as pool:
        for r in pool.map(one, servers):
            result.extend(r)
    return result


# -- everything ------------------------------------------------------------------------------------------------

def preflight(inventory, settings, targets: Mapping[str, Sequence[str]], *, master, winrm_pool, manifest,
              environment_dir: str, modules_dir: Optional[str] = None, ca: Optional[MasterCA] = None,
              package_base_url: Optional[str] = None, compile_catalogs: bool = True,
              http_timeout: float = 60.0) -> PreflightResult:
    """All four checks, concurrently; every problem found, none raised. See the module docstring.

    ``targets``: {hostname: components to deploy there} (``targets_for``).
    ``master``: the transport to the Puppet master (ssh.Shell; None skips the
    environment check and, without ``ca``, the signature check). ``ca``: a
    ``MasterCA``; default ``MasterCA.from_master(master, ...)``.
    """
    result = PreflightResult()
    if ca is None and master is not None:
        try:
            ca = MasterCA.from_master(master, inventory, settings)
        except (DeployError, ValueError, ssl.SSLError) as exc:  # ValueError/SSLError: not a PEM certificate
            result.problems.append(Problem(AGENT, f"the master's CA certificate could not be read: {exc}",
                                           "check the Puppet master (inv bootstrap --only puppet-master)",
                                           host=inventory.puppet_master.hostname))
    components = sorted({c for comps in targets.values() for c in comps})
    with ThreadPoolExecutor(max_workers=3) as pool:
        env = pool.submit(check_environment, master, settings, environment_dir, modules_dir)
        arts = pool.submit(check_artifacts, inventory, settings, components, manifest, base_url=package_base_url,
                           timeout=http_timeout)
        hosts = pool.submit(check_hosts, inventory, settings, targets, winrm_pool, ca=ca,
                            compile_catalog=compile_catalogs)
        for future in (env, arts, hosts):
            result.extend(future.result())
    return result
