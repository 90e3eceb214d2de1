from pathlib import Path
from types import SimpleNamespace

import pytest

from labctl.errors import LabDefinitionError
from labctl.images import ensure
from labctl.images.build import Builder, BuildFailed

pytestmark = pytest.mark.unit


class StoreBuilder(Builder):
    """A builder whose image store is a set: what ensure_images decides is observable without a cluster."""

    provider = "local"

    def __init__(self, fail: bool = False) -> None:
        self.store: set[str] = set()
        self.builds: list[tuple[str, Path]] = []
        self.fail = fail

    def has_image(self, ref):
        return ref in self.store

    def import_archive(self, tar):
        raise AssertionError("not used")

    def _build(self, context, dockerfile, tag, build_args, no_cache, log, echo):
        self.builds.append((tag, context))
        log.parent.mkdir(parents=True, exist_ok=True)
        if self.fail:
            log.write_text("#5 [2/2] RUN false\n#5 ERROR: process did not complete successfully: exit code: 1\n")
            return 1
        log.write_text("#5 [1/2] FROM labctl.local/python:3.11\n#5 DONE 0.0s\n#6 [2/2] COPY . /app\n#6 CACHED\n")
        self.store.add(tag)
        return 0


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_STATE_DIR", str(tmp_path / "state"))
    folder = tmp_path / "09-demo"
    app = folder / "app"
    app.mkdir(parents=True)
    (app / "Dockerfile").write_text("FROM labctl.local/python:3.11\nCOPY . /app\n")
    (app / "hello.py").write_text("print('hello')\n")
    return SimpleNamespace(slug="demo", path=folder, images=[{"name": "labctl.local/demo:1.0", "context": "app"}])


LOCAL = SimpleNamespace(provider="local", pods_run=True)


def test_context_digest_follows_sources_but_not_bytecode(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    first = ensure.context_digest(tmp_path, tmp_path / "Dockerfile")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    assert ensure.context_digest(tmp_path, tmp_path / "Dockerfile") == first
    (tmp_path / "app.py").chmod(0o755)
    executable = ensure.context_digest(tmp_path, tmp_path / "Dockerfile")
    assert executable != first
    (tmp_path / "app.py").write_text("print(2)\n")
    assert ensure.context_digest(tmp_path, tmp_path / "Dockerfile") not in (first, executable)
    assert ensure.context_digest(tmp_path, tmp_path / "Dockerfile", {"A": "1"}) != \
        ensure.context_digest(tmp_path, tmp_path / "Dockerfile")


def test_builds_once_then_skips(lab):
    builder = StoreBuilder()
    assert ensure.ensure_images(lab, LOCAL, builder=builder) == ["labctl.local/demo:1.0"]
    assert ensure.ensure_images(lab, LOCAL, builder=builder) == []
    assert len(builder.builds) == 1


def test_rebuilds_when_the_lab_sources_changed(lab):
    builder = StoreBuilder()
    ensure.ensure_images(lab, LOCAL, builder=builder)
    (lab.path / "app" / "hello.py").write_text("print('hello, world')\n")
    assert ensure.ensure_images(lab, LOCAL, builder=builder) == ["labctl.local/demo:1.0"]


def test_rebuilds_when_the_cluster_lost_the_image(lab):
    builder = StoreBuilder()
    ensure.ensure_images(lab, LOCAL, builder=builder)
    builder.store.clear()  # a new cluster
    assert ensure.ensure_images(lab, LOCAL, builder=builder) == ["labctl.local/demo:1.0"]


def test_leaves_an_image_the_learner_built_alone(lab):
    builder = StoreBuilder()
    ensure.ensure_images(lab, LOCAL, builder=builder)
    (lab.path / "app" / "hello.py").write_text("print('the learner changed it')\n")
    ensure.forget("local", "labctl.local/demo:1.0")  # what `labctl image build -t labctl.local/demo:1.0` does
    assert ensure.ensure_images(lab, LOCAL, builder=builder) == []


def test_nothing_is_needed_where_pods_never_run(lab):
    builder = StoreBuilder()
    assert ensure.ensure_images(lab, SimpleNamespace(provider="sim", pods_run=False), builder=builder) == []
    assert builder.builds == []


def test_a_failed_build_is_one_line_with_the_log(lab):
    with pytest.raises(BuildFailed) as e:
        ensure.ensure_images(lab, LOCAL, builder=StoreBuilder(fail=True))
    assert "labctl.local/demo:1.0" in e.value.message and "exit code: 1" in e.value.message
    assert e.value.hint.startswith("the full build log is ")
    assert ensure.load_records() == {}


def test_lab_objects_with_absolute_contexts(lab):
    from labctl.labs import Image

    lab.images = [Image(name="labctl.local/demo:1.0", context=lab.path / "app")]
    assert ensure.image_entries(lab) == [("labctl.local/demo:1.0", lab.path / "app", lab.path / "app/Dockerfile")]


def test_a_missing_dockerfile_is_a_lab_error(lab):
    lab.images = [{"name": "labctl.local/demo:1.0", "context": "app", "dockerfile": "Dockerfile.prod"}]
    with pytest.raises(LabDefinitionError, match="Dockerfile.prod does not exist"):
        ensure.ensure_images(lab, LOCAL, builder=StoreBuilder())


class DownBuilder(StoreBuilder):
    def _build(self, context, dockerfile, tag, build_args, no_cache, log, echo):
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text('error: listing workers for Build: failed to list workers: Unavailable: connection error: '
                       'desc = "transport: Error while dialing: dial unix /x/buildkitd.sock: connect: no such file"\n')
        return 1


def test_an_unreachable_builder_is_an_environment_problem(lab):
    from labctl.errors import ProviderError

    with pytest.raises(ProviderError, match="cannot reach the local cluster's image builder") as e:
        ensure.ensure_images(lab, LOCAL, builder=DownBuilder())
    assert "labctl status" in e.value.hint
