"""inv bootstrap (package server + Puppet master over SSH) and inv publish-config, against real components.

sshd (the test sshd on 127.0.0.1, root), nginx and puppetserver are the real Debian
ones on this machine: `inv bootstrap` goes over SSH to 127.0.0.1 — this
machine, as root. The test inventory is the example's, with the Linux
server's Address changed from `local` to 127.0.0.1 so the SSH path is used.
Tests run `inv` as a subprocess and assert on what a user sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from deploy_tasks.inventory.template import example_sheets, write_workbook
from deploy_tasks.steps import package_server, puppet_master, remote
from deploy_tasks.transports.ssh import Shell
from deploy_tasks.errors import RemoteCommandError

ROOT = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).with_name("inv"))
PORT = 18080  # the example says 8080; the tests keep clear of anything else on this shared machine
RUN_ID = uuid.uuid4().hex[:8]
PACKAGE_ROOT = f"/srv/deploy_tasks-test/repository-{RUN_ID}"
LINUX = "package-server,puppet-master"  # plain `inv bootstrap` goes on to the Windows agents (test_agents.py)

pytestmark = pytest.mark.integration


def have_nginx() -> bool:
    return bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory, sshd, puppet_master):
    """The test inventory, a dummy agent MSI and the environment `inv` runs with."""
    if not have_nginx():
        pytest.skip("nginx is not installed (apt-get install nginx)")
    tmp = tmp_path_factory.mktemp("bootstrap")
    msi = tmp / "puppet-agent-7.23.0-x64.msi"
    from deploy_tasks.artifacts.synthetic import write_synthetic_msi

    write_synthetic_msi(msi)  # a well-formed Windows Installer package (marked synthetic): bootstrap checks it
    sheets = example_sheets()
    for row in sheets["Servers"][1]:
        if row[0] == "deploy01":
            row[1] = "127.0.0.1"
    for row in sheets["Settings"][1]:
        if row[0] == "package_port":
            row[1] = PORT
    workbook = write_workbook(tmp / "linux.xlsx", sheets)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_") and k != "SSH_AUTH_SOCK"}
    env.update({"INVOKE_DEPLOY_SSH_CONFIG": sshd.ssh_config, "INVOKE_DEPLOY_PACKAGE_ROOT": PACKAGE_ROOT,
                "INVOKE_DEPLOY_PUPPET_AGENT_MSI": str(msi), "HOME": str(tmp)})
    yield {"tmp": tmp, "msi": msi, "inventory": str(workbook), "env": env, "sshd": sshd}
    subprocess.run(["rm", "-rf", PACKAGE_ROOT])


def inv(lab, *args, **extra_env):
    env = dict(lab["env"], **extra_env)
    proc = subprocess.run([INV, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    proc.all = proc.stdout + proc.stderr
    assert "Traceback" not in proc.all, proc.all
    return proc


def step_lines(output: str) -> dict:
    """{(host, step): result} from the per-step lines `deploy01  package-server  changed  (1.2s)`."""
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if parts and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", parts[0]):
            parts = parts[1:]  # the timestamp of a plain (not a terminal) event line
        if len(parts) >= 4 and parts[-1].startswith("(") and parts[-1].endswith("s)"):
            found[(parts[0], parts[1])] = " ".join(parts[2:-1])
    return found


def fetch(url: str, method: str = "GET") -> tuple:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def site_digest() -> str:
    path = Path(package_server.SITE_FILE)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


@pytest.fixture(scope="module")
def first_run(lab):
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "package-server,puppet-master")
    assert proc.returncode == 0, proc.all
    return proc


# -- bootstrap --------------------------------------------------------------------
def test_dry_run_prints_commands_and_changes_nothing(lab):
    root = f"/srv/deploy_tasks-test/dry-{RUN_ID}"
    before = site_digest()
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", LINUX, "--dry-run",
               INVOKE_DEPLOY_PACKAGE_ROOT=root)
    assert proc.returncode == 0, proc.all
    assert f"would run: mkdir -p {root}" in proc.stdout
    assert step_lines(proc.stdout)[("deploy01", "package-server")] == "would change"
    assert not os.path.exists(root)
    assert site_digest() == before


def test_bootstrap_installs_configures_and_serves(lab, first_run):
    results = step_lines(first_run.stdout)
    # a fresh repository directory for this session: the package server step had work to do
    assert results[("deploy01", "package-server")] == "changed"
    assert f"created {PACKAGE_ROOT}" in first_run.stdout
    assert results[("deploy01", "puppet-master")] in ("changed", "unchanged")
    status, body, _ = fetch(f"http://127.0.0.1:{PORT}/{package_server.PROBE_NAME}")
    assert (status, body) == (200, package_server.probe_text(PACKAGE_ROOT))
    status, body, headers = fetch(f"http://127.0.0.1:{PORT}/puppet-agent/{lab['msi'].name}")
    assert status == 200 and body == lab["msi"].read_bytes()
    assert headers["Content-Type"] == "application/x-msi"
    assert "nginx/" not in headers.get("Server", "")  # server_tokens off
    assert fetch(f"http://127.0.0.1:{PORT}/", "GET")[0] in (403, 404)  # autoindex off
    assert fetch(f"http://127.0.0.1:{PORT}/{package_server.PROBE_NAME}", "POST")[0] == 403
    assert puppet_master.status("127.0.0.1") == "running"


def test_second_bootstrap_is_all_unchanged(lab, first_run):
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "package-server,puppet-master")
    assert proc.returncode == 0, proc.all
    assert step_lines(proc.stdout) == {("deploy01", "package-server"): "unchanged",
                                       ("deploy01", "puppet-master"): "unchanged"}
    summary = proc.stdout.split("\nbootstrap\n", 1)[1]
    assert "unchanged" in summary and " changed" not in summary
    assert puppet_master.status("127.0.0.1") == "running"


def test_broken_nginx_template_keeps_the_old_config_serving(lab, first_run, tmp_path):
    before = site_digest()
    broken = tmp_path / "templates"
    broken.mkdir()
    text = (ROOT / "templates" / package_server.SITE_TEMPLATE).read_text()
    (broken / package_server.SITE_TEMPLATE).write_text(text.replace("autoindex off;", "autoindex off;\n    no_such_directive on;"))
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "package-server",
               INVOKE_DEPLOY_TEMPLATE_DIR=str(broken))
    assert proc.returncode == 1
    assert step_lines(proc.stdout)[("deploy01", "package-server")] == "failed"
    assert "nginx -t" in proc.stderr and "no_such_directive" in proc.stderr
    assert "put back and nginx keeps serving it" in proc.stderr
    assert site_digest() == before
    status, body, _ = fetch(f"http://127.0.0.1:{PORT}/{package_server.PROBE_NAME}")
    assert (status, body) == (200, package_server.probe_text(PACKAGE_ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_names_host_and_port(lab, tmp_path):
    port = free_port()
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {lab['sshd'].key_file}\n")
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", LINUX, INVOKE_DEPLOY_SSH_CONFIG=str(config))
    assert proc.returncode == 1
    assert f"deploy01: cannot reach 127.0.0.1:{port}: connection refused" in proc.stderr
    # the second step on the same host is not attempted again
    assert step_lines(proc.stdout)[("deploy01", "puppet-master")] == "skipped"


def test_refused_key_names_host_port_and_what_to_do(lab, tmp_path):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  Port {lab['sshd'].port}\n  User root\n  IdentityFile {key}\n"
                      f"  IdentitiesOnly yes\n  UserKnownHostsFile {lab['sshd'].known_hosts}\n")
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "package-server",
               INVOKE_DEPLOY_SSH_CONFIG=str(config))
    assert proc.returncode == 1
    assert f"127.0.0.1:{lab['sshd'].port} refused our SSH key for user root" in proc.stderr
    assert "authorized_keys" in proc.stderr


def test_changed_host_key_is_refused(lab, tmp_path):
    other = tmp_path / "otherhost"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pub = (tmp_path / "otherhost.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{lab['sshd'].port} {pub[0]} {pub[1]}\n")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  Port {lab['sshd'].port}\n  User root\n  IdentityFile {lab['sshd'].key_file}\n"
                      f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n")
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "package-server",
               INVOKE_DEPLOY_SSH_CONFIG=str(config))
    assert proc.returncode == 1
    assert "does not match the one in known_hosts" in proc.stderr
    assert f"ssh-keygen -R '[127.0.0.1]:{lab['sshd'].port}'" in proc.stderr


def test_package_install_failure_is_clear(lab):
    shell = Shell("deploy01", "127.0.0.1", ssh_config=lab["sshd"].ssh_config)
    try:
        assert remote.package_installed(shell, "nginx")
        with pytest.raises(RemoteCommandError) as err:
            remote.packages(shell, ["nginx", "deploy-tasks-no-such-package"])
    finally:
        shell.close()
    text = str(err.value)
    assert text.startswith("deploy01: command failed with exit code 100: ")
    assert "apt-get install" in text and "deploy-tasks-no-such-package" in text
    assert "Unable to locate package deploy-tasks-no-such-package" in text
    assert "could not install deploy-tasks-no-such-package on deploy01" in text


def test_only_rejects_unknown_parts(lab):
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "package-server,nginx")
    assert proc.returncode == 1
    assert "--only: unknown part(s) nginx; choose from package-server, puppet-master, agents" in proc.stderr


# -- publish-config -------------------------------------------------------------------
def write_environment(path: Path, message: str, site: str = "") -> Path:
    (path / "manifests").mkdir(parents=True, exist_ok=True)
    (path / "data").mkdir(exist_ok=True)
    (path / "environment.conf").write_text("modulepath = modules:$basemodulepath\n")
    (path / "hiera.yaml").write_text("---\nversion: 5\nhierarchy:\n  - name: common\n    path: common.yaml\n"
                                     "defaults:\n  datadir: data\n  data_hash: yaml_data\n")
    (path / "data" / "common.yaml").write_text(f"---\nmessage: \"{message}\"\n")
    (path / "manifests" / "site.pp").write_text(site or "node default {\n  notify { lookup('message'): }\n}\n")
    return path


def compiled_notifies(env: str) -> list:
    """Ask the real master for a catalog in ``env`` (as the master's own node) and list its notify titles."""
    ssldir = "/var/lib/puppet/ssl"
    cert = "deploy01.example.test"
    ctx = ssl.create_default_context(cafile=f"{ssldir}/certs/ca.pem")
    ctx.check_hostname = False
    ctx.load_cert_chain(f"{ssldir}/certs/{cert}.pem", f"{ssldir}/private_keys/{cert}.pem")
    facts = {"name": cert, "values": {"networking": {"fqdn": cert}}}
    data = urllib.parse.urlencode({"environment": env, "facts_format": "application/json",
                                   "facts": json.dumps(facts)}).encode()
    req = urllib.request.Request(f"https://127.0.0.1:8140/puppet/v3/catalog/{cert}?environment={env}", data=data,
                                 headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=60) as resp:
        catalog = json.loads(resp.read())
    return [r["title"] for r in catalog["resources"] if r["type"] == "Notify"]


@pytest.fixture
def pub_env():
    name = f"pubtest_{RUN_ID}"
    yield name
    subprocess.run(f"rm -rf /etc/puppet/code/environments/{name} /etc/puppet/code/releases/{name}-* "
                   f"/etc/puppet/code/releases/{name}.previous /etc/puppet/code/releases/{name}.history", shell=True)


def test_publish_then_rollback_on_the_real_master(lab, pub_env, tmp_path):
    env = {"INVOKE_DEPLOY_ENVIRONMENT": pub_env}
    source = write_environment(tmp_path / "env", "release one")
    link = Path(f"/etc/puppet/code/environments/{pub_env}")

    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(source), **env)
    assert proc.returncode == 0, proc.all
    assert step_lines(proc.stdout)[("deploy01", "publish-config")] == "changed"
    first = os.path.realpath(link)
    assert link.is_symlink() and first.startswith(f"/etc/puppet/code/releases/{pub_env}-")
    assert compiled_notifies(pub_env) == ["release one"]

    again = inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(source), **env)
    assert again.returncode == 0 and step_lines(again.stdout)[("deploy01", "publish-config")] == "unchanged"

    (source / "data" / "common.yaml").write_text('---\nmessage: "release two"\n')
    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(source), **env)
    assert proc.returncode == 0, proc.all
    second = os.path.realpath(link)
    assert second != first and os.path.isdir(first)  # the previous version is kept
    assert f"(previous: {first})" in proc.stdout
    assert compiled_notifies(pub_env) == ["release two"]

    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], "--rollback", **env)
    assert proc.returncode == 0, proc.all
    assert f"switched {link} back to {first}" in proc.stdout
    assert os.path.realpath(link) == first
    assert compiled_notifies(pub_env) == ["release one"]


