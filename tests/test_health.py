"""Health checks: the Health Check column (parse, validation, example) and the check on a host.

Output samples. ``sc query``: the layout of Microsoft's "sc query" page
(Windows Commands) and of Windows Server 2012 R2; the state codes and names
are SERVICE_STATUS.dwCurrentState (winsvc.h); 1060 is ERROR_SERVICE_DOES_NOT_EXIST
with sc's "[SC] EnumQueryServicesStatus:OpenService FAILED 1060" text. The
German sample keeps Windows' rule that labels are translated and the state's
number and constant name are not. ``netstat``: NETSTAT_XP is a recorded
``netstat -ano`` published at mikewilliamson.wordpress.com/2006/08/30/netstat
(addresses as published); NETSTAT_2012 has the Server 2012 R2 layout with
IPv6 rows (``[::]:80``).
"""

from __future__ import annotations

import pytest

from deploy_tasks.errors import HealthCheckFailed, InventoryError
from deploy_tasks.inventory import example, load_inventory
from deploy_tasks.inventory.health import HealthCheck, parse
from deploy_tasks.steps import health
from deploy_tasks.transports.base import Result
from tests import workbooks as wb

# -- the column ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind, target", [
    ("service:Product_zeo_server", "service", "Product_zeo_server"),
    ("  Service : W3SVC ", "service", "W3SVC"),
    ("SERVICE:MSSQL$SQLEXPRESS", "service", "MSSQL$SQLEXPRESS"),
    ("port:80", "port", "80"),
    ("port: 8443", "port", "8443"),
    ("port:80.0", "port", "80"),  # a spreadsheet that stored the number part as a float
    ("cmd:type C:\\Product\\x\\etc\\parameters.json", "cmd", "type C:\\Product\\x\\etc\\parameters.json"),
    ("cmd:findstr /c:\"ok\" C:\\status.txt & exit 0", "cmd", "findstr /c:\"ok\" C:\\status.txt & exit 0"),
])
def test_parse_accepts_the_three_forms(text, kind, target):
    assert parse(text) == HealthCheck(kind, target)


@pytest.mark.parametrize("text", [None, "", "   "])
def test_blank_is_no_check(text):
    assert parse(text) is None


@pytest.mark.parametrize("text, phrase", [
    ("http://zapp01/health", "is not one of the three forms"),
    ("W3SVC", "is not one of the three forms"),
    ("service:", "names no service"),
    ("port:", "names no port"),
    ("port:0", "not a whole number from 1 to 65535"),
    ("port:65536", "not a whole number from 1 to 65535"),
    ("port:http", "not a whole number from 1 to 65535"),
    ("port:80.5", "not a whole number from 1 to 65535"),
    ("service:a&b", "is not a Windows service name"),
    ("service:C:\\svc", "is not a Windows service name"),
    ("service:\"W3SVC\"", "is not a Windows service name"),
    ("cmd:echo a\r\necho b", "line break or NUL"),
    ("cmd:" + "x" * 9000, "cmd.exe takes at most"),
])
def test_parse_refuses_with_a_sentence(text, phrase):
    with pytest.raises(ValueError, match=phrase):
        parse(text)


@pytest.mark.parametrize("fmt", ["xlsx", "xls"])
def test_validation_locates_a_bad_spec_and_lists_the_forms(tmp_path, fmt):
    data = wb.sheets()
    wb.set_cell(data, "Components", wb.row_of(data, "Components", "Component", "ldap_directory"),
                "Health Check", "port:http")
    wb.set_cell(data, "Components", wb.row_of(data, "Components", "Component", "mail_relay"),
                "Health Check", "svc:smtp")
    with pytest.raises(InventoryError) as info:
        load_inventory(wb.write(tmp_path, data, fmt))
    found = {p.where: p for p in info.value.problems}
    assert set(found) == {"Components!G5", "Components!G6"}
    assert "port 'http' is not a whole number from 1 to 65535" in found["Components!G5"].message
    for p in found.values():
        assert "service:<name>" in p.hint and "port:<n>" in p.hint and "cmd:<command>" in p.hint
    assert "Components!G5: port 'http'" in str(info.value)


