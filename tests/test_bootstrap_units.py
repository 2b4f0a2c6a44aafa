"""The decisions behind bootstrap and publish-config, as tables: no host, no context."""

from __future__ import annotations

import pytest

from deploy_tasks.errors import ConfigError, DeployError
from deploy_tasks.inventory.model import Server
from deploy_tasks.steps import publish, puppet_master, remote
from deploy_tasks.steps.puppet_master import DEBIAN
from deploy_tasks.tasks.bootstrap import parse_only

# What tests/support/services.py wrote before the master step existed (and what a
# master configured by hand typically looks like): the step must read it as done.
FIXTURE_CONF = """[main]

[server]
certname = deploy01.example.test
dns_alt_names = deploy01,deploy01.example.test,localhost,IP:127.0.0.1
autosign = false
"""


def master(address="local", hostname="deploy01"):
    return Server(hostname, address, "linux", ("puppet-master",))


class S:  # the few settings the renderers read
    domain = "example.test"
    puppet_autosign = "false"
    template_dir = ""


@pytest.mark.parametrize("address,expected", [
    ("local", ["deploy01", "deploy01.example.test", "localhost", "IP:127.0.0.1"]),
    ("127.0.0.1", ["deploy01", "deploy01.example.test", "localhost", "IP:127.0.0.1"]),
    ("10.1.2.3", ["deploy01", "deploy01.example.test", "IP:10.1.2.3"]),
    ("puppet.corp.example", ["deploy01", "deploy01.example.test", "puppet.corp.example"]),
])
def test_dns_alt_names_name_the_host_and_its_address(address, expected):
    assert puppet_master.dns_alt_names(master(address), "example.test") == expected


def test_rendered_puppet_conf_is_satisfied_by_the_fixture_config_and_by_itself():
    desired = puppet_master.puppet_conf(master(), S, DEBIAN)
    assert "certname = deploy01.example.test" in desired and "autosign = false" in desired
    assert puppet_master.conf_satisfied(desired, desired)
    assert puppet_master.conf_satisfied(FIXTURE_CONF, desired)  # environmentpath absent = Puppet's default
    reordered = FIXTURE_CONF.replace("deploy01,deploy01.example.test,localhost", "localhost,deploy01.example.test,deploy01")
    assert puppet_master.conf_satisfied(reordered, desired)


@pytest.mark.parametrize("change", [
    ("autosign = false", "autosign = true"),
    ("certname = deploy01.example.test", "certname = other.example.test"),
    (",IP:127.0.0.1", ""),
    ("[server]\n", "[server]\nenvironmentpath = /srv/envs\n"),
])
def test_puppet_conf_differences_are_seen(change):
    desired = puppet_master.puppet_conf(master(), S, DEBIAN)
    assert not puppet_master.conf_satisfied(FIXTURE_CONF.replace(*change), desired)


def test_missing_or_unreadable_puppet_conf_is_not_satisfied():
    desired = puppet_master.puppet_conf(master(), S, DEBIAN)
    assert not puppet_master.conf_satisfied(None, desired)
    assert not puppet_master.conf_satisfied("certname = x\n[[[", desired)


def test_webserver_conf_gets_tls12_only_once():
    debian = ("webserver: {\n    access-log-config: /etc/puppet/puppetserver/request-logging.xml\n"
              "    client-auth: want\n    ssl-host: 0.0.0.0\n    ssl-port: 8140\n}\n")
    once = puppet_master.webserver_conf(debian, DEBIAN)
    assert once.count("ssl-protocols: [TLSv1.2]") == 1 and once.rstrip().endswith("}")
    assert puppet_master.webserver_conf(once, DEBIAN) == once
    tls13 = once.replace("[TLSv1.2]", "[TLSv1.3, TLSv1.2]")
    assert puppet_master.webserver_conf(tls13, DEBIAN) == once
    with pytest.raises(ConfigError, match="closing }"):
        puppet_master.webserver_conf("webserver: {\n  ssl-port: 8140\n", DEBIAN)


