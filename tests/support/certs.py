"""Certificates for TLS tests, made with the ``openssl`` command line as the docs tell operators to."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_certs(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Certs:
    """A private CA and a server certificate signed by it for ``hosts`` (IP addresses or DNS names)."""
    if shutil.which("openssl") is None:
        import pytest

        pytest.skip("the openssl command is not installed (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ccx test CA",
             "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=ccx test server",
             "-keyout", str(key), "-out", str(csr))  # fmt: skip
    san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    ext = directory / "ext.cnf"
    ext.write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    for path in (ca_key, key):
        path.chmod(0o600)
    return Certs(ca=ca, cert=cert, key=key)
