"""Every task, given bad arguments, says what is wrong in a line or two and exits 1 (2 for usage): never a traceback.

A table: one row per case, each run as a user runs it (``inv`` in a
subprocess). Add a row whenever a new way to get a traceback is found; a new
task without rows fails ``test_every_task_has_cases``. Rows whose fix belongs
to work still on another branch are marked xfail(strict=False) with the work
named, so they turn green once it is merged.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
INV = [sys.executable, "-m", "invoke"]
NOBODY = 65534


@dataclass(frozen=True)
class Case:
    """``inv <args>`` (placeholders filled from the fixture's paths) must fail cleanly with one of ``codes``."""

    args: Tuple[str, ...]
    expect: str = ""  # a piece of the message the user must see
    env: Tuple[Tuple[str, str], ...] = ()
    invoke_yaml: Optional[str] = None  # run in a project whose invoke.yaml holds this
    non_root: bool = False  # run as an unprivileged user
    codes: Tuple[int, ...] = (1,)
    xfail: str = ""  # the work that fixes it, when that is on another branch

    @property
    def task(self) -> str:
        return next((a for a in self.args if not a.startswith("-")), "--list")


def C(*args, **kw) -> Case:
    return Case(tuple(args), **kw)


CASES = {
    # -- validate ------------------------------------------------------------------------------
    "validate-missing-file": C("validate", "--inventory", "{tmp}/missing.xlsx", expect="file not found"),
    "validate-directory": C("validate", "--inventory", "{tmp}", expect="is a directory"),
    "validate-fifo": C("validate", "--inventory", "{fifo}", expect="is a FIFO"),
    "validate-device": C("validate", "--inventory", "/dev/zero", expect="is a device"),
    "validate-text-file": C("validate", "--inventory", "{file}", expect="is not an Excel workbook"),
    "validate-bad-format": C("validate", "--format", "xml", expect="--format 'xml' is not text or json"),
    "validate-unknown-flag": C("validate", "--bogus", expect="No idea what '--bogus' is", codes=(1, 2)),
    "validate-unreadable": C("validate", "--inventory", "{private}/inv.xlsx", non_root=True),
    # -- plan ----------------------------------------------------------------------------------
    "plan-bad-format": C("plan", "--format", "yaml", expect="is not text or json"),
    "plan-fifo": C("plan", "--inventory", "{fifo}", expect="is a FIFO"),
    "plan-unknown-env-setting": C("plan", env=(("INVOKE_DEPLOY_MAX_PARALEL", "5"),),
                                  expect="did you mean INVOKE_DEPLOY_MAX_PARALLEL?"),
    "plan-bad-env-value": C("plan", env=(("INVOKE_DEPLOY_MAX_PARALLEL", "lots"),), expect="must be a whole number"),
    # -- init-inventory --------------------------------------------------------------------------
    "init-no-path": C("init-inventory", expect="did not receive required positional arguments", codes=(1, 2)),
    "init-bad-suffix": C("init-inventory", "{tmp}/x.txt", expect="give the workbook a .xlsx or .xls name"),
    "init-exists": C("init-inventory", "{example}", expect="already exists"),
    "init-under-a-file": C("init-inventory", "{file}/x.xlsx", expect="cannot write the workbook"),
    "init-root-as-non-root": C("init-inventory", "/root/x.xlsx", non_root=True, expect="cannot write the workbook"),
    "init-private-as-non-root": C("init-inventory", "{private}/x.xlsx", non_root=True,
                                  expect="cannot write the workbook"),
    # -- make-release ------------------------------------------------------------------------------
    "make-release-size-text": C("make-release", "--dest", "{tmp}/rel", "--size-mb", "x",
                                expect="is not a whole number"),
    "make-release-size-zero": C("make-release", "--dest", "{tmp}/rel", "--size-mb", "0", expect="at least 1"),
    "make-release-dest-file": C("make-release", "--dest", "{file}", expect="is a file"),
    "make-release-dest-under-file": C("make-release", "--dest", "{file}/sub"),
    "make-release-as-non-root": C("make-release", "--dest", "{private}/rel", non_root=True),
    # -- extract-artifacts -------------------------------------------------------------------------
    "extract-missing-source": C("extract-artifacts", "--source", "{tmp}/missing", expect="does not exist"),
    "extract-bad-workers": C("extract-artifacts", "--workers", "x", expect="must be a whole number"),
    "extract-dest-file": C("extract-artifacts", "--source", "{release}", "--dest", "{file}"),
    "extract-dest-under-file": C("extract-artifacts", "--source", "{release}", "--dest", "{file}/sub"),
    "extract-dest-is-source": C("extract-artifacts", "--source", "{release}", "--dest", "{release}",
                                expect="choose a repository outside the release"),
    "extract-as-non-root": C("extract-artifacts", "--source", "{release}", "--dest", "{private}/repo",
                             non_root=True),
    "extract-dest-unwritable": C("extract-artifacts", "--source", "{release}", "--dest", "{tmp}/repo",
                                 non_root=True),
    # -- generate-config ---------------------------------------------------------------------------
    "generate-output-file": C("generate-config", "--output", "{file}", expect="is a file, not a directory"),
    "generate-output-under-file": C("generate-config", "--output", "{file}/sub", expect="which is a file"),
    "generate-output-root-as-non-root": C("generate-config", "--output", "/root/nope", non_root=True),
    "generate-fifo": C("generate-config", "--inventory", "{fifo}", expect="is a FIFO"),
    # -- bootstrap ---------------------------------------------------------------------------------
    "bootstrap-unknown-part": C("bootstrap", "--only", "nonsense", expect="unknown part(s) nonsense"),
    "bootstrap-agents-unknown-host": C("bootstrap", "--only", "agents", "--hosts", "NOPE",
                                       expect="NOPE not a Windows server of the inventory"),
    "bootstrap-agents-no-credentials": C("bootstrap", "--only", "agents", expect="DEPLOY_WINRM_USER"),
    # -- rehearse ----------------------------------------------------------------------------------
    "rehearse-missing-inventory": C("rehearse", "--inventory", "{tmp}/missing.xlsx", expect="file not found"),
    "rehearse-fifo": C("rehearse", "--inventory", "{fifo}", expect="is a FIFO"),
    # -- deploy ------------------------------------------------------------------------------------
    "deploy-no-such-group": C("deploy", "--group", "99", expect="there is no group 99"),
    "deploy-group-not-a-number": C("deploy", "--group", "x", expect="--group x: not a number"),
    "deploy-bad-schedule": C("deploy", "--schedule", "fast", "--dry-run", expect="--schedule fast: choose"),
    "deploy-unknown-host": C("deploy", "--hosts", "NOPE", "--dry-run", expect="--hosts: unknown NOPE"),
    "deploy-no-credentials": C("deploy", "--group", "1", expect="DEPLOY_WINRM_USER"),
    "bootstrap-missing-inventory": C("bootstrap", "--inventory", "{tmp}/missing.xlsx", expect="file not found"),
    # -- publish-config ----------------------------------------------------------------------------
    "publish-missing-modules": C("publish-config", "--modules", "{tmp}/missing", expect="no such directory"),
    "publish-rollback-with-source": C("publish-config", "--rollback", "--source", "{tmp}",
                                      expect="takes no --source or --modules"),
    "publish-fifo": C("publish-config", "--inventory", "{fifo}", expect="is a FIFO"),
    # -- fleet -------------------------------------------------------------------------------------
    "fleet-up-missing-spec": C("fleet.up", "--spec", "{tmp}/missing.yaml", expect="cannot be read"),
    "fleet-up-fifo": C("fleet.up", "--inventory", "{fifo}", expect="is a FIFO"),
    "fleet-status-unknown-flag": C("fleet.status", "--bogus", codes=(1, 2)),
    "fleet-down-unknown-flag": C("fleet.down", "--bogus", codes=(1, 2)),
    # -- settings files (read by Invoke before any task) ---------------------------------------------
    "yaml-broken": C("validate", invoke_yaml="deploy: {max_parallel: [\n", expect="not valid YAML"),
    "yaml-inventory-list": C("validate", invoke_yaml="deploy:\n  inventory: [a, b]\n",
                             expect="deploy.inventory is a list"),
    "yaml-setting-mapping": C("plan", invoke_yaml="deploy:\n  max_parallel: {a: 1}\n",
                              expect="deploy.max_parallel is a mapping"),
    "yaml-unknown-key": C("plan", invoke_yaml="deploy:\n  max_paralel: 5\n", expect="did you mean max_parallel?"),
    "yaml-deploy-list": C("generate-config", invoke_yaml="deploy: [1]\n", expect="deploy is a list"),
    "yaml-top-level-list": C("bootstrap", invoke_yaml="- a\n", expect="the file holds a list"),
    "yaml-invoke-section": C("--list", invoke_yaml="run: 5\n", expect="run is int"),
    "unknown-task": C("nosuchtask", expect="No idea what 'nosuchtask' is", codes=(1, 2)),
}


def _as_non_root() -> Optional[list]:
    """The command prefix that drops to an unprivileged user, [] when already one, None when impossible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return None
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture(scope="module")
def paths():
    # outside pytest's private tmp, so that the unprivileged user of the non_root rows can reach these paths
    tmp = Path(tempfile.mkdtemp(prefix="deploy_tasks-bad-args-"))
    tmp.chmod(0o755)
    (tmp / "file").write_text("a,b,c\n")
    os.mkfifo(tmp / "fifo")
    private = tmp / "private"
    private.mkdir(mode=0o700)
    # HOME for the unprivileged user: outside pytest's private tmp, which that user cannot enter
    home = Path(tempfile.mkdtemp(prefix="deploy_tasks-home-"))
    home.chmod(0o777)
    release = tmp / "release"  # a real (synthetic) release, so extraction gets as far as the destination
    made = subprocess.run(INV + ["make-release", "--dest", str(release), "--size-mb", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")})
    assert made.returncode == 0, made.stdout + made.stderr
    yield {"tmp": str(tmp), "file": str(tmp / "file"), "fifo": str(tmp / "fifo"), "private": str(private),
            "release": str(release), "example": str(ROOT / "inventory" / "example.xlsx"), "home": str(home)}
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _project(tmp: Path, yaml_text: str) -> Path:
    project = tmp / f"project-{abs(hash(yaml_text))}"
    if not project.exists():
        project.mkdir()
        (project / "tasks.py").write_text((ROOT / "tasks.py").read_text())
        (project / "deploy_tasks").symlink_to(ROOT / "deploy_tasks")
        (project / "inventory").symlink_to(ROOT / "inventory")
    (project / "invoke.yaml").write_text(yaml_text)
    return project


def run_case(case: Case, paths: dict) -> subprocess.CompletedProcess:
    args = [a.format(**paths) for a in case.args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(dict(case.env))
    cwd = ROOT if case.invoke_yaml is None else _project(Path(paths["tmp"]), case.invoke_yaml)
    prefix: list = []
    if case.non_root:
        prefix = _as_non_root()
        if prefix is None:
            pytest.skip("running as root without setpriv: cannot drop to an unprivileged user")
        env["HOME"] = paths["home"]
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    proc = subprocess.run(prefix + INV + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    proc.all = proc.stdout + proc.stderr
    return proc


def _params() -> list:
    return [pytest.param(case, id=name,
                         marks=[pytest.mark.xfail(reason=case.xfail, strict=False)] if case.xfail else [])
            for name, case in CASES.items()]


@pytest.mark.parametrize("case", _params())
def test_bad_arguments_get_one_clear_line_not_a_traceback(case, paths):
    proc = run_case(case, paths)
    assert "Traceback" not in proc.all, proc.all
    assert proc.returncode in case.codes, (proc.returncode, proc.all)
    assert proc.stderr.strip() or proc.stdout.strip(), "failed without saying why"
    if case.expect:
        assert case.expect in proc.all, proc.all


def test_every_task_has_cases():
    listed = subprocess.run(INV + ["--list"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    tasks = re.findall(r"^  (\S+)", listed, re.M)
    assert tasks, listed
    covered = {case.task for case in CASES.values()}
    missing = [t for t in tasks if t not in covered]
    assert not missing, f"tasks without bad-argument cases in {__file__}: {missing}"
