"""The Shell contract (read vs change, yes/no checks, uploads, timeouts, sudo, error messages).

Against the real sshd on 127.0.0.1:2222 where a connection matters; the
``local`` address (invoke's Context) for the sudo wrapper, with a stand-in
``sudo`` on PATH that records what it was given (no sudo is installed here
and the test user is root). The mapping of paramiko/socket errors to what the
user should do is a pure function, tested with the real exception types.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest
from paramiko.ssh_exception import NoValidConnectionsError

from deploy_tasks import redact
from deploy_tasks.errors import RemoteCommandError, TransportError
from deploy_tasks.transports import ssh
from deploy_tasks.transports.ssh import Shell, shell_for


@pytest.fixture
def remote(sshd):
    shell = Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config, echo=lambda line: None)
    yield shell
    shell.close()


@pytest.mark.integration
def test_where_names_the_host_and_its_address(remote, sshd):
    assert remote.where == f"deploy01 (127.0.0.1:{sshd.port})"
    assert Shell("ctl", "local").where == "ctl (local)"
    assert remote.user == "root" and remote.is_root


@pytest.mark.integration
def test_run_returns_output_and_a_failure_names_host_command_exit_and_hint(remote, capfd):
    remote.open()
    capfd.readouterr()
    result = remote.run("echo out; echo err >&2")
    assert (result.ok, result.exited, result.stdout, result.stderr.strip()) == (True, 0, "out\n", "err")
    assert capfd.readouterr() == ("", "")  # captured, never echoed unredacted to the console
    assert 0 < result.duration < 60
    assert remote.run("exit 3", check=False).exited == 3
    with pytest.raises(RemoteCommandError) as err:
        remote.run("exit 7")
    assert str(err.value) == "deploy01: command failed with exit code 7: exit 7"  # no output, no hint: no more lines
    with pytest.raises(RemoteCommandError) as err:
        remote.run("echo broken >&2; exit 4", hint="check the disk")
    assert str(err.value) == "deploy01: command failed with exit code 4: echo broken >&2; exit 4\n    broken\n  hint: check the disk"


@pytest.mark.integration
def test_a_yes_no_check_reads_0_and_1_and_refuses_anything_else(remote):
    assert remote.test("true") is True
    assert remote.test("false") is False
    with pytest.raises(RemoteCommandError, match="exit code 127.*\n.*\n  hint: a check could not run; it is not read as 'absent'"):
        remote.test("no-such-command-here")
    with pytest.raises(RemoteCommandError) as err:
        remote.test("exit 2")
    assert str(err.value) == ("deploy01: command failed with exit code 2: exit 2\n"
                              "  hint: a check could not run; it is not read as 'absent'")


@pytest.mark.integration
def test_a_change_runs_unless_dry_and_a_dry_run_only_prints_it(remote, sshd):
    path = f"/tmp/deploy_tasks-shell-{uuid.uuid4().hex}"
    lines = []
    dry = Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config, dry_run=True, echo=lines.append)
    try:
        result = dry.change(f"touch {path}")
        assert (result.command, result.exited, result.stdout, result.stderr) == (f"touch {path}", 0, "", "")
        dry.put_bytes(b"12345", path)
        assert lines == [f"  [deploy01] would run: touch {path}", f"  [deploy01] would upload 5 bytes to {path}"]
        assert not remote.test(f"test -e {path}")
        assert dry.test("true")  # reads still run in a dry run
        with pytest.raises(RemoteCommandError) as err:
            remote.change("exit 5", hint="free some space")
        assert str(err.value) == "deploy01: command failed with exit code 5: exit 5\n  hint: free some space"
        with pytest.raises(RemoteCommandError) as err:
            remote.change("exit 6")
        assert str(err.value) == "deploy01: command failed with exit code 6: exit 6"  # no hint line
        assert remote.change("exit 5", check=False).exited == 5
        with pytest.raises(RemoteCommandError, match="did not finish within 1 s"):
            remote.change("sleep 5", timeout=1)
        remote.change(f"touch {path}")
        assert remote.test(f"test -e {path}")
    finally:
        remote.run(f"rm -f {path}")
        dry.close()


@pytest.mark.integration
def test_put_bytes_writes_the_exact_bytes(remote, tmp_path):
    path = f"/tmp/deploy_tasks-shell-{uuid.uuid4().hex}"
    data = bytes(range(256)) * 3
    try:
        remote.put_bytes(data, path)
        assert remote.run(f"od -An -v -tx1 {path} | tr -d ' \\n'").stdout == data.hex()
    finally:
        remote.run(f"rm -f {path}")
    local = Shell("ctl", "local")
    target = tmp_path / "f.bin"
    local.put_bytes(data, str(target))
    assert target.read_bytes() == data


@pytest.mark.integration
def test_an_upload_that_fails_names_the_host_and_the_path(remote):
    with pytest.raises(TransportError) as err:
        remote.put_bytes(b"x", "/nonexistent-dir/f")
    assert str(err.value).startswith(f"deploy01: upload to /nonexistent-dir/f failed on {remote.where}: ")


@pytest.mark.integration
def test_a_command_that_runs_too_long_is_stopped_and_named(remote, sshd):
    with pytest.raises(RemoteCommandError) as err:
        remote.run("sleep 5", timeout=1)
    assert str(err.value) == "deploy01: command failed with exit code -1: sleep 5\n  hint: did not finish within 1 s"
    slow = Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config, command_timeout=1)
    try:
        with pytest.raises(RemoteCommandError, match="did not finish within 1 s"):
            slow.run("sleep 5")
        assert slow.run("sleep 0.1; echo ok", timeout=5).stdout == "ok\n"  # a per-call timeout wins
    finally:
        slow.close()


@pytest.mark.integration
def test_a_connection_lost_between_commands_that_cannot_come_back_is_named(sshd):
    shell = Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config)
    try:
        assert shell.run("true").ok
        conn = shell.connection()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]  # nothing listens there once closed
        conn.port = dead
        conn.client.get_transport().close()  # the link drops; reconnecting finds nothing
        with pytest.raises(TransportError) as err:
            shell.run("true")
        assert str(err.value).startswith(f"deploy01: cannot reach 127.0.0.1:{dead}: connection refused")
    finally:
        shell.close()


@pytest.fixture
def opened(sshd):
    """A root shell connected to the test sshd, for tests that stand in for its Connection's run."""
    shell = Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config)
    try:
        shell.open()
        shell._root = True
        yield shell
    finally:
        shell.close()


