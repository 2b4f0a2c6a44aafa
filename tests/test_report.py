"""Reports of a run: the JSON file, JUnit XML that parses back, plain timestamped lines, and no secret anywhere."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET

import pytest

from deploy_tasks import redact
from deploy_tasks.errors import RemoteCommandError
from deploy_tasks.report import files
from deploy_tasks.report.live import ConsoleReporter
from deploy_tasks.runner import Runner, Unit

SECRET = "Sup3r-S3cret-pw"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  ")


@pytest.fixture(autouse=True)
def secret():
    redact.add_secret(SECRET)
    yield


def fail(ctx):
    ctx.output(f"running msiexec with PASSWORD={SECRET}")
    raise RemoteCommandError(ctx.host, f"msiexec /i agent.msi PASSWORD={SECRET}", 1603,
                             f"MSI (s): Product: Puppet Agent -- Installation failed.\x1b[31m\x00 {SECRET}",
                             "read the MSI log on the host")


def change(ctx):
    ctx.output("  [web01] would run: systemctl start nginx")
    return "changed"


def run(stream=None, interactive=False):
    reporter = ConsoleReporter(stream=stream or io.StringIO(), interactive=interactive)
    result = Runner("bootstrap", handle_signals=False, listeners=[reporter], poll=0.01).run(
        [Unit("win01.corp.example", "agent", fail), Unit("win01.corp.example", "deploy", change),
         Unit("web01", "package-server", change)])
    reporter.close()
    return result, reporter.stream.getvalue()


def test_json_report_has_the_documented_shape_and_no_secret(tmp_path):
    result, _ = run()
    json_path, junit_path = files.write(result, str(tmp_path / "reports"))
    assert json_path.endswith("reports/bootstrap.json") and junit_path.endswith("reports/junit-bootstrap.xml")
    text = open(json_path).read()
    assert SECRET not in text
    data = json.loads(text)
    assert set(data) == {"schema", "task", "ok", "dry_run", "cancelled", "started", "ended", "seconds", "counts", "units"}
    assert (data["task"], data["ok"], data["counts"]) == ("bootstrap", False, {"failed": 1, "skipped": 1, "changed": 1})
    for key in ("started", "ended"):
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", data[key])
    agent = data["units"][0]
    assert set(agent) == {"id", "host", "name", "status", "started", "ended", "seconds", "attempts", "details",
                          "error", "error_type", "error_output", "output", "depends_on"}
    assert agent["status"] == "failed" and agent["error_type"] == "RemoteCommandError"
    assert "exit code 1603" in agent["error"] and "********" in agent["error"]
    assert "Installation failed" in agent["error_output"]
    assert data["units"][1]["status"] == "skipped" and data["units"][1]["started"] is None


def test_junit_parses_back_with_a_testcase_per_unit(tmp_path):
    result, _ = run()
    _, junit_path = files.write(result, str(tmp_path))
    raw = open(junit_path, encoding="utf-8").read()
    assert SECRET not in raw and "\x1b" not in raw and "\x00" not in raw
    root = ET.parse(junit_path).getroot()
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == ("3", "1", "1", "0")
    cases = suite.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("bootstrap.win01_corp_example", "agent"), ("bootstrap.win01_corp_example", "deploy"),
        ("bootstrap.web01", "package-server")]
    failure = cases[0].find("failure")
    assert failure.get("type") == "RemoteCommandError"
    assert failure.get("message").startswith("win01.corp.example: command failed with exit code 1603")
    assert "output of the failing command:" in failure.text and "Installation failed" in failure.text
    assert "running msiexec with PASSWORD=********" in cases[0].find("system-out").text
    assert cases[1].find("skipped").get("message") == "not started: win01.corp.example/agent failed on this host"
    assert cases[2].find("failure") is None and cases[2].find("skipped") is None
    assert float(cases[2].get("time")) >= 0


def test_plain_output_is_one_timestamped_line_per_event_without_ansi_or_secrets():
    _, text = run()
    assert "\x1b" not in text and SECRET not in text
    lines = text.splitlines()
    heads = [line for line in lines if not line.startswith("    ")]
    assert all(STAMP.match(line) for line in heads), heads
    bodies = [STAMP.sub("", line) for line in heads]
    assert "win01.corp.example  agent  started" in bodies
    assert "running msiexec with PASSWORD=********" in bodies
    assert any(re.fullmatch(r"win01\.corp\.example  agent  failed  \(\d+\.\ds\)", b) for b in bodies)
    assert any(re.fullmatch(r"web01  package-server  changed  \(\d+\.\ds\)", b) for b in bodies)
    assert any(re.fullmatch(r"win01\.corp\.example  deploy  skipped  \(0\.0s\)", b) for b in bodies)
    assert "    ! not started: win01.corp.example/agent failed on this host" in lines
    assert "    !   hint: read the MSI log on the host" in lines  # the error's every line, under its unit


def test_interactive_output_prints_finished_units_and_output_redacted():
    _, text = run(interactive=True)
    assert SECRET not in text
    assert "web01  package-server  changed" in text and "would run: systemctl start nginx" in text


def test_summary_finish_writes_reports_prints_the_table_and_raises_once(tmp_path, capsys):
    from deploy_tasks.errors import RunFailed
    from deploy_tasks.report import summary

    result, _ = run()
    with pytest.raises(RunFailed) as err:
        summary.finish(result, "bootstrap", str(tmp_path))
    out = capsys.readouterr().out
    assert "\nbootstrap\n" in out and f"reports: {tmp_path}/bootstrap.json, {tmp_path}/junit-bootstrap.xml" in out
    assert SECRET not in out and SECRET not in str(err.value)
    assert str(err.value).startswith("bootstrap: 1 of 3 unit(s) failed, 1 skipped:\n  win01.corp.example:\n")


def test_an_unwritable_reports_dir_is_one_clear_error(tmp_path):
    from deploy_tasks.errors import ConfigError

    result, _ = run()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"cannot write the report .*reports_dir"):
        files.write(result, str(blocker / "reports"))


def test_extraction_outcomes_map_into_the_one_vocabulary_and_its_reports(tmp_path):
    from deploy_tasks.artifacts import Outcome, Result
    from deploy_tasks.errors import ArtifactError
    from deploy_tasks.report import extraction

    extraction_result = Result("repo", [
        Outcome("zeo_server", "5.4.0", "extracted", files=3, size=1 << 20, artifact_size=1 << 19, seconds=0.2,
                reason="new"),
        Outcome("catalog", "4.8.11", "unchanged", reason="sha256 unchanged"),
        Outcome("reporting", "10.3.0", "would-extract", reason="version changed"),
        Outcome("extras", "1.0", "not-mapped", reason="no host needs it"),
        Outcome("broken", "1.0", "failed", reason="bad CRC", error=ArtifactError("broken", "bad CRC", "a/b.txt")),
    ], seconds=1.5)
    run = extraction.run_result(extraction_result)
    assert [(u.name, u.status) for u in run.units] == [("zeo_server", "changed"), ("catalog", "unchanged"),
                                                       ("reporting", "would-change"), ("extras", "skipped"),
                                                       ("broken", "failed")]
    assert run.get("controller/broken").error == "component broken, member 'a/b.txt': bad CRC"
    _, junit = files.write(run, str(tmp_path))
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "1", "1")


def test_component_progress_knows_only_the_vocabulary():
    from deploy_tasks.report.progress import ComponentProgress

    class Item:
        def __init__(self, status, text):
            self.status, self.text = status, text

    tty = io.StringIO()
    progress = ComponentProgress(stream=tty, interactive=True, describe=lambda i: (i.status, i.text))
    progress.begin(3, 10)
    for status, text in [("changed", "alpha done"), ("unchanged", "beta same"), ("failed", "gamma broke")]:
        progress.finished(Item(status, text))
    progress.close()
    assert "alpha done" in tty.getvalue() and "gamma broke" in tty.getvalue() and "beta" not in tty.getvalue()
