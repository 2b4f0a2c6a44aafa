"""The Jenkinsfile: it lints with npm-groovy-lint (no errors), and every `inv` line in it names a task and flags that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy_tasks.tasks import ns

ROOT = Path(__file__).resolve().parent.parent
JENKINSFILE = ROOT / "Jenkinsfile"
LINT = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "npm-groovy-lint"


def _inv_lines():
    for line in JENKINSFILE.read_text().splitlines():
        m = re.search(r"\.venv/bin/inv ([^\"']*)", line)
        if m:
            yield re.sub(r"\$\{[^}]*\}", "", m.group(1)).split()  # ${dry}, ${g}: Groovy interpolation


def test_every_inv_line_names_a_real_task_and_real_flags():
    lines = list(_inv_lines())
    assert len(lines) >= 8  # validate, plan, extract, generate, bootstrap x2, publish x2, deploy
    for words in lines:
        name, flags = words[0], [w.split("=")[0] for w in words[1:] if w.startswith("--")]
        task = ns[name]
        known = {"--" + a.name.replace("_", "-") for a in task.get_arguments()}
        assert not set(flags) - known, f"inv {name}: unknown flag(s) {set(flags) - known}"


def test_the_deploy_stage_runs_every_group_resumably_with_the_winrm_credential():
    text = JENKINSFILE.read_text()
    assert "inv deploy --group=${g} --resume" in text
    assert "inv bootstrap --only agents" in text
    assert text.count("usernameVariable: 'DEPLOY_WINRM_USER'") == text.count("withCredentials(")
    assert "passwordVariable: 'DEPLOY_WINRM_PASSWORD'" in text
    assert "junit" in text and "reports/junit-*.xml" in text


@pytest.mark.skipif(not LINT.exists() or not shutil.which("java"),
                    reason="npm-groovy-lint is not installed (bash .ci/setup installs it into .ci/node)")
def test_jenkinsfile_has_no_lint_errors():
    proc = subprocess.run([str(LINT), "--failon", "error", "--output", "txt", "--noserver", str(JENKINSFILE)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