@pytest.mark.integration
def test_a_connection_that_breaks_during_a_command_is_named(opened, sshd, monkeypatch):
    # the link breaking mid-command cannot be timed on a real sshd: the Connection's run stands in
    def broken(*args, **kwargs):
        raise OSError("Socket is closed")

    monkeypatch.setattr(opened.connection(), "run", broken)
    with pytest.raises(TransportError) as err:
        opened.run("true")
    assert str(err.value) == f"deploy01: SSH to 127.0.0.1:{sshd.port} failed: OSError: Socket is closed"


@pytest.mark.integration
def test_a_timeout_invoke_did_not_call_one_is_still_named(opened, monkeypatch):
    # Invoke decides "timed out" by whether its timer thread is still alive when the run ends: a race it
    # sometimes loses (the CI run of 2026-11-30 met it), and the run then ends with no exit status (-1)
    def killed_by_the_timer(*args, timeout=None, **kwargs):
        time.sleep(timeout)
        return SimpleNamespace(exited=-1, stdout="", stderr="")

    monkeypatch.setattr(opened.connection(), "run", killed_by_the_timer)
    with pytest.raises(RemoteCommandError) as err:
        opened.run("sleep 5", timeout=1)
    assert str(err.value) == "deploy01: command failed with exit code -1: sleep 5\n  hint: did not finish within 1 s"


