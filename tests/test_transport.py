"""The transport interface: the SSH shell implements it, locally and over the real sshd, files included."""

from __future__ import annotations

import inspect
import os

import pytest

from deploy_tasks.errors import TransportError
from deploy_tasks.steps import remote
from deploy_tasks.transports.base import Result, Transport
from deploy_tasks.transports.ssh import Shell


def test_the_ssh_shell_implements_every_method_of_the_transport_protocol():
    shell = Shell("deploy01", "local")
    assert isinstance(shell, Transport)
    for name, member in inspect.getmembers(Transport, inspect.isfunction):
        if name.startswith("_"):
            continue
        want = list(inspect.signature(member).parameters)
        have = list(inspect.signature(getattr(Shell, name)).parameters)
        assert have == want, f"Shell.{name}{have} != Transport.{name}{want}"


def _files_round_trip(shell, tmp_path):
    local = tmp_path / "agent.msi"
    local.write_bytes(os.urandom(300_000))
    target = tmp_path / "placed" / "agent.msi"
    target.parent.mkdir()
    lines = []
    shell.echo = lines.append
    shell.dry_run = True
    assert remote.upload_file(shell, str(local), str(target))  # would change
    assert not target.exists() and any("would upload" in line for line in lines)
    shell.dry_run = False
    assert remote.upload_file(shell, str(local), str(target))
    assert target.read_bytes() == local.read_bytes() and oct(target.stat().st_mode & 0o777) == "0o644"
    assert not remote.upload_file(shell, str(local), str(target))  # same sha256: nothing sent
    result = shell.run(f"cat {target} | wc -c")
    assert isinstance(result, Result) and result.stdout.strip() == "300000" and result.duration > 0
    with pytest.raises(TransportError, match="cannot read .*no-such-file"):
        shell.put_file(str(tmp_path / "no-such-file"), str(target))


def test_put_file_on_a_local_server(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the local shell of a non-root user needs sudo with a password")
    shell = Shell("deploy01", "local")
    _files_round_trip(shell, tmp_path)


@pytest.mark.integration
def test_put_file_over_the_real_sshd(sshd, tmp_path):
    shell = Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config)
    try:
        _files_round_trip(shell, tmp_path)
    finally:
        shell.close()