def test_publish_rejects_an_invalid_manifest_and_keeps_the_current_version(lab, pub_env, tmp_path):
    env = {"INVOKE_DEPLOY_ENVIRONMENT": pub_env}
    good = write_environment(tmp_path / "good", "good")
    assert inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(good), **env).returncode == 0
    current = os.path.realpath(f"/etc/puppet/code/environments/{pub_env}")
    bad = write_environment(tmp_path / "bad", "bad", site="node default {\n  notify { 'unclosed':\n")
    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(bad), **env)
    assert proc.returncode == 1
    assert "puppet parser validate" in proc.stderr and "site.pp" in proc.stderr
    assert "nothing was switched" in proc.stderr
    assert os.path.realpath(f"/etc/puppet/code/environments/{pub_env}") == current
    assert compiled_notifies(pub_env) == ["good"]


def test_publish_moves_a_real_directory_aside(lab, pub_env, tmp_path):
    env = {"INVOKE_DEPLOY_ENVIRONMENT": pub_env}
    hand = Path(f"/etc/puppet/code/environments/{pub_env}")
    (hand / "manifests").mkdir(parents=True)
    (hand / "manifests" / "site.pp").write_text("# published by hand\n")
    source = write_environment(tmp_path / "env", "generated")
    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(source), **env)
    assert proc.returncode == 0, proc.all
    assert hand.is_symlink()
    aside = [line for line in proc.stdout.splitlines() if "moved the directory that was at" in line]
    assert aside, proc.stdout
    moved = aside[0].split(" to ")[1].split(" (kept")[0]
    assert Path(moved, "manifests", "site.pp").read_text() == "# published by hand\n"
    subprocess.run(["rm", "-rf", moved])


