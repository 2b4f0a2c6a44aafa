"""Pre-flight against real parts: the master over the test sshd, the real puppetserver and its CA, a real
nginx (started here, on its own port, with the product's own package-site config) and the rehearsal
fleet through the real pywinrm client, its agents backed by the real Linux Puppet agent.

One deployment with a problem of every kind: a host that does not answer, an agent the master never
signed, a node whose catalog fails to compile, an artifact missing on the package server and one served
with the wrong sha256. The pre-flight lists them all in one result, says what it could not check, and
changes nothing anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deploy_tasks.configgen import load_manifest
from deploy_tasks.errors import PreflightFailed
from deploy_tasks.inventory import load_inventory
from deploy_tasks.rehearsal import msi as msilib
from deploy_tasks.settings import resolve
from deploy_tasks.steps import StepResult, package_server, preflight as pf, publish, remote
from deploy_tasks.steps import puppet_master as master_steps
from deploy_tasks.transports import winrm as w
from deploy_tasks.transports.ssh import Shell
from tests import workbooks as wb
from tests.support import catalogs, services

RUN = services.RUN_ID
HOSTS = {"PFOK": "127.0.0.31", "PFDOWN": "127.0.0.32", "PFBAD": "127.0.0.33", "PFNEW": "127.0.0.34"}
NAMES = {h: f"{h}{RUN[:6]}" for h in HOSTS}  # certnames unique to this run: the CA is shared
COMPONENTS = ("python_runtime", "zodb_storage", "log_shipper")
SITE_PP = """node default {
  if $trusted['certname'] =~ /^pfbad/ {
    fail("preflight test: no catalog for ${trusted['certname']}")
  }
  notify { "preflight ok ${trusted['certname']}": tag => ['python_runtime'] }
}
"""


def test_listing_and_digest_agree_with_sha256sum(tmp_path):
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "site.pp").write_text(SITE_PP)
    (tmp_path / "environment.conf").write_text("x\n")
    (tmp_path / "a b.yaml").write_bytes(b"\xff\x00")
    proc = subprocess.run(pf.listing_command(str(tmp_path)), shell=True, capture_output=True, text=True, check=True)
    listed = pf.parse_listing(proc.stdout)
    local = pf.file_digests(publish.collect(str(tmp_path), None))
    assert listed == local and set(listed) == {"manifests/site.pp", "environment.conf", "a b.yaml"}
    assert pf.environment_digest(listed) == pf.environment_digest(local)
    local["environment.conf"] = "0" * 64
    assert pf.environment_digest(listed) != pf.environment_digest(local)


def test_commands_are_windows_quoted():
    assert pf.noop_command("prod_1", ["a", "b"]) == \
        "puppet agent --test --noop --waitforcert 0 --environment prod_1 --tags a,b"
    assert pf.agent_fingerprint_command() == "puppet agent --fingerprint"


def test_targets_for_narrows_by_host_and_component(example_xlsx):
    inv = load_inventory(example_xlsx)
    every = pf.targets_for(inv)
    assert set(every) == {s.hostname for s in inv.windows_servers}
    assert pf.targets_for(inv, hosts=["zdb01"], components=["zeo_server", "web_frontend"]) == {"ZDB01": ("zeo_server",)}


def test_the_failure_lists_every_problem_in_one_message():
    problems = [pf.Problem("artifact", "missing", "publish it", component="a", artifact="a-1.zip"),
                pf.Problem("winrm", "does not answer", host="H1")]
    result = pf.PreflightResult(problems, [pf.Skipped("catalog", "the host did not answer", "H1")])
    with pytest.raises(PreflightFailed) as info:
        result.raise_for_problems()
    text = str(info.value)
    assert text.startswith("pre-flight found 2 problems; nothing was changed:")
    assert "[artifact] component a, artifact a-1.zip: missing (publish it)" in text
    assert "[winrm] host H1: does not answer" in text and "[catalog] host H1: not checked" in text


# -- the real parts ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    return services.free_port()


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    """A real nginx of our own (its pid recorded, stopped by it), serving a repository with the product's site."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        pytest.skip("nginx is not installed (apt-get install nginx)")
    base = tmp_path_factory.mktemp("pf-nginx")
    root = base / "repository"
    root.mkdir()
    port = _free_port()
    settings = resolve({"package_port": port})
    (base / "site.conf").write_text(package_server.site_config(str(root), settings))
    temp = {k: base / k for k in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf = base / "nginx.conf"
    conf.write_text(
        f"user root;\nworker_processes 1;\ndaemon off;\npid {base}/nginx.pid;\nerror_log {base}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {temp['body']};\n  proxy_temp_path {temp['proxy']};\n"
        f"  fastcgi_temp_path {temp['fastcgi']};\n  uwsgi_temp_path {temp['uwsgi']};\n  scgi_temp_path {temp['scgi']};\n"
        f"  include {base}/site.conf;\n}}\n")
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(base), "-e", str(base / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        services.wait_for(lambda: services.port_open("127.0.0.1", port) or proc.poll() is not None, 20, what="nginx")
        if proc.poll() is not None:
            pytest.fail(f"nginx did not start: {proc.stderr.read().decode()[-500:]}")
        yield {"root": root, "port": port, "url": f"http://127.0.0.1:{port}"}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGQUIT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _workbook(path: Path, environment: str, port: int, winrm_ports: dict) -> Path:
    data = wb.sheets()
    headers, _ = data["Servers"]
    servers = [["deploy01", "local", "linux", "puppet-master, package-server", None, "master"]]
    servers += [[NAMES[h], addr, "windows", "app", winrm_ports[h], ""] for h, addr in HOSTS.items()]
    data["Servers"] = (headers, servers)
    m_headers, _ = data["Mapping"]
    data["Mapping"] = (["Hostname", "Component"], [[NAMES[h], c] for h in HOSTS for c in COMPONENTS])
    s_headers, settings = data["Settings"]
    data["Settings"] = (s_headers, [r for r in settings if r[0] not in ("environment", "package_port")]
                        + [["environment", environment], ["package_port", port]])
    data["Parameters"] = (data["Parameters"][0], [])
    return wb.write(path.parent, data, "xlsx", path.stem)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, sshd, puppet_master, master_environment, nginx):
    if not shutil.which("puppet"):
        pytest.skip("the Linux puppet agent is not installed (apt-get install puppet-agent)")
    from deploy_tasks.rehearsal.fleet import Fleet

    base = tmp_path_factory.mktemp("preflight")
    env = master_environment("preflight")
    fleet = Fleet([(NAMES[h], a) for h, a in HOSTS.items()], base / "fleet", None, http_port=0, https_port=0,
                  domain="example.test")
    fleet.start()
    shell = Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config)
    codedir = puppet_master["codedir"]
    try:
        ports = {h: fleet.host(NAMES[h]).https_port for h in HOSTS}
        inventory = load_inventory(_workbook(base / "pf.xlsx", env, nginx["port"], ports))
        settings = resolve({**inventory.settings, "environment": env, "package_port": nginx["port"],
                            "command_timeout_s": 300})
        # the repository nginx serves, and its manifest
        root = nginx["root"]
        manifest = {"format": 1, "environment": env, "components": {}}
        for name in COMPONENTS:
            comp = inventory.component(name)
            rel = f"{env}/{comp.name}/{comp.version}/{comp.artifact}"
            data = f"artifact {name} {RUN}\n".encode() * 1000
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            manifest["components"][name] = {"version": comp.version, "artifact": comp.artifact, "path": rel,
                                            "sha256": hashlib.sha256(data).hexdigest()}
        (base / "repo").mkdir()
        (base / "repo" / "manifest.json").write_text(json.dumps(manifest))
        msilib.write_fake_msi(root / "agent" / "puppet-agent-7.23.0-x64.msi")
        # the generated environment, published by the real step over SSH
        source = base / "environment"
        (source / "manifests").mkdir(parents=True)
        (source / "environment.conf").write_text("modulepath = modules:$basemodulepath\n")
        (source / "manifests" / "site.pp").write_text(SITE_PP)
        layout = master_steps.layout_for(remote.platform(shell))
        publish.publish(shell, layout, env, str(source), None, StepResult("deploy01", "publish-config"))
        # agents: PFNEW only asks for a certificate, the others are signed; PFDOWN then goes away
        for h in HOSTS:
            persona = fleet.host(NAMES[h]).persona
            certname = f"{NAMES[h].lower()}.example.test"
            out, err, code = persona.run(subprocess.list2cmdline([
                "msiexec", "/qn", "/norestart", "/i", f"{nginx['url']}/agent/puppet-agent-7.23.0-x64.msi",
                "PUPPET_SERVER=127.0.0.1", f"PUPPET_AGENT_CERTNAME={certname}", f"PUPPET_AGENT_ENVIRONMENT={env}",
                "/l*v", r"C:\Windows\Temp\agent.log"]))
            assert code == 0, (out, err)
            out, err, code = persona.run("puppet agent -t --waitforcert 0")
            assert code == 1 and "Exiting now because the waitforcert setting is set to 0." in err, (out, err)
            if h != "PFNEW":
                proc = subprocess.run(catalogs._ca_cli("sign", certname), capture_output=True, text=True, timeout=120)
                assert proc.returncode == 0, proc.stdout + proc.stderr
                out, err, code = persona.run("puppet ssl download_cert")  # the handshake's last step, as bootstrap's
                assert code == 0, (out, err)
        fleet.host(NAMES["PFDOWN"]).faults.down = True
        yield {"fleet": fleet, "shell": shell, "inventory": inventory, "settings": settings, "env": env,
               "source": source, "manifest": load_manifest(base / "repo"), "root": root, "layout": layout}
    finally:
        shell.close()
        fleet.stop()
        subprocess.run(f"rm -rf {codedir}/releases/{env}-* {codedir}/releases/{env}.previous", shell=True)


