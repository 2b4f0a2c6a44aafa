"""Shared fixtures: real components on loopback; nothing from the user's own config leaks in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from deploy_tasks import processes
from tests.support import services

ROOT = Path(__file__).resolve().parent.parent
# what the tests start, and what `inv fleet.up` run by a test starts, goes into one ledger
os.environ.setdefault(processes.LEDGER_ENV, str(services.DEFAULT_LEDGER))

EXAMPLE_XLSX = ROOT / "inventory" / "example.xlsx"
EXAMPLE_XLS = ROOT / "inventory" / "example.xls"


#: fixtures that start or reach a real component: a test using one must carry the integration marker
INTEGRATION_FIXTURES = {"sshd", "puppet_master", "winrm_fleet"}


def pytest_collection_modifyitems(config, items):
    """Keep `pytest -m "not integration"` honest: it runs as any user, with nothing installed."""
    unmarked = [item.nodeid for item in items
                if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError("these tests use a real component (" + ", ".join(sorted(INTEGRATION_FIXTURES))
                                + ") but lack @pytest.mark.integration:\n  " + "\n  ".join(unmarked))


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
    """A real OpenSSH server on 127.0.0.1 (2222 when free; root, generated key); see tests/support/services.py."""
    try:
        server = services.ensure_sshd()
    except services.Missing as exc:
        pytest.skip(str(exc))
    yield server
    if server.started:
        services.stop_sshd(server)


@pytest.fixture(scope="session", autouse=True)
def _record_services_the_tests_start():
    """puppetserver and nginx that a test brought up (`inv bootstrap` starts them when down) go in the ledger.

    Only when this run is root: others cannot start them, and need not look.
    """
    if os.geteuid() != 0:
        yield
        return
    before = services.services_now()
    yield
    services.record_started_since(before)


@pytest.fixture(scope="session")
def puppet_master():
    """A real puppetserver on 127.0.0.1:8140, certname deploy01.example.test (reused when up).

    Yields a dict: url, certname, codedir, environmentpath, ssldir, cacert. It is left
    running for the rest of the session (start-up takes ~25 s); when this session started it,
    it is in the process ledger and .ci/run stops it in CI.
    """
    try:
        info = services.ensure_puppetserver()
    except services.Missing as exc:
        pytest.skip(str(exc))
    yield info


@pytest.fixture(scope="session")
def master_environment(puppet_master):
    """Claim a Puppet environment on the real master for this test run: ``claim(prefix)`` -> ``<prefix>_<run id>``.

    The name is unique to this run, so concurrent runs on the machine never share
    (or delete) each other's environments; what was claimed, and only that, is
    removed from environments/ at the end of the session.
    """
    environments = Path(puppet_master["environmentpath"])
    claimed = {}

    def claim(prefix: str) -> str:
        name = f"{prefix}_{services.RUN_ID}"
        if name not in claimed:
            path = environments / name
            if os.path.lexists(path):
                raise RuntimeError(f"{path} exists already: not this run's, so not used")
            claimed[name] = path
        return name

    yield claim
    for name, path in claimed.items():
        # the environment, and any staging or set-aside copy next to it (named after it, so ours too)
        for entry in [path, *environments.glob(f".{name}.*")]:
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


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
