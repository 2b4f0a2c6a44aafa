"""EMULATED application of a real Puppet catalog's Windows resources into an emulated host's sandbox.

The catalog comes from the real puppetserver (see ``puppet.py``); what Puppet's
Windows providers would do is emulated here:

* ``File``: content (inline or ``puppet:///`` through the file_content API with
  the node's certificate) written under the sandbox; ``directory``, ``absent``.
* ``Service``: a recorded state (``running``/``stopped``, start type) that
  ``sc query`` shows; a refresh from a changed dependency restarts it.
* ``Exec``: not run; recorded. ``creates`` is honoured (and made, standing for
  what the command makes), ``refreshonly`` needs an event, an exec guarded by
  ``unless``/``onlyif`` counts as satisfied after its first run.
* ``Notify``: a change each run, as in Puppet. Any other type: its parameters
  are recorded, and it changes when they change.

Order follows the catalog's relationships (``require``/``before``/``notify``/
``subscribe``, also between classes), then manifest order; a failed resource
skips its dependants ("Skipping because of failed dependencies"). ``--tags``
selects resources by tag, ``--noop`` reports without changing, and the fault
``puppet_fail`` fails the resources tagged with the named components.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .process import Host, Process, Redirected, now

#: Resource types that are containers, not things applied
_CONTAINERS = {"class", "stage", "node", "settings", "admissible_class"}
_RELATIONS = ("require", "before", "notify", "subscribe")


class CatalogApplier:
    """EMULATED application of a real catalog's resources into the host's sandbox."""

    def __init__(self, host: Host, proc: Process, catalog: dict, tags: Sequence[str], noop: bool, environment: str,
                 fetch_source: Callable[[str], Optional[bytes]]):
        """``fetch_source``: the content of a ``puppet:///`` source, fetched as the agent fetches it (or None)."""
        self.host = host
        self.proc = proc
        self.catalog = catalog
        self.tags = list(tags)
        self.noop = noop
        self.environment = environment
        self.fetch_source = fetch_source
        self._appliers = {"file": self._apply_file, "service": self._apply_service, "exec": self._apply_exec,
                          "notify": self._apply_notify}
        self.rows: List[dict] = []
        self.components: Dict[str, dict] = {}
        self.order: List[str] = []

    # -- graph ---------------------------------------------------------------------------
    def _prepare(self):
        resources = {f"{r['type']}[{r['title']}]": r for r in self.catalog.get("resources", [])}
        parent: Dict[str, str] = {}
        for edge in self.catalog.get("edges", []):
            parent.setdefault(edge["target"], edge["source"])
        deps: Dict[str, set] = {k: set() for k in resources}
        refresh_from: Dict[str, set] = {k: set() for k in resources}

        def refs(value) -> List[str]:
            vals = value if isinstance(value, list) else [value]
            return [_canon(v) for v in vals if isinstance(v, str)]

        for key, r in resources.items():
            params = r.get("parameters", {})
            for rel in _RELATIONS:
                for ref in refs(params.get(rel, [])):
                    if ref not in deps:
                        continue
                    if rel in ("require", "subscribe"):
                        deps[key].add(ref)
                        if rel == "subscribe":
                            refresh_from[key].add(ref)
                    else:
                        deps[ref].add(key)
                        if rel == "notify":
                            refresh_from[ref].add(key)
        children: Dict[str, List[str]] = {}
        for child, par in parent.items():
            children.setdefault(par, []).append(child)

        def leaves(key: str) -> List[str]:
            out, stack = [], [key]
            while stack:
                k = stack.pop()
                kids = children.get(k, [])
                if resources.get(k, {}).get("type", "").lower() not in _CONTAINERS:
                    out.append(k)
                stack.extend(kids)
            return out

        # a relationship with a class means one with everything the class contains
        leaf_deps: Dict[str, set] = {}
        leaf_refresh: Dict[str, set] = {}
        for key in resources:
            if resources[key]["type"].lower() in _CONTAINERS:
                continue
            chain, k = [key], key
            while k in parent:
                k = parent[k]
                chain.append(k)
            d, rf = set(), set()
            for c in chain:
                for dep in deps.get(c, ()):
                    d.update(leaves(dep))
                for dep in refresh_from.get(c, ()):
                    rf.update(leaves(dep))
            d.discard(key)
            leaf_deps[key] = d
            leaf_refresh[key] = rf
        order_index = {k: i for i, k in enumerate(resources)}
        ordered, seen, visiting = [], set(), set()

        def visit(k: str) -> None:
            if k in seen or k in visiting:
                return
            visiting.add(k)
            for dep in sorted(leaf_deps[k], key=order_index.get):
                visit(dep)
            visiting.discard(k)
            seen.add(k)
            ordered.append(k)

        for k in sorted(leaf_deps, key=order_index.get):
            visit(k)
        return resources, parent, ordered, leaf_deps, leaf_refresh

    def _component(self, r: dict, parent: Dict[str, str], key: str) -> str:
        tags = [t.lower() for t in r.get("tags", [])]
        for t in self.tags:
            if t in tags:
                return t
        k = key
        while k in parent:
            k = parent[k]
            kind, _, title = k.partition("[")
            if kind not in ("Class", "Stage", "Node"):
                return title[:-1].lower()  # an instance of a defined type, e.g. Product::Component[zeo_server]
            if kind == "Class" and k not in ("Class[Settings]", "Class[main]"):
                return title[:-1].lower()
        return "main"

    def _path(self, key: str, parent: Dict[str, str]) -> str:
        """Puppet's resource path: /Stage[main]/Main/Product::Component[x]/File[...]."""
        chain, k = [], key
        while k in parent:
            k = parent[k]
            if k.startswith("Class["):
                name = k[6:-1]
                chain.append("::".join(p.capitalize() for p in name.split("::")))
            else:
                chain.append(k)
        return "/" + "/".join(list(reversed(chain)) + [key])

    # -- apply ---------------------------------------------------------------------------
    def apply(self) -> None:
        resources, parent, ordered, deps, refresh = self._prepare()
        failing = {c.lower() for c in self.host.faults.puppet_fail}
        status: Dict[str, str] = {}
        for key in ordered:
            if self.proc.cancelled:
                break
            r = resources[key]
            tags = {t.lower() for t in r.get("tags", [])}
            if self.tags and not (tags & set(self.tags)):
                continue
            comp = self._component(r, parent, key)
            where = self._path(key, parent)
            if any(status.get(d) in ("failed", "skipped") for d in deps[key]):
                self.proc.err(f"Warning: {where}: Skipping because of failed dependencies\n")
                result, msg = "skipped", "failed dependencies"
            elif tags & failing:
                bad = sorted(tags & failing)[0]
                msg = f"Could not evaluate: emulated fault puppet_fail for component '{bad}'"
                self.proc.err(f"Error: {where}: {msg}\n")
                result = "failed"
            else:
                refreshed = any(status.get(d) == "changed" for d in refresh[key])
                try:
                    result, msg = self._apply_one(r, where, refreshed)
                except _ResourceError as exc:
                    self.proc.err(f"Error: {where}: {exc}\n")
                    result, msg = "failed", str(exc)
            status[key] = result
            self._note(key, comp, result, msg)

    def _note(self, key: str, comp: str, result: str, msg: str) -> None:
        self.rows.append({"resource": key, "component": comp, "status": result, "message": msg})
        c = self.components.get(comp)
        if c is None:
            c = self.components[comp] = {"resources": [], "changed": 0, "failed": 0, "skipped": 0, "noop": 0}
            self.order.append(comp)
        c["resources"].append(key)
        if result in ("changed", "failed", "skipped", "noop"):
            c[result] += 1

    def _change(self, where: str, prop: str, message: str, noop_message: str) -> Tuple[str, str]:
        if self.noop:
            self.proc.out(f"Notice: {where}/{prop}: {noop_message} (noop)\n")
            return "noop", noop_message
        self.proc.out(f"Notice: {where}/{prop}: {message}\n")
        return "changed", message

    def _apply_one(self, r: dict, where: str, refreshed: bool) -> Tuple[str, str]:
        kind = r["type"].lower()
        params = r.get("parameters", {})
        handler = self._appliers.get(kind)
        if handler is None:
            return self._apply_recorded(r, where)
        return handler(r, params, where, refreshed)

    def _sandbox_path(self, win_path: str) -> Path:
        if not re.match(r"^[A-Za-z]:[\\/]", win_path):
            raise _ResourceError(f"Parameter path failed: File paths must be fully qualified, not '{win_path}'")
        try:
            return self.host.to_sandbox(win_path)
        except FileNotFoundError:
            raise _ResourceError(f"Could not evaluate: the emulated host has only drive C:, not {win_path}") from None

    def _apply_file(self, r: dict, params: dict, where: str, refreshed: bool) -> Tuple[str, str]:
        path = self._sandbox_path(params.get("path", r["title"]))
        ensure = params.get("ensure")
        content = params.get("content")
        source = params.get("source")
        source = source[0] if isinstance(source, list) and source else source
        want_sum = params.get("checksum_value")
        if content is None and source:
            if want_sum and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == want_sum:
                return "unchanged", ""  # the checksum says the file is already right: nothing is fetched
            if re.match(r"^https?://", source, re.IGNORECASE):
                fetched, _why = self.host.http_get(source)
            else:
                fetched = self.fetch_source(source)
            if fetched is None:
                raise _ResourceError(f"Could not evaluate: Could not retrieve information from environment "
                                     f"{self.environment} source(s) {source}")
            got = hashlib.sha256(fetched).hexdigest()
            if want_sum and got != want_sum:
                raise _ResourceError(f"Could not evaluate: File written to disk did not match checksum; discarding "
                                     f"changes ({{sha256}}{want_sum} vs {{sha256}}{got})")
            content = fetched
        if ensure is None:
            ensure = "file" if content is not None else ("present" if path.exists() else None)
        if ensure in ("absent", False):
            if not path.exists():
                return "unchanged", ""
            if not self.noop:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            return self._change(where, "ensure", "removed", "current_value 'file', should be 'absent'")
        if ensure == "directory":
            if path.is_dir():
                return "unchanged", ""
            if not self.noop:
                path.mkdir(parents=True, exist_ok=True)
            return self._change(where, "ensure", "created", "current_value 'absent', should be 'directory'")
        if ensure in ("file", "present") and content is not None:
            data = content.encode("utf-8") if isinstance(content, str) else content
            new = "{sha256}" + hashlib.sha256(data).hexdigest()
            if path.is_file():
                old_data = path.read_bytes()
                if old_data == data:
                    return "unchanged", ""
                old = "{sha256}" + hashlib.sha256(old_data).hexdigest()
                result = self._change(where, "content", f"content changed '{old}' to '{new}'",
                                      f"current_value '{old}', should be '{new}'")
            else:
                if not path.parent.is_dir() and not self.noop:  # Puppet finds out when it writes: never in noop
                    raise _ResourceError(f"Could not set 'file' on ensure: No such file or directory - A directory "
                                         f"component in {params.get('path', r['title'])} does not exist")
                result = self._change(where, "ensure", f"defined content as '{new}'",
                                      "current_value 'absent', should be 'file'")
            if not self.noop:
                path.write_bytes(data)
            return result
        if ensure in ("file", "present"):
            if path.exists():
                return "unchanged", ""
            if not self.noop:
                path.write_bytes(b"")
            return self._change(where, "ensure", "created", "current_value 'absent', should be 'file'")
        return self._apply_recorded(r, where)

    def _apply_service(self, r: dict, params: dict, where: str, refreshed: bool) -> Tuple[str, str]:
        name = params.get("name", r["title"])
        services = self.host.services()
        current = services.get(name, {"state": "stopped", "start_type": "manual"})
        want_state = {True: "running", "true": "running", "running": "running", False: "stopped",
                      "false": "stopped", "stopped": "stopped"}.get(params.get("ensure"), current["state"])
        enable = params.get("enable")
        want_start = {True: "automatic", "true": "automatic", False: "disabled", "false": "disabled",
                      "manual": "manual", "delayed": "delayed"}.get(enable, current["start_type"])
        results = []
        if name not in services or current["state"] != want_state:
            results.append(self._change(where, "ensure", f"ensure changed '{current['state']}' to '{want_state}'",
                                        f"current_value '{current['state']}', should be '{want_state}'"))
        if current["start_type"] != want_start:
            results.append(self._change(where, "enable", f"enable changed '{current['start_type']}' to "
                                        f"'{want_start}'", f"current_value '{current['start_type']}', should be "
                                        f"'{want_start}'"))
        if refreshed and want_state == "running" and not results:
            if not self.noop:
                self.proc.out(f"Notice: {where}: Triggered 'refresh' from 1 event\n")
            results.append(("changed" if not self.noop else "noop", "restarted"))
        if not results:
            return "unchanged", ""
        if not self.noop:
            restarts = current.get("restarts", 0) + (1 if refreshed else 0)

            def put(state: dict) -> None:
                state["services"][name] = {"display_name": name, "state": want_state, "start_type": want_start,
                                           "installed_by": "puppet", "restarts": restarts,
                                           "pid": 1000 + (abs(hash(name)) % 8000)}

            self.host.update_state(put)
        return results[0]

    def _apply_exec(self, r: dict, params: dict, where: str, refreshed: bool) -> Tuple[str, str]:
        """Exec runs its command on the emulated host, as CreateProcess would (no cmd.exe unless it names one).

        ``creates``, ``unless``, ``onlyif``, ``refreshonly`` and ``returns`` are
        Puppet's; a program the persona does not emulate fails the resource
        with 9009, so an exec the product relies on cannot pass silently.
        """
        command = params.get("command", r["title"])
        key = f"Exec[{r['title']}]"
        if params.get("refreshonly") in (True, "true") and not refreshed:
            return "unchanged", ""
        creates = params.get("creates")
        if creates:
            for c in creates if isinstance(creates, list) else [creates]:
                if self._sandbox_path(c).exists():
                    return "unchanged", ""
        if params.get("unless") and self._run(params["unless"])[0] == 0:
            return "unchanged", ""
        if params.get("onlyif") and self._run(params["onlyif"])[0] != 0:
            return "unchanged", ""
        if self.noop:
            return self._change(where, "returns", "", "current_value 'notrun', should be ['0']")
        code, output = self._run(command)
        returns = params.get("returns", [0])
        allowed = [int(x) for x in (returns if isinstance(returns, list) else [returns])]
        self.host.update_state(lambda s: s.setdefault("execs", {}).__setitem__(
            key, {"command": command, "exit_code": code, "last_run": now(),
                  "runs": s.get("execs", {}).get(key, {}).get("runs", 0) + 1}))
        if code not in allowed:
            for line in output.splitlines():
                if line.strip():
                    self.proc.out(f"Notice: {where}/returns: {line}\n")
            raise _ResourceError(f"change from 'notrun' to {[str(a) for a in allowed]} failed: '{command}' returned "
                                 f"{code} instead of one of {allowed}")
        return self._change(where, "returns", "executed successfully", "")

    def _run(self, command: str) -> Tuple[int, str]:
        """Run a command line on the emulated host: (exit code, its output)."""
        sink = Redirected(self.proc, self.proc.session.child())
        sink.capture(1)
        sink.join(2, 1)
        result = self.host.run_process(sink, command)
        return result, sink.decode(sink.captured(1))

    def _apply_notify(self, r: dict, params: dict, where: str, refreshed: bool) -> Tuple[str, str]:
        message = params.get("message", r["title"])
        if self.noop:
            return self._change(where, "message", "", f"current_value 'absent', should be '{message}'")
        self.proc.out(f"Notice: {message}\n")
        return self._change(where, "message", f"defined 'message' as '{message}'", "")

    def _apply_recorded(self, r: dict, where: str) -> Tuple[str, str]:
        key = f"{r['type']}[{r['title']}]"
        params = r.get("parameters", {})
        recorded = self.host.state_value("resources", {}).get(key)
        if recorded == params:
            return "unchanged", ""
        result = self._change(where, "ensure", "(emulated) recorded", "(emulated) would be recorded")
        if not self.noop:
            self.host.update_state(lambda s: s.setdefault("resources", {}).__setitem__(key, params))
        return result

    # -- results -------------------------------------------------------------------------
    def exit_code(self, detailed: bool) -> int:
        changed = sum(1 for r in self.rows if r["status"] == "changed")
        failed = sum(1 for r in self.rows if r["status"] == "failed")
        if not detailed:
            return 1 if failed else 0
        return (2 if changed else 0) | (4 if failed else 0)

    def summary(self) -> dict:
        for c in self.components.values():
            c["outcome"] = ("failed" if c["failed"] or c["skipped"] else "changed" if c["changed"]
                            else "noop" if c["noop"] else "unchanged")
        failed = any(r["status"] in ("failed",) for r in self.rows)
        changed = any(r["status"] == "changed" for r in self.rows)
        return {"outcome": "failed" if failed else "changed" if changed else "unchanged",
                "catalog_version": self.catalog.get("version"), "components": self.components,
                "component_order": self.order, "resources": self.rows}


class _ResourceError(Exception):
    pass


def _canon(ref: str) -> str:
    """``file[C:/x]`` / ``File['C:/x']`` -> ``File[C:/x]``; class names capitalised per segment as in catalogs."""
    m = re.match(r"^([\w:]+)\[(.*)\]$", ref.strip(), re.DOTALL)
    if not m:
        return ref
    kind = "::".join(p.capitalize() for p in m.group(1).split("::"))
    title = m.group(2).strip().strip("'\"")
    if kind == "Class":
        title = "::".join(p.capitalize() for p in title.split("::"))
    return f"{kind}[{title}]"
