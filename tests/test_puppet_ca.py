"""The master's CA as the agent step reaches it, against the real puppetserver on this machine: over its HTTP
API from this process (a ``local`` master), by curl on the master over SSH (the real sshd), and by
``puppetserver ca`` when the master has no curl.

Every test uses names under its own domain and cleans them at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from deploy_tasks.steps.puppet_ca import CaError, CertificateAuthority, HostCert
from deploy_tasks.transports.ssh import Shell

pytestmark = pytest.mark.integration

CA_URL = "https://127.0.0.1:8140/puppet-ca/v1"


def _ctx(cacert):
    ctx = ssl.create_default_context(cafile=cacert)
    ctx.check_hostname = False
    return ctx


def submit_csr(master, certname: str, key=None) -> tuple:
    """A CSR for ``certname`` as a node sends it (unauthenticated PUT) -> (its SHA256 fingerprint, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certname)])).sign(key, hashes.SHA256()))
    req = urllib.request.Request(f"{CA_URL}/certificate_request/{certname}", method="PUT",
                                 data=csr.public_bytes(serialization.Encoding.PEM),
                                 headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, context=_ctx(master["cacert"]), timeout=60) as resp:
        assert resp.status == 200
    digest = hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2)), key


@pytest.fixture
def names(puppet_master):
    """Five certnames of this test's own domain; whatever the CA holds for them is cleaned afterwards."""
    domain = f"ca{uuid.uuid4().hex[:10]}.example.test"
    made = [f"n{i}.{domain}" for i in range(5)]
    yield made
    CertificateAuthority(Shell("deploy01", "local"), backend="https")._clean(made)


def _shell(kind, sshd=None):
    if kind == "ssh":
        return Shell("deploy01", "127.0.0.1", ssh_config=sshd.ssh_config)
    return Shell("deploy01", "local")


@pytest.fixture(params=["local", "ssh", "cli"])
def ca(request, puppet_master):
    """The CA the way each kind of master reaches it: local -> HTTPS from this process; SSH -> curl on the
    master; "cli" -> puppetserver ca (a master without curl)."""
    kind = request.param
    sshd = request.getfixturevalue("sshd") if kind == "ssh" else None
    ca = CertificateAuthority(_shell(kind, sshd), backend="cli" if kind == "cli" else None)
    ca.gather_s = 0.3  # the threads below start within this: one turn for all of them
    ca.expected = {"local": "https", "ssh": "curl", "cli": "cli"}[kind]
    yield ca
    ca.close()
    ca.shell.close()


