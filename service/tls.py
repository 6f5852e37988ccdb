"""A self-signed certificate for a LAN box (``amvad tls self-signed``): HTTPS and WSS without a CA or a
proxy. Made with the ``cryptography`` package (no ``openssl`` command needed): an ECDSA P-256 key, the names
and addresses given as subject alternative names (what browsers check), valid for ``days``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from amvad.runtime.errors import Conflict, Invalid
from amvad.runtime.files import write_atomic


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    hosts: tuple[str, ...]
    sha256: str  # the certificate's fingerprint, to compare with what a browser shows
    not_after: dt.datetime


def default_hosts() -> list[str]:
    """This machine as its own clients name it: localhost, the loopback addresses and its host name."""
    hosts = ["localhost", "127.0.0.1", "::1"]
    name = socket.gethostname()
    return hosts + ([name] if name and name not in hosts else [])


def self_signed(out: Path, hosts: list[str] | None = None, days: int = 825, force: bool = False) -> CertFiles:
    """``out/cert.pem`` (0644) and ``out/key.pem`` (0600). Refuses to replace existing files unless ``force``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    hosts = list(dict.fromkeys(hosts or default_hosts()))
    if not 1 <= days <= 3650:
        raise Invalid(f"days must be 1 to 3650, not {days}")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not host or any(c.isspace() or c in "/:@" for c in host):
                raise Invalid(f"{host!r} is neither a host name nor an IP address") from None
            names.append(x509.DNSName(host))
    out = Path(out)
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    if not force and (cert_path.exists() or key_path.exists()):
        raise Conflict(f"{cert_path} or {key_path} exists already (use --force to replace them)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "amvad self-signed")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            # not a CA (browsers refuse a CA certificate as a server's); no key usage either, which OpenSSL
            # would take to mean "not self-signed" and then trust it nowhere, not even in a CA file of its own
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return CertFiles(cert_path, key_path, tuple(hosts), cert.fingerprint(hashes.SHA256()).hex(":"),
                     now + dt.timedelta(days=days))
