"""Get node catalogs compiled by the real puppetserver, the way an agent does.

For each certname: a private key and CSR (cryptography), submitted to the CA
API (`PUT /puppet-ca/v1/certificate_request/<certname>`), signed with
`puppetserver ca sign` (the CA writes its own files as user puppet; nothing is
written into the master's ssldir), the certificate fetched, then
`POST /puppet/v3/catalog/<certname>?environment=<env>` with client auth and the
node's facts (Windows facts here), which Debian's auth.conf allows a node for
its own catalog. Keys and certificates live in CERT_DIR and are reused by later
runs; certnames here must be test-specific so that no other test's CA state is
touched.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CERT_DIR = Path(os.environ.get("DEPLOY_TEST_NODE_CERTS", "/tmp/deploy_tasks-gentest-certs"))
CA_CERT = "/var/lib/puppet/ssl/certs/ca.pem"
SERVER = "https://127.0.0.1:8140"


def windows_facts(certname: str) -> dict:
    """The facts a Windows Server 2012 R2 agent presents (enough for compilation)."""
    short = certname.split(".")[0]
    return {
        "name": certname,
        "values": {
            "clientcert": certname, "certname": certname, "fqdn": certname, "hostname": short,
            "domain": certname.partition(".")[2], "kernel": "windows", "kernelrelease": "6.3.9600",
            "kernelmajversion": "6.3", "osfamily": "windows", "operatingsystem": "windows",
            "operatingsystemrelease": "2012 R2", "architecture": "x64", "hardwareisa": "x64",
            "os": {"family": "windows", "name": "windows", "architecture": "x64",
                   "release": {"full": "2012 R2", "major": "2012 R2"},
                   "windows": {"product_name": "Windows Server 2012 R2 Standard", "system32": "C:\\Windows\\system32"}},
            "path": "C:\\Windows\\system32;C:\\Windows;C:\\Program Files\\Puppet Labs\\Puppet\\bin",
            "system32": "C:\\Windows\\system32", "puppetversion": "7.23.0", "clientversion": "7.23.0",
            "clientnoop": False, "agent_specified_environment": "",
        },
    }


def _request(method: str, url: str, data: bytes | None = None, headers: dict | None = None,
             context: ssl.SSLContext | None = None, timeout: float = 120):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=context, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _ca_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=CA_CERT)
    ctx.check_hostname = False  # the master's cert names deploy01.example.test, we dial 127.0.0.1
    return ctx


def _ca_cli(action: str, certname: str) -> list:
    """``puppetserver ca <action>`` pointed at 127.0.0.1 (the shared puppet.conf names no server;
    a private config file keeps it untouched). It authenticates with the master's own certificate."""
    CERT_DIR.mkdir(parents=True, exist_ok=True)
    conf = CERT_DIR / "puppet-ca-cli.conf"
    conf.write_text(
        "[main]\nssldir = /var/lib/puppet/ssl\ncertname = deploy01.example.test\n"
        "server = localhost\nca_server = localhost\nca_port = 8140\n"
        "cadir = /etc/puppet/puppetserver/ca\n"
    )
    return ["puppetserver", "ca", action, "--config", str(conf), "--certname", certname]


def node_identity(certname: str) -> tuple[str, str]:
    """(cert file, key file) for ``certname``, signed by the real CA; created on first use, then reused."""
    folder = CERT_DIR / certname
    cert_file, key_file, ca_copy = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    ca = Path(CA_CERT).read_bytes()
    if cert_file.exists() and key_file.exists() and ca_copy.exists() and ca_copy.read_bytes() == ca:
        return str(cert_file), str(key_file)
    folder.mkdir(parents=True, exist_ok=True)
    ca_copy.write_bytes(ca)  # a cached cert counts only while the server keeps the same CA
    if key_file.exists():  # an earlier run stopped half-way: its CSR may be pending with this key
        key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_file.chmod(0o600)
    ours = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ctx = _ca_context()
    cert_url = f"{SERVER}/puppet-ca/v1/certificate/{certname}"
    status, body = _request("GET", cert_url, context=ctx)
    if status == 200 and _public_key(body) == ours:
        cert_file.write_bytes(body)
        return str(cert_file), str(key_file)
    if status == 200:
        # signed for a key this machine no longer has: the name is test-only, so clean it
        subprocess.run(_ca_cli("clean", certname), check=True, capture_output=True, text=True, timeout=120)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, certname)]))
           .sign(key, hashes.SHA256()))
    pem = csr.public_bytes(serialization.Encoding.PEM)
    status, body = _request("PUT", f"{SERVER}/puppet-ca/v1/certificate_request/{certname}", pem,
                            {"Content-Type": "text/plain"}, ctx)
    if status != 200 and b"requested certificate" not in body:  # pending with our key: sign it
        raise RuntimeError(f"CSR for {certname} refused: HTTP {status} {body[:300]!r}")
    proc = subprocess.run(_ca_cli("sign", certname), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"puppetserver ca sign --certname {certname} failed: {proc.stdout}{proc.stderr}")
    status, body = _request("GET", cert_url, context=ctx)
    if status != 200 or _public_key(body) != ours:
        raise RuntimeError(f"certificate of {certname} not available: HTTP {status} {body[:300]!r}")
    cert_file.write_bytes(body)
    return str(cert_file), str(key_file)


def _public_key(pem: bytes) -> bytes:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return b""
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def compile_catalog(certname: str, environment: str, facts: dict | None = None) -> dict:
    """The catalog the real server compiles for ``certname`` in ``environment`` (as JSON)."""
    cert_file, key_file = node_identity(certname)
    ctx = _ca_context()
    ctx.load_cert_chain(cert_file, key_file)
    facts = facts or windows_facts(certname)
    form = urllib.parse.urlencode({
        "environment": environment,
        "facts_format": "application/json",
        "facts": json.dumps(facts),
        "transaction_uuid": "00000000-0000-4000-8000-000000000003",
    }).encode()
    url = f"{SERVER}/puppet/v3/catalog/{urllib.parse.quote(certname)}?environment={environment}"
    status, body = _request("POST", url, form, {"Content-Type": "application/x-www-form-urlencoded",
                                                "Accept": "application/json"}, ctx, timeout=300)
    if status != 200:
        raise AssertionError(f"catalog of {certname} in {environment} did not compile: HTTP {status}\n"
                             + body.decode("utf-8", "replace")[:2000])
    return json.loads(body)