def test_the_column_is_optional(tmp_path):
    data = wb.sheets()
    headers, rows = data["Components"]
    col = headers.index("Health Check")
    data["Components"] = ([h for i, h in enumerate(headers) if i != col],
                          [[v for i, v in enumerate(r) if i != col] for r in rows])
    inv = load_inventory(wb.write(tmp_path, data, "xlsx"))
    assert all(c.health_check is None for c in inv.components)


def test_example_checks_what_the_product_module_creates(example_xlsx, example_xls):
    """Each service: check of the example names the service puppet/modules/product keeps running for it."""
    a, b = load_inventory(example_xlsx), load_inventory(example_xls)
    assert [(c.name, c.health_check) for c in a.components] == [(c.name, c.health_check) for c in b.components]
    checked = {c.name: c.health_check for c in a.components if c.health_check}
    assert len(checked) >= 5 and {c.kind for c in checked.values()} == {"service", "cmd"}
    for name, check in checked.items():
        comp = a.component(name)
        assert comp.puppet_class == ""  # the product module's component type, whose service is Product_<name>
        for host in a.hosts_for(name):
            params = a.parameters_for(host, name)
            assert "service_name" not in params
            if check.kind == "service":
                assert check.target == f"Product_{name}"
            else:  # the file the module writes: <install_root>\<component>\etc\parameters.json
                assert check.target == f"type {params['install_root']}\\{name}\\etc\\parameters.json"
    assert example.COMPONENTS[0][6] is None  # Health Check sits before Description, as in the schema


def test_every_column_is_documented_and_has_a_note():
    from pathlib import Path

    from deploy_tasks.inventory.template import HEADER_NOTES
    from deploy_tasks.inventory.validate import SCHEMA

    readme = (Path(__file__).resolve().parent.parent / "inventory" / "README.md").read_text()
    for spec in SCHEMA:
        section = readme.split(f"## {spec.name}", 1)[1].split("\n## ", 1)[0]
        for column in spec.columns:
            assert f"| {column.header} |" in section, f"{spec.name}: column {column.header} is not in inventory/README.md"
            assert (spec.name, column.header) in HEADER_NOTES, f"{spec.name}: column {column.header} has no note"


# -- reading Windows' output --------------------------------------------------------------------------------

SC_RUNNING = """
SERVICE_NAME: Spooler
        TYPE               : 110  WIN32_OWN_PROCESS  (interactive)
        STATE              : 4  RUNNING
                                (STOPPABLE, NOT_PAUSABLE, IGNORES_SHUTDOWN)
        WIN32_EXIT_CODE    : 0  (0x0)
        SERVICE_EXIT_CODE  : 0  (0x0)
        CHECKPOINT         : 0x0
        WAIT_HINT          : 0x0
"""
SC_STOPPED = """
SERVICE_NAME: Product_zeo_server
        TYPE               : 10  WIN32_OWN_PROCESS
        STATE              : 1  STOPPED
        WIN32_EXIT_CODE    : 1077  (0x435)
        SERVICE_EXIT_CODE  : 0  (0x0)
        CHECKPOINT         : 0x0
        WAIT_HINT          : 0x0
"""
SC_START_PENDING = """
SERVICE_NAME: Product_zeo_server
        TYPE               : 10  WIN32_OWN_PROCESS
        STATE              : 2  START_PENDING
                                (NOT_STOPPABLE, NOT_PAUSABLE, IGNORES_SHUTDOWN)
        WIN32_EXIT_CODE    : 0  (0x0)
        SERVICE_EXIT_CODE  : 0  (0x0)
        CHECKPOINT         : 0x1
        WAIT_HINT          : 0x7d0
"""
SC_GERMAN_RUNNING = """
SERVICE_NAME: wuauserv
        TYP                : 20  WIN32_SHARE_PROCESS
        STATUS             : 4  RUNNING
                                (STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)
        WIN32_EXITCODE     : 0  (0x0)
        DIENST_EXITCODE    : 0  (0x0)
        CHECKPOINT         : 0x0
        WARTE_HINWEIS      : 0x0
"""
SC_PAUSED_SHARED = """
SERVICE_NAME: LanmanServer
        TYPE               : 20  WIN32_SHARE_PROCESS
        STATE              : 7  PAUSED
                                (STOPPABLE, PAUSABLE, ACCEPTS_SHUTDOWN)
        WIN32_EXIT_CODE    : 0  (0x0)
        SERVICE_EXIT_CODE  : 0  (0x0)
        CHECKPOINT         : 0x0
        WAIT_HINT          : 0x0
"""
SC_MISSING = ("[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\n\n"
              "The specified service does not exist as an installed service.\n\n")
