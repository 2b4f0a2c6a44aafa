"""The committed example workbooks: what a newcomer validates and plans first."""

from deploy_tasks.inventory import load_inventory
from deploy_tasks.inventory.template import example_sheets
from deploy_tasks.plan import make_plan


def test_example_formats_load_to_the_same_inventory(example_xlsx, example_xls):
    a = load_inventory(example_xlsx)
    b = load_inventory(example_xls)
    assert a.servers == b.servers
    assert a.components == b.components
    assert [(m.hostname, m.component, dict(m.params)) for m in a.mapping] == \
           [(m.hostname, m.component, dict(m.params)) for m in b.mapping]
    assert a.parameters == b.parameters
    assert dict(a.settings) == dict(b.settings)


def test_example_shape(example_xlsx):
    inv = load_inventory(example_xlsx)
    assert len(inv.components) == 34
    assert len(inv.windows_servers) == 6
    linux = [s for s in inv.servers if not s.is_windows]
    assert len(linux) == 1 and set(linux[0].roles) == {"puppet-master", "package-server"}
    plan = make_plan(inv)
    assert len(plan.waves) >= 4
    # a version typed as text survives: 1.10 is not 1.1
    assert inv.component("log_shipper").version == "1.10"
    assert inv.warnings == ()


def test_example_files_match_the_code_that_writes_them(example_xlsx, tmp_path):
    from deploy_tasks.inventory.template import write_example

    fresh = load_inventory(write_example(tmp_path / "example.xlsx"))
    committed = load_inventory(example_xlsx)
    assert fresh.components == committed.components
    assert fresh.servers == committed.servers
    assert len(example_sheets()["Components"][1]) == 34
