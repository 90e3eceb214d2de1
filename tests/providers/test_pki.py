import ipaddress

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from labctl.providers import pki

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ca():
    return pki.new_ca("test-ca")


def test_ca_is_a_ca(ca):
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    ca.cert.verify_directly_issued_by(ca.cert)  # self-signed


def test_serving_cert_chain_and_sans(ca):
    dns, ips = pki.apiserver_sans("10.96.0.0/16")
    leaf = pki.issue_serving_cert(ca, "kube-apiserver", dns, ips)
    leaf.cert.verify_directly_issued_by(ca.cert)
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    }
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.96.0.1"),
    }
    usages = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages


@pytest.mark.parametrize("name", ["kubernetes.default.svc", "localhost"])
def test_serving_cert_passes_web_pki_path_validation(ca, name):
    dns, ips = pki.apiserver_sans("10.96.0.0/16")
    leaf = pki.issue_serving_cert(ca, "kube-apiserver", dns, ips)
    verifier = PolicyBuilder().store(Store([ca.cert])).build_server_verifier(DNSName(name))
    chain = verifier.verify(leaf.cert, [])
    assert chain[-1] == ca.cert
    ip_verifier = PolicyBuilder().store(Store([ca.cert])).build_server_verifier(
        IPAddress(ipaddress.ip_address("10.96.0.1")))
    ip_verifier.verify(leaf.cert, [])


def test_chain_does_not_verify_against_another_ca(ca):
    leaf = pki.issue_client_cert(ca, "someone")
    with pytest.raises(InvalidSignature):
        leaf.cert.verify_directly_issued_by(pki.new_ca("test-ca").cert)  # same name, different key


def test_client_cert_carries_user_and_groups(ca):
    admin = pki.issue_client_cert(ca, "labctl-admin", ["system:masters"])
    admin.cert.verify_directly_issued_by(ca.cert)
    subject = admin.cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "labctl-admin"
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:masters"]
    usages = admin.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_written_pair_loads_back_and_key_is_private(ca, tmp_path):
    crt, key = ca.write(tmp_path, "ca")
    assert key.stat().st_mode & 0o077 == 0
    again = pki.load(tmp_path, "ca")
    assert again.cert == ca.cert
    assert again.key.private_numbers() == ca.key.private_numbers()
    assert crt.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_service_account_keys_are_a_matching_rsa_pair(tmp_path):
    private, public = tmp_path / "sa.key", tmp_path / "sa.pub"
    pki.new_service_account_keys(private, public)
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    pub = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.public_key().public_numbers() == pub.public_numbers()
    assert private.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(("cidr", "first"), [("10.96.0.0/16", "10.96.0.1"), ("10.0.0.0/24", "10.0.0.1"),
                                             ("fd00::/108", "fd00::1")])
def test_first_service_ip(cidr, first):
    assert pki.first_service_ip(cidr) == first