def test_publish_without_a_generated_environment_says_what_to_do(lab, pub_env, tmp_path):
    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(tmp_path / "missing"),
               INVOKE_DEPLOY_ENVIRONMENT=pub_env)
    assert proc.returncode == 1
    assert f"the generated environment {tmp_path / 'missing'} does not exist: run `inv generate-config`" in proc.stderr


def test_rollback_without_a_previous_version(lab, pub_env):
    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], "--rollback",
               INVOKE_DEPLOY_ENVIRONMENT=pub_env)
    assert proc.returncode == 1
    assert f"no previous version of environment {pub_env} to roll back to" in proc.stderr


def test_publish_dry_run_changes_nothing(lab, pub_env, tmp_path):
    source = write_environment(tmp_path / "env", "dry")
    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(source), "--dry-run",
               INVOKE_DEPLOY_ENVIRONMENT=pub_env)
    assert proc.returncode == 0, proc.all
    assert step_lines(proc.stdout)[("deploy01", "publish-config")] == "would change"
    assert "would run: cd /etc/puppet/code/releases/" in proc.stdout and "parser validate" in proc.stdout
    assert f"mv -T /etc/puppet/code/environments/.{pub_env}.deploy_tasks-link" in proc.stdout
    assert not os.path.lexists(f"/etc/puppet/code/environments/{pub_env}")
    assert not list(Path("/etc/puppet/code/releases").glob(f"{pub_env}-*"))


