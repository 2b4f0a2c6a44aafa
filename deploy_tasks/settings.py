"""Settings: every key, its type, default and meaning, in one table.

Precedence is Invoke's, with the workbook's ``Settings`` sheet slotted in just
above the declared defaults:

    task flag > INVOKE_DEPLOY_* env var > invoke.yaml (deploy:) > Settings sheet > defaults

Every key below is declared in ``ns.configure`` (Invoke ignores env vars for
undeclared keys). Keys marked ``workbook=True`` may also appear in the
``Settings`` sheet; any other key there is an error. Secrets never live here:
the WinRM credentials come from ``DEPLOY_WINRM_USER`` /
``DEPLOY_WINRM_PASSWORD`` or a prompt.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from .errors import ConfigError
from .names import closest, file_name_problem, is_hostname

_ENV_NAME = re.compile(r"^[a-z0-9_]+$")
#: a Java heap: one size (2g) or min-max (512m-1g); the Puppet master step reads it with this pattern too
HEAP_SIZE = re.compile(r"^(\d+[kmgKMG])(?:-(\d+[kmgKMG]))?$")


def heap_size_error(value: Any) -> Optional[str]:
    return None if HEAP_SIZE.match(str(value).strip()) else "must be a heap size such as 512m-1g (min-max) or 2g"


@dataclass(frozen=True)
class Setting:
    """The declaration of one setting."""

    name: str
    kind: str  # "str", "int", "choice", "bool"
    default: Any
    doc: str
    workbook: bool = True
    path: bool = False  # a path on the controller: never a workbook key (the workbook is untrusted)
    choices: Sequence[str] = ()
    minimum: Optional[int] = None
    maximum: Optional[int] = None
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns an error text or None

    def coerce(self, value: Any) -> Any:
        """Return ``value`` as this setting's type, or raise ValueError with a readable reason."""
        if isinstance(value, (list, tuple, dict, set)):
            kind = "a mapping" if isinstance(value, dict) else "a list"
            raise ValueError(f"is {kind}; a setting takes one value")
        if value is None or (isinstance(value, str) and value.strip() == ""):
            if self.kind == "str":
                return self.default if self.default is not None else ""
            return self.default
        if self.kind == "int":
            value = _to_int(value)
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"must be at least {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"must be at most {self.maximum}")
        elif self.kind == "bool":
            value = _to_bool(value)
        elif self.kind == "choice":
            text = str(value).strip().lower()
            if text not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}")
            value = text
        else:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            value = str(value).strip()
        if self.check is not None:
            reason = self.check(value)
            if reason:
                raise ValueError(reason)
        return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a whole number, not true/false")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ValueError(f"must be a whole number, not {value!r}")
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"must be a whole number, not {text!r}") from None
        if number.is_integer():
            return int(number)
        raise ValueError(f"must be a whole number, not {text!r}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"must be true or false, not {value!r}")


def _puppet_environment(value: str) -> Optional[str]:
    if not _ENV_NAME.match(value) or value in ("main", "master", "agent", "user"):
        return "must be a Puppet environment name: lowercase letters, digits and _ (not main, master, agent or user)"
    return None


def _msi_name(value: str) -> Optional[str]:
    if not value:
        return None
    reason = file_name_problem(value)
    if reason:
        return f"must name the agent MSI inside the release: {reason}"
    if not value.lower().endswith(".msi"):
        return "must be the file name of an .msi inside the release, such as puppet-agent-7.23.0-x64.msi"
    return None


def _domain(value: str) -> Optional[str]:
    if value and not is_hostname(value):
        return "must be a DNS domain such as corp.example.com"
    return None


SETTINGS: tuple[Setting, ...] = (
    # -- workbook keys (the Settings sheet) ---------------------------------
    Setting("environment", "str", "production", "Puppet environment the nodes use and the generator writes.", check=_puppet_environment),
    Setting("domain", "str", "", "DNS domain appended to a hostname without a dot to form its Puppet certname.", check=_domain),
    Setting("package_port", "int", 8080, "TCP port nginx serves the package repository on.", minimum=1, maximum=65535),
    Setting("puppet_agent_msi_name", "str", "", "File name of the Puppet agent MSI inside the release (artifact_source), placed on the package server for the Windows nodes; blank: none.", check=_msi_name),
    Setting("puppet_agent_version", "str", "7.23.0", "Version of that agent MSI (agents before 7 take PUPPET_MASTER_SERVER instead of PUPPET_SERVER)."),
    Setting("winrm_transport", "choice", "ntlm", "WinRM authentication: ntlm, basic, kerberos, credssp or certificate.", choices=("ntlm", "basic", "kerberos", "credssp", "certificate")),
    Setting("winrm_scheme", "choice", "https", "WinRM over https (5986, certificate validated) or http (5985, NTLM message encryption).", choices=("https", "http")),
    Setting("winrm_port", "int", 0, "WinRM port when a server's WinRM Port cell is blank; 0 means 5986 for https, 5985 for http.", minimum=0, maximum=65535),
    Setting("winrm_cert_validation", "choice", "validate", "Validate the nodes' WinRM certificates (validate) or not (ignore).", choices=("validate", "ignore")),
    Setting("winrm_operation_timeout_s", "int", 20, "WS-Man OperationTimeout: longest one WinRM request may block on the node (a long command is polled again), in seconds; must be below winrm_read_timeout_s.", workbook=False, minimum=1, maximum=3600),
    Setting("winrm_read_timeout_s", "int", 30, "Longest the controller waits for any WinRM HTTP reply (connect and read), in seconds; must exceed winrm_operation_timeout_s.", workbook=False, minimum=2, maximum=3660),
    Setting("winrm_allow_unencrypted", "bool", False, "Allow basic authentication over plain http: password and commands travel in clear (a warning is printed on every run).", workbook=False),
    Setting("winrm_cert_pem", "str", "", "Client certificate (PEM) for winrm_transport certificate.", workbook=False, path=True),
    Setting("winrm_cert_key_pem", "str", "", "Private key (PEM) of that client certificate.", workbook=False, path=True),
    Setting("winrm_put_max_bytes", "int", 65536, "Largest file pushed over WinRM (base64 through the shell: slow); larger files are served by the package server.", workbook=False, minimum=1, maximum=1048576),
    Setting("max_parallel", "int", 10, "Most hosts worked on at once.", minimum=1, maximum=1000),
    Setting("command_timeout_s", "int", 1800, "Longest a single remote command may run, in seconds.", minimum=1),
    Setting("retries", "int", 2, "Retries of a step that failed for a transient reason (1618, dropped connection).", minimum=0, maximum=20),
    # -- controller-only keys (invoke.yaml, env, flags; not in the workbook) --
    Setting("inventory", "str", "inventory/example.xlsx", "The inventory workbook (.xlsx or .xls).", workbook=False, path=True),
    # paths on the controller: the workbook is edited by anyone, so it never names one
    Setting("artifact_source", "str", "build/release", "Directory or bundle (zip, tar, tar.gz) on the controller holding the release's component artifacts.", workbook=False, path=True),
    Setting("puppet_agent_msi", "str", "", "Path of the Puppet agent MSI on the controller; blank: puppet_agent_msi_name inside artifact_source.", workbook=False, path=True),
    Setting("winrm_ca_path", "str", "", "CA bundle on the controller that signs the nodes' WinRM certificates (blank: the system's).", workbook=False, path=True),
    Setting("build_dir", "str", "build", "Where generated files, state and reports go.", workbook=False, path=True),
    Setting("reports_dir", "str", "reports", "Where tasks write their reports: <task>.json and junit-<task>.xml (Jenkins' junit step).", workbook=False, path=True),
    Setting("repository", "str", "build/repository", "The package repository directory on the controller: extract-artifacts writes it, nginx serves it.", workbook=False, path=True),
    # -- inv bootstrap (package server, Puppet master over SSH) and inv publish-config --
    Setting("ssh_config", "str", "", "An extra ssh_config file for the Linux servers (read after ~/.ssh/config conventions; Fabric's runtime_ssh_path).", workbook=False, path=True),
    Setting("ssh_user", "str", "", "SSH user for the Linux servers (blank: ssh_config's User, else the local user); not root means sudo, password from DEPLOY_SUDO_PASSWORD or a prompt.", workbook=False),
    Setting("package_root", "str", "/srv/deploy_tasks/repository", "Directory the package server's nginx serves the repository from (where --publish sends it).", workbook=False, path=True),
    Setting("template_dir", "str", "", "A directory whose templates override the shipped ones in templates/ (same file names).", workbook=False, path=True),
    Setting("puppetserver_heap", "str", "512m-1g", "Java heap of puppetserver: min-max (512m-1g) or one size (2g).", workbook=False, check=heap_size_error),
    Setting("puppetserver_start_timeout_s", "int", 300, "Longest wait for puppetserver to answer running after a (re)start, in seconds.", workbook=False, minimum=10),
    Setting("allow_master_rename", "bool", False, "Let inv bootstrap change the Puppet master's certname (e.g. after a new domain) although its CA has signed node certificates: every agent then has to be re-issued (inv bootstrap --only agents --reissue).", workbook=False),
    Setting("puppet_autosign", "str", "false", "Master's autosign: false, or the absolute path of a policy executable on the master (challenge passwords); never true.", workbook=False, check=lambda v: None if v == "false" or v.startswith("/") else "must be false or the absolute path of an autosign policy executable (true is never allowed)"),
    # -- inv generate-config ------------------------------------------------
    Setting("puppet_dir", "str", "", "Where inv generate-config writes the Puppet code dir (environments/<env>/...); blank: <build_dir>/puppet.", workbook=False, path=True),
    Setting("puppet_modules", "str", "puppet/modules", "Modules copied into the generated environment's modules/ (the example product module); blank: none.", workbook=False, path=True),
    # -- extract-artifacts (limits against hostile archives, workers, publish target) --
    Setting("artifact_max_unpacked_mb", "int", 8192, "Most a single artifact may unpack to, in MiB (zip bomb guard).", workbook=False, minimum=1),
    Setting("artifact_max_ratio", "int", 200, "Highest compression ratio accepted for an archive member over 1 MiB (zip bomb guard).", workbook=False, minimum=1),
    Setting("artifact_max_members", "int", 200000, "Most members (files, directories, links) a single artifact may hold.", workbook=False, minimum=1),
    Setting("extract_workers", "int", 0, "Workers extract-artifacts uses; 0 means one per CPU.", workbook=False, minimum=0, maximum=256),
    Setting("extract_executor", "choice", "thread", "extract-artifacts workers: thread (measured faster here) or process.", workbook=False, choices=("thread", "process")),
)

BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
WORKBOOK_KEYS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.workbook)


