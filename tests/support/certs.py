"""Test certificates made with the openssl CLI: a CA, a server cert for localhost/127.0.0.1, a client cert."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed_cert(directory: Path, name: str, subject: str, extensions: str) -> None:
    """Key, CSR and a CA-signed certificate named <name>.key / <name>.pem."""
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", subject, cwd=directory)
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-sha256", "-extfile", f"{name}.ext", cwd=directory)


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to generate test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=chargpt test CA", cwd=directory)
    _signed_cert(directory, "server", "/CN=localhost",
                 "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed_cert(directory, "client", "/CN=chargpt test client", "extendedKeyUsage=clientAuth\n")
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                   directory / "client.pem", directory / "client.key")
