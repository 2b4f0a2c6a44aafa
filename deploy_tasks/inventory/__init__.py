"""The inventory: model, workbook loaders and validation."""

from __future__ import annotations

import os

from .model import Assignment, Component, Inventory, Parameter, Server
from .validate import build_inventory
from .workbook import read_workbook


def load_inventory(path: str | os.PathLike) -> Inventory:
    """Read and validate the workbook at ``path``; raise InventoryError listing every problem."""
    return build_inventory(read_workbook(path))


__all__ = ["Assignment", "Component", "Inventory", "Parameter", "Server", "load_inventory"]