# -- the remote helpers over the real SSH ----------------------------------------------
@pytest.fixture
def ssh_shell(lab):
    shell = Shell("deploy01", "127.0.0.1", ssh_config=lab["sshd"].ssh_config)
    yield shell
    shell.close()


def test_a_check_that_cannot_run_is_an_error_not_absent(ssh_shell):
    with pytest.raises(RemoteCommandError) as err:
        ssh_shell.test("no-such-command-deploy-tasks /etc")
    assert "exit code 127" in str(err.value) and "not read as 'absent'" in str(err.value)
    assert remote.exists(ssh_shell, "/etc/os-release") and not remote.exists(ssh_shell, "/etc/no-such-file-here")


def test_ensure_line_and_upload_are_idempotent_and_quote_safely(ssh_shell, tmp_path):
    target = f"/tmp/deploy_tasks-test-{RUN_ID}/it's here.conf"
    line = "say 'hello' \"world\" $HOME `id` ; rm -rf /nonexistent"
    try:
        assert remote.directory(ssh_shell, os.path.dirname(target), mode="750") is True
        assert remote.directory(ssh_shell, os.path.dirname(target), mode="750") is False
        assert oct(os.stat(os.path.dirname(target)).st_mode & 0o777) == "0o750"
        assert remote.upload(ssh_shell, b"first\n", target) is True
        assert remote.upload(ssh_shell, b"first\n", target) is False
        assert remote.ensure_line(ssh_shell, target, line) is True
        assert remote.ensure_line(ssh_shell, target, line) is False
        assert Path(target).read_text() == f"first\n{line}\n"
        dry = Shell("deploy01", "127.0.0.1", ssh_config=ssh_shell.ssh_config, dry_run=True, echo=lambda s: None)
        assert remote.upload(dry, b"second\n", target) is True  # would change ...
        dry.close()
        assert Path(target).read_text() == f"first\n{line}\n"  # ... and did not
    finally:
        subprocess.run(["rm", "-rf", os.path.dirname(target)])


