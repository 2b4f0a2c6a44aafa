"""Dependency groups (waves): which components deploy together, on which hosts."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .inventory.graph import dependency_groups
from .inventory.model import Inventory


@dataclass(frozen=True)
class PlannedComponent:
    name: str
    version: str
    depends_on: tuple
    hosts: tuple


@dataclass(frozen=True)
class Wave:
    """Group N: components whose dependencies all sit in groups below N."""

    group: int
    components: tuple

    @property
    def hosts(self) -> tuple:
        seen: dict = {}
        for component in self.components:
            for host in component.hosts:
                seen.setdefault(host, None)
        return tuple(seen)

    def components_on(self, host: str) -> tuple:
        return tuple(c.name for c in self.components if host in c.hosts)


@dataclass(frozen=True)
class Plan:
    waves: tuple

    def wave(self, group: int) -> Wave:
        for wave in self.waves:
            if wave.group == group:
                return wave
        raise ConfigError(f"there is no group {group}; this inventory has groups 1 to {len(self.waves)} (see inv plan)")

    def group_of(self, component: str) -> int:
        for wave in self.waves:
            if any(c.name == component for c in wave.components):
                return wave.group
        raise KeyError(component)

    def as_dict(self) -> dict:
        return {
            "groups": [
                {
                    "group": wave.group,
                    "components": [
                        {"name": c.name, "version": c.version, "depends_on": list(c.depends_on), "hosts": list(c.hosts)}
                        for c in wave.components
                    ],
                }
                for wave in self.waves
            ]
        }


def make_plan(inventory: Inventory) -> Plan:
    """Group every component by dependency depth, in workbook order within a group."""
    groups = dependency_groups({c.name: c.depends_on for c in inventory.components})
    hosts: dict = {c.name: [] for c in inventory.components}
    for assignment in inventory.mapping:
        hosts[assignment.component].append(assignment.hostname)
    waves = []
    for number in range(1, max(groups.values(), default=0) + 1):
        members = tuple(
            PlannedComponent(c.name, c.version, c.depends_on, tuple(hosts[c.name]))
            for c in inventory.components
            if groups[c.name] == number
        )
        waves.append(Wave(number, members))
    return Plan(tuple(waves))