def _pool(lab):
    fleet = lab["fleet"]
    options = w.WinRMOptions(transport="ntlm", scheme="https", ca_path=str(fleet.ca_cert), operation_timeout_s=5,
                             read_timeout_s=10)
    return w.WinRMPool(options, credential=w.Credential(fleet.username, fleet.password))


def _snapshot(lab) -> dict:
    """What a deploy would change: services, products and applied runs on every host; the published release."""
    fleet = lab["fleet"]
    hosts = {}
    for h in HOSTS:
        persona = fleet.host(NAMES[h]).persona
        state = persona.state()
        applied = [r for r in persona.puppet.journal() if not r.get("noop")]
        hosts[h] = (state["services"], state["products"], len(applied))
    link = f"{lab['layout'].environments}/{lab['env']}"
    return {"hosts": hosts, "release": lab["shell"].run(f"readlink -f {link}").stdout.strip(),
            "repository": sorted((str(p), p.stat().st_mtime_ns) for p in lab["root"].rglob("*") if p.is_file())}


@pytest.mark.integration
def test_every_problem_at_once_and_nothing_changed(lab):
    root, env, inv = lab["root"], lab["env"], lab["inventory"]
    missing = inv.component("zodb_storage")
    wrong = inv.component("log_shipper")
    missing_path = root / env / missing.name / missing.version / missing.artifact
    wrong_path = root / env / wrong.name / wrong.version / wrong.artifact
    saved = missing_path.read_bytes(), wrong_path.read_bytes()
    missing_path.unlink()
    wrong_path.write_bytes(saved[1][:-1] + b"X")
    before = _snapshot(lab)
    pool = _pool(lab)
    try:
        started = time.monotonic()
        result = pf.preflight(inv, lab["settings"], pf.targets_for(inv), master=lab["shell"], winrm_pool=pool,
                              manifest=lab["manifest"], environment_dir=str(lab["source"]))
        took = time.monotonic() - started
    finally:
        pool.close()
        missing_path.write_bytes(saved[0])
        wrong_path.write_bytes(saved[1])
    found = {(p.check, p.host or p.component): p for p in result.problems}
    assert set(found) == {("artifact", "zodb_storage"), ("artifact", "log_shipper"), ("winrm", NAMES["PFDOWN"]),
                          ("agent", NAMES["PFNEW"]), ("catalog", NAMES["PFBAD"])}, "\n".join(map(str, result.problems))
    assert "missing on the package server" in found[("artifact", "zodb_storage")].message
    assert found[("artifact", "zodb_storage")].artifact == missing.artifact
    assert "the manifest says" in found[("artifact", "log_shipper")].message
    assert "does not answer over WinRM" in found[("winrm", NAMES["PFDOWN"])].message
    assert f"has not signed a certificate for {NAMES['PFNEW'].lower()}.example.test" in \
        found[("agent", NAMES["PFNEW"])].message
    bad = found[("catalog", NAMES["PFBAD"])]
    assert "does not compile on the master" in bad.message and "preflight test: no catalog for" in bad.message
    assert bad.hint and all(p.hint for p in result.problems)
    skipped = {(s.check, s.host) for s in result.skipped}
    assert {("agent", NAMES["PFDOWN"]), ("catalog", NAMES["PFDOWN"]), ("catalog", NAMES["PFNEW"])} <= skipped
    assert any(line.startswith(f"environment {env} on deploy01 matches") for line in result.passed)
    assert f"{NAMES['PFOK']}: catalog compiles for {NAMES['PFOK'].lower()}.example.test in {env}" in result.passed
    assert f"{NAMES['PFBAD']}: agent certificate {NAMES['PFBAD'].lower()}.example.test signed by the master" \
        in result.passed
    after = _snapshot(lab)
    after["repository"] = before["repository"]  # the test itself put the two files back
    assert after == before
    print(f"\npre-flight of {len(HOSTS)} hosts x {len(COMPONENTS)} components: {took:.1f} s")


