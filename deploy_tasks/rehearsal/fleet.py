"""The rehearsal fleet: one emulated Windows host per Windows server of an inventory.

Each host listens on its own loopback address (127.0.0.x: the inventory's
address when it is one, else allocated) on 5985 (HTTP) and 5986 (HTTPS), has
its own sandbox directory standing for ``C:\\`` (``<root>/<hostname>/C``), and a
certificate from the fleet's CA naming the host and its address. All hosts
share one local administrator account (``DEPLOY_WINRM_USER`` /
``DEPLOY_WINRM_PASSWORD``, or generated), as a domain account would be.

Used three ways: in-process from the ``winrm_fleet`` pytest fixture, in a
benchmark, and as a background process (``python -m
deploy_tasks.rehearsal.fleet``) started by ``inv fleet.up``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..errors import ConfigError, DeployError
from .base import Persona, RebootHook
from .certs import make_ca, make_host_cert
from .faults import FleetSpec, HostFaults
from .server import Credentials, WinRMHost

from . import DEFAULT_ROOT  # noqa: E402  (kept light for the task layer)
DEFAULT_USER = "deploy"

PersonaFactory = Callable[[str, str, Path, HostFaults, FleetSpec, RebootHook], Persona]


def default_persona_factory(hostname: str, address: str, sandbox: Path, faults: HostFaults, spec: FleetSpec,
                            on_reboot: RebootHook) -> Persona:
    """The Windows persona (deploy_tasks/rehearsal/persona.py), imported only when a fleet starts."""
    try:
        from .persona import WindowsPersona
    except ImportError as exc:
        raise ConfigError(f"the emulated Windows persona (deploy_tasks/rehearsal/persona.py) cannot be loaded: {exc}") from None
    return WindowsPersona(hostname, address, sandbox, faults, spec, on_reboot)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network("127.0.0.0/8")
    except ValueError:
        return False


def allocate_addresses(hosts: Iterable[Tuple[str, str]], first: str = "127.0.0.21") -> List[Tuple[str, str]]:
    """(hostname, address) -> (hostname, loopback address): keep 127/8 addresses, give the others free ones."""
    hosts = list(hosts)
    used = {a for _, a in hosts if _is_loopback(a)}
    nxt = int(ipaddress.ip_address(first))
    result = []
    for hostname, address in hosts:
        if not _is_loopback(address):
            while True:
                candidate = ipaddress.ip_address(nxt)
                nxt += 1
                last = int(candidate) & 0xFF
                if last in (0, 255) or str(candidate) in used:
                    continue
                if candidate not in ipaddress.ip_network("127.0.0.0/8"):
                    raise ConfigError("rehearsal fleet: no free 127.0.0.0/8 address left")
                address = str(candidate)
                used.add(address)
                break
        result.append((hostname, address))
    return result


def hosts_of(inventory) -> List[Tuple[str, str]]:
    """The Windows servers of an inventory as (hostname, loopback address)."""
    servers = inventory.windows_servers
    if not servers:
        raise ConfigError(f"{inventory.source}: the Servers sheet has no windows server: nothing to emulate")
    return allocate_addresses((s.hostname, s.address) for s in servers)


def linux_names(inventory, domain: str) -> Dict[str, str]:
    """The inventory's Linux servers (master, package server) by hostname and FQDN -> the address the nodes use."""
    names: Dict[str, str] = {}
    for server in inventory.servers:
        if server.is_windows:
            continue
        address = server.network_address
        names[server.hostname.lower()] = address
        if domain:
            names[f"{server.hostname.lower()}.{domain}"] = address
    return names


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


