"""Certificates for clusters labctl runs itself: a CA, serving and client certificates, service-account keys.

TLS keys are ECDSA P-256 (generated in microseconds, accepted by every Kubernetes component and etcd); the
service-account signing key is RSA, which every token consumer supports.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Leaf certificates outlive any lab; the CA outlives the leaves.
CA_DAYS = 3650
LEAF_DAYS = 825
# A little slack for clocks that disagree between processes started at the same second.
_BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertKey:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (mode 0600) into `directory`; returns both paths."""
        directory.mkdir(parents=True, exist_ok=True)
        crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        _write_private(key, self.key_pem())
        crt.write_bytes(self.cert_pem())
        return crt, key


def load(directory: Path, stem: str) -> CertKey:
    """Read back a pair written by `CertKey.write`."""
    cert = x509.load_pem_x509_certificate((directory / f"{stem}.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / f"{stem}.key").read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError(f"{directory / stem}.key is neither an EC nor an RSA key")
    return CertKey(cert, key)


def _write_private(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(data)


def _name(cn: str, orgs: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def new_ca(cn: str = "labctl-ca", days: int = CA_DAYS) -> CertKey:
    """A self-signed certificate authority."""
    key = _new_key()
    name = _name(cn)
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertKey(cert, key)


def _issue(ca: CertKey, subject: x509.Name, usages: list[x509.ObjectIdentifier],
           san: x509.SubjectAlternativeName | None, days: int) -> CertKey:
    key = _new_key()
    builder = (
        _builder(subject, ca.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()), critical=False
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return CertKey(builder.sign(ca.key, hashes.SHA256()), key)


def issue_client_cert(ca: CertKey, cn: str, orgs: Iterable[str] = (), days: int = LEAF_DAYS) -> CertKey:
    """A client certificate: Kubernetes reads the user from CN and the groups from O."""
    return _issue(ca, _name(cn, orgs), [ExtendedKeyUsageOID.CLIENT_AUTH], None, days)


def issue_serving_cert(ca: CertKey, cn: str, sans_dns: Iterable[str] = (), sans_ip: Iterable[str] = (),
                       days: int = LEAF_DAYS, client_auth: bool = False) -> CertKey:
    """A server certificate for the given DNS names and IP addresses (`client_auth` for peers such as etcd)."""
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in sans_dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in sans_ip]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])
    return _issue(ca, _name(cn), usages, x509.SubjectAlternativeName(names), days)


def new_service_account_keys(path_private: Path, path_public: Path, bits: int = 2048) -> None:
    """An RSA key pair for signing (private) and verifying (public) service-account tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    _write_private(path_private, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ))
    path_public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))


def first_service_ip(cidr: str) -> str:
    """The address the `kubernetes` Service gets in a service CIDR: the first usable one."""
    return str(next(ipaddress.ip_network(cidr).hosts()))


def apiserver_sans(service_cidr: str, dns_domain: str = "cluster.local",
                   extra_dns: Iterable[str] = (), extra_ips: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """The names and addresses an API server answers to, in-cluster and from the host."""
    dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
           f"kubernetes.default.svc.{dns_domain}", *extra_dns]
    ips = ["127.0.0.1", first_service_ip(service_cidr), *extra_ips]
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))
