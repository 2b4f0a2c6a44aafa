"""The Puppet run of a deploy step, read without a host: its command line and how its output is attributed."""

from __future__ import annotations

from deploy_tasks.steps.deploy import puppet_argv, puppet_command


def test_the_run_carries_its_components_as_lower_case_tags():
    assert puppet_argv(["Tomcat", "nginx"]) == ["puppet", "agent", "--test", "--detailed-exitcodes", "--tags",
                                                "tomcat,nginx"]
    assert puppet_command(["A"]) == "puppet agent --test --detailed-exitcodes --tags a"


import pytest  # noqa: E402

from deploy_tasks.errors import CommandTimedOut  # noqa: E402
from deploy_tasks.steps import deploy as d  # noqa: E402
from deploy_tasks.steps.deploy import PuppetRun, attribute, interpret  # noqa: E402
from deploy_tasks.transports.base import Result  # noqa: E402


def _run(code, output, comps=("a_x", "b_y"), classes=None):
    return interpret(PuppetRun("H1", list(comps), "cmd", code, output), classes)


def _statuses(run):
    return {c: (o.status, o.error) for c, o in run.outcomes.items()}


def test_whole_run_failures_give_the_reason_to_every_component():
    run = _run(9009, "")
    reason = "puppet is not installed on the host (run inv bootstrap --only agents first)"
    assert run.error == reason and _statuses(run) == {"a_x": ("failed", reason), "b_y": ("failed", reason)}
    errors = "".join(f"Error: e{i}\n" for i in range(5)) + "Warning: w\n"
    run = _run(1, errors)
    assert run.error == "the Puppet run failed before applying anything: Error: e2; Error: e3; Error: e4"
    assert _run(1, "").error == "the Puppet run failed before applying anything: no Error: line"
    run = _run(3, "  Error: odd\n")
    assert run.error == "puppet exited 3: Error: odd" and _statuses(run)["b_y"] == ("failed", "puppet exited 3: Error: odd")
    assert _run(-1, "").error == "puppet exited -1: no Error: line"


def test_failures_naming_no_component_fail_every_one_with_puppets_lines():
    run = _run(6, "Notice: /Stage[main]/Product::Component[a_x]/File[f]/ensure: created\n"
                  "Error: /Stage[main]/Main/Notify[other]: boom\n")
    expected = "puppet exited 6 (failures) without naming a component:\nError: /Stage[main]/Main/Notify[other]: boom"
    assert run.error == expected
    assert _statuses(run) == {"a_x": ("failed", expected), "b_y": ("failed", expected)}
    assert _run(4, "").error == "puppet exited 4 (failures) without naming a component:"


def test_what_changed_is_read_from_notices():
    notice = "Notice: /Stage[main]/Product::Component[A_X]/File[f]/ensure: created\n"
    assert _statuses(_run(2, notice)) == {"a_x": ("changed", ""), "b_y": ("unchanged", "")}
    # exit 2 with no component named: Puppet changed something, so every carried one may have changed
    assert _statuses(_run(2, "Notice: Applied catalog in 3 seconds\n")) == {"a_x": ("changed", ""),
                                                                              "b_y": ("changed", "")}
    # a Notice naming a component by the timing phrase counts too; other lines do not
    assert _statuses(_run(2, "Notice: component 'b_y' took 3 s\nInfo: component a_x\n")) == {
        "a_x": ("unchanged", ""), "b_y": ("changed", "")}
    assert _statuses(_run(0, notice)) == {"a_x": ("unchanged", ""), "b_y": ("unchanged", "")}
    # exit 6: a failure for one; the other changed only when a Notice says so
    run = _run(6, "Error: /Stage[main]/Product::Component[b_y]/Exec[x]: failed\n" + notice)
    assert _statuses(run) == {"a_x": ("changed", ""), "b_y": ("failed", "Error: /Stage[main]/Product::Component[b_y]/Exec[x]: failed")}
    run = _run(6, "Error: /Stage[main]/Product::Component[b_y]/Exec[x]: failed\n", comps=("a_x", "b_y"))
    assert run.outcomes["a_x"].status == "changed"  # 6 = changes and failures, none named: fallback changed