@pytest.mark.integration
def test_a_stale_published_environment_names_its_files(lab, tmp_path):
    stale = tmp_path / "env"
    shutil.copytree(lab["source"], stale)
    (stale / "manifests" / "site.pp").write_text(SITE_PP + "# changed after publishing\n")
    (stale / "data").mkdir()
    (stale / "data" / "common.yaml").write_text("---\n")
    result = pf.check_environment(lab["shell"], lab["settings"], str(stale))
    assert len(result.problems) == 1
    text = str(result.problems[0])
    assert "is not the generated one" in text
    assert "1 file differ: manifests/site.pp" in text and "1 file missing on the master: data/common.yaml" in text
    assert "run inv publish-config" in text
    elsewhere = resolve({**lab["inventory"].settings, "environment": f"nope_{RUN}"})
    missing = pf.check_environment(lab["shell"], elsewhere, str(lab["source"]))
    assert "is not published on the master" in str(missing.problems[0])


def test_a_package_server_that_does_not_answer_is_one_problem(example_xlsx, tmp_path):
    inv = load_inventory(example_xlsx)
    settings = resolve({**inv.settings})
    repo = tmp_path / "repo"
    repo.mkdir()
    comps = {c.name: {"version": c.version, "artifact": c.artifact, "sha256": "ab" * 32,
                      "path": f"production/{c.name}/{c.version}/{c.artifact}"} for c in inv.components}
    (repo / "manifest.json").write_text(json.dumps({"format": 1, "environment": "production", "components": comps}))
    port = _free_port()  # nothing listens there
    result = pf.check_artifacts(inv, settings, [c.name for c in inv.components], load_manifest(repo),
                                base_url=f"http://127.0.0.1:{port}", timeout=5)
    assert len(result.problems) == 1 and result.problems[0].host == "deploy01"
    assert f"the package server at http://127.0.0.1:{port} did not answer" in result.problems[0].message
    assert result.skipped and "not verified: the package server is down" in result.skipped[0].reason


