import pytest

from labctl.errors import UsageError
from labctl.providers import PROVIDER_NAMES, default_provider_name, get_provider, local_available
from labctl.providers.existing import ExistingProvider
from labctl.providers.kind import KindProvider
from labctl.providers.sim import SimProvider

pytestmark = pytest.mark.unit


def test_names():
    assert PROVIDER_NAMES == ("kind", "local", "sim", "existing")


def test_get_provider_builds_each():
    sim = get_provider("sim")
    assert isinstance(sim, SimProvider) and sim.context == "labctl-sim" and sim.pods_run is False
    kind = get_provider("kind", ports=["8080:80"])
    assert isinstance(kind, KindProvider) and kind.context == "kind-labctl" and kind.pods_run is True
    assert get_provider("sim", context="labctl-sim").name == "sim"


def test_existing_needs_a_context():
    with pytest.raises(UsageError, match="needs the kube context"):
        get_provider("existing")


def test_existing_with_a_context(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    provider = get_provider("existing", context="prod")
    assert isinstance(provider, ExistingProvider) and provider.context == "prod"


def test_context_of_another_cluster_points_to_existing():
    with pytest.raises(UsageError) as caught:
        get_provider("sim", context="prod")
    assert "--provider existing --context prod" in caught.value.hint


def test_unknown_provider_and_misplaced_ports():
    with pytest.raises(UsageError, match="unknown provider"):
        get_provider("minikube")
    with pytest.raises(UsageError, match="kind only|--provider kind only"):
        get_provider("sim", ports=["8080:80"])


def test_bad_ports_fail_before_anything_runs():
    with pytest.raises(UsageError):
        get_provider("kind", ports=["eighty"])


def test_default_provider_on_this_machine():
    from labctl.providers import docker_running

    if docker_running():
        pytest.skip("a Docker daemon runs here")
    from labctl.providers import _local_can_run

    assert default_provider_name() == ("local" if _local_can_run() else "sim")


def test_local_provider_or_a_clear_error_without_it():
    if local_available():
        provider = get_provider("local")
        assert provider.name == "local" and provider.pods_run is True
        return
    from labctl.errors import ProviderError

    with pytest.raises(ProviderError, match="no local provider"):
        get_provider("local")