def test_a_turn_signs_the_matching_requests_and_nothing_else(ca, names, puppet_master):
    fps = {n: submit_csr(puppet_master, n)[0] for n in names[:4]}
    # names[1]: the node holds another key than the request the master has (someone else asked for the name)
    asked = {n: fps.get(n, "AA:BB") if n != names[1] else "0" * 2 + fps[names[1]][2:] for n in names}
    results = {}

    def host(name):
        results[name] = ca.sign_if_matching(name, asked[name])

    threads = [threading.Thread(target=host, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ca.backend == ca.expected
    assert ca.commands == 2  # one list and one sign for the five names
    assert {n for n, (_, signed) in results.items() if signed} == {names[0], names[2], names[3]}
    entry, signed = results[names[1]]
    assert (entry.state, entry.fingerprint, signed) == ("requested", fps[names[1]], False)  # nothing signed
    assert results[names[4]][0].state == "missing"
    after = {n: ca.status(n) for n in names}
    assert [after[n].state for n in names] == ["signed", "requested", "signed", "signed", "missing"]
    assert after[names[1]].fingerprint == fps[names[1]]
    # clean, as puppetserver ca clean: a signed certificate and a request never signed both go
    ca.clean(names[0])
    ca.clean(names[1])
    assert ca.status(names[0]).state == "missing" and ca.status(names[1]).state == "missing"


def test_the_fingerprint_is_what_the_node_prints(puppet_master, names, tmp_path):
    """The CA's SHA256 fingerprint of a request equals `puppet agent --fingerprint` on the node that made it."""
    import subprocess

    ssldir = tmp_path / "ssl"
    env = {**os.environ, "HOME": str(tmp_path)}
    args = ["--certname", names[0], "--ssldir", str(ssldir),
            "--confdir", str(tmp_path / "conf"), "--vardir", str(tmp_path / "var")]
    # the node's own key and CSR, submitted by the real agent
    ca_pem = Path(puppet_master["cacert"])
    (ssldir / "certs").mkdir(parents=True)
    (ssldir / "certs" / "ca.pem").write_text(ca_pem.read_text())
    got = subprocess.run(["puppet", "ssl", "submit_request", *args, "--server", "127.0.0.1",
                          "--ca_server", "127.0.0.1"], capture_output=True, text=True, env=env, timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    printed = subprocess.run(["puppet", "agent", "--fingerprint", *args], capture_output=True, text=True, env=env,
                             timeout=120)
    node_fp = printed.stdout.split()[-1]
    ca = CertificateAuthority(Shell("deploy01", "local"))
    assert ca.status(names[0]).fingerprint == node_fp
    entry, signed = ca.sign_if_matching(names[0], node_fp.lower())
    assert signed and ca.status(names[0]).state == "signed"


@pytest.fixture
def uncertified(puppet_master, names, tmp_path):
    """A certificate of this CA without pp_cli_auth (a node's), as the client: auth.conf must refuse it."""
    from cryptography.hazmat.primitives import serialization

    fp, key = submit_csr(puppet_master, names[4])
    admin = CertificateAuthority(Shell("deploy01", "local"), backend="https")
    assert admin.sign_if_matching(names[4], fp)[1]
    admin.close()
    with urllib.request.urlopen(f"{CA_URL}/certificate/{names[4]}", context=_ctx(puppet_master["cacert"]),
                                timeout=60) as resp:
        (tmp_path / "node.pem").write_bytes(resp.read())
    (tmp_path / "node.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.TraditionalOpenSSL,
                                                          serialization.NoEncryption()))
    return HostCert(puppet_master["certname"], str(tmp_path / "node.pem"), str(tmp_path / "node.key"),
                    puppet_master["cacert"])


@pytest.mark.parametrize("backend", ["https", "curl"])
def test_an_api_error_names_the_master_the_operation_and_the_cas_answer(backend, puppet_master, names, uncertified):
    ca = CertificateAuthority(Shell("deploy01", "local"), backend=backend)
    with pytest.raises(CaError) as err:
        ca.sign(names[2])  # nobody asked for this name
    text = str(err.value)
    assert text.startswith(f"deploy01: the master's CA refused to sign {names[2]}: PUT /puppet-ca/v1/"
                           f"certificate_status/{names[2]} -> 404 Not Found: Invalid certificate subject."), text
    # a client certificate without pp_cli_auth: auth.conf's 403, with what the CA was called with and why
    refused = CertificateAuthority(Shell("deploy01", "local"), backend=backend, host_cert=uncertified)
    with pytest.raises(CaError) as err:
        refused.status(names[0])
    text = str(err.value)
    assert f"deploy01: the master's CA refused to read the certificate status of {names[0]}" in text
    assert "-> 403 Forbidden: Forbidden request" in text and "pp_cli_auth" in text and uncertified.cert in text
    # nothing listening: said, with the master and the operation
    closed = CertificateAuthority(Shell("deploy01", "local"), backend=backend, port=_closed_port(),
                                  host_cert=HostCert(puppet_master["certname"], *_master_files(puppet_master)))
    with pytest.raises(CaError) as err:
        closed.sign_if_matching(names[0], "AA")
    text = str(err.value)
    assert text.startswith("deploy01: cannot list certificates on the master's CA at https://deploy01.example.test:")
    assert "connection refused" in text.lower() and "Traceback" not in text
    for c in (ca, refused, closed):
        c.close()


def _master_files(master):
    ssldir = master["ssldir"]
    return (f"{ssldir}/certs/{master['certname']}.pem", f"{ssldir}/private_keys/{master['certname']}.pem",
            master["cacert"])


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_master_without_curl_falls_back_to_the_cli_and_says_so_once(puppet_master, names, tmp_path,
                                                                      monkeypatch, capsys):
    # a PATH with everything of this machine but curl
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.path.isdir(d):
            for entry in os.listdir(d):
                if entry != "curl" and not (bin_dir / entry).exists():
                    (bin_dir / entry).symlink_to(os.path.join(d, entry))
    monkeypatch.setenv("PATH", str(bin_dir))
    fp = submit_csr(puppet_master, names[0])[0]
    ca = CertificateAuthority(Shell("deploy01", "local"), backend="curl")  # as for a master over SSH
    assert ca.status(names[1]).state == "missing"
    entry, signed = ca.sign_if_matching(names[0], fp)
    assert (entry.state, signed) == ("requested", True)
    assert ca.status(names[0]).state == "signed"
    ca.close()
    assert ca.backend == "cli" and ca.requests == 0 and ca.commands == 4
    assert len(ca.said) == 1 and "curl is not installed on the master" in ca.said[0]
    out = capsys.readouterr().out
    assert out.count("curl is not installed") == 1 and "puppetserver ca" in out


def test_a_dry_run_reads_the_ca_and_signs_nothing(puppet_master, names, capsys):
    fp = submit_csr(puppet_master, names[0])[0]
    ca = CertificateAuthority(Shell("deploy01", "local", dry_run=True))
    entry, signed = ca.sign_if_matching(names[0], fp)
    assert entry.state == "requested" and signed  # it would be signed
    assert f"would sign {names[0]} on the master's CA" in capsys.readouterr().out
    real = CertificateAuthority(Shell("deploy01", "local"))
    assert real.status(names[0]) == entry  # still only requested
    for c in (ca, real):
        c.close()


def test_the_curl_command_quotes_every_name_and_keeps_one_connection():
    from deploy_tasks.steps.puppet_ca import CurlOnMaster

    class Master:
        name = "deploy01"

    curl = CurlOnMaster(Master(), HostCert("deploy01.x", "/c.pem", "/k.pem", "/ca.pem"))
    command = curl.command([("GET", "/puppet-ca/v1/certificate_status/a%3Bb", None),
                            ("PUT", "/puppet-ca/v1/certificate_status/a", {"desired_state": "signed"})])
    assert command.count(" --next ") == 1 and command.startswith("curl -sS --tls-max 1.2")
    assert "'--data-binary' '{\"desired_state\": \"signed\"}'" in command or \
        "--data-binary '{\"desired_state\": \"signed\"}'" in command
    body = json.dumps({"state": "signed"})
    answers = curl.parse(f"{body}\n{curl.marker} 200\n\n{curl.marker} 204\n", 2)
    assert answers == [(200, body), (204, "")]