def test_what_cannot_be_checked_is_said(example_xlsx, tmp_path):
    inv = load_inventory(example_xlsx)
    settings = resolve({**inv.settings})
    none = pf.check_artifacts(inv, settings, ["zeo_server"], None)
    assert not none.problems and "no artifact manifest" in none.skipped[0].reason
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "site.pp").write_text("node default {}\n")
    env = pf.check_environment(None, settings, str(tmp_path))
    assert not env.problems and env.skipped[0].check == "environment"
    gone = pf.check_environment(None, settings, str(tmp_path / "nope"))
    assert "does not exist: run `inv generate-config` first" in gone.problems[0].message
    assert set(pf.CHECKS) == {"environment", "artifact", "winrm", "agent", "catalog"}


@pytest.mark.integration
def test_a_sound_plan_passes(lab):
    inv = lab["inventory"]
    targets = pf.targets_for(inv, hosts=[NAMES["PFOK"]])
    pool = _pool(lab)
    try:
        result = pf.preflight(inv, lab["settings"], targets, master=lab["shell"], winrm_pool=pool,
                              manifest=lab["manifest"], environment_dir=str(lab["source"]))
        shells = pool.shells_opened
    finally:
        pool.close()
    assert result.ok and not result.skipped, "\n".join(map(str, result.problems + result.skipped))
    result.raise_for_problems()
    assert len([line for line in result.passed if line.startswith("artifact ")]) == len(COMPONENTS)
    assert shells == 1  # the host's two commands shared one shell