@pytest.mark.parametrize("value,expected", [("512m-1g", ("512m", "1g")), ("2G", ("2g", "2g"))])
def test_heap(value, expected):
    assert puppet_master.parse_heap(value) == expected
    assert f"-Xms{expected[0]} -Xmx{expected[1]}" in puppet_master.start_command(DEBIAN, expected)


def test_bad_heap_is_an_error():
    with pytest.raises(ConfigError, match="512m-1g"):
        puppet_master.parse_heap("lots")


def test_start_command_is_the_debian_unit_s_java_line():
    cmd = puppet_master.start_command(DEBIAN, ("512m", "1g"))
    assert "runuser -u puppet -- java -Xms512m -Xmx1g" in cmd
    assert "-jar /usr/share/puppetserver/puppetserver.jar --config /etc/puppet/puppetserver/conf.d" in cmd
    assert cmd.endswith("echo $! > /run/puppetserver/puppetserver.pid; fi")
    assert "flock" in cmd and "9>&-" in cmd  # one start at a time; the server does not keep the lock


@pytest.mark.parametrize("text,expected", [
    ('ID=debian\nVERSION_ID="12"\n', ("debian", "12")),
    ('NAME="Rocky Linux"\nID="rocky"\nVERSION_ID="9.3"\n', ("rocky", "9.3")),
    ("ID=ubuntu\nVERSION_ID='22.04'\n", ("ubuntu", "22.04")),
])
def test_os_release(text, expected):
    values = remote.parse_os_release(text)
    assert (values["ID"], values["VERSION_ID"]) == expected


@pytest.mark.parametrize("family,version,tool", [("debian", "12", "apt"), ("rhel", "7", "yum"), ("rhel", "9.3", "dnf")])
def test_package_tool(family, version, tool):
    assert remote.Platform("x", version, family, "systemd").package_tool == tool


@pytest.mark.parametrize("only,parts", [
    (None, ["package-server", "puppet-master", "agents"]),
    ("puppet-master, package-server", ["package-server", "puppet-master"]),
    ("agents,package-server", ["package-server", "agents"]),
    ("Puppet-Master", ["puppet-master"]),
])
def test_only(only, parts):
    assert parse_only(only) == parts


def test_only_unknown_part_is_refused():
    with pytest.raises(DeployError, match="unknown part"):
        parse_only("agent")


def test_release_name_depends_on_content_only(tmp_path):
    env = tmp_path / "env"
    (env / "manifests").mkdir(parents=True)
    (env / "manifests" / "site.pp").write_text("node default {}\n")
    (env / "environment.conf").write_text("")
    a = publish.content_hash(publish.collect(str(env), None))
    assert a == publish.content_hash(publish.collect(str(env), None))
    (env / "manifests" / "site.pp").write_text("node default { }\n")
    assert publish.content_hash(publish.collect(str(env), None)) != a
    mods = tmp_path / "modules" / "product" / "manifests"
    mods.mkdir(parents=True)
    (mods / "init.pp").write_text("class product {}\n")
    files = publish.collect(str(env), str(tmp_path / "modules"))
    assert "modules/product/manifests/init.pp" in files


def test_publish_refuses_a_directory_that_is_not_an_environment(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a Puppet environment"):
        publish.collect(str(tmp_path), None)


def test_modules_the_environment_ships_win_over_the_product_modules(tmp_path):
    env = tmp_path / "env"
    (env / "modules" / "product" / "manifests").mkdir(parents=True)
    (env / "modules" / "product" / "manifests" / "init.pp").write_text("class product { } # generated copy\n")
    (env / "environment.conf").write_text("")
    mods = tmp_path / "modules" / "product" / "manifests"
    mods.mkdir(parents=True)
    (mods / "init.pp").write_text("class product {}\n")
    (mods / "extra.pp").write_text("class product::extra {}\n")
    files = publish.collect(str(env), str(tmp_path / "modules"))
    assert files["modules/product/manifests/init.pp"].endswith(b"# generated copy\n")
    assert "modules/product/manifests/extra.pp" not in files