SC_DENIED = "[SC] OpenService FAILED 5:\n\nAccess is denied.\n\n"


@pytest.mark.parametrize("exited, output, passed, final, phrase", [
    (0, SC_RUNNING, True, True, "is RUNNING"),
    (0, SC_GERMAN_RUNNING, True, True, "is RUNNING"),
    (0, SC_STOPPED, False, True, "is STOPPED (1), not RUNNING"),
    (0, SC_START_PENDING, False, False, "is START_PENDING (2)"),
    (0, SC_PAUSED_SHARED, False, True, "is PAUSED (7)"),
    (1060, SC_MISSING, False, True, "does not exist on this host (sc exit 1060)"),
    (5, SC_DENIED, False, True, "failed with exit code 5"),
    (0, "", False, True, "printed no service state"),
], ids=["running", "running-de", "stopped", "start-pending", "paused", "missing-1060", "access-denied", "empty"])
def test_sc_query(exited, output, passed, final, phrase):
    verdict = health.read_service("svc", exited, output)
    assert (verdict.passed, verdict.final) == (passed, final)
    assert phrase in verdict.summary


NETSTAT_XP = """
Active Connections

  Proto  Local Address          Foreign Address        State           PID
  TCP    0.0.0.0:135            0.0.0.0:0              LISTENING       1104
  TCP    0.0.0.0:445            0.0.0.0:0              LISTENING       4
  TCP    0.0.0.0:1025           0.0.0.0:0              LISTENING       1336
  TCP    74.104.77.xxx:139      0.0.0.0:0              LISTENING       4
  TCP    74.104.77.xxx:3071     12.120.5.14:80         TIME_WAIT       0
  TCP    74.104.77.xxx:3172     72.14.207.99:443       CLOSE_WAIT      2912
  TCP    127.0.0.1:2995         0.0.0.0:0              LISTENING       2912
  TCP    127.0.0.1:2995         127.0.0.1:2996         ESTABLISHED     2912
  TCP    127.0.0.1:2996         127.0.0.1:2995         ESTABLISHED     2912
"""
NETSTAT_2012 = """
Active Connections

  Proto  Local Address          Foreign Address        State
  TCP    0.0.0.0:135            0.0.0.0:0              LISTENING
  TCP    0.0.0.0:5985           0.0.0.0:0              LISTENING
  TCP    0.0.0.0:8080           0.0.0.0:0              LISTENING
  TCP    10.0.0.12:8100         10.0.0.11:49712        TIME_WAIT
  TCP    10.0.0.12:8081         10.0.0.16:51234        ESTABLISHED
  TCP    10.0.0.12:50001        93.184.216.34:443      ESTABLISHED
  TCP    [::]:80                [::]:0                 LISTENING
  TCP    [::]:5985              [::]:0                 LISTENING
  TCP    [fe80::1c2d:3e4f:5a6b:7c8d%12]:8443  [::]:0   LISTENING
  UDP    0.0.0.0:123            *:*
  UDP    [::]:500               *:*
"""
NETSTAT_GERMAN = """
Aktive Verbindungen

  Proto  Lokale Adresse         Remoteadresse          Status
  TCP    0.0.0.0:8100           0.0.0.0:0              ABHÖREN
  TCP    [::]:8100              [::]:0                 ABHÖREN
  TCP    10.0.0.11:8101         10.0.0.12:49712        WARTEND
"""


