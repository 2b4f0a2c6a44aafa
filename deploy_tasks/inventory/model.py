"""The inventory model: frozen dataclasses built from a validated workbook."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Optional

from ..errors import Problem
from ..names import certname
from .health import HealthCheck

LOCAL = "local"


@dataclass(frozen=True)
class Server:
    """A row of the Servers sheet."""

    hostname: str
    address: str
    os: str  # "windows" or "linux"
    roles: tuple[str, ...] = ()
    winrm_port: Optional[int] = None
    notes: str = ""
    row: int = 0

    @property
    def is_windows(self) -> bool:
        return self.os == "windows"

    @property
    def is_local(self) -> bool:
        return self.address == LOCAL

    @property
    def network_address(self) -> str:
        """The address other hosts use to reach this one (``local`` is loopback)."""
        return "127.0.0.1" if self.is_local else self.address

    def certname(self, domain: str = "") -> str:
        return certname(self.hostname, domain)

    def has_role(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class Component:
    """A row of the Components sheet."""

    name: str
    version: str
    artifact: str
    depends_on: tuple[str, ...] = ()
    puppet_class: str = ""  # blank: the default product::component type titled by name
    timeout_s: Optional[int] = None
    description: str = ""
    row: int = 0
    health_check: Optional[HealthCheck] = None  # the Health Check column; None: no check


@dataclass(frozen=True)
class Assignment:
    """A row of the Mapping sheet: a component placed on a host, with its parameters."""

    hostname: str
    component: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    row: int = 0


@dataclass(frozen=True)
class Parameter:
    """A row of the Parameters sheet."""

    scope: str  # "common", "component:<name>", "host:<hostname>"
    key: str
    value: Any
    row: int = 0


@dataclass(frozen=True)
class Inventory:
    """Everything the workbook says, checked. Lookups are by exact (canonical) names."""

    source: str
    servers: tuple[Server, ...]
    components: tuple[Component, ...]
    mapping: tuple[Assignment, ...]
    parameters: tuple[Parameter, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[Problem, ...] = ()

    # -- lookups ---------------------------------------------------------------
    def server(self, hostname: str) -> Server:
        for server in self.servers:
            if server.hostname.lower() == hostname.lower():
                return server
        raise KeyError(hostname)

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)

    @property
    def windows_servers(self) -> tuple[Server, ...]:
        return tuple(s for s in self.servers if s.is_windows)

    def servers_with_role(self, role: str) -> tuple[Server, ...]:
        return tuple(s for s in self.servers if s.has_role(role))

    @property
    def puppet_master(self) -> Server:
        return self.servers_with_role("puppet-master")[0]

    @property
    def package_server(self) -> Server:
        return self.servers_with_role("package-server")[0]

    def hosts_for(self, component: str) -> tuple[str, ...]:
        return tuple(a.hostname for a in self.mapping if a.component == component)

    def components_on(self, hostname: str) -> tuple[str, ...]:
        return tuple(a.component for a in self.mapping if a.hostname.lower() == hostname.lower())

    def assignment(self, hostname: str, component: str) -> Assignment:
        for a in self.mapping:
            if a.hostname.lower() == hostname.lower() and a.component == component:
                return a
        raise KeyError((hostname, component))

    def certname_clashes(self, domain: str) -> list:
        """Servers whose Puppet certname another server already has (WIN01 and win01.example.test), located."""
        seen: dict = {}
        problems = []
        for server in self.servers:
            name = server.certname(domain)
            first = seen.setdefault(name, server)
            if first is not server:
                problems.append(Problem(
                    f"Servers!A{server.row}",
                    f"hostname {server.hostname!r} gets the Puppet certname {name}, as {first.hostname!r} "
                    f"(Servers!A{first.row}) does" + (f" with domain {domain!r}" if domain else ""),
                    "two hosts would share one certificate, node block and Hiera file: rename one of them"))
        return problems

    def parameters_by_scope(self) -> dict:
        """The Parameters rows grouped by scope ("common", "component:<name>", "host:<Hostname>")."""
        by_scope: dict = {}
        for p in self.parameters:
            by_scope.setdefault(p.scope, []).append(p)
        return by_scope

    def parameters_for(self, hostname: str, component: str) -> dict:
        """A component's parameters on a host: Mapping columns > host: > component: > common."""
        return layered_parameters(self.parameters_by_scope(), self.assignment(hostname, component))[0]


def layered_parameters(by_scope: Mapping[str, Any], assignment: Assignment) -> tuple:
    """The one precedence of parameters: Mapping columns > host: > component: > common.

    Returns (values, {key: where the value comes from}). ``by_scope`` is
    ``Inventory.parameters_by_scope()``; scopes are stored canonically by
    validation ("host:<Hostname as in Servers>").
    """
    values: dict = {}
    where: dict = {}
    for scope in ("common", f"component:{assignment.component}", f"host:{assignment.hostname}"):
        for p in by_scope.get(scope, ()):
            values[p.key] = p.value
            where[p.key] = f"Parameters row {p.row} ({scope} {p.key})"
    for key, value in assignment.params.items():
        values[key] = value
        where[key] = f"Mapping row {assignment.row}, column {key}"
    return values, where
