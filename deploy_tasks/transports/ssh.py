"""Run commands on a Linux server of the inventory: over SSH (Fabric), or locally for Address ``local``.

A ``Shell`` is lazy, like Fabric's ``Connection``: building one touches no
network; the first command opens the connection. Connection settings follow
Fabric's conventions (ssh-agent, keys, ``~/.ssh/config``), plus the
controller settings ``ssh_config`` (an extra ssh_config file) and
``ssh_user``. Every paramiko/socket failure becomes a ``TransportError``
naming ``host:port`` and what to do about it.

Two kinds of command: ``run`` reads state and always runs (also in a dry
run); ``change`` alters the host and, in a dry run, is only printed.
"""

from __future__ import annotations

import getpass
import io
import os
import shlex
import shutil
import socket
import sys
import time
from typing import Callable, Optional

from ..errors import RemoteCommandError, TransportError
from .base import Result
from .. import redact as console  # add_secret, say: the registry sits below the transports

SUDO_PASSWORD_ENV = "DEPLOY_SUDO_PASSWORD"


class Shell:
    """Commands and files on one host; ``run`` reads, ``change`` acts (printed only in a dry run).

    Implements ``transports.base.Transport``. The POSIX parts live here and
    nowhere above: ``sudo -S ... sh -c`` when the user is not root, and
    uploads through ``mktemp`` + ``sudo mv`` then.
    """

    def __init__(self, name: str, address: str, *, ssh_config: str = "", user: str = "",
                 connect_timeout: int = 15, command_timeout: Optional[int] = None, dry_run: bool = False,
                 echo: Optional[Callable[[str], None]] = None):
        self.name = name  # the inventory hostname: what the user reads in messages
        self.address = address
        self.local = address == "local"
        self.ssh_config = ssh_config
        self.user_setting = user
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout  # longest any one command may run (command_timeout_s)
        self.dry_run = dry_run
        self.echo = echo or (lambda line: console.say(line))
        self._conn = None
        self._root: Optional[bool] = None
        self._sudo_password: Optional[str] = None

    # -- connection ------------------------------------------------------------
    @property
    def where(self) -> str:
        """``host (address:port)`` for messages."""
        if self.local:
            return f"{self.name} (local)"
        conn = self.connection()
        return f"{self.name} ({conn.host}:{conn.port})"

    def connection(self):
        """The Fabric ``Connection`` (or invoke ``Context`` for ``local``); not opened yet."""
        if self._conn is not None:
            return self._conn
        if self.local:
            from invoke import Config, Context

            self._conn = Context(Config(overrides={"run": {"warn": True, "hide": True, "in_stream": False}}))
            return self._conn
        from fabric import Config, Connection

        overrides = {"run": {"warn": True, "hide": True, "in_stream": False}, "load_ssh_configs": True}
        kwargs = {}
        if self.ssh_config:
            if not os.path.isfile(self.ssh_config):
                raise TransportError(self.name, f"ssh_config file {self.ssh_config} does not exist "
                                                "(setting ssh_config / INVOKE_DEPLOY_SSH_CONFIG)")
            kwargs["runtime_ssh_path"] = self.ssh_config
        config = Config(overrides=overrides, **kwargs)
        conn = Connection(self.address, user=self.user_setting or None, config=config,
                          connect_timeout=self.connect_timeout)
        # Fabric accepts any host key (AutoAddPolicy) and reads no known_hosts:
        # load the user's and the ssh_config's known hosts so a changed key is refused.
        client = conn.client
        try:
            client.load_system_host_keys()
        except (OSError, IOError):
            pass
        for path in _known_hosts_files(conn.ssh_config):
            if os.path.isfile(path):
                try:
                    client.load_host_keys(path)
                except (OSError, IOError):
                    pass
        # A host missing from known_hosts is refused, as OpenSSH does when it cannot ask
        # (its default is "ask"); StrictHostKeyChecking accept-new or no opts in to trusting it.
        import paramiko

        if str(conn.ssh_config.get("stricthostkeychecking", "")).lower() in ("accept-new", "no", "off"):
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self._conn = conn
        return conn

    def open(self) -> None:
        """Connect now (SSH); a failure becomes a TransportError naming host:port and what to do."""
        if self.local:
            return
        conn = self.connection()
        if conn.is_connected:
            return
        try:
            conn.open()
        except Exception as exc:  # paramiko and socket errors have no common base
            raise _transport_error(self.name, conn, exc) from None

    def close(self) -> None:
        if self._conn is not None and not self.local:
            try:
                self._conn.close()
            except Exception:
                pass

    @property
    def user(self) -> str:
        if self.local:
            return getpass.getuser()
        return self.connection().user

    @property
    def is_root(self) -> bool:
        if self._root is None:
            self._root = self._raw("id -u", sudo=False).stdout.strip() == "0"
        return self._root

    # -- commands ----------------------------------------------------------------
    def run(self, command: str, *, check: bool = True, hint: str = "", timeout: Optional[int] = None) -> Result:
        """Run a read-only command (also in a dry run). ``check``: a non-zero exit raises."""
        result = self._raw(command, sudo=not self.is_root, timeout=timeout)
        if check and not result.ok:
            raise RemoteCommandError(self.name, command, result.exited, result.output, hint)
        return result

    def test(self, command: str) -> bool:
        """A yes/no check: exit 0 = yes, 1 = no; anything else (127, 255...) is an error, never a no."""
        result = self._raw(command, sudo=not self.is_root)
        if result.exited in (0, 1):
            return result.exited == 0
        raise RemoteCommandError(self.name, command, result.exited, result.output,
                                 "a check could not run; it is not read as 'absent'")

    def change(self, command: str, *, check: bool = True, hint: str = "", timeout: Optional[int] = None) -> Result:
        """Run a command that alters the host; in a dry run print it instead."""
        if self.dry_run:
            self.echo(f"  [{self.name}] would run: {command}")
            return Result(command, 0, "", "")
        return self.run(command, check=check, hint=hint, timeout=timeout)

    def put_bytes(self, data: bytes, path: str) -> None:
        """Write ``data`` to the remote file ``path`` (callers make it atomic; see steps.remote.upload)."""
        if self.dry_run:
            self.echo(f"  [{self.name}] would upload {len(data)} bytes to {path}")
            return
        if self.local:
            with open(path, "wb") as fh:
                fh.write(data)
            return
        self._upload(lambda: io.BytesIO(data), path)

    def put_file(self, local_path: str, path: str) -> None:
        """Copy the controller's file ``local_path`` to ``path`` on the host, streamed (not read into memory)."""
        try:
            size = os.path.getsize(local_path)
        except OSError as exc:
            raise TransportError(self.name, f"cannot read {local_path} to upload it: {exc.strerror or exc}") from None
        if self.dry_run:
            self.echo(f"  [{self.name}] would upload {local_path} ({size} bytes) to {path}")
            return
        if self.local:
            shutil.copyfile(local_path, path)
            return
        self._upload(lambda: local_path, path)

    def _upload(self, source, path: str) -> None:
        """SFTP ``source()`` (a stream or a local path) to ``path``; not root: via a private temp file and sudo mv."""
        if self.is_root:
            self._put(source(), path)
            return
        made = self._raw("mktemp", sudo=False)  # the SSH user's own file, so SFTP can write it
        if not made.ok:
            raise RemoteCommandError(self.name, "mktemp", made.exited, made.output)
        tmp = made.stdout.strip()
        self._put(source(), tmp)
        self.run(f"mv -f {shlex.quote(tmp)} {shlex.quote(path)} && chown root:root {shlex.quote(path)}")

    def _put(self, stream, path: str) -> None:
        self.open()
        try:
            self.connection().put(stream, remote=path)
        except Exception as exc:
            raise TransportError(self.name, f"upload to {path} failed on {self.where}: {exc}") from None

    def _raw(self, command: str, sudo: bool, timeout: Optional[int] = None) -> Result:
        timeout = timeout or self.command_timeout
        self.open()
        conn = self.connection()
        started = time.monotonic()
        try:
            if sudo:
                password = self._password()
                wrapped = "sudo -S -p '' -H sh -c " + shlex.quote(command)
                r = conn.run(wrapped, warn=True, hide=True, in_stream=io.StringIO(password + "\n"), timeout=timeout)
            else:
                r = conn.run(command, warn=True, hide=True, in_stream=False, timeout=timeout)
        except Exception as exc:
            from invoke.exceptions import CommandTimedOut

            if isinstance(exc, CommandTimedOut):
                raise RemoteCommandError(self.name, command, -1, "", f"did not finish within {timeout} s") from None
            if self.local:
                raise
            raise _transport_error(self.name, conn, exc) from None
        elapsed = time.monotonic() - started
        if timeout and r.exited == -1 and elapsed >= timeout:
            # Invoke's timer killed the command, but its thread was still alive when the run ended, so
            # Invoke did not call it a timeout (Runner.timed_out asks whether the timer thread is alive):
            # no exit status after the whole timeout is the same timeout
            raise RemoteCommandError(self.name, command, -1, "", f"did not finish within {timeout} s")
        return Result(command, r.exited, r.stdout, r.stderr, elapsed)

    def _password(self) -> str:
        if self._sudo_password is None:
            password = os.environ.get(SUDO_PASSWORD_ENV)
            if password is None:
                if not sys.stdin.isatty():
                    raise TransportError(self.name, f"user {self.user} is not root and sudo needs a password: "
                                                    f"set {SUDO_PASSWORD_ENV} (or run interactively to be asked)")
                password = getpass.getpass(f"sudo password for {self.user}@{self.name}: ")
            console.add_secret(password)
            self._sudo_password = password
        return self._sudo_password