def test_a_published_environment_symlink_counts_as_the_directory(ssh_shell):
    """publish-config makes environments/<env> a symlink; bootstrap's check must see the directory it points to."""
    base = Path(f"/tmp/deploy_tasks-test-{RUN_ID}-link")
    try:
        (base / "release").mkdir(parents=True)
        os.chmod(base / "release", 0o755)
        (base / "production").symlink_to(base / "release")
        assert remote.directory(ssh_shell, str(base / "production"), mode="755") is False
    finally:
        subprocess.run(["rm", "-rf", str(base)])


@pytest.mark.parametrize("settings,what", [
    # a new domain renames the master, whose CA has signed agents: refused unless asked for (test_master_rename.py)
    ({"INVOKE_DEPLOY_DOMAIN": "other.test", "INVOKE_DEPLOY_ALLOW_MASTER_RENAME": "true"},
     "wrote /etc/puppet/puppet.conf"),
    ({"INVOKE_DEPLOY_PUPPETSERVER_HEAP": "768m-1g"}, "restarted puppetserver"),
])
def test_master_changes_are_seen_and_a_dry_run_leaves_the_server_alone(lab, settings, what):
    # a real restart would disturb everyone using the shared master: the dry run shows the decision
    conf = Path("/etc/puppet/puppet.conf").read_bytes()
    pid = Path(puppet_master.PIDFILE).read_text()
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "puppet-master", "--dry-run",
               **settings)
    assert proc.returncode == 0, proc.all
    assert step_lines(proc.stdout)[("deploy01", "puppet-master")] == "would change"
    assert what in proc.stdout
    assert "would run: pid=$(cat /run/puppetserver/puppetserver.pid) && kill" in proc.stdout  # stop ...
    assert "runuser -u puppet -- java -Xms" in proc.stdout  # ... and start again
    assert Path("/etc/puppet/puppet.conf").read_bytes() == conf
    assert Path(puppet_master.PIDFILE).read_text() == pid and puppet_master.status("127.0.0.1") == "running"
    if "INVOKE_DEPLOY_DOMAIN" in settings:
        assert "would rename the master from deploy01.example.test to deploy01.other.test" in proc.stdout


