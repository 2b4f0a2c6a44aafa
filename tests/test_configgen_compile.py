"""The generated environment compiles on the real Puppet server for every example node.

The environment is written by the generator's own writer straight into the
server's code dir as ``environments/gentest_<run id>`` (never ``production``,
which other tests publish to; removed at the end of the session), with the example product module in its ``modules/``. Each
node's catalog is compiled by the real puppetserver exactly as an agent asks for
it: its own client certificate (test-only certnames under the domain
``gentest.test``, so no other test's CA state is touched) and Windows facts
posted to ``/puppet/v3/catalog/<certname>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy_tasks.configgen import load_manifest, render
from deploy_tasks.configgen.check import find_puppet
from deploy_tasks.configgen.output import read_modules, write
from deploy_tasks.inventory import load_inventory
from deploy_tasks.settings import resolve
from tests.support.catalogs import compile_catalog
from tests.support.services import RUN_ID
from tests.support.workbooks import HOSTILE, write_example_variant

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = f"gentest_{RUN_ID}"
DOMAIN = "gentest.test"
ZEO_SHA = "5e" * 32
pytestmark = pytest.mark.integration

HOSTS = ("ZDB01", "ZAPP01", "ZAPP02", "ZSRCH01", "ZSVC01", "ZWEB01")


@pytest.fixture(scope="module")
def published(puppet_master, master_environment, tmp_path_factory):
    assert master_environment("gentest") == ENVIRONMENT
    base = tmp_path_factory.mktemp("gentest")
    workbook = write_example_variant(base / "hostile.xlsx", parameters=[("host:ZSVC01", "banner", HOSTILE)],
                                     mapping_column=("motd", {("ZWEB01", "web_frontend"): HOSTILE}))
    inventory = load_inventory(workbook)
    repository = base / "repository"
    repository.mkdir()
    (repository / "manifest.json").write_text(json.dumps({"format": 1, "environment": ENVIRONMENT, "components": {
        "zeo_server": {"version": "5.4.0", "artifact": "zeo_server-5.4.0.zip", "sha256": ZEO_SHA}}}))
    settings = resolve({**inventory.settings, "environment": ENVIRONMENT, "domain": DOMAIN,
                        "repository": str(repository)})
    rendered = render(inventory, settings, load_manifest(repository), read_modules(ROOT / "puppet" / "modules"))
    result = write(rendered, Path(puppet_master["codedir"]), find_puppet())
    assert result.check is not None
    return inventory, settings


@pytest.fixture(scope="module")
def catalogs(published):
    return {host: compile_catalog(f"{host.lower()}.{DOMAIN}", ENVIRONMENT) for host in HOSTS}


def _resources(catalog: dict) -> dict:
    return {f"{r['type']}[{r['title']}]": r for r in catalog["resources"]}


def _contained(catalog: dict, container: str) -> set:
    """Every resource inside ``container`` (containment edges, transitively)."""
    children: dict = {}
    for edge in catalog["edges"]:
        children.setdefault(edge["source"], []).append(edge["target"])
    found, todo = set(), [container]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.parametrize("host", HOSTS)
def test_node_catalog_carries_its_components_with_workbook_values(host, published, catalogs):
    inventory, settings = published
    catalog = catalogs[host]
    assert catalog["name"] == f"{host.lower()}.{DOMAIN}" and catalog["environment"] == ENVIRONMENT
    resources = _resources(catalog)
    mapped = inventory.components_on(host)
    declared = {r["title"] for r in catalog["resources"] if r["type"] == "Product::Component"}
    assert declared == set(mapped)
    for name in mapped:
        component = inventory.component(name)
        inside = _contained(catalog, f"Product::Component[{name}]")
        assert inside, f"{name} declares no resources"
        # `puppet agent --tags <name>` selects exactly this component's resources
        tagged = {ref for ref, r in resources.items() if name in r["tags"]}
        assert tagged == inside | {f"Product::Component[{name}]"}
        for ref in inside:
            assert set(resources[ref]["tags"]) & set(mapped) == {name}, ref
        install = inventory.parameters_for(host, name)["install_root"] + "\\" + name
        artifact = resources[f"File[{install}\\downloads\\{component.artifact}]"]["parameters"]
        assert artifact["source"] == (f"http://127.0.0.1:{settings.package_port}/{ENVIRONMENT}/{name}/"
                                      f"{component.version}/{component.artifact}")
        assert artifact.get("checksum_value") == (ZEO_SHA if name == "zeo_server" else None)
        # the config file carries the parameters exactly as the workbook has them
        config = resources[f"File[{install}\\etc\\parameters.json]"]["parameters"]["content"]
        assert json.loads(config) == inventory.parameters_for(host, name)
        assert f"Exec[product {name}: unpack {component.artifact}]" in inside
        assert f"Service[Product_{name}]" in inside
        # ordering between components on the same host that depend on each other
        for dep in component.depends_on:
            if dep in mapped:
                before = resources[f"Product::Component[{dep}]"]["parameters"].get("before", [])
                assert f"Product::Component[{name}]" in ([before] if isinstance(before, str) else before)


def test_hostile_values_survive_byte_for_byte(catalogs):
    zsvc01 = _resources(catalogs["ZSVC01"])
    notifications = json.loads(zsvc01["File[C:\\Product\\notifications\\etc\\parameters.json]"]["parameters"]["content"])
    assert notifications["banner"] == HOSTILE
    assert notifications["subject_template"] == 'Workflow "{{state}}" for ${title} \u2014 r\u00e9sum\u00e9'
    zweb01 = _resources(catalogs["ZWEB01"])
    frontend = zweb01["File[C:\\Product\\web_frontend\\etc\\parameters.json]"]["parameters"]["content"]
    assert json.loads(frontend)["motd"].encode("utf-8") == HOSTILE.encode("utf-8")
    # and a component without the column has no such key
    assert "motd" not in json.loads(zweb01["File[C:\\Product\\api_gateway\\etc\\parameters.json]"]["parameters"]["content"])


def test_a_user_class_gets_its_data_by_parameter_lookup_and_the_component_tag(puppet_master, master_environment,
                                                                               tmp_path):
    """Components.Puppet Class names the user's own class: declared with the component's tag, fed by Hiera."""
    def use_class(rows):
        for row in rows:
            if row[0] == "zeo_server":
                row[4] = "acme::zeo"
        return rows
    inventory = load_inventory(write_example_variant(tmp_path / "class.xlsx", components=use_class))
    environment = master_environment("gentestclass")
    settings = resolve({**inventory.settings, "environment": environment, "domain": DOMAIN,
                        "repository": str(tmp_path / "none")})
    modules = read_modules(ROOT / "puppet" / "modules")
    modules.update({f"acme/{k}": v for k, v in read_modules(ROOT / "tests" / "fixtures" / "puppet" / "acme").items()})
    write(render(inventory, settings, None, modules), Path(puppet_master["codedir"]), find_puppet())
    catalog = compile_catalog(f"zdb01.{DOMAIN}", environment)
    resources = _resources(catalog)
    config = resources["File[C:\\Acme\\zeo_server-5.4.0.json]"]
    assert "zeo_server" in config["tags"] and "acme::zeo" in config["tags"]
    assert json.loads(config["parameters"]["content"]) == {
        **inventory.parameters_for("ZDB01", "zeo_server"),
        "artifact_url": f"http://127.0.0.1:8080/{environment}/zeo_server/5.4.0/zeo_server-5.4.0.zip"}
    # ordering across the two kinds: zodb_storage (the product type) before the class
    before = resources["Product::Component[zodb_storage]"]["parameters"]["before"]
    assert "Class[Acme::Zeo]" in ([before] if isinstance(before, str) else before)
    # exactly: only the class's resources carry the zeo_server tag among the node's components
    tagged = {ref for ref, r in resources.items() if "zeo_server" in r["tags"]}
    assert tagged == {"Class[Acme::Zeo]", "File[C:\\Acme\\zeo_server-5.4.0.json]"}
