"""Dependency groups and cycles on plain graphs (table-driven)."""

import pytest

from deploy_tasks.inventory.graph import dependency_groups, find_cycles

CASES = [
    ({"a": []}, {"a": 1}),
    ({"b": ["a"], "a": []}, {"a": 1, "b": 2}),
    # listed in reverse dependency order, each depending on all before it
    ({"d": ["a", "b", "c"], "c": ["a", "b"], "b": ["a"], "a": []}, {"a": 1, "b": 2, "c": 3, "d": 4}),
    ({"x": ["unknown"], "y": ["x"]}, {"x": 1, "y": 2}),
    ({"top": ["l", "r"], "l": ["base"], "r": ["mid"], "mid": ["base"], "base": []},
     {"base": 1, "l": 2, "mid": 2, "r": 3, "top": 4}),
]


@pytest.mark.parametrize("graph, expected", CASES)
def test_groups(graph, expected):
    assert dependency_groups(graph) == expected


def test_wide_reversed_dag_of_hundreds():
    graph = {f"c{i}": [f"c{j}" for j in range(i)] for i in reversed(range(200))}
    groups = dependency_groups(graph)
    assert groups == {f"c{i}": i + 1 for i in range(200)}


def test_cycle_is_found_and_groups_refuse_it():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": []}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    with pytest.raises(ValueError):
        dependency_groups(graph)
