"""The deploy scheduler's small rules without a fleet: step timeouts from the workbook, records, bad options."""

from __future__ import annotations

import pytest

from deploy_tasks.errors import ConfigError
from pathlib import Path

from deploy_tasks.inventory import load_inventory
from deploy_tasks.plan import make_plan
from deploy_tasks.runner.deploy import Deployment, Step, StepRecord, plan_steps


def test_a_step_times_out_after_its_components_timeout_else_the_default():
    inventory = load_inventory(Path(__file__).resolve().parent.parent / "inventory" / "example.xlsx")
    steps = plan_steps(inventory, make_plan(inventory), default_timeout=77.0)
    for step in steps:
        own = inventory.component(step.component).timeout_s
        assert step.timeout == float(own or 77.0)
    assert any(inventory.component(s.component).timeout_s for s in steps)  # the example sets some


def test_a_record_rounds_its_seconds():
    record = StepRecord("H1", "a", 1, seconds=1.23456)
    assert record.state_entry()["seconds"] == 1.235


def test_an_unknown_schedule_is_refused_naming_the_choices():
    with pytest.raises(ConfigError) as err:
        Deployment([Step("H1", "a", 1)], lambda h: None, release=lambda t: None, schedule="fast")
    assert str(err.value) == "--schedule fast: choose waves or dag"