def declared_defaults() -> dict:
    """The ``deploy:`` namespace as declared in ``ns.configure``.

    Numbers and flags are declared as text: Invoke casts an env var to the
    type of the declared default and, for an int, dies with a traceback on
    ``INVOKE_DEPLOY_MAX_PARALLEL=lots`` before any task runs. Declared as
    text, the value reaches ``resolve``, which types it and names the setting.
    """
    return {s.name: s.default if s.kind in ("str", "choice") else str(s.default) for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Resolved, typed settings: what lower layers receive (plain values, no context)."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        values = object.__getattribute__(self, "values")
        if name in values:
            return values[name]
        if name in BY_NAME:
            return BY_NAME[name].default
        raise AttributeError(name)

    @property
    def agent_msi_path(self) -> str:
        """The agent MSI on the controller: puppet_agent_msi, else puppet_agent_msi_name inside the release; "" for none."""
        if self.puppet_agent_msi:
            return self.puppet_agent_msi
        if self.puppet_agent_msi_name:
            return os.path.join(self.artifact_source, self.puppet_agent_msi_name)
        return ""

    def effective_winrm_port(self, server_port: Optional[int] = None) -> int:
        if server_port:
            return server_port
        if self.winrm_port:
            return self.winrm_port
        return 5986 if self.winrm_scheme == "https" else 5985


def resolve(raw: Mapping[str, Any]) -> Settings:
    """Type-check merged values (from any layer) into ``Settings``; an unknown key is an error naming the closest."""
    values: dict = {}
    problems = []
    for key, value in raw.items():
        spec = BY_NAME.get(key)
        if spec is None:
            problems.append(unknown_key_problem(str(key), "setting"))
            continue
        try:
            values[key] = spec.coerce(value)
        except ValueError as exc:
            problems.append(
                f"setting {key} = {value!r} {exc} (set by a --flag, INVOKE_DEPLOY_{key.upper()}, "
                f"invoke.yaml deploy.{key}, or the Settings sheet)"
            )
    if problems:
        raise ConfigError("invalid settings:\n  - " + "\n  - ".join(problems))
    for spec in SETTINGS:
        values.setdefault(spec.name, spec.default)
    return Settings(values)


# -- checking what arrives from invoke.yaml and INVOKE_DEPLOY_* ------------------------------
_SCALARS = (str, int, float, bool, type(None))


def _kind(value: Any) -> str:
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, (list, tuple)) else type(value).__name__


