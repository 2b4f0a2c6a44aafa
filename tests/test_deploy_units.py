"""The Puppet run of a deploy step, read without a host: its command line and how its output is attributed."""

from __future__ import annotations

from deploy_tasks.steps.deploy import puppet_argv, puppet_command


def test_the_run_carries_its_components_as_lower_case_tags():
    assert puppet_argv(["Tomcat", "nginx"]) == ["puppet", "agent", "--test", "--detailed-exitcodes", "--tags",
                                                "tomcat,nginx"]
    assert puppet_command(["A"]) == "puppet agent --test --detailed-exitcodes --tags a"