@pytest.mark.parametrize("output, port, passed", [
    (NETSTAT_XP, 135, True),
    (NETSTAT_XP, 2995, True),  # listening on loopback only still listens
    (NETSTAT_XP, 3071, False),  # only TIME_WAIT
    (NETSTAT_XP, 80, False),  # 80 is the peer's port, not ours
    (NETSTAT_2012, 80, True),  # IPv6 only: [::]:80
    (NETSTAT_2012, 8443, True),  # link-local IPv6 with a zone index
    (NETSTAT_2012, 8100, False),  # TIME_WAIT only
    (NETSTAT_2012, 8081, False),  # an established connection, no listener
    (NETSTAT_2012, 808, False),  # not 8080
    (NETSTAT_2012, 123, False),  # UDP: port checks are TCP
    (NETSTAT_GERMAN, 8100, True),  # state translated; the wildcard peer says listening
    (NETSTAT_GERMAN, 8101, False),
    ("", 80, False),
], ids=["xp-135", "xp-loopback", "xp-time-wait", "xp-peer-port", "ipv6-only", "ipv6-zone", "time-wait",
        "established", "prefix", "udp", "german", "german-waiting", "empty"])
def test_netstat(output, port, passed):
    verdict = health.read_port(port, 0, output)
    assert verdict.passed is passed, verdict.summary
    if not passed:
        assert not verdict.final and f"nothing listens on TCP port {port}" in verdict.summary


def test_netstat_failure_is_final():
    verdict = health.read_port(80, 1, "")
    assert not verdict.passed and verdict.final


def test_commands_are_quoted_by_the_products_windows_rules():
    assert health.command(HealthCheck("service", "Product zeo")) == 'sc query "Product zeo"'
    assert health.command(HealthCheck("port", "80")) == "netstat -an"
    assert health.command(HealthCheck("cmd", "exit 0")) == "exit 0"


# -- run(): waiting and dry runs, with a scripted transport --------------------------------------------------


class Scripted:
    name = "ZDB01"

    def __init__(self, replies, dry_run=False):
        self.replies = list(replies)
        self.dry_run = dry_run
        self.commands = []
        self.printed = []

    def echo(self, text):
        self.printed.append(text)

    def run(self, command, *, check=True, hint="", timeout=None):
        self.commands.append(command)
        exited, out = self.replies.pop(0)
        return Result(command, exited, out, "")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_a_pending_service_is_asked_again_until_running():
    clock = Clock()
    t = Scripted([(0, SC_START_PENDING), (0, SC_START_PENDING), (0, SC_STOPPED.replace("1  STOPPED", "4  RUNNING"))])
    result = health.run(t, "zeo_server", HealthCheck("service", "Product_zeo_server"), settle_s=30, interval_s=2,
                        sleep=clock.sleep, clock=clock)
    assert result.status == "unchanged" and result.details == ["service Product_zeo_server is RUNNING"]
    assert len(t.commands) == 3 and clock.now == 4


def test_a_stopped_service_fails_at_once_with_sc_output():
    clock = Clock()
    t = Scripted([(0, SC_STOPPED)])
    with pytest.raises(HealthCheckFailed) as info:
        health.run(t, "zeo_server", HealthCheck("service", "Product_zeo_server"), sleep=clock.sleep, clock=clock)
    err = info.value
    assert (err.host, err.component, err.check) == ("ZDB01", "zeo_server", "service:Product_zeo_server")
    assert "1  STOPPED" in err.output and "WIN32_EXIT_CODE    : 1077" in err.output
    assert "ZDB01: component zeo_server: health check service:Product_zeo_server failed" in str(err)
    assert len(t.commands) == 1 and clock.now == 0


def test_a_port_that_never_listens_fails_after_settling_with_its_rows():
    clock = Clock()
    t = Scripted([(0, NETSTAT_2012)] * 20)
    with pytest.raises(HealthCheckFailed) as info:
        health.run(t, "zeo_server", HealthCheck("port", "8100"), settle_s=10, interval_s=2,
                   sleep=clock.sleep, clock=clock)
    assert "still so after 10 s" in info.value.reason
    assert info.value.output.split() == "TCP 10.0.0.12:8100 10.0.0.11:49712 TIME_WAIT".split()
    assert len(t.commands) == 6


