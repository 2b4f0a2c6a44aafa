"""Validate a rendered Puppet code dir before it replaces the previous one.

- every ``.pp`` file goes through ONE ``puppet parser validate`` call (~0.6 s
  whatever the number of files) when ``puppet`` is on PATH; when it is not,
  the result says so: syntax was not checked by Puppet;
- every YAML file is read back and compared with what was dumped.
Errors name the workbook row a bad line or value comes from.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from ..errors import ConfigError
from .render import Rendered

_LOCATION = re.compile(r"\(file: (?P<file>[^,]+), line: (?P<line>\d+)(?:, column: (?P<col>\d+))?\)")


@dataclass(frozen=True)
class CheckResult:
    puppet: Optional[str]  # path of the puppet binary used, None when syntax was not checked by Puppet
    pp_files: int
    yaml_files: int
    seconds: float = 0.0

    @property
    def summary(self) -> str:
        if self.puppet:
            head = f"{self.pp_files} .pp file(s) passed puppet parser validate"
        else:
            head = (f"SYNTAX NOT CHECKED BY PUPPET: `puppet` is not on PATH, so {self.pp_files} .pp file(s) were "
                    "written unvalidated (install puppet-agent to check them)")
        return f"{head}; {self.yaml_files} YAML file(s) read back identical"


def find_puppet(puppet: Optional[str] = None) -> Optional[str]:
    """The puppet executable: ``puppet`` if given (a path or a name on PATH), else ``puppet`` on PATH."""
    return shutil.which(puppet or "puppet")


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when present: same result, faster


def _load(text: str):
    return yaml.load(text, Loader=_Loader)


def check_yaml(rendered: Rendered, root: Path, label: str = "") -> None:
    """Read every YAML file under ``root`` back: the bytes must be those rendered, and they must load
    to exactly the data dumped.

    A node file is made of parts, each one ``yaml.safe_dump`` output (see
    render._add_node_yaml); every distinct part is loaded once and compared with
    its data, and the first node file is also loaded whole, as a check that the
    parts compose into the same document.
    """
    problems = []
    checked_parts = _check_parts_at_once(rendered)
    whole_loaded = False
    for rel in rendered.yaml_files:
        path = root / rel
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{label}{rel}: cannot be read back: {exc}")
            continue
        if text != rendered.files[rel]:
            problems.append(f"{label}{rel}: reads back different bytes from those written")
            continue
        parts = rendered.parts.get(rel)
        try:
            if parts is None or not whole_loaded:
                loaded = _load(text)
                expected = rendered.data.get(rel) if parts is None else _merge(parts)
                if expected is None:  # hiera.yaml: compare with a fresh parse of the text rendered
                    expected = _load(rendered.files[rel])
                if loaded != expected:
                    problems.append(f"{label}{rel}: reads back differently from what was written: "
                                    + _first_difference(expected, loaded, rendered.value_origin.get(rel, {})))
                    continue
                whole_loaded = whole_loaded or parts is not None
            for part_text, data, where in parts or ():
                if part_text is None:  # a structural line ("parameters: {}"): checked by the whole load
                    continue
                ok = checked_parts.get(part_text)
                if ok is None:
                    ok = checked_parts[part_text] = _load(part_text) == data
                if not ok:
                    loaded = _load(part_text)
                    problems.append(f"{label}{rel}: reads back differently from what was written: "
                                    + _first_difference(data, loaded, rendered.value_origin.get(rel, {}), where))
                    break
        except yaml.YAMLError as exc:
            problems.append(f"{label}{rel}: does not read back as YAML: {exc}")
    if problems:
        raise ConfigError("generated YAML failed its read-back check:\n  - " + "\n  - ".join(problems))


def _check_parts_at_once(rendered: Rendered) -> dict:
    """{part text: True} for every distinct part that loads back to its data, parsed as one stream.

    One parser over thousands of small documents instead of thousands of
    parsers. A part is a top-level block mapping, so no line of it starts with
    ``---``; should the stream still not split as expected, nothing is marked
    and every part is checked on its own.
    """
    distinct: dict = {}
    for parts in rendered.parts.values():
        for text, data, _ in parts:
            if text is not None and text not in distinct:
                distinct[text] = data
    if not distinct:
        return {}
    texts = list(distinct)
    try:
        loaded = list(yaml.load_all("".join("---\n" + t for t in texts), Loader=_Loader))
    except yaml.YAMLError:
        return {}
    if len(loaded) != len(texts):
        return {}
    return {t: True for t, value in zip(texts, loaded) if value == distinct[t]}


def _merge(parts: list) -> dict:
    """The whole document the parts of a node file stand for."""
    doc: dict = {}
    for _, data, where in parts:
        target = doc
        for key in where:
            target = target.setdefault(key, {})
        target.update(copy.deepcopy(data))  # parts share their data between files: never alias it
    return doc


def _first_difference(expected, loaded, origin: dict, path=()) -> str:
    if isinstance(expected, dict) and isinstance(loaded, dict):
        for key in expected:
            if key not in loaded:
                return f"key {'.'.join(map(str, path + (key,)))} is missing"
            if expected[key] != loaded[key]:
                return _first_difference(expected[key], loaded[key], origin, path + (key,))
        return f"extra keys under {'.'.join(map(str, path)) or 'the top'}"
    where = ""
    # deploy::components.<component>.parameters.<key> -> the workbook cell it came from
    if len(path) >= 4 and path[2] == "parameters":
        where = origin.get((path[1], path[3]), "")
    text = f"{'.'.join(map(str, path))}: wrote {expected!r}, read {loaded!r}"
    return text + (f" (value from {where}; check that cell for characters YAML cannot carry)" if where else "")


def run_puppet_validate(rendered: Rendered, root: Path, puppet: Optional[str], label: str = "") -> float:
    """One ``puppet parser validate`` over every .pp file; returns seconds taken. Raises ConfigError."""
    import time

    files = [str(root / rel) for rel in rendered.pp_files]
    if not files or not puppet:
        return 0.0
    with tempfile.TemporaryDirectory(prefix="deploy-puppet-validate-") as scratch:
        # a private confdir/vardir: validating never touches the machine's Puppet state
        cmd = [puppet, "parser", "validate", "--color=false", "--confdir", f"{scratch}/conf",
               "--vardir", f"{scratch}/var", "--codedir", f"{scratch}/code", "--logdir", f"{scratch}/log",
               "--rundir", f"{scratch}/run", *files]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"could not run {puppet} parser validate: {exc}") from None
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise ConfigError(_explain(proc.stdout + proc.stderr, rendered, root, label))
    return seconds


def _explain(output: str, rendered: Rendered, root: Path, label: str = "") -> str:
    lines = []
    prefix = str(root) + os.sep
    for raw in output.splitlines():
        line = raw.strip()
        if not line or "Permission denied" in line and "/proc/" in line:
            continue
        where = ""
        m = _LOCATION.search(line)
        if m:
            rel = m.group("file")
            if rel.startswith(prefix):
                rel = rel[len(prefix):]
            origin = rendered.line_origin.get(rel, {}).get(int(m.group("line")))
            if origin:
                where = f"  <- from {origin}"
        lines.append("  " + line.replace(prefix, label) + where)
    return "generated Puppet code failed `puppet parser validate`:\n" + "\n".join(lines)


def validate_tree(rendered: Rendered, root: Path, puppet: Optional[str], label: str = "") -> CheckResult:
    """Both checks over the files of ``rendered`` written under ``root`` (``label``: how messages name root)."""
    check_yaml(rendered, root, label)
    seconds = run_puppet_validate(rendered, root, puppet, label)
    return CheckResult(puppet, len(rendered.pp_files), len(rendered.yaml_files), seconds)
