"""inv generate-config without a Puppet server: layout, data, escaping, validation, writer, drift check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy_tasks.configgen import load_manifest, render
from deploy_tasks.configgen.check import _merge, find_puppet, run_puppet_validate
from deploy_tasks.configgen.output import compare, read_modules, unified_diff, write
from deploy_tasks.configgen.render import _dump, hiera_unescape, puppet_string
from deploy_tasks.errors import ConfigError
from deploy_tasks.inventory import load_inventory
from deploy_tasks.settings import resolve
from tests.support.workbooks import HOSTILE, write_example_variant

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "puppet" / "modules"
ENV = "environments/production"
PUPPET = find_puppet()
needs_puppet = pytest.mark.skipif(PUPPET is None, reason="puppet is not installed (apt-get install puppet-agent)")


@pytest.fixture(scope="module")
def example():
    return load_inventory(ROOT / "inventory" / "example.xlsx")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    path = tmp_path_factory.mktemp("wb") / "hostile.xlsx"
    write_example_variant(path, parameters=[("host:ZSVC01", "banner", HOSTILE)],
                          mapping_column=("motd", {("ZWEB01", "web_frontend"): HOSTILE}))
    return load_inventory(path)


def settings_for(inventory, **over):
    return resolve({**inventory.settings, **over})


def node(rendered, certname):
    return yaml.safe_load(rendered.files[f"{ENV}/data/nodes/{certname}.yaml"])


def test_layout_one_node_file_per_windows_host(example):
    r = render(example, settings_for(example))
    expected = {f"{ENV}/{p}" for p in ("environment.conf", "hiera.yaml", "data/common.yaml", "manifests/site.pp")}
    expected |= {f"{ENV}/data/nodes/{h}.example.test.yaml" for h in ("zdb01", "zapp01", "zapp02", "zsrch01", "zsvc01", "zweb01")}
    assert set(r.files) == expected  # deploy01 is linux: no node file
    hiera = yaml.safe_load(r.files[f"{ENV}/hiera.yaml"])
    assert hiera["version"] == 5
    assert [level["path"] for level in hiera["hierarchy"]] == ["nodes/%{trusted.certname}.yaml", "common.yaml"]


def test_node_data_versions_groups_urls_and_parameter_precedence(example):
    r = render(example, settings_for(example))
    zapp01 = node(r, "zapp01.example.test")["deploy::components"]
    assert set(zapp01) == set(example.components_on("ZAPP01"))
    inst = zapp01["zope_instance_1"]
    assert inst["version"] == "4.8.11" and inst["group"] == 3
    assert inst["depends_on"] == ["zeo_server", "zope_base", "auth_ldap"]
    assert inst["artifact_url"] == "http://127.0.0.1:8080/production/zope_instance_1/4.8.11/zope_instance_1-4.8.11.zip"
    assert "sha256" not in inst  # no manifest: never invented
    # Mapping column > host: > component: > common
    assert inst["parameters"] == {"install_root": "C:\\Product", "log_level": "DEBUG", "port": 8081,
                                  "zeo_address": "127.0.0.11:8100"}
    zeo = node(r, "zdb01.example.test")["deploy::components"]["zeo_server"]
    assert zeo["parameters"] == {"install_root": "C:\\Product", "log_level": "INFO", "cache_size_mb": 512, "port": 8100}
    # a version that looks like a number stays text
    assert node(r, "zdb01.example.test")["deploy::components"]["log_shipper"]["version"] == "1.10"
    assert any("no artifact manifest" in w for w in r.warnings)


def test_certname_uses_domain_setting(example):
    r = render(example, settings_for(example, domain="corp.example.com"))
    assert f"{ENV}/data/nodes/zweb01.corp.example.com.yaml" in r.files
    assert "node 'zweb01.corp.example.com' {" in r.files[f"{ENV}/manifests/site.pp"]
    r = render(example, settings_for(example, domain=""))
    assert "node 'zweb01' {" in r.files[f"{ENV}/manifests/site.pp"]


def test_sha256_from_manifest_only_for_the_same_version(example, tmp_path):
    digest = "ab" * 32
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "environment": "production", "components": {
        "zeo_server": {"version": "5.4.0", "artifact": "zeo_server-5.4.0.zip", "sha256": digest},
        "python_runtime": {"version": "2.7.17", "artifact": "python_runtime-2.7.17.zip", "sha256": "cd" * 32},
    }}))
    manifest = load_manifest(tmp_path)
    r = render(example, settings_for(example), manifest)
    zdb01 = node(r, "zdb01.example.test")["deploy::components"]
    assert zdb01["zeo_server"]["sha256"] == digest
    assert "sha256" not in zdb01["python_runtime"]
    assert any("python_runtime" in w and "2.7.17" in w and "2.7.18" in w for w in r.warnings)
    assert any("blob_storage" in w and "no entry" in w for w in r.warnings)


def test_broken_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="manifest.json: not valid JSON"):
        load_manifest(tmp_path)
    assert load_manifest(tmp_path / "missing") is None


def test_hostile_value_reaches_hiera_exactly_and_never_puppet_code(hostile):
    r = render(hostile, settings_for(hostile))
    zsvc01 = node(r, "zsvc01.example.test")["deploy::components"]
    # what Hiera hands to Puppet (after its own %{literal('%')} escape) is the workbook's text
    for component in zsvc01:
        assert hiera_unescape(zsvc01[component]["parameters"]["banner"]) == HOSTILE
    assert hiera_unescape(zsvc01["notifications"]["parameters"]["subject_template"]) == \
        'Workflow "{{state}}" for ${title} \u2014 r\u00e9sum\u00e9'
    assert hiera_unescape(node(r, "zweb01.example.test")["deploy::components"]["web_frontend"]["parameters"]["motd"]) == HOSTILE
    # Hiera would interpolate a raw %{...}: none may be left in the data
    text = r.files[f"{ENV}/data/nodes/zsvc01.example.test.yaml"]
    assert "%{trusted.certname}" not in text and "%{literal('%')}{trusted.certname}" in text
    site = r.files[f"{ENV}/manifests/site.pp"]
    assert "jinja" not in site and "He said" not in site and "Workflow" not in site


def test_puppet_string_escaping():
    assert puppet_string("plain") == "'plain'"
    assert puppet_string("it's C:\\x\\") == "'it\\'s C:\\\\x\\\\'"


@needs_puppet
def test_puppet_string_round_trips_through_real_puppet(tmp_path):
    value = "it's C:\\dir\\ ${x} \"q\" \\' end\\"
    manifest = tmp_path / "t.pp"
    manifest.write_text(f"notice({puppet_string(value)})\n", encoding="utf-8")
    out = subprocess.run([PUPPET, "apply", "--color=false", "--noop", str(manifest)], capture_output=True,
                         text=True, timeout=120).stdout
    assert f"Notice: Scope(Class[main]): {value}\n" in out


def test_site_pp_tags_orders_and_has_a_default_node(example):
    site = render(example, settings_for(example)).files[f"{ENV}/manifests/site.pp"]
    block = site.split("node 'zdb01.example.test' {\n")[1].split("\n}\n")[0]
    assert "  product::component { 'zeo_server': tag => 'zeo_server' }" in block
    assert "  Product::Component['zodb_storage'] -> Product::Component['zeo_server']" in block
    # dependencies on other hosts are not Puppet ordering (another node's resources)
    assert "zope_base" not in block
    assert site.rstrip().endswith("node default {\n}")


def test_custom_puppet_class_is_declared_tagged_and_gets_class_parameters(tmp_path):
    def use_class(rows):
        for row in rows:
            if row[0] == "zeo_server":
                row[4] = "acme::zeo"
        return rows
    inv = load_inventory(write_example_variant(tmp_path / "c.xlsx", components=use_class))
    r = render(inv, settings_for(inv))
    site = r.files[f"{ENV}/manifests/site.pp"]
    assert "  class { 'acme::zeo': tag => 'zeo_server' }" in site
    assert "  Product::Component['zodb_storage'] -> Class['acme::zeo']" in site
    data = node(r, "zdb01.example.test")
    assert data["acme::zeo::version"] == "5.4.0" and data["acme::zeo::component"] == "zeo_server"
    assert data["acme::zeo::parameters"]["port"] == 8100


def test_component_named_like_a_shared_tag_is_refused(tmp_path):
    def rename(rows):
        rows.append(["product", "1.0", "product-1.0.zip", "", "", None, None, "clashes with the module name"])
        return rows
    inv = load_inventory(write_example_variant(tmp_path / "t.xlsx", components=rename))
    with pytest.raises(ConfigError, match=r"Components row 36: component name 'product' is a tag"):
        render(inv, settings_for(inv))


@needs_puppet
def test_puppet_validate_error_points_at_the_workbook_row(example, tmp_path):
    r = render(example, settings_for(example))
    path = f"{ENV}/manifests/site.pp"
    lines = r.files[path].split("\n")
    n = next(i for i, line in enumerate(lines) if "'zeo_server': tag" in line)
    lines[n] = lines[n].replace("{ 'zeo_server':", "{ 'zeo_server'")  # a syntax error on that line
    r.files[path] = "\n".join(lines)
    for rel, text in r.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    with pytest.raises(ConfigError) as err:
        run_puppet_validate(r, tmp_path, PUPPET, label="OUT/")
    text = str(err.value)
    assert "OUT/environments/production/manifests/site.pp" in text
    assert "from Mapping row 7 / Components row 10 (zeo_server on ZDB01)" in text


def test_write_is_idempotent_and_keeps_mtimes(example, tmp_path):
    r = render(example, settings_for(example), None, read_modules(MODULES))
    first = write(r, tmp_path, PUPPET)
    assert first.written and {c.kind for c in first.changes} == {"added"}
    files = sorted(p for p in (tmp_path / ENV).rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in files}
    again = write(render(example, settings_for(example), None, read_modules(MODULES)), tmp_path, PUPPET)
    assert not again.written and again.changes == []
    after = {p: (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes()) for p in files}
    assert after == before
    assert [p.name for p in tmp_path.joinpath("environments").iterdir()] == ["production"]  # no temp dirs left


def test_changed_run_swaps_and_keeps_unchanged_files_untouched(hostile, tmp_path):
    plain = load_inventory(write_example_variant(tmp_path / "wb" / "hostile.xlsx"))  # same file name, no banner
    out = tmp_path / "out"
    earlier = render(plain, settings_for(plain))
    earlier.files[f"{ENV}/data/nodes/old-host.example.test.yaml"] = "left over\n"  # a host since removed
    write(earlier, out, PUPPET)
    untouched = out / ENV / "data/nodes/zdb01.example.test.yaml"
    stamp = untouched.stat().st_mtime_ns
    stale = out / ENV / "data/nodes/old-host.example.test.yaml"
    result = write(render(hostile, settings_for(hostile)), out, PUPPET)
    assert result.written
    assert [(c.path, c.kind) for c in result.changes] == [
        (f"{ENV}/data/nodes/old-host.example.test.yaml", "removed"),
        (f"{ENV}/data/nodes/zsvc01.example.test.yaml", "changed"),
        (f"{ENV}/data/nodes/zweb01.example.test.yaml", "changed"),
    ]
    assert not stale.exists()
    assert untouched.stat().st_mtime_ns == stamp
    assert "banner:" in (out / ENV / "data/nodes/zsvc01.example.test.yaml").read_text()


@needs_puppet
def test_failed_validation_leaves_previous_output_untouched(example, tmp_path):
    write(render(example, settings_for(example)), tmp_path, PUPPET)
    snapshot = {p: p.read_bytes() for p in (tmp_path / ENV).rglob("*") if p.is_file()}
    broken = render(example, settings_for(example))
    broken.files[f"{ENV}/manifests/site.pp"] += "node 'x' {\n"
    broken.files[f"{ENV}/data/nodes/zdb01.example.test.yaml"] += "# changed\n"
    with pytest.raises(ConfigError, match="failed `puppet parser validate`"):
        write(broken, tmp_path, PUPPET)
    assert {p: p.read_bytes() for p in (tmp_path / ENV).rglob("*") if p.is_file()} == snapshot
    assert [p.name for p in tmp_path.joinpath("environments").iterdir()] == ["production"]


def test_without_puppet_the_result_says_syntax_was_not_checked(example, tmp_path):
    result = write(render(example, settings_for(example)), tmp_path, None)
    assert result.written
    assert "SYNTAX NOT CHECKED BY PUPPET" in result.check.summary


def test_compare_and_diff_show_a_hand_edit(example, tmp_path):
    r = render(example, settings_for(example))
    write(r, tmp_path, PUPPET)
    assert compare(r, tmp_path) == []
    edited = tmp_path / ENV / "data/nodes/zapp01.example.test.yaml"
    edited.write_text(edited.read_text().replace("log_level: DEBUG", "log_level: TRACE"))
    changes = compare(r, tmp_path)
    assert [(c.path, c.kind) for c in changes] == [(f"{ENV}/data/nodes/zapp01.example.test.yaml", "changed")]
    diff = unified_diff(changes)
    assert f"--- a/{ENV}/data/nodes/zapp01.example.test.yaml" in diff
    assert "-      log_level: TRACE\n" in diff and "+      log_level: DEBUG\n" in diff


# -- the task, as a user runs it ---------------------------------------------------------
def inv(*args, env=None, cwd=ROOT):
    # no artifact manifest from a developer's own build/ (CI's clean clone has none either)
    env = {"INVOKE_DEPLOY_REPOSITORY": "/nonexistent/deploy_tasks-test-repository", **(env or {})}
    return subprocess.run([str(Path(sys.executable).parent / "inv"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180, env={**os.environ, **env})


def test_task_generate_check_and_diff(tmp_path):
    out = tmp_path / "puppet"
    first = inv("generate-config", "--output", str(out))
    assert first.returncode == 0, first.stderr
    assert "14 file(s) written (14 added) for 6 Windows hosts" in first.stdout
    assert "sha256 omitted" in first.stderr or "manifest" in first.stderr
    check = inv("generate-config", "--output", str(out), "--check")
    assert check.returncode == 0 and "up to date" in check.stdout
    site = out / ENV / "manifests/site.pp"
    site.write_text(site.read_text().replace("node default {", "node default {\n  notify { 'hand edit': }"))
    drift = inv("generate-config", "--output", str(out), "--check", "--diff")
    assert drift.returncode == 1
    assert f"would be changed: {site}" in drift.stdout
    assert "-  notify { 'hand edit': }" in drift.stdout
    assert "1 file(s) differ" in drift.stderr
    assert "hand edit" in site.read_text()  # --check writes nothing
    fix = inv("generate-config", "--output", str(out), "--diff")  # writes, and shows what it changed
    assert fix.returncode == 0 and "1 file(s) written (1 changed)" in fix.stdout
    assert f"--- a/{ENV}/manifests/site.pp" in fix.stdout and "-  notify { 'hand edit': }" in fix.stdout
    assert "hand edit" not in site.read_text()


def test_task_without_puppet_on_path_says_so(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    result = inv("generate-config", "--output", str(tmp_path / "out"), env={"PATH": str(bare)})
    assert result.returncode == 0, result.stderr
    assert "SYNTAX NOT CHECKED BY PUPPET" in result.stderr


def test_task_bad_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = inv("generate-config", "--output", str(blocker))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and str(blocker) in result.stderr


def test_node_files_are_exactly_what_one_safe_dump_of_the_node_gives(hostile, tmp_path):
    def use_class(rows):
        for row in rows:
            if row[0] == "zeo_server":
                row[4] = "acme::zeo"
        return rows
    with_class = load_inventory(write_example_variant(tmp_path / "c.xlsx", components=use_class))
    tricky = [("line one\nline two\n\nline four", "multi"), ("  leading and trailing  ", "spaces"), ("", "empty"),
              ("yes", "yes"), ("1.10", "version_like"), (2.5, "ratio"), (True, "flag"), ("x" * 300 + " y", "long"),
              ("- not a list", "dash"), ("#not a comment", "hash"), ("key: value", "colon"), ("\u00e9t\u00e9 \u2014 \U0001F680", "utf8"),
              ("next\x85line\u2028sep", "unicode_breaks")]
    odd = load_inventory(write_example_variant(
        tmp_path / "o.xlsx", parameters=[("component:zeo_server", key, value) for value, key in tricky],
        mapping_column=("note", {("ZDB01", "zeo_server"): "mapped\nvalue 'q' \"qq\"", ("ZDB01", "blob_storage"): 7})))
    assert odd.parameters_for("ZDB01", "zeo_server")["multi"] == "line one\nline two\n\nline four"
    for inventory in (hostile, with_class, odd):
        r = render(inventory, settings_for(inventory))
        nodes = [p for p in r.files if "/data/nodes/" in p]
        assert len(nodes) == 6
        for path in nodes:
            whole = yaml.safe_load(r.files[path])
            assert whole == _merge(r.parts[path])  # and the data is what was meant
            header = r.files[path].split("\n", 1)[0] + "\n"
            assert r.files[path] == header + _dump(whole)


def test_yaml_read_back_names_the_workbook_cell_of_a_value_that_changed(hostile, tmp_path):
    from deploy_tasks.configgen.check import check_yaml
    r = render(hostile, settings_for(hostile))
    path = f"{ENV}/data/nodes/zsvc01.example.test.yaml"
    # simulate an emitter that loses a character of the banner: text and parts disagree with the data
    r.parts[path] = [(text and text.replace("line 2", "line two"), data, where) for text, data, where in r.parts[path]]
    r.files[path] = r.files[path].replace("line 2", "line two")
    for rel, text in r.files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(text.encode())
    with pytest.raises(ConfigError) as err:
        check_yaml(r, tmp_path)
    assert "zsvc01.example.test.yaml: reads back differently" in str(err.value)
    assert "parameters.banner" in str(err.value) and "Parameters row 7 (host:ZSVC01 banner)" in str(err.value)


def test_two_hosts_with_one_certname_are_refused(tmp_path):
    from deploy_tasks.inventory.template import example_sheets, write_workbook
    sheets = example_sheets()
    headers, rows = sheets["Servers"]
    rows.append(["zweb01.example.test", "127.0.0.17", "windows", "web", None, "same certname as ZWEB01"])
    inv = load_inventory(write_workbook(tmp_path / "dup.xlsx", sheets))
    with pytest.raises(ConfigError, match=r"Servers row 9: zweb01.example.test and ZWEB01 \(Servers row 8\) "
                                          r"both get the Puppet certname zweb01.example.test"):
        render(inv, settings_for(inv))


def test_two_components_with_one_class_on_a_host_are_refused(tmp_path):
    def same_class(rows):
        for row in rows:
            if row[0] in ("zodb_storage", "blob_storage"):
                row[4] = "acme::storage"
        return rows
    inv = load_inventory(write_example_variant(tmp_path / "s.xlsx", components=same_class))
    with pytest.raises(ConfigError, match=r"Mapping row 6: blob_storage and zodb_storage both use Puppet class "
                                          r"acme::storage on ZDB01"):
        render(inv, settings_for(inv))


def test_swap_without_renameat2_still_replaces_the_tree(example, hostile, tmp_path, monkeypatch):
    from deploy_tasks import atomic
    write(render(example, settings_for(example)), tmp_path, PUPPET)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # a kernel without RENAME_EXCHANGE
    result = write(render(hostile, settings_for(hostile)), tmp_path, PUPPET)
    assert result.written
    assert "banner:" in (tmp_path / ENV / "data/nodes/zsvc01.example.test.yaml").read_text()
    assert [p.name for p in tmp_path.joinpath("environments").iterdir()] == ["production"]


# -- the output dir belongs to the user; the generator owns only what it wrote -------------------------------

def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_existing_puppet_code_dir_is_refused_and_nothing_is_deleted(example, tmp_path):
    env_dir = tmp_path / ENV
    (env_dir / ".git").mkdir(parents=True)
    (env_dir / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (env_dir / "modules" / "mine" / "manifests").mkdir(parents=True)
    (env_dir / "modules" / "mine" / "manifests" / "init.pp").write_text("class mine {}\n")
    (env_dir / "data").mkdir()
    (env_dir / "data" / "secrets.yaml").write_text("hand: written\n")
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match=r"holds 3 entries generate-config did not write \(\.git/, data/secrets.yaml, modules/\).*--force"):
        write(render(example, settings_for(example)), tmp_path, PUPPET)
    assert _snapshot(tmp_path) == before
    assert [p.name for p in (tmp_path / "environments").iterdir()] == ["production"]  # no temp dir left


def test_force_moves_the_foreign_directory_aside_and_keeps_it(example, tmp_path):
    env_dir = tmp_path / ENV
    (env_dir / "modules" / "mine").mkdir(parents=True)
    (env_dir / "modules" / "mine" / "init.pp").write_text("class mine {}\n")
    result = write(render(example, settings_for(example)), tmp_path, PUPPET, force=True)
    assert result.written and any("moved aside" in note for note in result.notes)
    kept = [p for p in (tmp_path / "environments").iterdir() if p.name.startswith(".production.kept-")]
    assert len(kept) == 1 and (kept[0] / "modules/mine/init.pp").read_text() == "class mine {}\n"
    assert (env_dir / "manifests/site.pp").is_file() and not (env_dir / "modules/mine").exists()
    # from now on the directory is the generator's own: a re-run neither refuses nor moves anything
    again = write(render(example, settings_for(example)), tmp_path, PUPPET)
    assert not again.written and not again.notes


def test_a_file_added_to_the_generated_tree_is_refused_not_deleted(example, tmp_path):
    write(render(example, settings_for(example)), tmp_path, PUPPET)
    mine = tmp_path / ENV / "data" / "mine.yaml"
    mine.write_text("kept: true\n")
    assert compare(render(example, settings_for(example)), tmp_path) == []  # never listed as "removed"
    with pytest.raises(ConfigError, match="data/mine.yaml"):
        write(_changed(example), tmp_path, PUPPET)
    assert mine.read_text() == "kept: true\n"


def _changed(example):
    r = render(example, settings_for(example))
    r.files[f"{ENV}/data/common.yaml"] += "# changed\n"
    return r


def test_output_from_an_earlier_version_without_a_marker_is_adopted(example, tmp_path):
    write(render(example, settings_for(example)), tmp_path, PUPPET)
    (tmp_path / ENV / ".deploy_tasks-generated").unlink()
    result = write(render(example, settings_for(example)), tmp_path, PUPPET)
    assert not result.written and (tmp_path / ENV / ".deploy_tasks-generated").is_file()


def test_symlinked_environment_is_followed_and_said(example, tmp_path):
    real = tmp_path / "releases" / "r1"
    real.mkdir(parents=True)
    (tmp_path / "environments").mkdir()
    (tmp_path / ENV).symlink_to(real)
    result = write(render(example, settings_for(example)), tmp_path, PUPPET)
    assert result.written and (tmp_path / ENV).is_symlink()  # the link stays a link
    assert any("symbolic link: following it" in note for note in result.notes)
    assert (real / "manifests/site.pp").is_file()
    assert [p.name for p in (tmp_path / "environments").iterdir()] == ["production"]  # no stray .production.new-*
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == ["r1"]


def test_dangling_environment_link_is_refused(example, tmp_path):
    (tmp_path / "environments").mkdir()
    (tmp_path / ENV).symlink_to(tmp_path / "gone" / "r1")
    with pytest.raises(ConfigError, match="symbolic link to .* not a directory"):
        write(render(example, settings_for(example)), tmp_path, PUPPET)
    assert [p.name for p in (tmp_path / "environments").iterdir()] == ["production"]


def test_task_refuses_a_foreign_dir_and_force_keeps_it(tmp_path):
    out = tmp_path / "code"
    (out / ENV / ".git").mkdir(parents=True)
    (out / ENV / ".git" / "config").write_text("[core]\n")
    refused = inv("generate-config", "--output", str(out))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "did not write (.git/" in refused.stderr and "--force" in refused.stderr
    assert (out / ENV / ".git" / "config").read_text() == "[core]\n"
    forced = inv("generate-config", "--output", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "moved aside to" in forced.stdout
    kept = [p for p in (out / "environments").iterdir() if p.name.startswith(".production.kept-")]
    assert (kept[0] / ".git" / "config").read_text() == "[core]\n"


def test_task_output_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for output in (blocker, blocker / "sub"):
        result = inv("generate-config", "--output", str(output))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "point --output at a directory" in result.stderr
    assert blocker.read_text() == "x"