def test_dry_run_and_no_check_ask_nothing():
    t = Scripted([], dry_run=True)
    result = health.run(t, "zeo_server", HealthCheck("service", "Product_zeo_server"))
    assert t.commands == [] and result.details == ["would check service:Product_zeo_server"]
    assert "would check service:Product_zeo_server: sc query Product_zeo_server" in t.printed[0]
    assert health.run(Scripted([]), "x", None).status == "unchanged"


# -- on the emulated fleet, through the real pywinrm client -------------------------------------------------

FLEET = pytest.mark.parametrize("winrm_fleet", [{"inventory": [("ZDB01", "127.0.0.11")]}], indirect=True)


@pytest.fixture
def zdb01(winrm_fleet):
    from deploy_tasks.transports import winrm as w

    host = winrm_fleet.host("ZDB01")
    persona = host.persona

    def seed(state):
        state["services"]["Product_zeo_server"] = {"display_name": "Product_zeo_server", "state": "running",
                                                   "start_type": "auto", "port": 8100}
        state["services"]["Product_catalog"] = {"display_name": "Product_catalog", "state": "stopped",
                                                "start_type": "auto"}
        state["netstat_rows"] = [("TCP", "127.0.0.11:8081", "127.0.0.12:49712", "TIME_WAIT"),
                                 ("TCP", "[::]:80", "[::]:0", "LISTENING")]

    persona.update_state(seed)
    (persona.sandbox / "Product" / "zeo_server" / "etc").mkdir(parents=True)
    (persona.sandbox / "Product" / "zeo_server" / "etc" / "parameters.json").write_text("{}")
    options = w.WinRMOptions(transport="ntlm", scheme="https", operation_timeout_s=2, read_timeout_s=5,
                             ca_path=str(winrm_fleet.ca_cert))
    transport = w.WinRMTransport("ZDB01", host.address, options, port=host.https_port,
                                 credential=w.Credential(winrm_fleet.username, winrm_fleet.password))
    yield transport
    transport.close()


def _check(transport, text, **kw):
    return health.run(transport, "zeo_server", parse(text), settle_s=kw.pop("settle_s", 0), interval_s=0.1, **kw)



@pytest.mark.integration
@FLEET
def test_checks_that_pass_on_the_fleet(zdb01):
    assert _check(zdb01, "service:product_zeo_server").details == ["service Product_zeo_server is RUNNING"]
    assert "TCP port 8100 is listening (0.0.0.0:8100, [::]:8100)" in _check(zdb01, "port:8100").details[0]
    assert _check(zdb01, "port:80").details == ["TCP port 80 is listening ([::]:80)"]
    assert _check(zdb01, "cmd:type C:\\Product\\zeo_server\\etc\\parameters.json").details == ["the command exited 0"]


@pytest.mark.integration
@FLEET
@pytest.mark.parametrize("text, reason, output", [
    ("service:Product_catalog", "service Product_catalog is STOPPED (1), not RUNNING", "1  STOPPED"),
    ("service:Product_nothing", "does not exist on this host (sc exit 1060)", "OpenService FAILED 1060"),
    ("port:8081", "nothing listens on TCP port 8081", "TIME_WAIT"),
    ("port:9200", "nothing listens on TCP port 9200", "netstat -an shows no socket on port 9200"),
    ("cmd:type C:\\Product\\search_engine\\etc\\parameters.json", "the command exited 1",
     "The system cannot find the file specified."),
], ids=["stopped", "missing", "time-wait-only", "absent", "cmd-fails"])
def test_checks_that_fail_on_the_fleet_carry_the_output(zdb01, text, reason, output):
    with pytest.raises(HealthCheckFailed) as info:
        _check(zdb01, text)
    assert reason in info.value.reason and output in info.value.output
    assert info.value.host == "ZDB01" and info.value.check == str(parse(text))
