"""Mutation score of the modules where a silent bug does harm (mutmut; slow, not CI).

    nice -n 19 /work/main/.venv/bin/python bench/mutation.py                 # every default module
    nice -n 19 /work/main/.venv/bin/python bench/mutation.py deploy_tasks/inventory/graph.py
    /work/main/.venv/bin/python bench/mutation.py --list                      # modules and their tests

Each module is mutated on its own, in a scratch copy of the working tree (the
worktree itself is never modified), by mutmut 3 with one worker. Only the test
files mapped to the module below are given to mutmut, and mutmut runs, for each
mutant, only those of them that executed the mutated function (its recorded
per-function coverage). Tests that need the root-run services (puppetserver,
nginx installed by bootstrap) are left out, see EXCLUDED. A module (or
directory) that does not exist on this branch is skipped with a line saying so.

Prints, per module: killed / total, the score, and every surviving mutant as a
diff. A survivor whose diff is listed in bench/mutation_equivalents.txt (a
change that cannot alter behaviour, with the reason) is marked "equivalent" and
left out of the adjusted score. A mutant that makes the tests hang (timeout)
counts as killed: the suite notices it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "bench" / "mutation_equivalents.txt"

# module (file or package directory) -> the test files that exercise it. A file's own entry wins
# over its package's; the per-file entries of runner/ and steps/ keep each mutant's test run to the
# fast unit-level files that reach it (tests/test_deploy.py and tests/test_agents.py run the emulated
# fleet in-process: slower, but no root services).
TESTS = {
    "deploy_tasks/inventory/validate.py": ["tests/test_inventory_validation.py", "tests/test_inventory_messages.py",
                                           "tests/test_inventory_property.py",
                                           "tests/test_example_inventory.py", "tests/test_tasks_inventory.py",
                                           "tests/test_mutation_kills.py"],
    "deploy_tasks/inventory/graph.py": ["tests/test_graph.py", "tests/test_inventory_validation.py",
                                        "tests/test_mutation_kills.py"],
    "deploy_tasks/configgen/render.py": ["tests/test_configgen_render_units.py", "tests/test_configgen.py", "tests/test_bootstrap_units.py",
                                         "tests/test_mutation_kills.py"],
    "deploy_tasks/artifacts/safety.py": ["tests/test_artifact_member_rules.py", "tests/test_artifacts.py"],
    "deploy_tasks/transports/": ["tests/test_ssh_hostkeys.py", "tests/test_ssh_shell.py", "tests/test_artifacts_publish.py",
                                 "tests/test_bootstrap_units.py", "tests/test_transport*.py", "tests/test_winrm*.py",
                                 "tests/test_mutation_kills.py"],
    "deploy_tasks/transports/wincmd.py": ["tests/test_wincmd*.py"],
    "deploy_tasks/transports/winrm.py": ["tests/test_winrm*.py", "tests/test_wsman_clients.py"],
    "deploy_tasks/runner/": ["tests/test_runner*.py", "tests/test_mutation_kills.py"],
    "deploy_tasks/runner/engine.py": ["tests/test_runner*.py"],
    # the deploy scheduler (plans steps into groups, drives the runner, keeps the resume state)
    # test_deploy.py's tests that start `inv deploy` in a subprocess cannot run under mutmut (see steps/deploy.py
    # below); its in-process ones drive the emulated fleet (seconds each)
    "deploy_tasks/runner/deploy.py": ["tests/test_deploy_schedule.py", "tests/test_deploy_scheduler_units.py",
                                      "tests/test_deploy_scheduler_mutants.py"] + [f"tests/test_deploy.py::{t}" for t in (
        "test_steps_depend_on_every_host_of_their_dependencies_and_narrow",
        "test_the_example_deploys_completely_in_dependency_order",
        "test_a_failure_stops_the_next_group_and_resume_finishes_without_redoing",
        "test_continue_on_error_runs_exactly_the_steps_whose_dependencies_succeeded",
        "test_a_held_run_lock_is_retried_with_backoff",
        "test_preflight_runs_before_anything_and_a_narrowed_run_names_missing_dependencies",
        "test_a_failing_health_check_fails_its_step")],
    "deploy_tasks/steps/": ["tests/test_bootstrap_units.py", "tests/test_steps*.py", "tests/test_mutation_kills.py"],
    "deploy_tasks/steps/agent.py": ["tests/test_agents_units.py", "tests/test_agents.py"],
    # the Puppet run's command and how its output is read: unit level only. The rest of test_deploy.py
    # drives the emulated fleet (seconds per test, minutes per mutant); it covers run_puppet,
    # node_state and wait_until_idle end to end, see docs/mutation.md. (A test that runs `inv` in a
    # subprocess fails under mutmut: the mutated package there cannot find mutmut's configuration.)
    "deploy_tasks/steps/deploy.py": ["tests/test_deploy_units.py",
                                     "tests/test_deploy.py::test_exit_codes_and_output_are_attributed_to_components"],
    "deploy_tasks/steps/health.py": ["tests/test_health*.py"],
    "deploy_tasks/steps/preflight.py": ["tests/test_preflight*.py"],
}
# packages, plus the files of packages not reached through their package (none today)
DEFAULT_MODULES = [m for m in TESTS if m.endswith("/") or str(Path(m).parent) + "/" not in TESTS]

# Integration tests left out: they need services started as root (puppetserver
# on :8140, nginx installed and configured by bootstrap) and take minutes per
# run, so mutating against them is impractical on a shared machine. What they
# would add for these modules is noted in docs/mutation.md.
EXCLUDED = {
    "tests/test_bootstrap.py": "needs puppetserver + nginx installed by bootstrap (root services)",
    "tests/test_configgen_compile.py": "needs the real puppetserver (compiles catalogs)",
    "tests/test_deploy_real.py": "needs the real puppetserver and Puppet agent",
}

# files and directories the tests read besides the package itself
ALSO_COPY = ["tests", "inventory", "templates", "puppet", "tasks.py", "invoke.yaml", "pytest.ini"]


def expand(module: str) -> list[str]:
    """The .py files of a module path (a file, or every non-empty .py file of a directory)."""
    path = ROOT / module
    if path.is_file():
        return [module]
    if path.is_dir():
        return sorted(str(p.relative_to(ROOT)) for p in path.glob("*.py") if "def " in p.read_text())
    return []


def tests_for(module: str) -> list[str]:
    # the file's own entry, else its package's (a file of a mapped package)
    patterns = TESTS.get(module) or TESTS.get(str(Path(module).parent) + "/")
    if patterns is None:  # a module passed by hand: its own test_<name>.py files if any, else the whole suite
        stem = Path(module).stem
        patterns = [f"tests/test_{stem}*.py"] if glob.glob(str(ROOT / f"tests/test_{stem}*.py")) else ["tests/"]
    found: list[str] = []
    for pattern in patterns:
        if "::" in pattern:  # one test (a pytest node id) of a file that is otherwise too slow per mutant
            if (ROOT / pattern.split("::")[0]).is_file() and pattern not in found:
                found.append(pattern)
            continue
        for match in sorted(glob.glob(str(ROOT / pattern))):
            rel = str(Path(match).relative_to(ROOT))
            if rel not in EXCLUDED and rel not in found:
                found.append(rel + ("/" if Path(match).is_dir() else ""))
    return found


def load_equivalents() -> set[tuple[str, str, str, str]]:
    """(file, function, removed line, added line) from bench/mutation_equivalents.txt.

    ``file:`` and ``function:`` lines apply to the entries after them (function ``*``:
    any function of the file); each entry is a ``- removed`` line then a ``+ added`` line.
    """
    out = set()
    if not EQUIVALENTS.exists():
        return out
    current, function, removed = None, "*", None
    for raw in EQUIVALENTS.read_text().splitlines():
        if raw.startswith("#") or not raw.strip():
            continue
        if raw.startswith("file: "):
            current, function = raw[6:].strip(), "*"
        elif raw.startswith("function: "):
            function = raw[10:].strip()
        elif raw.startswith("- "):
            removed = raw[2:].strip()
        elif raw.startswith("+ ") and current and removed is not None:
            out.add((current, function, removed, raw[2:].strip()))
            removed = None
    return out


def function_of(mutant: str) -> str:
    """``pkg.mod.x_find_cycles__mutmut_4`` -> ``find_cycles``; methods -> ``Class.method``."""
    name = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    if name.startswith("x\u01c1"):
        return ".".join(p for p in name[2:].split("\u01c1") if p)
    return name[2:] if name.startswith("x_") else name


def is_equivalent(equivalents, source: str, mutant: str, diff) -> bool:
    function = function_of(mutant)
    return all((source, function, r, a) in equivalents or (source, "*", r, a) in equivalents for r, a in diff)


def scratch_copy(dest: Path) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored), copied to ``dest``."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in files:
        if not rel or rel.startswith(".ci/"):
            continue
        src = ROOT / rel
        if not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def mutmut(work: Path, *args: str, log=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, text=True,
                          stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT if log else subprocess.PIPE)


def diff_of(work: Path, name: str) -> list[tuple[str, str]]:
    """The changed lines of a mutant as (removed, added) pairs."""
    shown = mutmut(work, "show", name).stdout or ""
    minus = [l[1:].strip() for l in shown.splitlines() if l.startswith("-") and not l.startswith("---")]
    plus = [l[1:].strip() for l in shown.splitlines() if l.startswith("+") and not l.startswith("+++")]
    return list(zip(minus, plus)) or [("(no diff)", "")]


def run_module(source: str, tests: list[str], keep: bool, equivalents, only=()) -> dict:
    work = Path(tempfile.mkdtemp(prefix="deploy_tasks-mutation-"))
    try:
        scratch_copy(work)
        cfg = ["[mutmut]", "source_paths=deploy_tasks", f"only_mutate={source}",
               "pytest_add_cli_args_test_selection=" + "\n    ".join(tests),
               "also_copy=" + "\n    ".join(ALSO_COPY),
               "pytest_add_cli_args=-p no:cacheprovider\n    -q",
               "use_git_change_detection=false",
               "timeout_multiplier=5.0", ""]  # a hung mutant is detected sooner (15x by default)
        (work / "setup.cfg").write_text("\n".join(cfg))
        started = time.monotonic()
        with open(work / "mutmut-run.log", "w") as log:
            run = mutmut(work, "run", "--max-children", "1", *only, log=log)
        elapsed = time.monotonic() - started
        mutmut(work, "export-cicd-stats")
        stats_file = work / "mutants" / "mutmut-cicd-stats.json"
        if run.returncode != 0 or not stats_file.exists():
            tail = (work / "mutmut-run.log").read_text()[-2000:]
            return {"source": source, "error": f"mutmut run failed (exit {run.returncode}):\n{tail}",
                    "work": str(work)}
        stats = json.loads(stats_file.read_text())
        survivors = []
        for line in (mutmut(work, "results").stdout or "").splitlines():
            name, _, status = line.strip().rpartition(": ")
            if status not in ("killed", "timeout", "caught by type check", "not checked"):
                diff = diff_of(work, name)
                equivalent = is_equivalent(equivalents, source, name, diff)
                survivors.append({"mutant": name, "status": status, "diff": diff, "equivalent": equivalent})
        return {"source": source, "stats": stats, "survivors": survivors, "seconds": elapsed, "work": str(work)}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def report(result: dict) -> dict:
    source = result["source"]
    if "error" in result:
        print(f"\n== {source}: ERROR {result['error']}")
        return {"source": source, "error": True}
    s = result["stats"]
    # with --only, mutmut leaves the other mutants "not checked": the figures are over the ones run
    total = sum(s.get(k, 0) for k in ("killed", "timeout", "survived", "no_tests", "suspicious", "segfault"))
    detected = s["killed"] + s["timeout"]
    if total < s["total"]:
        print(f"\n== {source}: a sample: {total} of its {s['total']} mutants run")
    equivalent = sum(1 for m in result["survivors"] if m["equivalent"])
    score = 100.0 * detected / total if total else 100.0
    adjusted = 100.0 * detected / (total - equivalent) if total - equivalent else 100.0
    print(f"\n== {source}: {detected}/{total} killed ({s['killed']} failed a test, {s['timeout']} hung), "
          f"{s['survived']} survived, {s['no_tests']} not covered, {s['suspicious']} suspicious; "
          f"score {score:.1f}%, {adjusted:.1f}% without {equivalent} equivalent; {result['seconds']:.0f} s")
    for m in result["survivors"]:
        tag = "equivalent" if m["equivalent"] else m["status"]
        print(f"  [{tag}] {m['mutant']}")
        for removed, added in m["diff"]:
            print(f"      - {removed}\n      + {added}")
    return {"source": source, "total": total, "killed": detected, "equivalent": equivalent,
            "score": score, "adjusted": adjusted}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=DEFAULT_MODULES,
                        help="module files or package directories (default: the modules where a silent bug harms)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests, run nothing")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies (mutmut browse/show there)")
    parser.add_argument("--json", help="also write the per-module figures to this file")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="run only the mutants whose names match (fnmatch, repeatable), e.g. a deterministic "
                             "sample '*__mutmut_*5' or one function '*.x_parse__mutmut_*'; the score is over those")
    args = parser.parse_args(argv)
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut is not installed: pip install -r bench/requirements-mutation.txt", file=sys.stderr)
        return 2
    if os.nice(0) < 19:
        os.nice(19 - os.nice(0))  # two cores shared: never compete with the real work

    # each mutant's pytest session starts its own private test sshd (tests/support/services.py), so
    # concurrent sessions never stop one another's
    _run(args, equivalents=set(load_equivalents()))
    return 0


def _run(args, equivalents) -> list:
    rows = []
    done: set[str] = set()
    for module in args.modules:
        module = module.rstrip("/") + ("/" if (ROOT / module).is_dir() else "")
        files = expand(module)
        if not files:
            print(f"== {module}: skipped, not on this branch")
            continue
        for source in files:
            if source in done:
                continue
            done.add(source)
            tests = tests_for(source)
            if not tests:
                print(f"== {source}: skipped, no test file for it exists yet ({', '.join(TESTS.get(source, []))})")
                continue
            if args.list:
                print(f"{source}: {' '.join(tests)}")
                continue
            print(f"== {source}: mutating, tests: {' '.join(tests)}", flush=True)
            rows.append(report(run_module(source, tests, args.keep, equivalents, tuple(args.only))))
            sys.stdout.flush()
    if rows:
        print("\nmodule                                   killed/total   score  adjusted (equivalents out)")
        for r in rows:
            if r.get("error"):
                print(f"{r['source']:<40} error")
                continue
            print(f"{r['source']:<40} {r['killed']:>5}/{r['total']:<6} {r['score']:6.1f}%  {r['adjusted']:6.1f}%"
                  f"  ({r['equivalent']} equivalent)")
        if excluded := ", ".join(f"{k} ({v})" for k, v in EXCLUDED.items()):
            print(f"\nnot run: {excluded}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    sys.exit(main())