class Fleet:
    """Emulated Windows hosts on loopback, started and stopped together."""

    def __init__(self, hosts: Sequence[Tuple[str, str]], root: Path = DEFAULT_ROOT, spec: Optional[FleetSpec] = None, *,
                 persona_factory: Optional[PersonaFactory] = None, username: Optional[str] = None,
                 password: Optional[str] = None, http_port: int = 5985, https_port: int = 5986,
                 allow_unencrypted: bool = False, domain: str = "", names: Optional[Dict[str, str]] = None):
        self.root = Path(root).absolute()  # hosts run programs (the real Puppet agent) with their own cwd
        self.spec = spec or FleetSpec()
        self.persona_factory = persona_factory or default_persona_factory
        self.username = username or os.environ.get("DEPLOY_WINRM_USER") or DEFAULT_USER
        self.password = password or os.environ.get("DEPLOY_WINRM_PASSWORD") or secrets.token_urlsafe(18)
        self.http_port = http_port
        self.https_port = https_port
        self.allow_unencrypted = allow_unencrypted
        self.domain = domain
        # the deployment's DNS as the emulated hosts see it: name -> address (the master, the package server)
        self.names = dict(names or {})
        self._hosts_in = allocate_addresses(hosts)
        names = [h.lower() for h, _ in self._hosts_in]
        if len(set(names)) != len(names):
            raise ConfigError("rehearsal fleet: two hosts with the same hostname")
        self.hosts: Dict[str, WinRMHost] = {}
        self.ca_cert: Optional[Path] = None
        self.ntlm_user_file = self.root / "ntlm_users"
        self._old_ntlm_env: Optional[str] = None

    @classmethod
    def from_inventory(cls, inventory, root: Path = DEFAULT_ROOT, spec: Optional[FleetSpec] = None,
                       domain: Optional[str] = None, **kwargs) -> "Fleet":
        """``domain``: the one in force (flag, env, invoke.yaml); None takes the Settings sheet's."""
        if domain is None:
            domain = str(inventory.settings.get("domain") or "")
        kwargs.setdefault("names", linux_names(inventory, domain))
        return cls(hosts_of(inventory), root, spec, domain=domain, **kwargs)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> "Fleet":
        self.root.mkdir(parents=True, exist_ok=True)
        credentials = Credentials(self.username, self.password)
        _write_private(self.ntlm_user_file, credentials.ntlm_user_lines(h for h, _ in self._hosts_in))
        # pyspnego's NTLM acceptor reads the account from this file at each handshake
        self._old_ntlm_env = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = str(self.ntlm_user_file.resolve())
        ca = make_ca(self.root / "ca")
        self.ca_cert = ca.cert.resolve()
        try:
            for hostname, address in self._hosts_in:
                self.hosts[hostname.lower()] = self._start_host(hostname, address, ca, credentials)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_host(self, hostname: str, address: str, ca, credentials: Credentials) -> WinRMHost:
        host_dir = self.root / hostname
        sandbox = host_dir / "C"
        sandbox.mkdir(parents=True, exist_ok=True)
        names = [hostname, hostname.lower()]
        if self.domain:
            names.append(f"{hostname.lower()}.{self.domain}")
        pair = make_host_cert(ca, host_dir, hostname, names, [address])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pair.cert), str(pair.key))
        faults = self.spec.faults_for(hostname)
        holder: dict = {}

        def on_reboot(seconds: float) -> None:
            holder["host"].reboot(seconds)

        persona = self.persona_factory(hostname, address, sandbox, faults, self.spec, on_reboot)
        add_entry = getattr(persona, "add_hosts_entry", None)
        for name, target in self.names.items():
            if add_entry is not None:
                add_entry(name, target)  # as the site's DNS would answer: the nodes reach the master by name
        host = WinRMHost(hostname, address, persona, faults, credentials, http_port=self.http_port,
                         https_port=self.https_port, ssl_context=context, cert_sha256=pair.der_sha256(),
                         allow_unencrypted=self.allow_unencrypted)
        holder["host"] = host
        try:
            host.start()
        except OSError as exc:
            raise ConfigError(f"rehearsal fleet: host {hostname} cannot listen on {address} "
                              f"ports {self.http_port}/{self.https_port}: {exc.strerror or exc} "
                              "(another fleet running? `inv fleet.down`)") from None
        return host

    def stop(self) -> None:
        hosts = list(self.hosts.values())
        threads = [threading.Thread(target=h.stop, daemon=True) for h in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        for host in hosts:
            closer = getattr(host.persona, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:  # noqa: BLE001 - stopping must finish for every host
                    pass
        self.hosts.clear()
        self.ntlm_user_file.unlink(missing_ok=True)  # it holds the password in clear
        if self._old_ntlm_env is None:
            if os.environ.get("NTLM_USER_FILE") == str(self.ntlm_user_file.resolve()):
                os.environ.pop("NTLM_USER_FILE", None)
        else:
            os.environ["NTLM_USER_FILE"] = self._old_ntlm_env

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- lookups -----------------------------------------------------------------
    def host(self, hostname: str) -> WinRMHost:
        try:
            return self.hosts[hostname.lower()]
        except KeyError:
            raise ConfigError(f"rehearsal fleet: no host {hostname!r}; hosts: {', '.join(self.hosts)}") from None

    def endpoint(self, hostname: str, scheme: str = "https") -> str:
        host = self.host(hostname)
        port = host.https_port if scheme == "https" else host.http_port
        return f"{scheme}://{host.address}:{port}/wsman"

    def describe(self) -> dict:
        """What clients need (fleet.json): credentials, the CA, every host's address and ports."""
        return {
            "username": self.username,
            "password": self.password,
            "ca_cert": str(self.ca_cert) if self.ca_cert else None,
            "hosts": [{"hostname": h.hostname, "address": h.address, "http_port": h.http_port, "https_port": h.https_port}
                      for h in self.hosts.values()],
        }

    def write_json(self, path: Path) -> None:
        _write_private(Path(path), json.dumps(self.describe(), indent=2) + "\n")


# -- the background process (inv fleet.up) ------------------------------------------


def load_factory(spec: str) -> PersonaFactory:
    """``module:callable`` -> the persona factory it names."""
    import importlib

    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"persona factory {spec!r}: expected module:callable")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"persona factory {spec!r} cannot be loaded: {exc}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy_tasks.rehearsal.fleet",
                                     description="Run the rehearsal fleet (emulated Windows hosts) until SIGTERM.")
    parser.add_argument("--inventory", required=True, help="inventory workbook")
    parser.add_argument("--spec", default=None, help="fleet spec (faults, mode) YAML/JSON")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="state directory (fleet.json, sandboxes, CA)")
    parser.add_argument("--http-port", type=int, default=5985)
    parser.add_argument("--https-port", type=int, default=5986)
    parser.add_argument("--allow-unencrypted", action="store_true", help="accept plain SOAP over HTTP (Basic)")
    parser.add_argument("--persona", default=None, help="persona factory as module:callable (default: WindowsPersona)")
    parser.add_argument("--domain", default=None, help="the DNS domain in force (default: the Settings sheet's)")
    args = parser.parse_args(argv)

    from ..inventory import load_inventory

    root = Path(args.root)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        inventory = load_inventory(args.inventory)
        fleet = Fleet.from_inventory(inventory, root, FleetSpec.load(args.spec), domain=args.domain,
                                     http_port=args.http_port,
                                     https_port=args.https_port, allow_unencrypted=args.allow_unencrypted,
                                     persona_factory=load_factory(args.persona) if args.persona else None)
        fleet.start()
    except DeployError as exc:
        print(f"fleet: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        # fleet.json last: its presence tells `inv fleet.up` that every host listens
        fleet.write_json(root / "fleet.json")
        print(f"fleet: {len(fleet.hosts)} emulated hosts up", flush=True)
        stop.wait()
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
