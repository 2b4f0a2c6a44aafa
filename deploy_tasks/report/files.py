"""A ``RunResult`` as files: ``<dir>/<task>.json`` and ``<dir>/junit-<task>.xml`` (what Jenkins' ``junit`` step reads).

JUnit: one ``testsuite`` per run, one ``testcase`` per unit (``classname``
``<task>.<host>``, ``name`` the unit's name, ``time`` in seconds); a failed
unit carries a ``failure`` with the error's first line as ``message`` and
the whole error plus the failing command's output as text; a skipped unit
a ``skipped`` with the reason; what the unit printed goes to
``system-out``. Characters XML 1.0 cannot hold (NUL, ESC from a coloured
tool...) are replaced, so the file always parses. Both files are written
atomically (temporary file, then rename) and redacted.
"""

from __future__ import annotations

import os
import re
import tempfile
import xml.etree.ElementTree as ET
from typing import Tuple

from .. import outcome
from ..errors import ConfigError
from ..redact import redact
from ..runner import RunResult

# XML 1.0 allows tab, LF, CR and everything from U+0020 except surrogates and U+FFFE/U+FFFF
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def _text(value) -> str:
    return _NOT_XML.sub("\ufffd", redact(str(value or "")))


def report_paths(reports_dir: str, task: str) -> Tuple[str, str]:
    name = _SAFE_NAME.sub("-", task).strip("-") or "run"
    return os.path.join(reports_dir, f"{name}.json"), os.path.join(reports_dir, f"junit-{name}.xml")


def junit_xml(result: RunResult) -> bytes:
    """The run as a JUnit XML document (bytes, UTF-8, with its declaration)."""
    counts = result.counts()
    attrs = {
        "name": _text(result.task),
        "tests": str(len(result.units)),
        "failures": str(counts.get(outcome.FAILED, 0)),
        "errors": "0",
        "skipped": str(counts.get(outcome.SKIPPED, 0)),
        "time": f"{result.seconds:.3f}",
    }
    root = ET.Element("testsuites", attrs)
    suite = ET.SubElement(root, "testsuite", dict(attrs, timestamp=(result.started or "")[:19]))
    if result.dry_run or result.cancelled:
        props = ET.SubElement(suite, "properties")
        if result.dry_run:
            ET.SubElement(props, "property", {"name": "dry_run", "value": "true"})
        if result.cancelled:
            ET.SubElement(props, "property", {"name": "cancelled", "value": _text(result.cancelled)})
    for unit in result.units:
        case = ET.SubElement(suite, "testcase", {
            "classname": _text(f"{result.task}.{unit.host.replace('.', '_')}"),
            "name": _text(unit.name),
            "time": f"{unit.seconds:.3f}",
        })
        error = unit.error or ""
        if unit.status == outcome.FAILED:
            body = error + (f"\n\noutput of the failing command:\n{unit.error_output}" if unit.error_output else "")
            failure = ET.SubElement(case, "failure", {"message": _text((error.splitlines() or [""])[0]),
                                                      "type": _text(unit.error_type or "failed")})
            failure.text = _text(body)
        elif unit.status == outcome.SKIPPED:
            ET.SubElement(case, "skipped", {"message": _text(error or "skipped")})
        out = [f"status: {outcome.label(unit.status)}"] + [f"- {d}" for d in unit.details] + list(unit.output)
        ET.SubElement(case, "system-out").text = _text("\n".join(out))
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode").encode("utf-8") + b"\n"


def _write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise ConfigError(f"cannot write the report {path}: {exc.strerror or exc} (setting reports_dir / "
                          f"INVOKE_DEPLOY_REPORTS_DIR)") from None


def host_logs(result: RunResult) -> dict:
    """host -> the text of its log: every unit of the host in run order, its status, what changed, what it
    printed (the commands it ran, for the steps that log them) and its error. Redacted."""
    logs: dict = {}
    for unit in result.units:
        lines = logs.setdefault(unit.host, [f"# {result.task} on {unit.host}, run started {result.started}"
                                            + (" (dry run)" if result.dry_run else "")])
        lines.append(f"\n== {unit.name}: {outcome.label(unit.status)} ({unit.seconds:.1f}s, "
                     f"attempts {unit.attempts}) {unit.started or ''} .. {unit.ended or ''}")
        lines += [f"- {d}" for d in unit.details]
        lines += list(unit.output)
        if unit.error:
            lines.append(f"error: {unit.error}")
        if unit.error_output:
            lines.append(f"output of the failing command:\n{unit.error_output}")
    return {host: redact("\n".join(lines) + "\n") for host, lines in logs.items()}


def write(result: RunResult, reports_dir: str) -> Tuple[str, str]:
    """Write ``<task>.json``, ``junit-<task>.xml`` and ``hosts/<task>/<host>.log`` into ``reports_dir``;
    return the first two paths."""
    json_path, junit_path = report_paths(reports_dir, result.task)
    _write(json_path, result.to_json().encode("utf-8"))
    _write(junit_path, junit_xml(result))
    folder = os.path.join(reports_dir, "hosts", _SAFE_NAME.sub("-", result.task).strip("-") or "run")
    for host, text in host_logs(result).items():
        _write(os.path.join(folder, (_SAFE_NAME.sub("-", host).strip("-.") or "host") + ".log"),
               text.encode("utf-8"))
    return json_path, junit_path