def _known_hosts_files(ssh_config) -> list:
    value = ssh_config.get("userknownhostsfile")
    if not value:
        return []
    if isinstance(value, str):
        value = value.split()
    return [os.path.expanduser(v) for v in value]


def _transport_error(name: str, conn, exc: BaseException) -> TransportError:
    """Map a paramiko/socket error into what the user should do."""
    import paramiko
    from paramiko.ssh_exception import NoValidConnectionsError

    where = f"{conn.host}:{conn.port}"
    if isinstance(exc, paramiko.BadHostKeyException):
        return TransportError(name, f"the SSH host key of {where} does not match the one in known_hosts "
                                    f"(possible man-in-the-middle, or the host was reinstalled): verify it, then "
                                    f"remove the old entry with: ssh-keygen -R '[{conn.host}]:{conn.port}'")
    if isinstance(exc, paramiko.AuthenticationException):
        return TransportError(name, f"{where} refused our SSH key for user {conn.user}: add the controller's "
                                    f"public key to ~{conn.user}/.ssh/authorized_keys there, load the right key "
                                    f"into ssh-agent, or name it with IdentityFile in ~/.ssh/config "
                                    f"(or the ssh_config setting); user from ssh_user / ssh_config")
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        known = (_known_hosts_files(conn.ssh_config) or ["~/.ssh/known_hosts"])[0]
        return TransportError(name, f"the SSH host key of {where} is not in known_hosts, so the host is not "
                                    f"trusted: check its fingerprint, then add it with: "
                                    f"ssh-keyscan -p {conn.port} {conn.host} >> {known} "
                                    f"(or set StrictHostKeyChecking accept-new for it in ssh_config)")
    if isinstance(exc, NoValidConnectionsError) or isinstance(exc, ConnectionRefusedError):
        return TransportError(name, f"cannot reach {where}: connection refused (nothing listens there): "
                                    f"check that sshd runs on the host and the Address in the Servers sheet "
                                    f"and the Port in ~/.ssh/config")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TransportError(name, f"cannot reach {where}: timed out after {conn.connect_timeout} s: "
                                    f"check the Address in the Servers sheet, routing and firewalls")
    if isinstance(exc, socket.gaierror):
        return TransportError(name, f"cannot resolve {conn.host}: fix the Address in the Servers sheet "
                                    f"or add it to DNS / /etc/hosts")
    if isinstance(exc, (OSError, EOFError, paramiko.SSHException)):
        return TransportError(name, f"SSH to {where} failed: {type(exc).__name__}: {exc}")
    return TransportError(name, f"SSH to {where} failed: {type(exc).__name__}: {exc}")


def shell_for(server, settings, dry_run: bool = False, echo=None) -> Shell:
    """A lazy Shell for an inventory server, from the resolved settings."""
    return Shell(server.hostname, server.address, ssh_config=getattr(settings, "ssh_config", "") or "",
                 user=getattr(settings, "ssh_user", "") or "",
                 command_timeout=getattr(settings, "command_timeout_s", None), dry_run=dry_run, echo=echo)