def test_renaming_a_master_with_signed_agents_is_refused_with_what_to_do(lab):
    conf = Path("/etc/puppet/puppet.conf").read_bytes()
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "puppet-master", "--dry-run",
               INVOKE_DEPLOY_DOMAIN="other.test")
    assert proc.returncode == 1, proc.all
    assert ("the Puppet master's certname would change from deploy01.example.test to deploy01.other.test"
            in proc.all)
    assert "--reissue" in proc.all and "INVOKE_DEPLOY_ALLOW_MASTER_RENAME=true" in proc.all
    assert Path("/etc/puppet/puppet.conf").read_bytes() == conf


def test_publish_the_example_s_generated_config(lab, pub_env, tmp_path):
    """The chain: inv generate-config writes <build_dir>/puppet/environments/<env>; publish-config ships it."""
    listing = inv(lab, "--list")
    if "generate-config" not in listing.stdout:
        pytest.skip("inv generate-config is not on this branch yet (config-generation issue)")
    env = {"INVOKE_DEPLOY_ENVIRONMENT": pub_env, "INVOKE_DEPLOY_BUILD_DIR": str(tmp_path / "build"),
           "INVOKE_DEPLOY_REPOSITORY": str(tmp_path / "repository")}  # no manifest: not a developer's build/
    generated = inv(lab, "generate-config", "--inventory", lab["inventory"], **env)
    assert generated.returncode == 0, generated.all
    assert (tmp_path / "build" / "puppet" / "environments" / pub_env).is_dir(), generated.all
    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], **env)
    assert proc.returncode == 0, proc.all
    assert step_lines(proc.stdout)[("deploy01", "publish-config")] == "changed"
    link = Path(f"/etc/puppet/code/environments/{pub_env}")
    assert link.is_symlink() and (link / "manifests").is_dir()


def test_a_local_server_runs_the_same_steps_without_ssh(lab, example_xlsx):
    """The example as shipped: deploy01's Address is `local`, so invoke's local Context does the work."""
    root = f"/srv/deploy_tasks-test/local-{RUN_ID}"
    env = {"INVOKE_DEPLOY_PACKAGE_ROOT": root, "INVOKE_DEPLOY_PACKAGE_PORT": str(PORT),
           "INVOKE_DEPLOY_PUPPET_AGENT_MSI": str(lab["msi"]),
           "INVOKE_DEPLOY_SSH_CONFIG": "/nonexistent/ssh_config"}  # would fail if SSH were used
    try:
        first = inv(lab, "bootstrap", "--inventory", str(example_xlsx), "--only", LINUX, **env)
        assert first.returncode == 0, first.all
        assert step_lines(first.stdout)[("deploy01", "package-server")] == "changed"
        assert fetch(f"http://127.0.0.1:{PORT}/{package_server.PROBE_NAME}")[1] == package_server.probe_text(root)
        second = inv(lab, "bootstrap", "--inventory", str(example_xlsx), "--only", LINUX, **env)
        assert set(step_lines(second.stdout).values()) == {"unchanged"}, second.all
    finally:
        subprocess.run(["rm", "-rf", root])


