import pytest
import yaml

from labctl.errors import ProviderError, ToolboxError, UsageError
from labctl.providers.kind import KindProvider, PortMapping, explain_create_failure, parse_port, render_config

pytestmark = pytest.mark.unit

NO_DAEMON = """Creating cluster "labctl" ...
ERROR: failed to create cluster: failed to get docker info: command "docker info --format '{{json .}}'" failed with error: exit status 1
Command Output: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?
"""

NO_IMAGE = """Creating cluster "labctl" ...
 ✗ Ensuring node image (kindest/node:v1.37.0) 🖼
ERROR: failed to create cluster: failed to pull image "kindest/node:v1.37.0@sha256:a1ed56cf": command "docker pull kindest/node:v1.37.0@sha256:a1ed56cf" failed with error: exit status 1
Command Output: Error response from daemon: Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host
"""


def test_default_config_maps_no_ports():
    config = yaml.safe_load(render_config())
    assert config == {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "name": "labctl",
                      "nodes": [{"role": "control-plane"}]}


def test_ports_become_extra_port_mappings():
    config = yaml.safe_load(render_config(["8080:80", "127.0.0.1:8443:443/tcp", "5353:53/udp"]))
    assert config["nodes"][0]["extraPortMappings"] == [
        {"containerPort": 80, "hostPort": 8080, "protocol": "TCP"},
        {"containerPort": 443, "hostPort": 8443, "protocol": "TCP", "listenAddress": "127.0.0.1"},
        {"containerPort": 53, "hostPort": 5353, "protocol": "UDP"},
    ]


@pytest.mark.parametrize("spec", ["80", "a:b", "8080:80/icmp", "0:80", "8080:70000", "8080-80", ""])
def test_bad_ports_are_usage_errors(spec):
    with pytest.raises(UsageError):
        parse_port(spec)


def test_same_host_port_twice_is_refused():
    with pytest.raises(UsageError, match="same host port"):
        render_config(["8080:80", "8080:81"])


def test_parse_port_ipv6_listen_address():
    assert parse_port("[::1]:8080:80") == PortMapping(8080, 80, "TCP", "::1")


def test_no_docker_daemon_is_one_line():
    err = explain_create_failure(NO_DAEMON)
    assert err.message == "kind cannot create the cluster: Docker isn't running (no daemon answers)"
    assert "--provider sim" in err.hint


def test_missing_node_image_names_the_image():
    err = explain_create_failure(NO_IMAGE)
    assert err.message.startswith("kind cannot get its node image kindest/node:v1.37.0 ")
    assert "\n" not in err.message


def test_unknown_failure_keeps_the_last_error_line():
    err = explain_create_failure("Creating cluster\nERROR: failed to create cluster: something odd\n")
    assert err.message == "kind cannot create the cluster: ERROR: failed to create cluster: something odd"


def test_kind_create_without_docker_daemon_for_real(tmp_path, monkeypatch):
    """The toolbox's real kind binary against this machine's Docker CLI, whose daemon is not running."""
    from labctl.providers import docker_running

    try:
        from labctl.toolbox import binary

        binary("kind")
    except (ImportError, ToolboxError):
        pytest.skip("kind is not installed in the toolbox")
    if docker_running():
        pytest.skip("a Docker daemon runs here: kind could really create a cluster")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    provider = KindProvider(state_root=tmp_path / "state")
    with pytest.raises(ProviderError) as caught:
        provider.up()
    message = caught.value.message
    assert "\n" not in message
    assert "Docker isn't running" in message or "Docker isn't installed" in message
    assert "--provider sim" in caught.value.hint
    assert not (tmp_path / "kubeconfig").exists()