def test_problem_lines_are_attributed_in_order_of_evidence():
    comps = ["Zeo_Server", "auth_ldap", "web"]
    out = "\n".join([
        "  Error: /Stage[main]/Product::Component[zeo_server]/File[x]: a",  # the product's type (any case)
        "Error: /Stage[main]/Acme::Ldap/Service[x]: b",  # by its class in the resource path
        "Error: Could not find class[acme::ldap] for node: c",  # by class[...]
        "Error: timing for component 'web' ran over",  # the timing phrase
        "Error: the web service on port 80: d",  # a plain word
        "Warning: /Stage[main]/X: Skipping because of failed dependencies",  # unnamed
        "Notice: web changed",  # not a problem line
        "Error: webserver: e",  # part of a word is not the name
    ])
    found = attribute(out, comps, {"auth_ldap": "acme::ldap", "web": "", "other": "acme::other"})
    assert found == {
        "Zeo_Server": ["Error: /Stage[main]/Product::Component[zeo_server]/File[x]: a"],
        "auth_ldap": ["Error: /Stage[main]/Acme::Ldap/Service[x]: b", "Error: Could not find class[acme::ldap] for node: c"],
        "web": ["Error: timing for component 'web' ran over", "Error: the web service on port 80: d"],
        "": ["Warning: /Stage[main]/X: Skipping because of failed dependencies", "Error: webserver: e"],
    }
    # a line naming two components goes to the first named only
    two = attribute("Error: /Product::Component[web]/Product::Component[auth_ldap]: x", comps)
    assert two == {"web": ["Error: /Product::Component[web]/Product::Component[auth_ldap]: x"]}


class Scripted:
    """A transport that answers commands from a script and records them (what the fleet tests do for real)."""

    name = "ZDB01"

    def __init__(self, answers=(), error=None):
        self.answers = list(answers)
        self.error = error
        self.calls = []

    def change_argv(self, argv, check=True, timeout=None):
        self.calls.append(("change_argv", tuple(argv), check, timeout))
        if self.error is not None:
            raise self.error
        return self.answers.pop(0)

    def run(self, command, check=True):
        self.calls.append(("run", command, check))
        return self.answers.pop(0)


def test_run_puppet_runs_once_and_reads_the_outcome():
    out = "Notice: /Stage[main]/Product::Component[a_x]/File[f]/ensure: created\n"
    t = Scripted([Result("puppet", 2, out, "")])
    lines = []
    run = d.run_puppet(t, ["a_x", "B_y"], timeout=90, output=lines.append)
    assert t.calls == [("change_argv", ("puppet", "agent", "--test", "--detailed-exitcodes", "--tags", "a_x,b_y"),
                        False, 90)]
    assert (run.host, run.components, run.command) == ("ZDB01", ["a_x", "B_y"],
                                                       "puppet agent --test --detailed-exitcodes --tags a_x,b_y")
    assert (run.exit_code, run.output) == (2, out.strip()) and 0 <= run.seconds < 5
    assert _statuses(run) == {"a_x": ("changed", ""), "B_y": ("unchanged", "")}
    assert lines[0] == "$ puppet agent --test --detailed-exitcodes --tags a_x,b_y"
    assert lines[1] == out.strip() and lines[2].startswith("(exit 2, 0.") and lines[2].endswith(" s)")


def test_run_puppet_passes_the_component_classes_on():
    out = "Error: /Stage[main]/Acme::Zeo/File[x]: denied\n"
    run = d.run_puppet(Scripted([Result("puppet", 4, out, "")]), ["zeo_server", "web"],
                       classes={"zeo_server": "acme::zeo"})
    assert run.outcomes["zeo_server"].status == "failed" and run.outcomes["web"].status == "unchanged"


def test_a_held_run_lock_is_busy_and_retryable():
    busy = "Notice: Run of Puppet configuration client already in progress; skipping  (C:/lock)\n"
    with pytest.raises(d.PuppetRunBusy) as err:
        d.run_puppet(Scripted([Result("puppet", 1, busy, "")]), ["a_x"])
    assert str(err.value) == "ZDB01: another Puppet run is in progress (its run lock is held); trying again later"
    assert err.value.retryable is True
    # exit 1 without the phrase is a failed run, not a busy one
    assert d.run_puppet(Scripted([Result("puppet", 1, "Error: x\n", "")]), ["a_x"]).error.startswith(
        "the Puppet run failed")


