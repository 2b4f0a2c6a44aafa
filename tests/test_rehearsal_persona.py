"""The emulated Windows persona, driven directly: no WinRM, real HTTP for msiexec, real Puppet.

Everything a WinRM client would see is asserted on the bytes the persona
returns (CRLF, exit codes, Windows' own message texts).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy_tasks.rehearsal import msi as msilib
from deploy_tasks.rehearsal.cmdline import cmd_strip_c, split_argv, split_cmd
from deploy_tasks.rehearsal.faults import FleetSpec, HostFaults
from deploy_tasks.rehearsal.persona import EXIT_TERMINATED, WindowsPersona
from deploy_tasks.rehearsal.puppet import deployed_components, read_journal

NOT_RECOGNIZED = "'{}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"


# -- CommandLineToArgvW ------------------------------------------------------------------
@pytest.mark.parametrize("line, argv", [
    # Microsoft's documented examples (program name first, then the argument rules)
    (r'prog "a b c" d e', ["prog", "a b c", "d", "e"]),
    (r'prog "ab\"c" "\\" d', ["prog", 'ab"c', "\\", "d"]),
    (r'prog a\\\b d"e f"g h', ["prog", r"a\\\b", "de fg", "h"]),
    (r'prog a\\\"b c d', ["prog", r'a\"b', "c", "d"]),
    (r'prog a\\\\"b c" d e', ["prog", r"a\\b c", "d", "e"]),
    # CommandLineToArgvW specifics: "" inside quotes is a literal quote; argv[0] takes no escapes
    (r'prog "a""b"', ["prog", 'a"b']),
    (r'"C:\Program Files\x\p.exe" /i', [r"C:\Program Files\x\p.exe", "/i"]),
    (r'C:\dir\p.exe\ "x\"', ["C:\\dir\\p.exe\\", 'x"']),
    ('prog ""', ["prog", ""]),
    ("prog   a\t b  ", ["prog", "a", "b"]),
    ("msiexec /i http://h/p.msi PROP=\"a b\"", ["msiexec", "/i", "http://h/p.msi", "PROP=a b"]),
])
def test_split_argv_follows_commandlinetoargvw(line, argv):
    assert split_argv(line) == argv


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list('ab \\"\t=/:')), max_size=8), min_size=1, max_size=6),
       st.text(alphabet=st.sampled_from(list("ab \\:.")), min_size=1, max_size=8).filter(lambda p: p[-1] != "\\"))
def test_split_argv_inverts_list2cmdline(args, program):
    # argv[0] takes no backslash escapes, so a program name ending in a backslash (no Windows file name
    # does) is the one place list2cmdline's quoting and CommandLineToArgvW disagree
    argv = [program] + args
    assert split_argv(subprocess.list2cmdline(argv)) == argv


def test_cmd_operators_and_quote_stripping():
    assert split_cmd('echo a && exit 3 & echo "x&&y" || b') == [
        ("", "echo a"), ("&&", "exit 3"), ("&", 'echo "x&&y"'), ("||", "b")]
    assert cmd_strip_c(' "echo" hi "there"') == 'echo" hi "there'
    assert cmd_strip_c(' "C:\\Program Files\\x.exe"') == '"C:\\Program Files\\x.exe"'


# -- a host ------------------------------------------------------------------------------------
class Reboots(list):
    def __call__(self, seconds):
        self.append((time.monotonic(), seconds))


@pytest.fixture
def reboots():
    return Reboots()


def make_host(tmp_path, reboots=None, name="ZAPP01", mode="real", **faults):
    spec = FleetSpec(mode=mode, timing_default_s=0.05, timing_components={"zeo_server": 0.3})
    return WindowsPersona(name, "127.0.0.7", tmp_path / name / "C", HostFaults(**faults), spec,
                          reboots if reboots is not None else Reboots())


@pytest.fixture
def host(tmp_path, reboots):
    return make_host(tmp_path, reboots)


def test_basic_executables_answer_as_windows(host):
    assert host.run("hostname") == ("ZAPP01\r\n", "", 0)
    assert host.run("WHOAMI.EXE") == ("zapp01\\administrator\r\n", "", 0)
    assert host.run(r"C:\WINDOWS\system32\whoami") == ("zapp01\\administrator\r\n", "", 0)
    assert host.run("ver") == ("\r\nMicrosoft Windows [Version 6.3.9600]\r\n", "", 0)
    assert host.run("cmd /c exit 7") == ("", "", 7)
    # cmd keeps the blank before an operator: `echo one && ...` prints "one " (tests/test_rehearsal_cmd.py)
    assert host.run('cmd.exe /C "echo one && exit 4 && echo never"') == ("one \r\n", "", 4)
    assert host.run("cmd /c exit 5 && echo no || echo alt & echo last") == ("alt \r\nlast\r\n", "", 0)
    assert host.run("cmd /c exit 0 || echo x && echo y") == ("", "", 0)


def test_cmd_variables_and_redirection(host):
    assert host.run("echo %COMPUTERNAME% %computername% %NOSUCH%") == ("ZAPP01 ZAPP01 %NOSUCH%\r\n", "", 0)
    log = r"C:\Windows\Temp\out.txt"
    assert host.run(f"echo one > {log} & echo two >> {log} & nosuch >> {log} 2>&1") == ("", "", 9009)
    assert (host.sandbox / "Windows" / "Temp" / "out.txt").read_bytes() == (
        b"one \r\ntwo \r\n" + NOT_RECOGNIZED.format("nosuch").encode())  # cmd keeps the space before '>'
    assert host.run("nosuch 2>nul") == ("", "", 9009)
    assert host.run("nosuch 2>&1") == (NOT_RECOGNIZED.format("nosuch"), "", 9009)
    assert host.run(r'echo "a > b" > C:\no\such\dir\f.txt') == ("", "The system cannot find the path specified.\r\n", 1)
    assert host.run(r'echo "a > b"') == ('"a > b"\r\n', "", 0)


@pytest.mark.parametrize("line, shown", [
    ("ipconfig /all", "ipconfig"),
    ("Get-Service", "Get-Service"),
    (r"C:\nowhere\tool.exe x", r"C:\nowhere\tool.exe"),
    ("puppet agent -t", "puppet"),  # only after the Puppet agent MSI
    ("cmd /c frobnicate", "frobnicate"),
])
def test_unknown_programs_fail_like_windows(host, line, shown):
    assert host.run(line) == ("", NOT_RECOGNIZED.format(shown), 9009)


def test_sandbox_is_c_drive_and_cannot_be_escaped(host, tmp_path):
    (host.sandbox / "data").mkdir()
    (host.sandbox / "data" / "Note.txt").write_bytes(b"hello\r\n")
    (tmp_path / "secret.txt").write_text("outside")
    assert host.run(r"type c:\DATA\note.TXT") == ("hello\r\n", "", 0)  # NTFS is case-insensitive
    assert host.to_sandbox(r"C:\data\note.txt") == host.sandbox / "data" / "Note.txt"
    for escape in (r"C:\..\..\secret.txt", r"..\..\..\..\..\secret.txt", r"D:\secret.txt", r"\\srv\share\x"):
        out, err, code = host.run(f"type {escape}")
        assert code == 1 and "outside" not in out, escape
    (host.sandbox / "link").symlink_to(tmp_path)
    (host.sandbox / "data" / "deeper").symlink_to(tmp_path / "secret.txt")
    (host.sandbox / "data" / "dangling").symlink_to(tmp_path / "not-there")
    (host.sandbox / "data" / "inside").symlink_to(host.sandbox / "data" / "Note.txt")
    for escape in (r"C:\link\secret.txt", r"C:\link", r"C:\DATA\deeper", r"C:\data\dangling",
                   r"C:\data\dangling\x", r"C:\LINK\new.txt"):
        with pytest.raises(FileNotFoundError):
            host.to_sandbox(escape)
    assert host.to_sandbox(r"C:\data\INSIDE") == host.sandbox / "data" / "inside"  # a link that stays inside


def test_a_path_maps_to_what_matching_it_name_by_name_finds(host):
    from deploy_tasks.rehearsal.paths import Sandbox

    (host.sandbox / "Data" / "Sub").mkdir(parents=True)
    (host.sandbox / "Data" / "Sub" / "File.TXT").write_text("x")

    def name_by_name(win_path):  # the mapping's definition: each name matched on disk in turn
        current = host.sandbox
        for part in win_path[3:].split("\\"):
            current = Sandbox.find(current / part) or current / part
        return current

    for win_path in (r"C:\Data\Sub\File.TXT", r"C:\data\SUB\file.txt", r"C:\Data\Sub\new.txt",
                     r"C:\DATA\sub\new.txt", r"C:\Data\Missing\file.txt", r"C:\data\missing\x\y",
                     r"C:\Data", r"C:\data\sub"):
        assert host.to_sandbox(win_path) == name_by_name(win_path), win_path


def _age(root: Path, when: float) -> None:
    """Set the mtime of every folder under ``root`` (and its own) to ``when``: folders untouched since."""
    old = when
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (old, old))


def test_program_lookups_are_kept_until_a_folder_on_the_search_changes(host, monkeypatch):
    searches = []
    search = host._search_executable
    monkeypatch.setattr(host, "_search_executable", lambda *a: searches.append(a) or search(*a))
    ages = iter(range(int(time.time()) - 600, int(time.time()) - 60, 10))  # past times, each later than the one before
    _age(host.sandbox, next(ages))
    assert host.resolve_executable("tool") is None
    assert host.resolve_executable("hostname") == "hostname"
    assert host.resolve_executable("tool") is None and host.resolve_executable("HOSTNAME") == "hostname"
    assert len(searches) == 3  # "tool" answered from what was kept; HOSTNAME is another name (a search of its own)
    # a program added to a PATH folder (its mtime changes): found
    (host.sandbox / "Windows" / "Tool.EXE").write_text("x")
    assert host.resolve_executable("tool") == "tool" and len(searches) == 4
    # changed within the racy window: searched again each time, until the folder is older than that
    assert host.resolve_executable("tool") == "tool" and len(searches) == 5
    _age(host.sandbox, next(ages))
    assert host.resolve_executable("tool") == "tool" and len(searches) == 6
    assert host.resolve_executable("tool") == "tool" and len(searches) == 6
    # removed: gone; a new folder on the PATH given: found there
    (host.sandbox / "Windows" / "Tool.EXE").unlink()
    _age(host.sandbox, next(ages))
    assert host.resolve_executable("tool") is None and len(searches) == 7
    bin_dir = host.sandbox / "Tools" / "Bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "tool.cmd").write_text("x")
    _age(host.sandbox, next(ages))
    assert host.resolve_executable("tool", path=r"C:\tools\bin") == "tool"
    assert host.resolve_executable("tool") is None  # not on the default PATH
    # a PATH folder that does not exist yet, then does (the first folder above it that existed changes)
    assert host.resolve_executable("tool", path=r"C:\later\bin") is None
    count = len(searches)
    assert host.resolve_executable("tool", path=r"C:\later\bin") is None and len(searches) == count
    (host.sandbox / "later" / "bin").mkdir(parents=True)
    (host.sandbox / "later" / "bin" / "tool.bat").write_text("x")
    _age(host.sandbox, next(ages))
    assert host.resolve_executable("tool", path=r"C:\later\bin") == "tool" and len(searches) == count + 1


def test_powershell_encodedcommand_subset_and_clixml_errors(host):
    from winrm import Session

    def ps(script):
        return host.run("powershell -NoProfile -encodedcommand " +
                        base64.b64encode(script.encode("utf-16-le")).decode())

    assert ps("Write-Output $env:COMPUTERNAME; Write-Host 'a b'\nexit 3") == ("ZAPP01\r\na b\r\n", "", 3)
    assert ps('"host $env:COMPUTERNAME"') == ("host ZAPP01\r\n", "", 0)
    out, err, code = ps("Write-Output 1; Get-ChildItem C:\\")
    assert code == 1 and out == "1\r\n"
    assert err.startswith("#< CLIXML\r\n")
    # the real pywinrm turns it into readable text, as it does with Windows' own CLIXML
    text = Session("http://unused", auth=("u", "p"))._clean_error_msg(err.encode()).decode()
    assert "The term 'Get-ChildItem' is not recognized" in text and "CLIXML" not in text


def test_command_handle_streams_and_terminates(tmp_path):
    host = make_host(tmp_path, slow_command_s=30)
    handle = host.start("hostname")
    assert handle.read(0.2) == (b"", b"", None)  # still running: no exit code yet
    handle.terminate()
    handle.terminate()  # idempotent
    assert handle.read(1) == (b"", b"", EXIT_TERMINATED)
    quick = make_host(tmp_path, name="ZQUICK").start("echo hi")
    out, code = b"", None
    while code is None:
        o, e, code = quick.read(1)
        out += o
    assert out == b"hi\r\n"


def test_sc_query_unknown_service_is_1060(host):
    out, err, code = host.run("sc query zope")
    assert code == 1060
    assert out == ("[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\r\n\r\n"
                   "The specified service does not exist as an installed service.\r\n\r\n")


def test_shutdown_reboots_with_a_new_boot_time(tmp_path, reboots):
    host = make_host(tmp_path, reboots, reboot_down_s=1.5)
    host.update_state(lambda s: s["services"].update({
        "zope": {"state": "running", "start_type": "manual"}, "zeo": {"state": "stopped", "start_type": "automatic"}}))
    first_boot = host.boot_time
    before = host.run("wmic os get LastBootUpTime")[0]
    assert host.run("shutdown /r /t 0") == ("", "", 0)
    deadline = time.monotonic() + 5
    while not reboots and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [s for _, s in reboots] == [1.5]
    out, _, code = host.run("wmic os get lastbootuptime /value")
    assert code == 0 and out.strip().startswith("LastBootUpTime=")
    assert out.strip()[len("LastBootUpTime="):][:14] == host.boot_time.replace("-", "").replace("T", "").replace(":", "")[:14]
    assert host.boot_time > first_boot and len(host.state()["boots"]) == 2
    assert host.run("wmic os get LastBootUpTime")[0] != before and before.startswith("LastBootUpTime")
    assert "1  STOPPED" in host.run("sc query zope")[0] and "4  RUNNING" in host.run("sc query zeo")[0]
    assert host.run("shutdown /r /t 60") == ("", "", 0)
    assert host.run("shutdown /a") == ("", "", 0)
    time.sleep(0.4)
    assert len(reboots) == 1  # aborted
    assert host.run("shutdown /a")[2] == 1116


# -- msiexec, with packages over real HTTP ----------------------------------------------------------
class PackageServer:
    def __init__(self, root: Path, delay: float = 0.0):
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):
                time.sleep(outer.delay)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.delay = delay
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def packages(tmp_path):
    root = tmp_path / "packages"
    msilib.write_fake_msi(root / "puppet-agent-7.23.0-x64.msi")
    msilib.write_fake_msi(root / "renamed.msi", product="Puppet Agent", version="6.28.0")
    msilib.write_fake_msi(root / "zope.msi", product="Zope", version="5.8")
    (root / "notamsi.msi").write_bytes(b"MZ\x90\x00 this is an exe")
    server = PackageServer(root)
    yield server
    server.close()


def install_cmd(url, log=r"C:\Windows\Temp\agent.log", **props):
    props = props or {"PUPPET_SERVER": "127.0.0.1", "PUPPET_AGENT_CERTNAME": "zapp01.example.test",
                      "PUPPET_AGENT_ENVIRONMENT": "personatest"}
    return subprocess.list2cmdline(["msiexec", "/qn", "/norestart", "/i", url, *(f"{k}={v}" for k, v in props.items()),
                                    "/l*v", log])


def test_msiexec_installs_the_puppet_agent_over_http(host, packages):
    assert host.run(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi")) == ("", "", 0)
    product = host.installed_products()["Puppet Agent"]
    assert product["version"] == "7.23.0"
    assert product["properties"]["PUPPET_AGENT_CERTNAME"] == "zapp01.example.test"
    log = (host.sandbox / "Windows" / "Temp" / "agent.log").read_text()
    assert "Installation completed successfully" in log and "MainEngineThread is returning 0" in log
    assert host.run("puppet config print server") == ("127.0.0.1\r\n", "", 0)
    assert host.run("PUPPET.BAT config print certname environment") == (
        "certname = zapp01.example.test\r\nenvironment = personatest\r\n", "", 0)
    assert host.run(r'"C:\Program Files\Puppet Labs\Puppet\bin\puppet.bat" --version') == ("7.23.0\r\n", "", 0)
    out, _, code = host.run("sc query puppet")
    assert code == 0 and "STATE              : 4  RUNNING" in out
    assert host.run("puppet config print confdir")[0] == "C:/ProgramData/PuppetLabs/puppet/etc\r\n"
    assert host.run("puppet config set environment other") == ("", "", 0)
    assert host.run("puppet config print environment")[0] == "other\r\n"
    conf = host.sandbox / "ProgramData" / "PuppetLabs" / "puppet" / "etc" / "puppet.conf"
    assert "environment=other" in conf.read_text()


def test_upper_case_certname_is_refused_as_puppet_does(tmp_path, packages):
    host = make_host(tmp_path, name="ZUPPER", mode="timing")
    assert host.run(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi", PUPPET_SERVER="127.0.0.1",
                                PUPPET_AGENT_CERTNAME="ZUpper.example.test"))[2] == 0
    out, err, code = host.run("puppet agent -t --tags a")
    assert code == 1 and "Certificate names must be lower case" in err
    assert host.puppet.journal() == []  # no run happened
    assert host.run("puppet config set certname zupper.example.test")[2] == 1  # still refused while it is wrong
    host.update_state(lambda s: s["puppet_settings"].update(certname="zupper.example.test"))
    assert host.run("puppet agent -t --tags a")[2] == 2


def test_names_resolve_through_the_hosts_file(host, packages):
    url = packages.url.replace("127.0.0.1", "pkgs.example.test") + "/zope.msi"
    assert host.run(install_cmd(url, A="1"))[2] == 1619  # no such name in DNS
    assert "download failed" in (host.sandbox / "Windows" / "Temp" / "agent.log").read_text()
    host.add_hosts_entry("PKGS.example.test", "127.0.0.1")
    assert host.run(r"type C:\Windows\System32\drivers\etc\hosts")[0].endswith("127.0.0.1\tPKGS.example.test\r\n")
    assert host.run(install_cmd(url, A="1"))[2] == 0
    assert host.installed_products()["Zope"]["source"] == url


def test_a_state_change_that_fails_half_way_is_not_kept(host):
    before = host.state()

    def half(state):
        state["products"]["Half"] = {"version": "1"}
        raise RuntimeError("failed half way")

    with pytest.raises(RuntimeError):
        host.update_state(half)
    assert host.state() == before and "Half" not in host.state_value("products")
    host.update_state(lambda s: s["services"].update(zeta={}, alpha={}))
    assert list(host.state()["services"])[-2:] == ["zeta", "alpha"]  # entries in the order they were made


def test_the_hosts_file_is_kept_read_until_it_changes(host, monkeypatch):
    from deploy_tasks.rehearsal.network import HOSTS_FILE

    hosts = host.to_sandbox(HOSTS_FILE)
    reads = []
    read_text = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **kw: (
        reads.append(self) if self == hosts else None) or read_text(self, *a, **kw))
    past = iter(range(int(time.time()) - 600, int(time.time()) - 60, 10))

    def age():
        when = next(past)
        os.utime(hosts, (when, when))

    host.add_hosts_entry("Master.example.test", "10.0.0.1")
    age()
    assert host.resolve("master.EXAMPLE.test") == "10.0.0.1" and host.resolve("other") == "other"
    assert len(reads) == 1  # kept: one read for both
    host.add_hosts_entry("pkgs.example.test", "10.0.0.2")
    host.add_hosts_entry("master.example.test", "10.0.0.9")  # a later line for a name: the first one counts
    assert host.resolve("pkgs.example.test") == "10.0.0.2" and host.resolve("master.example.test") == "10.0.0.1"
    assert len(reads) == 3  # changed within the racy window: read each time until it is older than that
    age()
    assert host.resolve("pkgs.example.test") == "10.0.0.2" and host.resolve("pkgs.example.test") == "10.0.0.2"
    assert len(reads) == 4
    text = hosts.read_bytes()
    hosts.write_bytes(text.replace(b"10.0.0.2", b"10.0.0.3"))  # the same size, a new mtime
    assert host.resolve("pkgs.example.test") == "10.0.0.3"
    hosts.unlink()
    assert host.resolve("pkgs.example.test") == "pkgs.example.test"


def test_agent_before_7_takes_puppet_master_server(tmp_path, packages):
    old = make_host(tmp_path, name="ZOLD")
    assert old.run(install_cmd(packages.url + "/renamed.msi", PUPPET_MASTER_SERVER="deploy01"))[2] == 0
    assert old.run("puppet config print server")[0] == "deploy01\r\n"
    new = make_host(tmp_path, name="ZNEW")  # 7.x ignores the old property name, as Windows Installer would
    assert new.run(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi", PUPPET_MASTER_SERVER="deploy01"))[2] == 0
    assert new.run("puppet config print server")[0] == "puppet\r\n"


@pytest.mark.parametrize("path, code, reason", [
    ("/missing.msi", 1619, "HTTP 404"),
    ("/notamsi.msi", 1620, "not an OLE2 compound document"),
])
def test_msiexec_package_failures(host, packages, path, code, reason):
    assert host.run(install_cmd(packages.url + path))[2] == code
    log = (host.sandbox / "Windows" / "Temp" / "agent.log").read_text()
    assert reason in log and f"MainEngineThread is returning {code}" in log
    assert host.installed_products() == {}
    assert host.run("puppet --version")[2] == 9009


def test_msiexec_unreachable_server_and_local_path_and_bad_log(host, packages, tmp_path):
    assert host.run(install_cmd("http://127.0.0.1:9/p.msi"))[2] == 1619
    assert "download failed" in (host.sandbox / "Windows" / "Temp" / "agent.log").read_text()
    msilib.write_fake_msi(host.sandbox / "pkgs" / "zope.msi", product="Zope", version="5.8")
    assert host.run(install_cmd(r"C:\pkgs\zope.msi", X="1"))[2] == 0
    assert host.installed_products()["Zope"]["version"] == "5.8"
    assert host.run(install_cmd(r"C:\pkgs\zope.msi", SERVICE_PASSWORD="s3cr3t-value"))[2] == 0
    log = (host.sandbox / "Windows" / "Temp" / "agent.log").read_text()
    assert "SERVICE_PASSWORD" in log and "s3cr3t-value" not in log
    assert "s3cr3t-value" not in host.state_file.read_text()
    assert host.run(install_cmd(r"C:\pkgs\zope.msi", log=r"C:\no\such\dir\x.log", X="1"))[2] == 1622
    assert host.run("msiexec /qn")[2] == 1639


def test_msi_busy_fault_then_success(tmp_path, packages):
    host = make_host(tmp_path, msi_busy_attempts=2)
    url = packages.url + "/zope.msi"
    log = host.sandbox / "Windows" / "Temp" / "agent.log"
    assert host.run(install_cmd(url, A="1"))[2] == 1618
    assert "Another installation is in progress" in log.read_text()
    assert "MainEngineThread is returning 1618" in log.read_text()
    assert host.run(install_cmd(url, A="1"))[2] == 1618
    assert host.installed_products() == {}
    assert host.run(install_cmd(url, A="1"))[2] == 0
    assert host.installed_products()["Zope"]["properties"] == {"A": "1"}


@pytest.mark.parametrize("fault, norestart, code, rebooted", [
    (3010, True, 3010, False), (1641, False, 1641, True), (1641, True, 3010, False), (1603, True, 1603, False),
    (1638, True, 1638, False)])
def test_msi_exit_code_faults(tmp_path, packages, reboots, fault, norestart, code, rebooted):
    host = make_host(tmp_path, reboots, msi_exit_code=fault, reboot_down_s=0.5)
    line = install_cmd(packages.url + "/zope.msi", A="1")
    if not norestart:
        line = line.replace(" /norestart", "")
    assert host.run(line)[2] == code
    assert ("Zope" in host.installed_products()) == (code in (3010, 1641))
    if code != 1641:  # 1641 reboots at once, which clears the pending reboot
        assert host.state()["pending_reboot"] == (code == 3010)
    time.sleep(0.5)
    assert bool(reboots) == rebooted


def test_one_msi_transaction_per_host(tmp_path, packages):
    packages.delay = 0.6  # a slow download keeps the first transaction open
    host = make_host(tmp_path)
    url = packages.url + "/zope.msi"
    handles = [host.start(install_cmd(url, log=fr"C:\Windows\Temp\{i}.log", A="1")) for i in range(4)]
    codes = []
    for h in handles:
        code = None
        while code is None:
            code = h.read(2)[2]
        codes.append(code)
    assert sorted(codes) == [0, 1618, 1618, 1618]
    other = make_host(tmp_path, name="ZOTHER")  # the mutex is per host: another host installs meanwhile
    first = host.start(install_cmd(url, A="2"))
    assert other.run(install_cmd(url, A="2"))[2] == 0
    while first.read(2)[2] is None:
        pass


# -- puppet: the timing model (fast; also the run lock) ------------------------------------------------
@pytest.fixture
def timing_host(tmp_path, packages):
    host = make_host(tmp_path, mode="timing", name="ZTIME", puppet_fail=("broken",))
    assert host.run(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi"))[2] == 0
    return host


def test_timing_model_changes_once_and_fails_named_components(timing_host):
    h = timing_host
    out, err, code = h.run("puppet agent --test --tags zeo_server,zope_app")
    assert code == 2 and "timing model" in out
    assert h.run("puppet agent --test --tags zeo_server,zope_app")[2] == 0  # idempotent
    assert h.run("puppet agent -t --tags broken")[2] == 4
    assert h.run("puppet agent -t --tags broken,catalog")[2] == 6
    assert h.run("puppet agent --onetime --no-daemonize --tags broken")[2] == 1  # no --detailed-exitcodes
    assert h.run("puppet agent -t --noop --tags newone")[2] == 0
    runs = h.puppet.journal()
    assert [r["exit_code"] for r in runs] == [2, 0, 4, 6, 1, 0]
    assert runs[0]["components"]["zeo_server"]["outcome"] == "changed" and runs[0]["mode"] == "timing"
    assert deployed_components(h.state_dir)[:3] == [(1, "zeo_server", "changed"), (1, "zope_app", "changed"),
                                                   (2, "zeo_server", "unchanged")]
    out, _, code = h.run("puppet agent --fingerprint")
    assert code == 0 and out.startswith("(SHA256) ") and out == h.run("puppet agent --fingerprint")[0]


def test_one_puppet_run_at_a_time(timing_host):
    first = timing_host.start("puppet agent -t --tags zeo_server")  # takes 0.3 s in the timing model
    time.sleep(0.1)
    out, err, code = timing_host.run("puppet agent -t --tags zope_app")
    assert code == 1
    assert out == ("Notice: Run of Puppet configuration client already in progress; skipping  "
                   "(C:/ProgramData/PuppetLabs/puppet/cache/state/agent_catalog_run.lock exists)\r\n")
    code = None
    while code is None:
        code = first.read(2)[2]
    assert code == 2
    assert timing_host.run("puppet agent -t --tags zope_app")[2] == 2  # the lock is released after the run
    assert [r["outcome"] for r in timing_host.puppet.journal()] == ["already_running", "changed", "changed"]


def test_puppet_argument_errors(timing_host):
    assert timing_host.run("puppet agent --frobnicate") == (
        "", "Error: Could not parse application options: invalid option: --frobnicate\r\n", 1)
    assert timing_host.run("puppet agent")[2] == 1
    assert timing_host.run("puppet resource service")[2] == 1
    assert timing_host.run("puppet ssl submit_request")[2] == 0  # the timing model counts certificates as signed
    assert timing_host.run("puppet ssl frobnicate")[2] == 1
    assert timing_host.run("puppet config print nosuchsetting") == ("\r\n", "", 0)


def test_real_mode_without_the_linux_agent_says_what_to_do(tmp_path, packages, monkeypatch):
    from deploy_tasks.rehearsal.puppet import PuppetAgent

    host = make_host(tmp_path)
    assert host.run(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi"))[2] == 0
    monkeypatch.setattr(PuppetAgent, "_real_puppet", lambda self: None)
    out, err, code = host.run("puppet agent -t --waitforcert 0")
    assert code == 1 and "apt-get install puppet-agent" in err and "mode: timing" in err


# -- the emulated catalog application, on a canned catalog (the real server's catalogs: tests below) ----
CMD = r"C:\Windows\System32\cmd.exe"


def _res(kind, title, tags, **params):
    return {"type": kind, "title": title, "tags": [kind.lower(), *tags], "exported": False, "parameters": params}


CANNED = {
    "name": "zcanned.example.test", "version": 42, "environment": "production",
    "resources": [
        _res("Stage", "main", []),
        _res("Class", "B", ["class", "b"], require="Class[A]"),
        _res("Exec", "bad", ["b"], command=r"C:\nope\tool.exe --go"),
        _res("Service", "svc_b", ["b"], ensure="running", require="Exec[bad]"),
        _res("Class", "A", ["class", "a"]),
        _res("File", "C:/a/dir", ["a"], ensure="directory"),
        _res("File", "C:/a/dir/f.txt", ["a"], ensure="file", content="x\n", require="File[C:/a/dir]"),
        _res("Exec", "guarded", ["a"], command=CMD + " /c echo ran > C:\\a\\guarded.txt",
             unless=CMD + " /c exit 0"),
        _res("Exec", "onlyif", ["a"], command=CMD + " /c echo ran > C:\\a\\onlyif.txt", onlyif=CMD + " /c exit 1"),
        _res("Exec", "refresh", ["a"], command=CMD + " /c echo hi >> C:\\a\\refreshed.txt", refreshonly=True,
             subscribe=["File[C:/a/dir/f.txt]"]),
        _res("Exec", "codes", ["a"], command=CMD + " /c echo x > C:\\a\\codes.txt & exit 3", returns=[0, 3],
             creates="C:/a/codes.txt"),
        _res("Exec", "builtin", ["c"], command="mkdir C:\\c"),
    ],
    "edges": [{"source": "Stage[main]", "target": "Class[B]"}, {"source": "Stage[main]", "target": "Class[A]"}]
    + [{"source": "Class[B]", "target": t} for t in ("Exec[bad]", "Service[svc_b]")]
    + [{"source": "Class[A]", "target": t} for t in ("File[C:/a/dir]", "File[C:/a/dir/f.txt]", "Exec[guarded]",
                                                      "Exec[onlyif]", "Exec[refresh]", "Exec[codes]")],
}


@pytest.fixture
def canned_host(tmp_path, packages, monkeypatch):
    """A host whose Puppet server is replaced by a canned catalog: the apply semantics, without a server."""
    host = make_host(tmp_path, name="ZCANNED")
    assert host.run(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi"))[2] == 0
    agent = host.puppet
    monkeypatch.setattr(agent, "_real_puppet", lambda: "/usr/bin/puppet")
    monkeypatch.setattr(agent, "signed_cert", lambda certname: Path("/dev/null"))
    monkeypatch.setattr(agent, "_node_environment", lambda eff: ("production", ""))
    monkeypatch.setattr(agent, "_fetch_catalog", lambda eff, opts: (json.loads(json.dumps(CANNED)), ""))
    return host


def test_a_first_noop_run_on_a_fresh_host_reports_and_fails_nothing(canned_host):
    # real Puppet finds a missing parent directory only when it writes, which --noop never does: the
    # confirm run of the agents bootstrap (--noop, before anything was deployed) must not fail on it
    h = canned_host
    out, err, code = h.run("puppet agent -t --noop --tags a")
    assert code == 0, out + err
    assert "File[C:/a/dir/f.txt]/ensure: current_value 'absent', should be 'file' (noop)" in out
    assert not (h.sandbox / "a").exists()


def test_catalog_order_guards_refresh_and_failed_dependencies(canned_host):
    h = canned_host
    out, err, code = h.run("puppet agent -t --tags a,b")
    assert code == 6, (out, err)  # changes and failures
    run = h.puppet.journal()[-1]
    status = {r["resource"]: r["status"] for r in run["resources"]}
    assert status == {"File[C:/a/dir]": "changed", "File[C:/a/dir/f.txt]": "changed", "Exec[guarded]": "unchanged",
                      "Exec[onlyif]": "unchanged", "Exec[refresh]": "changed", "Exec[codes]": "changed",
                      "Exec[bad]": "failed", "Service[svc_b]": "skipped"}
    # Class[B] requires Class[A]: A's resources come first although the catalog lists B first
    assert run["component_order"] == ["a", "b"]
    assert "'C:\\nope\\tool.exe --go' returned 9009 instead of one of [0]" in err
    assert "Skipping because of failed dependencies" in err
    assert (h.sandbox / "a" / "refreshed.txt").read_bytes() == b"hi \r\n"
    assert not (h.sandbox / "a" / "guarded.txt").exists() and not (h.sandbox / "a" / "onlyif.txt").exists()
    assert h.run("sc query svc_b")[2] == 1060
    # again: the refreshonly exec has no event now; only the failure is left (exit 4)
    assert h.run("puppet agent -t --tags a,b")[2] == 4
    assert (h.sandbox / "a" / "refreshed.txt").read_bytes() == b"hi \r\n"
    # CreateProcess has no cmd built-ins: an exec of bare `mkdir` fails as on Windows
    out, err, code = h.run("puppet agent -t --tags c")
    assert code == 4 and "Could not find command 'mkdir'" in out + err
    # --noop reports what it would change and changes nothing
    (h.sandbox / "a" / "dir" / "f.txt").write_text("drift")
    out, err, code = h.run("puppet agent -t --noop --tags a")
    assert code == 0 and "File[C:/a/dir/f.txt]/content: current_value" in out
    assert (h.sandbox / "a" / "dir" / "f.txt").read_text() == "drift"


# -- puppet: the real agent against the real puppetserver --------------------------------------------
SITE_PP = r"""# Test environment of tests/test_rehearsal_persona.py (the Windows persona).
class zeo_server {
  file { 'C:/zope': ensure => directory }
  file { 'C:/zope/zeo.conf':
    ensure  => file,
    content => "zeo on ${facts['hostname']} family ${facts['os']['family']} release ${facts['os']['release']['full']}\n",
    require => File['C:/zope'],
  }
  service { 'zeo': ensure => running, enable => true, subscribe => File['C:/zope/zeo.conf'] }
}
class zope_app {
  file { 'C:/zope/app.conf': ensure => file, content => "app for ${trusted['certname']}\n" }
  service { 'zope': ensure => running, enable => true }
  exec { 'register zope':
    command => 'C:\Windows\System32\cmd.exe /c echo registered > C:\zope\registered.txt',
    creates => 'C:/zope/registered.txt',
  }
}
node default {
  include zeo_server
  include zope_app
  Class['zeo_server'] -> Class['zope_app']
}
"""


@pytest.fixture(scope="module")
def persona_env(puppet_master, master_environment, tmp_path_factory):
    import shutil

    if not shutil.which("puppet"):
        pytest.skip("the Linux puppet agent is not installed (apt-get install puppet-agent)")
    environment = master_environment("personatest")
    manifests = Path(puppet_master["environmentpath"]) / environment / "manifests"
    manifests.mkdir(parents=True, exist_ok=True)
    if not (manifests / "site.pp").exists() or (manifests / "site.pp").read_text() != SITE_PP:
        (manifests / "site.pp").write_text(SITE_PP)
    # `puppetserver ca` finds the server through puppet.conf; point a private one at 127.0.0.1
    conf = tmp_path_factory.mktemp("ca") / "puppet.conf"
    conf.write_text(f"[main]\ncertname = {puppet_master['certname']}\nserver = 127.0.0.1\nca_server = 127.0.0.1\n"
                    f"ssldir = {puppet_master['ssldir']}\n")
    return {"ca_conf": str(conf), "master": puppet_master["certname"], "environment": environment}


def ca(env, *args):
    return subprocess.run(["puppetserver", "ca", *args, "--config", env["ca_conf"]], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.integration
def test_real_puppet_handshake_catalog_and_emulated_apply(tmp_path, packages, persona_env):
    certname = f"zpersona{int(time.time() * 1000) % 10**9}.example.test"
    host = make_host(tmp_path, name="ZPERSONA")
    assert host.run(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi", PUPPET_SERVER="127.0.0.1",
                                PUPPET_AGENT_CERTNAME=certname, PUPPET_AGENT_ENVIRONMENT=persona_env["environment"]))[2] == 0
    try:
        # 1. CSR: the real agent makes the key and submits it; not signed yet
        out, err, code = host.run("puppet agent -t --waitforcert 0")
        assert code == 1
        assert f"you might still need to sign this agent's certificate ({certname})" in out
        assert "Exiting now because the waitforcert setting is set to 0." in err
        assert "C:/ProgramData/PuppetLabs/puppet/etc" in out and str(tmp_path) not in out
        # 2. the fingerprint on the node is the one the master lists
        out, err, code = host.run("puppet agent --fingerprint")
        assert code == 0 and out.startswith("(SHA256) ")
        listing = ca(persona_env, "list")
        assert certname in listing.stdout and out.split()[1] in listing.stdout
        # 3. the master signs; the tagged run applies only that component
        assert ca(persona_env, "sign", "--certname", certname).returncode == 0
        out, err, code = host.run("puppet agent --test --tags zeo_server")
        assert code == 2, (out, err)
        out, err, code = host.run("puppet ssl verify")
        assert code == 0 and f"Verified client certificate 'CN={certname}'" in out, (out, err)
        conf = host.sandbox / "zope" / "zeo.conf"
        # the server compiled the catalog from the persona's Windows facts
        assert conf.read_text() == "zeo on zpersona family windows release 2012 R2\n"
        assert not (host.sandbox / "zope" / "app.conf").exists()
        assert "STATE              : 4  RUNNING" in host.run("sc query zeo")[0]
        assert host.run("sc query zope")[2] == 1060
        # 4. the whole catalog, in dependency order; then nothing left to change
        out, err, code = host.run("puppet agent --test --detailed-exitcodes")
        assert code == 2, (out, err)
        assert (host.sandbox / "zope" / "app.conf").read_text() == f"app for {certname}\n"
        assert (host.sandbox / "zope" / "registered.txt").read_bytes() == b"registered \r\n"  # made by the exec
        assert host.run("puppet agent --test")[2] == 0
        # 5. noop reports drift without touching it
        conf.write_text("drifted\n")
        out, _, code = host.run("puppet agent -t --noop --tags zeo_server")
        assert code == 0 and "(noop)" in out and conf.read_text() == "drifted\n"
        # 6. failures for a named component: 4, or 6 together with changes; dependants are skipped
        host.faults.puppet_fail = ("zope_app",)
        out, err, code = host.run("puppet agent -t")
        assert code == 6, (out, err)
        assert "emulated fault puppet_fail for component 'zope_app'" in err
        host.faults.puppet_fail = ("zeo_server",)
        out, err, code = host.run("puppet agent -t")
        assert code == 4 and "Skipping because of failed dependencies" in err

        # 7. an environment the server does not have: Puppet's warning, then the server's choice
        out, err, code = host.run("puppet agent -t --noop --environment nosuchenv")
        assert "Warning: Error 404 on SERVER: Not Found: Could not find environment 'nosuchenv'" in err
        assert "doesn't match server specified environment 'production'" in out

        runs = read_journal(host.state_dir)
        assert runs[-1]["environment"] == "production"
        runs = runs[:-1]
        assert [r["exit_code"] for r in runs] == [1, 2, 2, 0, 0, 6, 4]
        assert runs[0]["outcome"] == "no_certificate"
        assert runs[1]["tags"] == ["zeo_server"] and list(runs[1]["components"]) == ["zeo_server"]
        assert runs[2]["component_order"] == ["zeo_server", "zope_app"]
        assert runs[2]["components"]["zope_app"]["outcome"] == "changed"
        assert runs[2]["components"]["zeo_server"]["outcome"] == "unchanged"
        assert runs[6]["components"]["zope_app"]["outcome"] == "failed"  # skipped after zeo_server failed
        applied = [(a["run"], a["resource"]) for a in host.puppet.applied()]
        assert applied[:4] == [(2, "File[C:/zope]"), (2, "File[C:/zope/zeo.conf]"), (2, "Service[zeo]"),
                               (3, "File[C:/zope/app.conf]")]
        assert json.loads((host.state_dir / "puppet-journal.json").read_text())["runs"][:-1] == runs
    finally:
        ca(persona_env, "clean", "--certname", certname)


# -- the same persona behind the real WinRM endpoint and the real pywinrm client --------------------
WINRM_HOSTS = [("ZAPP01", "127.0.0.71"), ("ZAPP02", "127.0.0.72")]


def winrm_session(fleet, hostname, transport="basic", scheme="https"):
    import winrm

    return winrm.Session(fleet.endpoint(hostname, scheme), auth=(fleet.username, fleet.password),
                         transport=transport, server_cert_validation="validate", ca_trust_path=str(fleet.ca_cert))


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [{"inventory": WINRM_HOSTS, "spec": {
    "mode": "timing", "timing": {"default_s": 1.5}, "defaults": {"basic": True},
    "hosts": {"ZAPP02": {"msi_busy_attempts": 1}}}}], indirect=True)
def test_persona_through_pywinrm(winrm_fleet, packages):
    s = winrm_session(winrm_fleet, "ZAPP01")
    r = s.run_cmd("hostname")
    assert (r.status_code, r.std_out) == (0, b"ZAPP01\r\n")
    r = s.run_cmd("ipconfig", ["/all"])
    assert r.status_code == 9009 and r.std_err.startswith(b"'ipconfig' is not recognized")
    r = s.run_ps("Write-Output $env:COMPUTERNAME; exit 3")
    assert (r.status_code, r.std_out) == (3, b"ZAPP01\r\n")
    r = s.run_ps("Get-Service puppet")
    assert r.status_code == 1 and b"The term 'Get-Service' is not recognized" in r.std_err
    install = split_argv(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi"))
    assert s.run_cmd(install[0], install[1:]).status_code == 0
    ntlm = winrm_session(winrm_fleet, "ZAPP02", transport="ntlm", scheme="http")  # with message encryption
    assert [ntlm.run_cmd(install[0], install[1:]).status_code for _ in range(2)] == [1618, 0]
    # two controllers start a Puppet run on the same host: one runs, the other meets the run lock
    results = {}

    def run(i):
        results[i] = winrm_session(winrm_fleet, "ZAPP01").run_cmd("puppet", ["agent", "-t", "--tags", f"c{i}"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results.values())
    assert codes == [1, 2]
    assert any(b"already in progress" in r.std_out for r in results.values())
    host = winrm_fleet.host("ZAPP01").persona
    assert [run["outcome"] for run in host.puppet.journal()] == ["already_running", "changed"]


@pytest.mark.integration
@pytest.mark.parametrize("winrm_fleet", [{"inventory": [("ZREAL01", "127.0.0.73")]}],
                         indirect=True)
def test_real_puppet_handshake_through_pywinrm(winrm_fleet, packages, persona_env):
    """The chain `inv bootstrap` and `inv deploy` drive: NTLM+encryption -> persona -> real agent and server."""
    certname = f"zreal{int(time.time() * 1000) % 10**9}.example.test"
    s = winrm_session(winrm_fleet, "ZREAL01", transport="ntlm", scheme="http")
    # the master by its inventory name, which the emulated host finds in its hosts file
    winrm_fleet.host("ZREAL01").persona.add_hosts_entry(persona_env["master"], "127.0.0.1")
    install = split_argv(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi", PUPPET_SERVER=persona_env["master"],
                                     PUPPET_AGENT_CERTNAME=certname, PUPPET_AGENT_ENVIRONMENT=persona_env["environment"]))
    assert s.run_cmd(install[0], install[1:]).status_code == 0
    try:
        r = s.run_cmd("puppet", ["agent", "--test", "--waitforcert", "0"])
        assert r.status_code == 1 and b"you might still need to sign" in r.std_out
        node_fp = s.run_cmd("puppet", ["agent", "--fingerprint"]).std_out.split()[1].decode()
        assert node_fp in ca(persona_env, "list").stdout
        assert ca(persona_env, "sign", "--certname", certname).returncode == 0
        r = s.run_cmd("puppet", ["agent", "--test", "--detailed-exitcodes", "--tags", "zeo_server"])
        assert r.status_code == 2, (r.std_out, r.std_err)
        assert b"4  RUNNING" in s.run_cmd("sc", ["query", "zeo"]).std_out
        assert s.run_cmd("type", [r"C:\zope\zeo.conf"]).std_out == b"zeo on zreal01 family windows release 2012 R2\n"
        persona = winrm_fleet.host("ZREAL01").persona
        assert [(run["outcome"], run["component_order"]) for run in persona.puppet.journal()] == [
            ("no_certificate", []), ("changed", ["zeo_server"])]
        assert s.run_cmd("puppet", ["config", "print", "server"]).std_out == persona_env["master"].encode() + b"\r\n"
    finally:
        ca(persona_env, "clean", "--certname", certname)


# The shape of the product's own module (puppet/modules/product, product::component): an exec making the
# install folder, the artifact downloaded from the package server with its sha256, the module's unzip.vbs
# run by cscript, a parameters file and a service restarted when the release changes.
PRODUCT_PP = r"""# Test environment of tests/test_rehearsal_persona.py (the Windows persona): product::component's pattern.
define persona_component(String $artifact_url, String $sha256, String $version) {
  $install_dir = "C:\\Product\\${title}"
  $download = "${install_dir}\\downloads\\${title}.zip"
  $release_dir = "${install_dir}\\${version}"
  exec { "product ${title}: create ${install_dir}":
    command => "C:\\Windows\\System32\\cmd.exe /c mkdir \"${install_dir}\"",
    creates => $install_dir,
  }
  -> file { ["${install_dir}\\downloads", "${install_dir}\\etc"]: ensure => directory }
  -> file { $download: ensure => file, source => $artifact_url, checksum => 'sha256', checksum_value => $sha256 }
  -> file { "${install_dir}\\unzip.vbs": ensure => file, source => 'puppet:///modules/persona_fixture/unzip.vbs' }
  -> exec { "product ${title}: unpack":
    command => "C:\\Windows\\System32\\cscript.exe //nologo //B \"${install_dir}\\unzip.vbs\" \"${download}\" \"${release_dir}\"",
    creates => "${release_dir}\\.unpacked",
  }
  file { "${install_dir}\\etc\\parameters.json":
    ensure => file, content => "{\"version\": \"${version}\"}\n", require => File["${install_dir}\\etc"],
  }
  service { "Product_${title}":
    ensure => running, enable => true,
    subscribe => [Exec["product ${title}: unpack"], File["${install_dir}\\etc\\parameters.json"]],
  }
}
node default {
  persona_component { 'zeo_server': tag => 'zeo_server', artifact_url => '__URL__/zeo.zip', sha256 => '__SHA__',
                      version => '1.0' }
  persona_component { 'bad_sum': tag => 'bad_sum', artifact_url => '__URL__/zeo.zip', sha256 => '__BAD__',
                      version => '1.0' }
}
"""
UNZIP_VBS_HEAD = "' unzip.vbs ZIP DEST: unpack ZIP into DEST with the Windows shell (no PowerShell needed).\r\n"


@pytest.mark.integration
def test_real_puppet_product_component_pattern(tmp_path, packages, persona_env, puppet_master, master_environment):
    import hashlib
    import zipfile

    with zipfile.ZipFile(tmp_path / "packages" / "zeo.zip", "w") as z:
        z.writestr("bin/zeo.txt", "zeo release 1.0\n")
    digest = hashlib.sha256((tmp_path / "packages" / "zeo.zip").read_bytes()).hexdigest()
    product_env = master_environment("personaproduct")
    env = Path(puppet_master["environmentpath"]) / product_env
    (env / "manifests").mkdir(parents=True, exist_ok=True)
    (env / "modules" / "persona_fixture" / "files").mkdir(parents=True, exist_ok=True)
    (env / "modules" / "persona_fixture" / "files" / "unzip.vbs").write_text(UNZIP_VBS_HEAD)
    (env / "manifests" / "site.pp").write_text(PRODUCT_PP.replace("__URL__", packages.url).replace("__SHA__", digest)
                                               .replace("__BAD__", "0" * 64))
    certname = f"zproduct{int(time.time() * 1000) % 10**9}.example.test"
    host = make_host(tmp_path, name="ZPRODUCT")
    assert host.run(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi", PUPPET_SERVER="127.0.0.1",
                                PUPPET_AGENT_CERTNAME=certname, PUPPET_AGENT_ENVIRONMENT=product_env))[2] == 0
    try:
        assert host.run("puppet agent -t --waitforcert 0")[2] == 1
        assert ca(persona_env, "sign", "--certname", certname).returncode == 0
        out, err, code = host.run("puppet agent -t --tags zeo_server")
        assert code == 2, (out, err)
        release = host.sandbox / "Product" / "zeo_server" / "1.0"
        assert (release / "bin" / "zeo.txt").read_text() == "zeo release 1.0\n" and (release / ".unpacked").exists()
        assert "4  RUNNING" in host.run("sc query Product_zeo_server")[0]
        assert re.search(r"Notice: /Stage\[main\]/\S*Persona_component\[zeo_server\]/Exec\[product zeo_server: unpack\]"
                         r"/returns: executed successfully", out), out
        assert host.run("puppet agent -t --tags zeo_server")[2] == 0  # checksum and creates: nothing to do
        # a wrong sha256 fails the download, and what depends on it is skipped
        out, err, code = host.run("puppet agent -t --tags bad_sum")
        assert code == 6, (out, err)
        assert "File written to disk did not match checksum" in err
        assert not (host.sandbox / "Product" / "bad_sum" / "1.0").exists()
        assert host.run("sc query Product_bad_sum")[2] == 1060
        runs = host.puppet.journal()
        assert runs[1]["component_order"] == ["zeo_server"] and runs[3]["components"]["bad_sum"]["outcome"] == "failed"
        # a manifest that does not compile: the server's error, exit 1 even with --detailed-exitcodes
        broken_env = master_environment("personabroken")
        broken = Path(puppet_master["environmentpath"]) / broken_env / "manifests"
        broken.mkdir(parents=True, exist_ok=True)
        (broken / "site.pp").write_text("node default { fail('persona test: broken manifest') }\n")
        out, err, code = host.run(f"puppet agent -t --environment {broken_env}")
        assert code == 1
        assert "Error: Could not retrieve catalog from remote server: Error 500 on SERVER:" in err
        assert "persona test: broken manifest" in err and "Could not retrieve catalog; skipping run" in err
        assert host.puppet.journal()[-1]["outcome"] == "error"
    finally:
        ca(persona_env, "clean", "--certname", certname)


# -- the persona's own structure ----------------------------------------------------------------------------
def test_rehearsal_modules_import_each_other_without_a_circle():
    """Every relative import inside deploy_tasks/rehearsal (module level or not) forms no cycle; process.py is a leaf."""
    import ast

    root = Path(__file__).resolve().parent.parent / "deploy_tasks" / "rehearsal"
    graph = {}
    for path in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        graph[path.stem] = deps & {p.stem for p in root.glob("*.py")}
    assert graph["process"] == set()

    def cycle_from(start, node, seen):
        for dep in graph[node]:
            if dep == start:
                return [node, dep]
            if dep not in seen:
                seen.add(dep)
                rest = cycle_from(start, dep, seen)
                if rest:
                    return [node] + rest
        return None

    cycles = [c for c in (cycle_from(m, m, set()) for m in graph) if c]
    assert not cycles, cycles


@pytest.mark.integration
def test_a_host_under_a_relative_root_runs_the_real_agent_with_its_own_settings(tmp_path, packages, monkeypatch,
                                                                                 puppet_master):
    # `inv fleet.up` roots the fleet at <build_dir>/fleet, a relative path by default; the real Linux agent
    # runs with its cwd in the host's directory, so a relative --confdir used to miss the host's puppet.conf
    # (the agent then asked for a certificate as the controller's own hostname, from the server 'puppet')
    if not shutil.which("puppet"):
        pytest.skip("puppet-agent is not installed")
    monkeypatch.chdir(tmp_path)
    host = make_host(Path("rel"), name="ZREL01")
    assert host.run(install_cmd(packages.url + "/puppet-agent-7.23.0-x64.msi",
                                PUPPET_SERVER="127.0.0.1", PUPPET_AGENT_CERTNAME="zrel01.example.invalid",
                                PUPPET_AGENT_ENVIRONMENT="production"))[2] == 0
    out, err, _ = host.run("puppet agent --test --noop --waitforcert 0")
    text = out + err
    assert "Creating a new SSL certificate request for zrel01.example.invalid" in text, text
    assert "puppet:8140" not in text
    subprocess.run(["puppetserver", "ca", "clean", "--certname", "zrel01.example.invalid"], capture_output=True)
