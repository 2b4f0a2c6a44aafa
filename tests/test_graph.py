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


def test_a_cycle_declared_twice_is_reported_once():
    # "a, a" in Depends On walks the same back edge twice
    assert find_cycles({"a": ["b"], "b": ["a", "a"]}) == [["a", "b", "a"]]


def test_every_separate_cycle_is_reported():
    graph = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"], "e": []}
    assert find_cycles(graph) == [["a", "b", "a"], ["c", "d", "c"]]


def test_cycles_after_an_already_visited_root_are_still_found():
    # "b" is finished from "a" before it comes up as a root; "c" and "d" come after it
    assert find_cycles({"a": ["b"], "b": [], "c": ["d"], "d": ["c"]}) == [["c", "d", "c"]]


def test_an_unknown_dependency_does_not_hide_the_ones_after_it():
    assert find_cycles({"a": ["0-unknown", "b"], "b": ["a"]}) == [["a", "b", "a"]]
    assert dependency_groups({"a": ["0-unknown", "b"], "b": []}) == {"a": 2, "b": 1}


def test_a_graph_without_cycles_has_none():
    assert find_cycles({"top": ["l", "r"], "l": ["base"], "r": ["base"], "base": []}) == []


def test_groups_refuse_a_cycle_that_does_not_pass_through_the_first_name():
    with pytest.raises(ValueError, match="dependency cycle through"):
        dependency_groups({"r": ["a"], "a": ["b"], "b": ["a"]})