def test_a_run_past_its_timeout_fails_every_component_with_the_output_so_far():
    lines = []
    exc = CommandTimedOut("ZDB01", "puppet agent --test", 30, "Info: Applying configuration\n")
    run = d.run_puppet(Scripted(error=exc), ["a_x", "b_y"], timeout=30, output=lines.append)
    first = str(exc).splitlines()[0]
    assert run.error == f"{first} (timeout 30 s)"
    assert _statuses(run) == {"a_x": ("failed", run.error), "b_y": ("failed", run.error)}
    assert (run.exit_code, run.output) == (-1, "Info: Applying configuration\n") and 0 <= run.seconds < 5
    assert lines[0].startswith("$ puppet agent") and lines[1] == "Info: Applying configuration"
    assert lines[2].startswith("(exit -1, ")
    untimed = d.run_puppet(Scripted(error=CommandTimedOut("ZDB01", "p", 5, "")), ["a_x"])
    assert untimed.error == CommandTimedOut("ZDB01", "p", 5, "").args[0].splitlines()[0] and untimed.output == ""


def test_node_state_reads_the_lock_and_the_last_summary():
    t = Scripted([Result("type", 0, "", ""), Result("type", 0, "version: 1\n", "")])
    assert d.node_state(t) == {"running": "yes", "last_run_summary": "version: 1\n"}
    assert t.calls == [("run", 'type C:\\ProgramData\\PuppetLabs\\puppet\\cache\\state\\agent_catalog_run.lock', False),
                       ("run", 'type C:\\ProgramData\\PuppetLabs\\puppet\\cache\\state\\last_run_summary.yaml', False)]
    t = Scripted([Result("type", 1, "", ""), Result("type", 1, "not found", "")])
    assert d.node_state(t) == {"running": "no", "last_run_summary": ""}


def test_wait_until_idle_polls_until_the_lock_is_gone(monkeypatch):
    slept = []
    monkeypatch.setattr(d.time, "sleep", slept.append)
    held, free = Result("type", 0, "", ""), Result("type", 1, "", "")
    summary = Result("type", 0, "s", "")
    t = Scripted([held, summary, held, summary, free, summary])
    assert d.wait_until_idle(t, timeout=60, poll=0.5) == {"running": "no", "last_run_summary": "s"}
    assert slept == [0.5, 0.5]
    t = Scripted([held, summary] * 3)
    assert d.wait_until_idle(t, timeout=60, cancelled=lambda: True)["running"] == "yes" and len(t.calls) == 2
    t = Scripted([held, summary] * 3)
    assert d.wait_until_idle(t, timeout=0)["running"] == "yes" and len(t.calls) == 2
    t = Scripted([held, summary, free, summary])
    d.wait_until_idle(t, timeout=60)
    assert slept[-1] == 2.0  # the default poll


def test_the_timing_phrase_wins_over_a_plain_word():
    line = "Error: web is slow: component 'auth_ldap' timed out"
    assert attribute(line, ["web", "auth_ldap"]) == {"auth_ldap": [line]}


def test_error_lines_of_a_successful_run_fail_nothing():
    assert _statuses(_run(2, "Error: /Stage[main]/Product::Component[a_x]/Exec[x]: transient\n")) == {
        "a_x": ("changed", ""), "b_y": ("changed", "")}


def test_several_lines_are_kept_one_per_line():
    run = _run(4, "Error: /Main/Notify[a]: one\nError: /Main/Notify[b]: two\n")
    assert run.error == ("puppet exited 4 (failures) without naming a component:\nError: /Main/Notify[a]: one\n"
                         "Error: /Main/Notify[b]: two")
    run = _run(4, "Error: /Product::Component[a_x]/A: one\nError: /Product::Component[a_x]/B: two\n")
    assert run.outcomes["a_x"].error == "Error: /Product::Component[a_x]/A: one\nError: /Product::Component[a_x]/B: two"
    errors = "".join(f"Error: e{i}\n" for i in range(5))
    assert _run(3, errors).error == "puppet exited 3: Error: e2; Error: e3; Error: e4"


def test_a_failed_command_keeps_its_exit_code_and_output():
    from deploy_tasks.errors import RemoteCommandError

    exc = RemoteCommandError("ZDB01", "puppet agent", 7, "partial output")
    run = d.run_puppet(Scripted(error=exc), ["a_x"])
    assert (run.exit_code, run.output) == (7, "partial output")
    assert run.error == "ZDB01: command failed with exit code 7: puppet agent"
