"""Health checks read exactly: every verdict's words, netstat's corner rows, and run()'s waiting and defaults.

tests/test_health.py covers the forms, the sample outputs and the fleet; these
pin the rest of what a user reads or waits for.
"""

from __future__ import annotations

import pytest

from deploy_tasks.errors import HealthCheckFailed
from deploy_tasks.inventory.health import HealthCheck
from deploy_tasks.steps import health
from deploy_tasks.transports.base import Result

NETSTAT = """
  Proto  Local Address          Foreign Address        State
  TCP    0.0.0.0:8100           0.0.0.0:0              TIME_WAIT
  TCP    0.0.0.0:8101           0.0.0.0:0              CLOSED
  TCP    0.0.0.0:8102           0.0.0.0:0
  TCP    127.0.0.1:8103         127.0.0.1:0            listening
  TCP    10.0.0.1:8104          10.0.0.2:0             LISTENING
  TCP    0.0.0.0:8105           0.0.0.0:0              time_wait
"""


def test_a_service_is_named_as_windows_spells_it_or_as_asked():
    assert health.read_service("svc", 0, "STATE : 4  RUNNING").summary == "service svc is RUNNING"
    assert health.read_service("svc", 0, "SERVICE_NAME: Svc\n STATE : 4  RUNNING").summary == "service Svc is RUNNING"
    missing = health.interpret(HealthCheck("service", "Product_zeo"), 1060, "")
    assert (missing.passed, missing.final) == (False, True)
    assert missing.summary == ("service Product_zeo does not exist on this host (sc exit 1060): check the Health "
                               "Check column, or the Puppet class that should install it")


def test_a_port_needs_a_colon_and_digits():
    assert health._port_of("8080") is None
    assert health._port_of("host:http") is None
    assert health._port_of("[::]:80") == 80


@pytest.mark.parametrize("port, listening", [
    (8100, False),  # TIME_WAIT, even with a wildcard peer
    (8101, False),  # CLOSED
    (8102, True),  # no state column, wildcard peer
    (8103, True),  # the state word in any case
    (8104, True),  # LISTENING with a peer that is not a wildcard
    (8105, False),
])
def test_listening_rows_corner_cases(port, listening):
    assert bool(health.listening_rows(NETSTAT, port)) is listening


def test_netstat_verdicts_word_for_word():
    failed = health.read_port(80, 1, "")
    assert (failed.passed, failed.final, failed.summary) == (False, True, "netstat -an failed with exit code 1")
    rows = "\n".join(f"  TCP    10.0.0.1:8100    10.0.0.{i}:5000   ESTABLISHED" for i in range(2, 9))
    busy = health.read_port(8100, 0, rows + "\n  TCP    10.0.0.1:9999    10.0.0.2:8100   ESTABLISHED")
    assert (busy.passed, busy.final) == (False, False)
    assert busy.summary == ("nothing listens on TCP port 8100; its sockets: " +
                            "; ".join(f"TCP 10.0.0.1:8100 10.0.0.{i}:5000 ESTABLISHED" for i in range(2, 7)))
    assert health.read_port(8100, 0, "").summary == "nothing listens on TCP port 8100"


def test_a_command_verdict():
    assert health.read_cmd(0) == health.Verdict(True, "the command exited 0", final=True)
    assert health.read_cmd(3) == health.Verdict(False, "the command exited 3", final=False)


def test_the_report_shows_netstats_rows_for_the_port_only():
    output = "  TCP  0.0.0.0:80  0.0.0.0:0  LISTENING\n  TCP  0.0.0.0:81  0.0.0.0:0  LISTENING\n  TCP  [::]:80  [::]:0  LISTENING"
    assert health._relevant_output(HealthCheck("port", "80"), output) == (
        "  TCP  0.0.0.0:80  0.0.0.0:0  LISTENING\n  TCP  [::]:80  [::]:0  LISTENING")
    assert health._relevant_output(HealthCheck("port", "82"), output) == "(netstat -an shows no socket on port 82)"
    assert health._relevant_output(HealthCheck("cmd", "exit 1"), "whole\noutput") == "whole\noutput"


class Timed:
    """A transport whose every command takes ``takes`` seconds on a fake clock starting at 1000."""

    name = "ZDB01"
    dry_run = False

    def __init__(self, exited=1, output="", takes=0.0):
        self.now = 1000.0
        self.takes = takes
        self.exited, self.output = exited, output
        self.calls = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def run(self, command, *, check=True, hint="", timeout=None):
        self.calls.append((command, check, timeout))
        self.now += self.takes
        return Result(command, self.exited, self.output, "")


def test_run_by_default_settles_30_s_asking_every_2_s_with_a_60_s_timeout():
    t = Timed(takes=0.2)
    with pytest.raises(HealthCheckFailed) as err:
        health.run(t, "app", HealthCheck("cmd", "check.cmd"), sleep=t.sleep, clock=t.clock)
    # asked at 0, 2.2, 4.4 ... 28.6: the 14th answer (28.8 s) + 2 s would pass 30 s
    assert len(t.calls) == 14 and set(t.calls) == {("check.cmd", False, 60.0)}
    assert err.value.reason == "the command exited 1 (still so after 29 s)"
    assert err.value.command == "check.cmd" and err.value.host == "ZDB01" and err.value.component == "app"


def test_run_reports_how_long_a_passing_check_took():
    t = Timed(exited=0, takes=1.5)
    result = health.run(t, "app", HealthCheck("cmd", "check.cmd"), sleep=t.sleep, clock=t.clock, timeout=7)
    assert (result.host, result.step, result.status, result.seconds) == ("ZDB01", "health app", "unchanged", 1.5)
    assert result.details == ["the command exited 0"] and t.calls == [("check.cmd", False, 7)]


@pytest.mark.parametrize("settle_s, interval_s, reason", [
    (0, 2, "the command exited 1"),  # gave up at once: no "still so"
    (1, 1, "the command exited 1 (still so after 1 s)"),  # waited exactly 1 s
    (10, 2, "the command exited 1 (still so after 10 s)"),
])
def test_a_check_that_may_still_pass_is_asked_until_settle_s(settle_s, interval_s, reason):
    t = Timed()
    with pytest.raises(HealthCheckFailed) as err:
        health.run(t, "app", HealthCheck("cmd", "check.cmd"), settle_s=settle_s, interval_s=interval_s,
                   sleep=t.sleep, clock=t.clock)
    assert err.value.reason == reason
    assert len(t.calls) == settle_s // interval_s + 1


def test_a_definite_failure_is_not_waited_on_and_says_nothing_of_waiting():
    t = Timed(exited=0, output="SERVICE_NAME: Svc\n  STATE : 1  STOPPED\n", takes=3)
    with pytest.raises(HealthCheckFailed) as err:
        health.run(t, "app", HealthCheck("service", "svc"), sleep=t.sleep, clock=t.clock)
    assert err.value.reason == "service Svc is STOPPED (1), not RUNNING" and len(t.calls) == 1
    assert err.value.command == "sc query svc"
