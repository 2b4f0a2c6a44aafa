"""Shared fixtures: real components on loopback; nothing from the user's own config leaks in."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support import services  # noqa: E402

EXAMPLE_XLSX = ROOT / "inventory" / "example.xlsx"
EXAMPLE_XLS = ROOT / "inventory" / "example.xls"


@pytest.fixture(autouse=True)
def _isolated_invoke_config(monkeypatch, tmp_path_factory):
    """Keep a real ~/.invoke.yaml and INVOKE_* variables out of tests (as Invoke's own suite does)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for key in list(os.environ):
        if key.startswith("INVOKE_") or key in ("DEPLOY_WINRM_USER", "DEPLOY_WINRM_PASSWORD"):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def example_xlsx() -> Path:
    return EXAMPLE_XLSX


@pytest.fixture(scope="session")
def example_xls() -> Path:
    return EXAMPLE_XLS


@pytest.fixture(scope="session")
def sshd():
    """A real OpenSSH server on 127.0.0.1:2222 (root, generated key); see tests/support/services.py."""
    try:
        server = services.ensure_sshd()
    except services.Missing as exc:
        pytest.skip(str(exc))
    yield server
    if server.started:
        services.stop_sshd()


@pytest.fixture(scope="session")
def puppet_master():
    """A real puppetserver on 127.0.0.1:8140, certname deploy01.example.test (reused when up).

    Yields a dict: url, certname, codedir, environmentpath, ssldir, cacert. It is left
    running for the rest of the session (start-up takes ~25 s); .ci/run stops it.
    """
    try:
        info = services.ensure_puppetserver()
    except services.Missing as exc:
        pytest.skip(str(exc))
    yield info


@pytest.fixture
def winrm_fleet(request, tmp_path):
    """The rehearsal fleet (emulated Windows hosts) in-process, on ephemeral ports; stopped afterwards.

    Parametrize indirectly with a dict, every key optional:
    ``inventory`` (workbook path, Inventory, or [(hostname, address)]; default: the
    example workbook's Windows servers), ``spec`` (FleetSpec or its mapping form),
    ``persona_factory`` (default: the Windows persona), ``allow_unencrypted``,
    ``password``. Yields the started ``deploy_tasks.rehearsal.fleet.Fleet``.
    """
    from deploy_tasks.inventory import load_inventory
    from deploy_tasks.rehearsal.faults import FleetSpec
    from deploy_tasks.rehearsal.fleet import Fleet, hosts_of

    params = dict(getattr(request, "param", None) or {})
    inventory = params.pop("inventory", EXAMPLE_XLSX)
    spec = params.pop("spec", None)
    if spec is not None and not isinstance(spec, FleetSpec):
        spec = FleetSpec.from_mapping(spec)
    if isinstance(inventory, (str, Path)):
        inventory = load_inventory(inventory)
    if isinstance(inventory, (list, tuple)):
        hosts, domain = list(inventory), ""
    else:
        hosts, domain = hosts_of(inventory), str(inventory.settings.get("domain") or "")
    fleet = Fleet(hosts, tmp_path / "fleet", spec, http_port=0, https_port=0, domain=domain, **params)
    fleet.start()
    yield fleet
    fleet.stop()
