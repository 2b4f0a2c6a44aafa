"""extract-artifacts --publish: the repository sent over real SSH (the test sshd on loopback), only what differs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_tasks.artifacts import Job, extract_release, synthetic
from deploy_tasks.artifacts import publish as publish_mod
from deploy_tasks.transports.ssh import Shell
from deploy_tasks.errors import RemoteCommandError

ROOT = Path(__file__).resolve().parent.parent
ENV = "production"
COMPONENTS = [("alpha", "1.0", "alpha-1.0.zip"), ("beta", "2.1", "beta-2.1.zip")]


def remote_tree(root: Path) -> dict:
    """The package server's copy, read straight from disk (sshd runs on this machine)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def target(sshd, root: Path) -> publish_mod.SshTarget:
    return publish_mod.SshTarget(Shell("pkg01", "127.0.0.1", ssh_config=sshd.ssh_config), str(root))


@pytest.fixture
def repo(tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=200 << 10)
    dest = tmp_path / "repo"
    result = extract_release([Job(*c) for c in COMPONENTS], str(rel), str(dest), ENV)
    assert not result.failures
    return rel, dest


@pytest.mark.integration
def test_publish_sends_everything_then_only_what_differs(sshd, repo, tmp_path):
    rel, dest = repo
    root = tmp_path / "server" / "srv repo"  # a space: quoting is real
    first = publish_mod.publish(str(dest), target(sshd, root))
    local = publish_mod.local_sums(str(dest))
    assert remote_tree(root) == local  # every file arrived, byte for byte
    assert first.unchanged == 0 and len(first.sent) == len(local)
    assert first.sent[-2:] == ["SHA256SUMS", "manifest.json"]  # the manifest goes last
    assert not list(root.rglob(f"*{publish_mod.TMP_SUFFIX}"))

    second = publish_mod.publish(str(dest), target(sshd, root))
    assert second.sent == [] and second.unchanged == len(local)

    # the server's copy of one file was damaged; a component changed locally
    damaged = root / ENV / "alpha" / "1.0" / "tree" / "etc" / "alpha.conf"
    damaged.write_text("tampered")
    synthetic.write_component_zip(rel / "beta-2.1.zip", "beta", 150 << 10, seed=3)
    synthetic.write_sums(rel, [c[2] for c in COMPONENTS])
    extract_release([Job(*c) for c in COMPONENTS], str(rel), str(dest), ENV)
    manifest = json.loads((dest / "manifest.json").read_text())
    third = publish_mod.publish(str(dest), target(sshd, root))
    beta_files = {f"{ENV}/beta/2.1/tree/{f}" for f in manifest["components"]["beta"]["files"]}
    expected = {f"{ENV}/alpha/1.0/tree/etc/alpha.conf", f"{ENV}/beta/2.1/beta-2.1.zip",
                "SHA256SUMS", "manifest.json"}
    # only the damaged file, beta's changed files, and the two index files
    assert expected <= set(third.sent) <= expected | beta_files
    assert remote_tree(root) == {**remote_tree(root), **publish_mod.local_sums(str(dest))}
    assert damaged.read_text() != "tampered"


@pytest.mark.integration
def test_publish_dry_run_sends_nothing(sshd, repo, tmp_path):
    _, dest = repo
    root = tmp_path / "server"
    result = publish_mod.publish(str(dest), target(sshd, root), dry_run=True)
    assert result.dry_run and len(result.sent) == len(publish_mod.local_sums(str(dest)))
    assert not root.exists()  # a dry run does not even create the directory


@pytest.mark.integration
def test_publish_into_an_unwritable_root_is_a_clear_error(sshd, repo, tmp_path):
    _, dest = repo
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RemoteCommandError) as exc:
        publish_mod.publish(str(dest), target(sshd, blocker / "root"))
    assert str(exc.value).startswith("pkg01: ") and "mkdir" in str(exc.value)


@pytest.mark.integration
def test_task_publishes_to_a_remote_package_server(sshd, tmp_path):
    """The whole task: a workbook whose package server is reached over SSH (~/.ssh/config, as Fabric does)."""
    from deploy_tasks.inventory.template import example_sheets, write_workbook

    sheets = example_sheets()
    headers, rows = sheets["Servers"]
    rows = [list(r) for r in rows]
    rows[0][1] = "127.0.0.1"  # deploy01: package server + master, now a remote host
    sheets["Servers"] = (headers, rows)
    workbook = write_workbook(tmp_path / "remote.xlsx", sheets)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(Path(sshd.ssh_config).read_text())
    env = dict(os.environ, HOME=str(home), INVOKE_DEPLOY_PACKAGE_ROOT=str(tmp_path / "served"))
    inv = [str(Path(sys.executable).parent / "inv")]
    rel, dest = tmp_path / "release", tmp_path / "repo"
    run = lambda *a: subprocess.run(inv + list(a), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run("make-release", "--inventory", str(workbook), "--dest", str(rel), "--size-mb", "1").returncode == 0
    out = run("extract-artifacts", "--inventory", str(workbook), "--source", str(rel), "--dest", str(dest), "--publish")
    assert out.returncode == 0, out.stderr
    assert "publish (deploy01): sent" in out.stdout
    assert remote_tree(tmp_path / "served") == publish_mod.local_sums(str(dest))
    again = run("extract-artifacts", "--inventory", str(workbook), "--source", str(rel), "--dest", str(dest), "--publish")
    assert again.returncode == 0, again.stderr
    # nothing extracted again; at most the manifest (its recorded file stats may be refreshed) is re-sent
    assert "34 components: 34 unchanged" in again.stdout
    sent = int(again.stdout.split("publish (deploy01): sent ")[1].split()[0])
    assert sent <= 1
    assert remote_tree(tmp_path / "served") == publish_mod.local_sums(str(dest))


def test_local_package_server_serving_another_directory_gets_a_local_sync(repo, tmp_path):
    from deploy_tasks.inventory.model import Server

    _, dest = repo
    here = Server("deploy01", "local", "linux", ("package-server",))
    assert publish_mod.target_for(here, str(dest), str(dest)) is None  # nginx serves the repository itself
    served = tmp_path / "served"
    first = publish_mod.publish(str(dest), publish_mod.target_for(here, str(dest), str(served)))
    assert remote_tree(served) == publish_mod.local_sums(str(dest)) and first.unchanged == 0
    again = publish_mod.publish(str(dest), publish_mod.target_for(here, str(dest), str(served)))
    assert again.sent == []
