"""Host keys against the real sshd: a host missing from known_hosts is never trusted silently.

Without these, accepting any unknown host (paramiko's AutoAddPolicy, Fabric's
default) would pass the suite, and the tool would hand the master's keys and
sudo password to whatever answers on the master's address.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from deploy_tasks.errors import TransportError
from deploy_tasks.transports.ssh import Shell


def _config(tmp_path: Path, sshd, known_hosts: Path, strict: str | None) -> str:
    """An ssh_config for 127.0.0.1 with its own known_hosts; ``strict`` None leaves the option unset."""
    lines = ["Host 127.0.0.1", f"  Port {sshd.port}", f"  User {sshd.user}", f"  IdentityFile {sshd.key_file}",
             "  IdentitiesOnly yes", f"  UserKnownHostsFile {known_hosts}"]
    if strict is not None:
        lines.append(f"  StrictHostKeyChecking {strict}")
    path = tmp_path / "ssh_config"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _host_key_line(sshd) -> str:
    return Path(sshd.known_hosts).read_text()


@pytest.mark.parametrize("strict", ["yes", None, "ask"], ids=["strict-yes", "strict-unset", "strict-ask"])
@pytest.mark.integration
def test_a_host_missing_from_known_hosts_is_refused_with_how_to_add_it(sshd, tmp_path, strict):
    known = tmp_path / "known_hosts"
    known.write_text("")  # the host is not in it at all
    shell = Shell("deploy01", "127.0.0.1", ssh_config=_config(tmp_path, sshd, known, strict))
    try:
        with pytest.raises(TransportError) as err:
            shell.run("touch /tmp/deploy_tasks-should-not-run")
    finally:
        shell.close()
    message = str(err.value)
    assert message.startswith("deploy01: ")
    assert f"127.0.0.1:{sshd.port}" in message
    assert "not in known_hosts" in message
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1" in message
    assert str(known) in message  # which file to add it to
    assert known.read_text() == ""  # nothing was recorded on the user's behalf
    assert not (Path.home() / ".ssh" / "known_hosts").exists()


@pytest.mark.integration
def test_an_unknown_host_is_refused_before_any_command_runs(sshd, tmp_path):
    marker = f"/tmp/deploy_tasks-hostkey-{uuid.uuid4().hex}"
    known = tmp_path / "known_hosts"
    known.write_text("")
    shell = Shell("deploy01", "127.0.0.1", ssh_config=_config(tmp_path, sshd, known, None))
    with pytest.raises(TransportError):
        shell.change(f"touch {marker}")
    shell.close()
    trusted = Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config)
    try:
        assert not trusted.test(f"test -e {marker}")
    finally:
        trusted.run(f"rm -f {marker}")
        trusted.close()


@pytest.mark.parametrize("strict", [None, "yes"], ids=["strict-unset", "strict-yes"])
@pytest.mark.integration
def test_a_known_host_connects(sshd, tmp_path, strict):
    known = tmp_path / "known_hosts"
    known.write_text(_host_key_line(sshd))
    shell = Shell("deploy01", "127.0.0.1", ssh_config=_config(tmp_path, sshd, known, strict))
    try:
        assert shell.run("echo ok").stdout.strip() == "ok"
    finally:
        shell.close()


@pytest.mark.parametrize("strict", ["accept-new", "no", "off"])
@pytest.mark.integration
def test_the_user_can_opt_in_to_trusting_a_new_host(sshd, tmp_path, strict):
    known = tmp_path / "known_hosts"
    known.write_text("")
    shell = Shell("deploy01", "127.0.0.1", ssh_config=_config(tmp_path, sshd, known, strict))
    try:
        assert shell.run("echo ok").stdout.strip() == "ok"
    finally:
        shell.close()
    # trusted on first use, then remembered: OpenSSH's accept-new writes the key too
    host_key = _host_key_line(sshd).split()[2]
    assert host_key in known.read_text()


@pytest.mark.integration
def test_opting_in_to_new_hosts_still_refuses_a_changed_key(sshd, tmp_path):
    import subprocess

    other = tmp_path / "otherhost"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pub = (tmp_path / "otherhost.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    shell = Shell("deploy01", "127.0.0.1", ssh_config=_config(tmp_path, sshd, known, "accept-new"))
    try:
        with pytest.raises(TransportError) as err:
            shell.run("true")
    finally:
        shell.close()
    assert "does not match the one in known_hosts" in str(err.value)