@pytest.mark.integration
def test_without_the_ssh_config_setting_the_user_s_own_ssh_config_is_read(sshd):
    ssh_dir = Path.home() / ".ssh"  # HOME is a fresh directory in every test
    ssh_dir.mkdir(exist_ok=True)
    (ssh_dir / "config").write_text(Path(sshd.ssh_config).read_text())
    shell = Shell("deploy01", "127.0.0.1")
    try:
        assert shell.run("echo ok").stdout == "ok\n"
        assert shell.where == f"deploy01 (127.0.0.1:{sshd.port})"
    finally:
        shell.close()


@pytest.mark.integration
def test_connect_timeout_reaches_the_connection(sshd):
    assert Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config, connect_timeout=3).connection().connect_timeout == 3
    assert Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config).connection().connect_timeout == 15


def test_a_dry_run_without_an_echo_prints_to_the_console(capsys):
    Shell("ctl", "local", dry_run=True).change("rm -rf /srv/x")
    assert capsys.readouterr().out == "  [ctl] would run: rm -rf /srv/x\n"


def test_a_missing_ssh_config_file_is_named():
    with pytest.raises(TransportError) as err:
        Shell("deploy01", "127.0.0.1", ssh_config="/nonexistent/ssh_config").run("true")
    assert str(err.value) == ("deploy01: ssh_config file /nonexistent/ssh_config does not exist "
                              "(setting ssh_config / INVOKE_DEPLOY_SSH_CONFIG)")


@pytest.mark.integration
def test_the_connection_is_lazy_and_reused(sshd):
    shell = Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config)
    conn = shell.connection()
    assert not conn.is_connected and shell.connection() is conn
    shell.open()
    assert conn.is_connected
    shell.open()  # already open: nothing happens
    assert shell.connection() is conn
    shell.close()
    assert not conn.is_connected
    shell.close()  # closing twice is fine
    Shell("never", "127.0.0.1").close()  # never opened


@pytest.mark.integration
def test_ssh_user_and_ssh_config_come_from_the_settings(sshd):
    server = SimpleNamespace(hostname="deploy01", address="127.0.0.1")
    settings = SimpleNamespace(ssh_config=sshd.ssh_config, ssh_user="admin", command_timeout_s=77)
    shell = shell_for(server, settings, dry_run=True, echo=print)
    assert (shell.name, shell.address, shell.ssh_config, shell.user_setting, shell.command_timeout, shell.dry_run,
            shell.echo) == ("deploy01", "127.0.0.1", sshd.ssh_config, "admin", 77, True, print)
    assert shell.user == "admin" and not shell.local
    bare = shell_for(server, SimpleNamespace())
    assert (bare.ssh_config, bare.user_setting, bare.command_timeout, bare.dry_run) == ("", "", None, False)
    assert Shell("x", "127.0.0.1", ssh_config=sshd.ssh_config).user == "root"  # from the ssh_config's User


# -- sudo, through the local Shell and a stand-in sudo -------------------------------------------

FAKE_SUDO = """#!/bin/sh
# records its arguments and the password line on stdin, then runs what follows "sh -c"
printf '%s\\n' "$@" > "$SUDO_LOG"
IFS= read -r password
printf '%s' "$password" > "$SUDO_LOG.password"
while [ "$1" != "sh" ]; do shift; done
exec "$@"
"""


