"""extract-artifacts and make-release where the disk is concerned: overlapping or unwritable destinations,
a kill -9 or Ctrl-C mid-run, damage in the repository, and the agent MSI served to the nodes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy_tasks.artifacts import Job, extract_release, synthetic
from deploy_tasks.artifacts import manifest as manifest_mod
from deploy_tasks.artifacts.msi import MSI_CLSID, check_msi, msi_problem
from deploy_tasks.errors import ConfigError
from deploy_tasks.rehearsal import msi as persona_msi

ROOT = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).parent / "inv")
ENV = "production"
COMPONENTS = [("alpha", "1.0", "alpha-1.0.zip"), ("beta", "2.1", "beta-2.1.zip"), ("gamma", "1.0", "gamma-1.0.zip")]
JOBS = [Job(*c) for c in COMPONENTS]


def run_inv(*args, timeout=300):
    return subprocess.run([INV, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def sha(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def assert_sums_true(dest: Path) -> None:
    """Every line of the repository's SHA256SUMS describes the bytes on disk."""
    for line in (dest / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split("  ", 1)
        assert sha(dest / path) == digest, f"SHA256SUMS: {path} is not what it says"


def assert_manifest_true(dest: Path, sums_equal: bool = True) -> dict:
    """Every manifest entry describes exactly the bytes on disk, and SHA256SUMS says what the manifest says."""
    manifest = json.loads((dest / "manifest.json").read_text())
    for name, entry in manifest["components"].items():
        version_dir = dest / os.path.dirname(entry["path"])
        assert sha(dest / entry["path"]) == entry["sha256"], f"{name}: the manifest's sha256 is not the artifact's"
        for rel, digest in entry["files"].items():
            assert sha(version_dir / "tree" / rel) == digest, f"{name}: tree/{rel} is not what the manifest says"
    assert_sums_true(dest)
    if sums_equal:
        assert (dest / "SHA256SUMS").read_text() == manifest_mod.sums_text(manifest)
    return manifest


def one_line_error(result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- destinations ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_overlapping_source_and_dest_are_refused(where, tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=64 << 10)
    sums = (rel / "SHA256SUMS").read_bytes()
    dest = {"same": rel, "inside": rel / "repo", "holds": tmp_path}[where]
    with pytest.raises(ConfigError, match="overwrite the release's own files"):
        extract_release(JOBS, str(rel), str(dest), ENV)
    assert (rel / "SHA256SUMS").read_bytes() == sums and not (rel / "repo").exists()
    assert not (rel / "manifest.json").exists() and not (tmp_path / "manifest.json").exists()


def test_overlap_through_a_link_is_refused(tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=64 << 10)
    (tmp_path / "alias").symlink_to(rel)
    with pytest.raises(ConfigError, match="is the release"):
        extract_release(JOBS, str(rel), str(tmp_path / "alias"), ENV)


def test_dest_that_is_a_file_or_under_one_is_one_line(tmp_path):
    rel = tmp_path / "rel"
    assert run_inv("make-release", "--dest", str(rel), "--size-mb", "1").returncode == 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_line_error(run_inv("extract-artifacts", "--source", str(rel), "--dest", str(blocker)))
    assert "is a file, not a directory" in line
    line = one_line_error(run_inv("extract-artifacts", "--source", str(rel), "--dest", str(blocker / "sub")))
    assert f"is under a file ({blocker})" in line
    line = one_line_error(run_inv("make-release", "--dest", str(blocker / "sub"), "--size-mb", "1"))
    assert f"is under a file ({blocker})" in line
    line = one_line_error(run_inv("extract-artifacts", "--source", str(rel), "--dest", str(rel / "repo")))
    assert "inside the release" in line
    assert blocker.read_text() == "x"


def test_make_release_size_that_is_not_a_number_is_one_line(tmp_path):
    line = one_line_error(run_inv("make-release", "--dest", str(tmp_path / "rel"), "--size-mb", "x"))
    assert "--size-mb 'x' is not a whole number" in line


def _unprivileged() -> list:
    """A command prefix without the power to ignore file permissions (root loses CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop CAP_DAC_OVERRIDE")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_unwritable_destinations_are_one_line(tmp_path):
    prefix = _unprivileged()
    rel = tmp_path / "rel"
    assert run_inv("make-release", "--dest", str(rel), "--size-mb", "1").returncode == 0
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    repo = tmp_path / "repo"  # writable, but its lock file belongs to someone else
    repo.mkdir()
    (repo / ".extract.lock").touch(mode=0o444)
    os.chmod(repo / ".extract.lock", 0o444)

    def run(*args):
        return subprocess.run(prefix + [INV, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)

    try:
        line = one_line_error(run("extract-artifacts", "--source", str(rel), "--dest", str(repo)))
        assert "cannot open the repository's lock file (Permission denied)" in line
        line = one_line_error(run("extract-artifacts", "--source", str(rel), "--dest", str(locked / "repo")))
        assert "permission denied" in line
        line = one_line_error(run("make-release", "--dest", str(locked / "rel"), "--size-mb", "1"))
        assert "permission denied" in line
        out = run("generate-config", "--output", str(locked / "puppet"))
        assert out.returncode == 1 and "Traceback" not in out.stderr and "Permission denied" in out.stderr
    finally:
        os.chmod(locked, 0o755)


# -- crash consistency --------------------------------------------------------------------------------------

CHILD = """
import sys
from deploy_tasks.artifacts import Job, extract_release
jobs = [Job(*c.split(":")) for c in sys.argv[3:]]
extract_release(jobs, sys.argv[1], sys.argv[2], "production", workers=1, chunk_bytes=1 << 20)
"""


def _version_dirs(dest: Path, components) -> dict:
    out = {}
    for name, version, _ in components:
        try:
            out[name] = os.stat(dest / ENV / name / version).st_ino
        except FileNotFoundError:
            out[name] = None
    return out


def test_kill_9_mid_extraction_never_leaves_a_manifest_that_lies(tmp_path):
    components = [(f"c{i}", "1.0", f"c{i}-1.0.zip") for i in range(8)]
    jobs = [Job(*c) for c in components]
    rel, dest = tmp_path / "rel", tmp_path / "repo"
    synthetic.write_release(components, rel, size_per_component=3 << 20, seed=1)
    extract_release(jobs, str(rel), str(dest), ENV, workers=2)
    for seed in (2, 3, 4):
        # new bytes under the same versions, as a rebuilt release would bring
        synthetic.write_release(components, rel, size_per_component=3 << 20, seed=seed)
        before = _version_dirs(dest, components)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(rel), str(dest)] + [":".join(c) for c in components],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        swapped = 0
        while child.poll() is None and time.monotonic() < deadline:
            now = _version_dirs(dest, components)
            swapped = sum(1 for n in now if now[n] != before[n])
            if swapped >= seed - 1:  # kill after the 1st, 2nd, 3rd tree swapped in: a different moment each round
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.0005)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL, "the extraction ended before it could be killed; make it bigger"
        # the manifest is neither ahead of nor behind the tree (SHA256SUMS, written just before it, may be
        # one component ahead of it, never of the tree)
        manifest = assert_manifest_true(dest, sums_equal=False)
        assert len(manifest["components"]) < len(components) or swapped == 0
        again = extract_release(jobs, str(rel), str(dest), ENV, workers=2)
        assert not again.failures
        manifest = assert_manifest_true(dest)
        assert {n: e["sha256"] for n, e in manifest["components"].items()} == \
            {c[0]: sha(rel / c[2]) for c in components}
        assert not [p for p in dest.rglob("*") if ".tmp-" in p.name or ".old-" in p.name or ".staging-" in p.name]


# -- damage ---------------------------------------------------------------------------------------------------

def _first_file(dest: Path, name: str, version: str) -> Path:
    return sorted(p for p in (dest / ENV / name / version / "tree").rglob("*") if p.is_file())[-1]


def _flip(path: Path, keep_mtime: bool = False) -> None:
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_damage_in_the_repository_is_noticed_and_repaired(tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=256 << 10)
    dest = tmp_path / "repo"
    extract_release(JOBS, str(rel), str(dest), ENV)
    time.sleep(0.05)  # damage comes later than the file system's timestamp tick (a few ms)
    _flip(_first_file(dest, "alpha", "1.0"))  # flipped bytes in an extracted file
    _first_file(dest, "beta", "2.1").unlink()  # a deleted file
    _flip(dest / ENV / "gamma" / "1.0" / "gamma-1.0.zip")  # the artifact the nodes download
    result = extract_release(JOBS, str(rel), str(dest), ENV)
    by = {o.component: o for o in result.outcomes}
    assert {o.status for o in result.outcomes} == {"extracted"}
    assert by["alpha"].reason.startswith("repaired: tree/") and "modified" in by["alpha"].reason
    assert by["beta"].reason.startswith("repaired: tree/") and "missing" in by["beta"].reason
    assert by["gamma"].reason == "repaired: gamma-1.0.zip was modified"
    assert_manifest_true(dest)
    assert {o.status for o in extract_release(JOBS, str(rel), str(dest), ENV).outcomes} == {"unchanged"}


def test_verify_rehashes_and_finds_damage_that_kept_size_and_time(tmp_path):
    rel = synthetic.write_release(COMPONENTS, tmp_path / "rel", size_per_component=256 << 10)
    dest = tmp_path / "repo"
    extract_release(JOBS, str(rel), str(dest), ENV)
    _flip(_first_file(dest, "beta", "2.1"), keep_mtime=True)
    quick = extract_release(JOBS, str(rel), str(dest), ENV)
    assert {o.status for o in quick.outcomes} == {"unchanged"}  # size and mtime cannot see it
    verified = extract_release(JOBS, str(rel), str(dest), ENV, verify=True)
    by = {o.component: o for o in verified.outcomes}
    assert by["beta"].status == "extracted" and "does not match its sha256" in by["beta"].reason
    assert by["alpha"].status == by["gamma"].status == "unchanged"
    assert_manifest_true(dest)


def test_task_verify_flag(tmp_path):
    rel, dest = tmp_path / "rel", tmp_path / "repo"
    assert run_inv("make-release", "--dest", str(rel), "--size-mb", "1").returncode == 0
    assert run_inv("extract-artifacts", "--source", str(rel), "--dest", str(dest)).returncode == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    entry = manifest["components"]["zeo_server"]
    _flip(dest / os.path.dirname(entry["path"]) / "tree" / sorted(entry["files"])[0], keep_mtime=True)
    out = run_inv("extract-artifacts", "--source", str(rel), "--dest", str(dest), "--verify")
    assert out.returncode == 0, out.stderr
    assert "1 extracted, 33 unchanged" in out.stdout
    assert_manifest_true(dest)


# -- Ctrl-C: what finished is kept --------------------------------------------------------------------------

def _interrupt_when(command: list, ready) -> subprocess.CompletedProcess:
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while child.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.002)
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(command, child.returncode, out, err)


def test_ctrl_c_during_extraction_keeps_what_finished(tmp_path):
    rel, dest = tmp_path / "rel", tmp_path / "repo"
    assert run_inv("make-release", "--dest", str(rel), "--size-mb", "3").returncode == 0
    stopped = _interrupt_when([INV, "extract-artifacts", "--source", str(rel), "--dest", str(dest), "--workers", "1"],
                              lambda: (dest / "manifest.json").exists())
    assert stopped.returncode == 130, (stopped.stdout, stopped.stderr)
    assert "what finished is kept" in stopped.stderr and "Traceback" not in stopped.stderr
    kept = len(assert_manifest_true(dest)["components"])
    assert 1 <= kept < 34
    again = run_inv("extract-artifacts", "--source", str(rel), "--dest", str(dest))
    assert again.returncode == 0, again.stderr
    assert f"{34 - kept} extracted, {kept} unchanged" in again.stdout
    assert len(assert_manifest_true(dest)["components"]) == 34


def test_ctrl_c_during_make_release_resumes_without_force(tmp_path):
    rel = tmp_path / "rel"
    record = rel / synthetic.RECORD

    def some_written():
        try:
            return len(json.loads(record.read_text())["artifacts"]) >= 2
        except (OSError, ValueError, KeyError):
            return False

    stopped = _interrupt_when([INV, "make-release", "--dest", str(rel), "--size-mb", "3"], some_written)
    assert stopped.returncode == 130, (stopped.stdout, stopped.stderr)
    assert "Traceback" not in stopped.stderr
    assert not list(rel.glob(".*.tmp-*"))  # no half-written zip left behind
    resumed = run_inv("make-release", "--dest", str(rel), "--size-mb", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "kept from an earlier run" in resumed.stdout
    listed = dict(line.split()[::-1] for line in (rel / "SHA256SUMS").read_text().splitlines())
    assert len(listed) == 34 and all(sha(rel / name) == digest for name, digest in listed.items())
    # a different size is a different release: that one is still refused without --force
    refused = run_inv("make-release", "--dest", str(rel), "--size-mb", "1")
    assert refused.returncode == 1 and "--force" in refused.stderr


# -- the agent MSI ----------------------------------------------------------------------------------------------

def test_synthetic_msi_is_a_windows_installer_package_and_recognisably_synthetic(tmp_path):
    path = synthetic.write_synthetic_msi(tmp_path / "puppet-agent-7.23.0-x64.msi", version="7.23.0")
    check_msi(str(path))
    data = path.read_bytes()
    assert data[:8] == bytes.fromhex("D0CF11E0A1B11AE1") and len(data) % 512 == 0
    assert synthetic.is_synthetic_msi(path)
    # the rehearsal fleet's msiexec opens it and reads the product from it
    assert persona_msi.is_msi(data)
    assert persona_msi.identify(data, "renamed.msi") == persona_msi.Package("Puppet Agent", "7.23.0")


def _with_clsid(data: bytes, clsid: bytes) -> bytes:
    root = (1 + 1) * 512  # header, FAT sector, then the directory: the root entry comes first
    return data[: root + 0x50] + clsid + data[root + 0x60:]


@pytest.mark.parametrize("case, expected", [
    ("zip", "not an OLE compound file"),
    ("html", "not an OLE compound file"),
    ("empty", "not an OLE compound file"),
    ("old fake", "unknown layout"),
    ("word document", "of another kind (class id {00020906-0000-0000-C000-000000000046}"),
    ("truncated", "no root entry"),
])
def test_anything_but_an_msi_is_refused_before_it_is_served(case, expected, tmp_path):
    good = synthetic.synthetic_msi_bytes()
    word = bytes.fromhex("0609020000000000C000000000000046")  # {00020906-...}, a Word document's root
    content = {
        "zip": b"PK\x03\x04" + b"\0" * 600,
        "html": b"<html><body>404 Not Found</body></html>\n" * 20,
        "empty": b"",
        "old fake": persona_msi.OLE2_MAGIC + b"\0" * 1016,
        "word document": _with_clsid(good, word),
        "truncated": good[:1024],
    }[case]
    path = tmp_path / "puppet-agent.msi"
    if case == "old fake":
        persona_msi.write_fake_msi(path)
    else:
        path.write_bytes(content)
    assert expected in (msi_problem(str(path)) or "")
    with pytest.raises(ConfigError, match="it is not served to the nodes"):
        check_msi(str(path))
    assert _with_clsid(good, MSI_CLSID.bytes_le) == good


def test_make_release_writes_an_agent_msi_that_passes_the_check(tmp_path):
    rel = tmp_path / "rel"
    msi = tmp_path / "agent" / "puppet-agent-7.23.0-x64.msi"
    out = subprocess.run([INV, "make-release", "--dest", str(rel), "--size-mb", "1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "INVOKE_DEPLOY_PUPPET_AGENT_MSI": str(msi)})
    assert out.returncode == 0, out.stderr
    assert "SYNTHETIC Puppet agent MSI" in out.stdout
    check_msi(str(msi))
    assert synthetic.is_synthetic_msi(msi)
