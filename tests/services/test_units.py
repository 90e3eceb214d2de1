"""Pure pieces of the services: configuration parsing, the retry policy, and token header handling."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path

import pytest

from labshop.calls import CallPolicy
from labshop.config import Common, ConfigError, Env
from labshop.tokens import TokenReviewer, Unauthenticated, api_server_from_env

pytestmark = pytest.mark.unit


def test_call_policy_from_env_reads_the_dependencys_prefix():
    policy = CallPolicy.from_env(Env({"INVENTORY_TIMEOUT_SECONDS": "1.5", "INVENTORY_RETRIES": "2",
                                      "INVENTORY_BACKOFF_SECONDS": "0.2", "CATALOG_RETRIES": "9"}), "INVENTORY")
    assert policy == CallPolicy(timeout_seconds=1.5, retries=2, backoff_seconds=0.2)
    assert policy.attempts == 3
    assert CallPolicy.from_env(Env({}), "INVENTORY") == CallPolicy()


@pytest.mark.parametrize("env, words", [
    ({"X_TIMEOUT_SECONDS": "0"}, "must be more than 0"),
    ({"X_TIMEOUT_SECONDS": "soon"}, "must be a number of seconds"),
    ({"X_TIMEOUT_SECONDS": "nan"}, "must not be negative"),
    ({"X_RETRIES": "-1"}, "between 0 and 10"),
    ({"X_BACKOFF_SECONDS": "-0.1"}, "must not be negative"),
])
def test_call_policy_refuses_what_cannot_work(env, words):
    with pytest.raises(ConfigError, match=words):
        CallPolicy.from_env(Env(env), "X")


def test_backoff_doubles_is_capped_and_jittered_within_the_upper_half():
    policy = CallPolicy(backoff_seconds=0.1, backoff_max_seconds=0.5)
    rng = random.Random(7)
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)):
        waits = [policy.backoff(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert max(waits) - min(waits) > ceiling / 4  # really spread, not one value


def test_common_settings_and_their_errors():
    assert Common.from_env(Env({})).port == 8080
    assert Common.from_env(Env({"PORT": "0", "LOG_LEVEL": "DEBUG"})).log_level == "debug"
    with pytest.raises(ConfigError, match="PORT must be between 0 and 65535"):
        Common.from_env(Env({"PORT": "70000"}))


@pytest.mark.parametrize("raw, ok", [
    ("http://catalog", True), ("http://catalog.shop.svc.cluster.local:80/", True), ("https://10.0.0.1:8443", True),
    ("catalog", False), ("ftp://catalog", False), ("http://", False),
])
def test_urls_must_be_http_with_a_host(raw, ok):
    if ok:
        assert Env({"U": raw}).url("U") == raw.rstrip("/")
    else:
        with pytest.raises(ConfigError):
            Env({"U": raw}).url("U")


def test_the_api_server_address_comes_from_the_pods_environment():
    assert api_server_from_env(Env({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})) \
        == "https://10.96.0.1:443"
    assert api_server_from_env(Env({"KUBERNETES_SERVICE_HOST": "fd00::1"})) == "https://[fd00::1]:443"
    with pytest.raises(ConfigError, match="TOKENREVIEW_API_SERVER"):
        api_server_from_env(Env({}))


def test_no_reviewer_without_an_audience():
    assert TokenReviewer.from_env(Env({})) is None


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "token abc"])
def test_a_missing_or_non_bearer_header_is_refused_without_asking_the_api_server(header, tmp_path):
    reviewer = TokenReviewer("https://127.0.0.1:1", "inventory", ca_file=_self_signed(tmp_path),
                             credentials_file=tmp_path / "never-read")

    async def attempt():
        try:
            with pytest.raises(Unauthenticated, match="bearer token is required"):
                await reviewer.authenticate(header)
        finally:
            await reviewer.close()

    asyncio.run(attempt())


def _self_signed(folder: Path) -> Path:
    """A CA file the TLS context accepts (its content does not matter here: no connection is made)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    path = folder / "ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_the_generated_grpc_modules_match_the_proto(tmp_path, services_dir):
    pytest.importorskip("grpc_tools")
    (tmp_path / "labshop").mkdir()
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(services_dir),
                           f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                           str(services_dir / "labshop" / "inventory.proto")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("inventory_pb2.py", "inventory_pb2_grpc.py"):
        assert (tmp_path / "labshop" / name).read_text() == (services_dir / "labshop" / name).read_text(), (
            f"services/labshop/{name} is out of date: regenerate it (see the comment in inventory.proto)")


def test_the_tests_install_the_pins_the_image_installs(services_dir):
    import tomllib

    image = {}
    for line in (services_dir / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            image[name.strip().lower().replace("_", "-")] = version.strip()
    pyproject = tomllib.loads((services_dir.parent / "pyproject.toml").read_text())
    tests = {}
    for req in pyproject["project"]["optional-dependencies"]["test"]:
        if "==" in req:
            name, _, version = req.partition("==")
            tests[name.strip().lower()] = version.strip()
    shared = {name: version for name, version in tests.items() if name in image}
    assert shared and all(image[name] == version for name, version in shared.items()), (shared, image)