@pytest.fixture
def sudo(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text(FAKE_SUDO)
    (bin_dir / "sudo").chmod(0o755)
    log = tmp_path / "sudo.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    monkeypatch.setenv("SUDO_LOG", str(log))
    return log


def test_a_non_root_user_runs_commands_through_sudo_with_the_password_on_stdin(sudo, monkeypatch, capfd):
    password = f"pw-{uuid.uuid4().hex}"  # unique: the registry of secrets is process-wide
    monkeypatch.setenv(ssh.SUDO_PASSWORD_ENV, password)
    shell = Shell("ctl", "local")
    shell._root = False  # the login user is not root (here it is: the tests run as root)
    capfd.readouterr()
    result = shell.run("printf '%s' \"a b'c\"; echo to-stderr >&2")
    assert result.stdout == "a b'c" and result.stderr == "to-stderr\n"
    assert capfd.readouterr() == ("", "")  # captured, never echoed unredacted to the console
    assert sudo.read_text().splitlines()[:6] == ["-S", "-p", "", "-H", "sh", "-c"]
    assert Path(f"{sudo}.password").read_text() == password
    assert redact.redact(f"pw is {password}") == "pw is ********"
    sudo.unlink()
    assert shell.test("exit 1") is False  # checks go through sudo too
    assert sudo.read_text().splitlines()[-1] == "exit 1"
    with pytest.raises(RemoteCommandError, match="did not finish within 1 s"):
        shell.run("sleep 5", timeout=1)


def test_without_a_sudo_password_and_no_terminal_says_what_to_set(monkeypatch):
    monkeypatch.delenv(ssh.SUDO_PASSWORD_ENV, raising=False)
    monkeypatch.setattr("sys.stdin", SimpleNamespace(isatty=lambda: False))
    shell = Shell("ctl", "local")
    shell._root = False
    with pytest.raises(TransportError) as err:
        shell.run("true")
    assert str(err.value) == (f"ctl: user {shell.user} is not root and sudo needs a password: "
                              f"set {ssh.SUDO_PASSWORD_ENV} (or run interactively to be asked)")


def test_the_sudo_password_is_asked_once_when_interactive(monkeypatch):
    monkeypatch.delenv(ssh.SUDO_PASSWORD_ENV, raising=False)
    monkeypatch.setattr("sys.stdin", SimpleNamespace(isatty=lambda: True))
    asked = []
    typed = f"typed-{uuid.uuid4().hex}"
    monkeypatch.setattr(ssh.getpass, "getpass", lambda prompt: asked.append(prompt) or typed)
    shell = Shell("ctl", "local")
    assert shell._password() == typed and shell._password() == typed
    assert asked == [f"sudo password for {shell.user}@ctl: "]
    assert redact.redact(typed) == "********"


@pytest.mark.integration
def test_a_non_root_upload_goes_to_a_private_temp_file_then_sudo_moves_it(remote, monkeypatch):
    # the upload is real (SFTP into the SSH user's own mktemp file); the privileged move is refused as a
    # sudo without rights would refuse it (the test sshd has no sudo, and a password written to a command
    # that already exited races with its exit), which shows the command and leaves the target alone
    monkeypatch.setenv(ssh.SUDO_PASSWORD_ENV, "pw-upload")
    path = f"/tmp/deploy_tasks-shell-{uuid.uuid4().hex}"
    real_raw = remote._raw

    def raw(command, sudo, timeout=None):
        if sudo:
            return ssh.Result(command, 1, "", "sudo: 1 incorrect password attempt")
        return real_raw(command, sudo, timeout)

    monkeypatch.setattr(remote, "_raw", raw)
    remote._root = False
    with pytest.raises(RemoteCommandError) as err:
        remote.put_bytes(b"payload", path)
    remote._root = True
    monkeypatch.setattr(remote, "_raw", real_raw)
    assert "sudo: 1 incorrect password attempt" in str(err.value)
    command = err.value.command
    assert command.startswith("mv -f /tmp/") and command.endswith(f" {path} && chown root:root {path}")
    temp = command.split()[2]
    try:
        assert remote.run(f"cat {temp}").stdout == "payload"  # the SSH user's own file, written over SFTP
        assert not remote.test(f"test -e {path}")
    finally:
        remote.run(f"rm -f {temp}")


def test_a_temp_file_that_cannot_be_made_is_a_clear_error(monkeypatch):
    # mktemp failing (a full /tmp) cannot be arranged on the shared sshd: the command runner stands in
    shell = Shell("deploy01", "127.0.0.1")
    shell._root = False
    full = "mktemp: failed to create file via template '/tmp/tmp.XXXXXXXXXX': No space left on device"
    monkeypatch.setattr(shell, "_raw", lambda command, sudo, timeout=None: ssh.Result(command, 1, "", full))
    with pytest.raises(RemoteCommandError) as err:
        shell.put_bytes(b"x", "/etc/x")
    assert str(err.value) == f"deploy01: command failed with exit code 1: mktemp\n    {full}"


# -- paramiko/socket errors -> what to do ------------------------------------------------------

CONN = SimpleNamespace(host="10.1.2.3", port=2200, user="deployer", connect_timeout=9, ssh_config={})


@pytest.mark.parametrize("exc, text", [
    (paramiko.BadHostKeyException("h", paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)),
     "the SSH host key of 10.1.2.3:2200 does not match the one in known_hosts (possible man-in-the-middle, or the "
     "host was reinstalled): verify it, then remove the old entry with: ssh-keygen -R '[10.1.2.3]:2200'"),
    (paramiko.AuthenticationException("no"),
     "10.1.2.3:2200 refused our SSH key for user deployer: add the controller's public key to "
     "~deployer/.ssh/authorized_keys there, load the right key into ssh-agent, or name it with IdentityFile in "
     "~/.ssh/config (or the ssh_config setting); user from ssh_user / ssh_config"),
    (paramiko.SSHException("Server '[10.1.2.3]:2200' not found in known_hosts"),
     "the SSH host key of 10.1.2.3:2200 is not in known_hosts, so the host is not trusted: check its fingerprint, "
     "then add it with: ssh-keyscan -p 2200 10.1.2.3 >> ~/.ssh/known_hosts "
     "(or set StrictHostKeyChecking accept-new for it in ssh_config)"),
    (NoValidConnectionsError({("10.1.2.3", 2200): ConnectionRefusedError()}),
     "cannot reach 10.1.2.3:2200: connection refused (nothing listens there): check that sshd runs on the host and "
     "the Address in the Servers sheet and the Port in ~/.ssh/config"),
    (ConnectionRefusedError(),
     "cannot reach 10.1.2.3:2200: connection refused (nothing listens there): check that sshd runs on the host and "
     "the Address in the Servers sheet and the Port in ~/.ssh/config"),
    (socket.timeout(), "cannot reach 10.1.2.3:2200: timed out after 9 s: check the Address in the Servers sheet, "
                       "routing and firewalls"),
    (TimeoutError(), "cannot reach 10.1.2.3:2200: timed out after 9 s: check the Address in the Servers sheet, "
                     "routing and firewalls"),
    (socket.gaierror(-2, "Name or service not known"),
     "cannot resolve 10.1.2.3: fix the Address in the Servers sheet or add it to DNS / /etc/hosts"),
    (EOFError("eof"), "SSH to 10.1.2.3:2200 failed: EOFError: eof"),
    (paramiko.SSHException("Error reading SSH protocol banner"),
     "SSH to 10.1.2.3:2200 failed: SSHException: Error reading SSH protocol banner"),
    (ValueError("odd"), "SSH to 10.1.2.3:2200 failed: ValueError: odd"),
])
def test_connection_errors_say_where_and_what_to_do(exc, text):
    err = ssh._transport_error("deploy01", CONN, exc)
    assert isinstance(err, TransportError)
    assert str(err) == f"deploy01: {text}"


def test_an_unknown_host_names_the_known_hosts_file_of_the_ssh_config():
    conn = SimpleNamespace(host="h", port=22, user="u", connect_timeout=1,
                           ssh_config={"userknownhostsfile": "~/kh /etc/other"})
    err = ssh._transport_error("m", conn, paramiko.SSHException("Server 'h' not found in known_hosts"))
    assert f"ssh-keyscan -p 22 h >> {Path.home()}/kh " in str(err)
    assert ssh._known_hosts_files({"userknownhostsfile": ["/a", "~/b"]}) == ["/a", f"{Path.home()}/b"]
    assert ssh._known_hosts_files({}) == []