def unknown_key_problem(key: str, where: str) -> str:
    """One line naming a key that is not a setting, with the closest setting's name."""
    near = closest(key, BY_NAME)
    hint = f"did you mean {near}?" if near else "every setting is listed in inventory/README.md"
    return f"{where}: {key!r} is not a setting ({hint})"


def config_file_problems(data: Any, where: str, invoke_defaults: Mapping[str, Any]) -> list:
    """Why a config file's content would crash Invoke's merge or names an unknown setting (empty when fine).

    ``invoke_defaults`` is Invoke's own defaults: a section it keeps as a
    mapping (run:, tasks:) given as a plain value would stop Invoke with a
    traceback before any task runs, so it is named here instead.
    """
    if data is None:
        return []
    if not isinstance(data, dict):
        return [f"{where}: the file holds {_kind(data)}; it must be a mapping of sections such as deploy:"]
    problems = []
    for section, value in data.items():
        if section == "deploy":
            if value is None:
                continue
            if not isinstance(value, dict):
                problems.append(f"{where}: deploy is {_kind(value)}; it must be a mapping of settings (key: value)")
                continue
            for key, item in value.items():
                if key not in BY_NAME:
                    problems.append(unknown_key_problem(str(key), f"{where}: deploy"))
                elif not isinstance(item, _SCALARS):
                    problems.append(f"{where}: deploy.{key} is {_kind(item)}; a setting takes one value")
        elif isinstance(invoke_defaults.get(section), dict) and not isinstance(value, (dict, type(None))):
            problems.append(f"{where}: {section} is {_kind(value)}; Invoke expects a mapping there")
    return problems


def unknown_keys(values: Mapping[str, Any], environ: Mapping[str, str]) -> list:
    """Keys under ``deploy`` (any config layer) and ``INVOKE_DEPLOY_*`` variables that name no setting.

    Invoke ignores an env var for an undeclared key, so ``INVOKE_DEPLOY_MAX_PARALEL=5``
    would pass silently: it is looked for here, in the environment itself.
    """
    problems = [unknown_key_problem(str(key), "deploy") for key in values if key not in BY_NAME]
    for name in sorted(environ):
        if name.startswith("INVOKE_DEPLOY_") and name[len("INVOKE_DEPLOY_"):].lower() not in BY_NAME:
            near = closest(name[len("INVOKE_DEPLOY_"):].lower(), BY_NAME)
            hint = f"did you mean INVOKE_DEPLOY_{near.upper()}?" if near else "every setting is listed in inventory/README.md"
            problems.append(f"environment variable {name} names no setting ({hint})")
    return problems