# -- reports ---------------------------------------------------------------------------------
def test_bootstrap_and_publish_config_write_json_and_junit_reports(lab, pub_env, tmp_path):
    import xml.etree.ElementTree as ET

    reports = tmp_path / "reports"
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "package-server", "--dry-run",
               INVOKE_DEPLOY_REPORTS_DIR=str(reports), INVOKE_DEPLOY_PACKAGE_ROOT=f"/srv/deploy_tasks-test/dry-{RUN_ID}")
    assert proc.returncode == 0, proc.all
    assert f"reports: {reports}/bootstrap.json, {reports}/junit-bootstrap.xml" in proc.stdout
    data = json.loads((reports / "bootstrap.json").read_text())
    assert (data["task"], data["dry_run"], data["ok"]) == ("bootstrap", True, True)
    assert [(u["host"], u["name"], u["status"]) for u in data["units"]] == [("deploy01", "package-server", "would-change")]
    assert any("would run: mkdir -p" in line for line in data["units"][0]["output"])
    cases = ET.parse(reports / "junit-bootstrap.xml").getroot().iter("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [("bootstrap.deploy01", "package-server")]

    source = write_environment(tmp_path / "env", "reported")
    proc = inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(source), "--dry-run",
               INVOKE_DEPLOY_ENVIRONMENT=pub_env, INVOKE_DEPLOY_REPORTS_DIR=str(reports))
    assert proc.returncode == 0, proc.all
    data = json.loads((reports / "publish-config.json").read_text())
    assert [(u["name"], u["status"]) for u in data["units"]] == [("publish-config", "would-change")]

    config = tmp_path / "ssh_config"
    config.write_text(f"Host 127.0.0.1\n  Port {free_port()}\n  User root\n  IdentityFile {lab['sshd'].key_file}\n")
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", LINUX, INVOKE_DEPLOY_SSH_CONFIG=str(config),
               INVOKE_DEPLOY_REPORTS_DIR=str(reports))
    assert proc.returncode == 1
    suite = ET.parse(reports / "junit-bootstrap.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("2", "1", "1")
    failure = suite.find("testcase/failure")
    assert failure.get("type") == "TransportError" and "connection refused" in failure.get("message")


# -- publish-config: history, rollback, a dangling link, a real directory in the way ----------
def _publish(lab, env_name, source, *extra):
    return inv(lab, "publish-config", "--inventory", lab["inventory"], "--source", str(source), *extra,
               INVOKE_DEPLOY_ENVIRONMENT=env_name)


def _rollback(lab, env_name, *extra):
    return inv(lab, "publish-config", "--inventory", lab["inventory"], "--rollback", *extra,
               INVOKE_DEPLOY_ENVIRONMENT=env_name)


def _three_releases(lab, env_name, tmp_path) -> list:
    """Publish releases one, two, three; return their directories (oldest first)."""
    source = write_environment(tmp_path / "env", "release one")
    link = f"/etc/puppet/code/environments/{env_name}"
    dirs = []
    for message in ("release one", "release two", "release three"):
        (source / "data" / "common.yaml").write_text(f'---\nmessage: "{message}"\n')
        proc = _publish(lab, env_name, source)
        assert proc.returncode == 0, proc.all
        dirs.append(os.path.realpath(link))
    return dirs


def test_rollback_steps_back_through_the_history_and_never_forward(lab, pub_env, tmp_path):
    one, two, three = _three_releases(lab, pub_env, tmp_path)
    link = f"/etc/puppet/code/environments/{pub_env}"
    proc = _rollback(lab, pub_env)
    assert proc.returncode == 0, proc.all
    assert f"switched {link} back to {two} (was {three})" in proc.stdout
    proc = _rollback(lab, pub_env)
    assert proc.returncode == 0, proc.all
    assert f"switched {link} back to {one} (was {two})" in proc.stdout
    assert os.path.realpath(link) == one
    assert compiled_notifies(pub_env) == ["release one"]
    # the oldest: nothing further back, said once, and the link stays where it is (no silent roll forward)
    proc = _rollback(lab, pub_env)
    assert proc.returncode == 1
    assert proc.all.count("nothing to roll back") == 1, proc.all
    assert os.path.basename(three) in proc.stderr  # the releases --to can pick
    assert os.path.realpath(link) == one
    # --to picks any published release, by name or by hash
    proc = _rollback(lab, pub_env, "--to", os.path.basename(three))
    assert proc.returncode == 0, proc.all
    assert f"switched {link} back to {three} (was {one})" in proc.stdout
    proc = _rollback(lab, pub_env, "--to", os.path.basename(two).split("-")[-1])
    assert proc.returncode == 0 and os.path.realpath(link) == two, proc.all
    proc = _rollback(lab, pub_env, "--to", "../../../etc")
    assert proc.returncode == 1 and "no published release of environment" in proc.stderr
    assert os.path.realpath(link) == two


def test_a_dangling_environment_link_counts_as_no_current_release(lab, pub_env, tmp_path):
    link = Path(f"/etc/puppet/code/environments/{pub_env}")
    one = write_environment(tmp_path / "one", "release one")
    assert _publish(lab, pub_env, one).returncode == 0
    first = os.path.realpath(link)
    link.unlink()
    link.symlink_to(f"/nonexistent-{RUN_ID}/gone/{pub_env}")  # the target's parent is gone too
    # rollback over it: the newest release still on the master
    proc = _rollback(lab, pub_env)
    assert proc.returncode == 0, proc.all
    assert "which is gone: treated as no current release" in proc.stdout
    assert os.path.realpath(link) == first
    # publish over it: the missing directory is never recorded as the previous release
    link.unlink()
    link.symlink_to(f"/nonexistent-{RUN_ID}/gone/{pub_env}")
    two = write_environment(tmp_path / "two", "release two")
    proc = _publish(lab, pub_env, two)
    assert proc.returncode == 0, proc.all
    assert "previous:" not in proc.stdout and "nonexistent" not in Path(
        f"/etc/puppet/code/releases/{pub_env}.history").read_text()
    assert compiled_notifies(pub_env) == ["release two"]
    proc = _rollback(lab, pub_env)
    assert proc.returncode == 0, proc.all
    assert os.path.realpath(link) == first


def test_rollback_onto_a_real_directory_moves_it_aside(lab, pub_env, tmp_path):
    link = Path(f"/etc/puppet/code/environments/{pub_env}")
    one = write_environment(tmp_path / "one", "release one")
    assert _publish(lab, pub_env, one).returncode == 0
    first = os.path.realpath(link)
    link.unlink()
    (link / "manifests").mkdir(parents=True)
    (link / "manifests" / "site.pp").write_text("# published by hand\n")
    proc = _rollback(lab, pub_env)
    assert proc.returncode == 0, proc.all
    assert link.is_symlink() and os.path.realpath(link) == first
    moved = [line for line in proc.stdout.splitlines() if "moved the directory that was at" in line]
    assert moved, proc.stdout
    aside = moved[0].split(" to ")[1].split(" (kept")[0]
    assert Path(aside, "manifests", "site.pp").read_text() == "# published by hand\n"
    assert not list(Path("/etc/puppet/code/environments").glob(f".{pub_env}*"))  # no stray link
    subprocess.run(["rm", "-rf", aside])


def test_publish_refuses_modules_that_do_not_exist(lab, pub_env, tmp_path):
    source = write_environment(tmp_path / "env", "generated")
    (source / "modules").mkdir()  # the environment ships modules: --modules used to be ignored then
    proc = _publish(lab, pub_env, source, "--modules", f"/nonexistent-{RUN_ID}")
    assert proc.returncode == 1
    assert f"--modules /nonexistent-{RUN_ID}: no such directory" in proc.stderr
    proc = _rollback(lab, pub_env, "--modules", f"/nonexistent-{RUN_ID}")
    assert proc.returncode == 1 and "no such directory" in proc.stderr
    assert not os.path.lexists(f"/etc/puppet/code/environments/{pub_env}")


def test_a_file_that_is_not_an_msi_is_never_served_as_the_agent(lab, tmp_path):
    # the nodes install whatever the package server serves as the agent: a text file is refused before placing
    fake = tmp_path / "puppet-agent-7.23.0-x64.msi"
    fake.write_bytes(b"<html>login page saved as .msi</html>\n")
    proc = inv(lab, "bootstrap", "--inventory", lab["inventory"], "--only", "package-server",
               INVOKE_DEPLOY_PUPPET_AGENT_MSI=str(fake))
    assert proc.returncode == 1, proc.all
    assert str(fake) in proc.all and "Traceback" not in proc.all
    status, body, _ = fetch(f"http://127.0.0.1:{PORT}/puppet-agent/{fake.name}")
    assert body != fake.read_bytes()
