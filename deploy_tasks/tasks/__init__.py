"""The Invoke namespace: every task module contributes its tasks; settings are declared once."""

from __future__ import annotations

from invoke import Collection

from .. import settings
from ._common import check_config_files
from . import artifacts as _artifacts
from . import bootstrap as _bootstrap
from . import configgen as _configgen
from . import deploy as _deploy
from . import fleet as _fleet
from . import inventory as _inventory
from . import rehearse as _rehearse

# Invoke reads invoke.yaml after importing this module and before any task: a broken file is named here.
check_config_files()

ns = Collection()
for _module in (_inventory, _artifacts, _configgen, _bootstrap, _deploy, _rehearse):
    for _task in _module.TASKS:
        ns.add_task(_task)
ns.add_collection(_fleet.COLLECTION)

# Every key is declared here, or Invoke ignores its INVOKE_DEPLOY_* env var.
ns.configure({"deploy": settings.declared_defaults()})
