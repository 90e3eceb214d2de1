from pathlib import Path

import pytest

from labctl.errors import UsageError
from labctl.images import build

pytestmark = pytest.mark.unit

LAB9 = Path(__file__).resolve().parents[2] / "labs" / "09-containerization" / "app" / "Dockerfile"


@pytest.mark.parametrize("ref, stored", [
    ("labctl.local/hello:1.0", "labctl.local/hello:1.0"),
    ("hello:1.0", "docker.io/library/hello:1.0"),
    ("hello", "docker.io/library/hello:latest"),
    ("team/hello:2", "docker.io/team/hello:2"),
    ("localhost:5000/hello", "localhost:5000/hello:latest"),
    ("registry.example:5000/a/b:c", "registry.example:5000/a/b:c"),
    ("python@sha256:abc", "docker.io/library/python@sha256:abc"),
])
def test_normalize_ref(ref, stored):
    assert build.normalize_ref(ref) == stored


@pytest.mark.parametrize("tag", ["labctl.local/hello:1.1", "hello:dev", "localhost:5000/a/b:1"])
def test_check_tag_accepts_names_with_tags(tag):
    assert build.check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["Hello:1", "labctl.local/hello", "hello:", "hello:1 2"])
def test_check_tag_refuses_others(tag):
    with pytest.raises(UsageError, match="not an image name with a tag"):
        build.check_tag(tag)


def test_dockerfile_bases_of_the_lab9_app():
    found = build.dockerfile_bases(LAB9.read_text())
    assert found.global_args["BASE_IMAGE"] == "python:3.11-slim"
    assert found.bases == ["python:3.11-slim"]
    given = build.dockerfile_bases(LAB9.read_text(), {"BASE_IMAGE": "labctl.local/python:3.11"})
    assert given.bases == ["labctl.local/python:3.11"]


def test_dockerfile_bases_skip_stages_and_scratch_and_follow_continuations():
    text = """\
# comment FROM nowhere
ARG GO=1.26 \\
    DEBIAN=bookworm
FROM --platform=$BUILDPLATFORM golang:${GO} AS build
RUN go build -o /out/app .
FROM build AS test
FROM scratch
COPY --from=build /out/app /app
FROM debian:${DEBIAN:-trixie}-slim
FROM ${MISSING:-alpine}
"""
    found = build.dockerfile_bases(text)
    assert found.global_args == {"GO": "1.26", "DEBIAN": "bookworm"}
    assert found.bases == ["golang:1.26", "debian:bookworm-slim", "alpine"]


def test_build_steps_from_a_plain_log():
    log = """\
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: 512B done
#1 DONE 0.0s
#4 [1/4] FROM labctl.local/python:3.11
#4 DONE 0.0s
#5 [2/4] WORKDIR /app
#5 CACHED
#6 [3/4] RUN python3 -c "print(1)"
#6 CACHED
#7 [4/4] COPY app.py /app/app.py
#7 DONE 0.1s
#8 exporting to image
#8 DONE 0.3s
"""
    steps = build.build_steps(log)
    assert [(s.name, s.cached) for s in steps] == [
        ("[2/4] WORKDIR /app", True),
        ('[3/4] RUN python3 -c "print(1)"', True),
        ("[4/4] COPY app.py /app/app.py", False),
    ]


def test_build_steps_of_multi_stage_builds():
    log = "#9 [build 2/3] RUN go build\n#9 CACHED\n#10 [stage-1 1/2] COPY --from=build /a /a\n#10 DONE 0.1s\n"
    assert [(s.name, s.cached) for s in build.build_steps(log)] == [
        ("[build 2/3] RUN go build", True), ("[stage-1 1/2] COPY --from=build /a /a", False)]


def test_build_error_is_the_last_error_line():
    log = """\
#6 [3/3] RUN false
#6 ERROR: process "/bin/sh -c false" did not complete successfully: exit code: 1
------
 > [3/3] RUN false:
------
error: failed to solve: process "/bin/sh -c false" did not complete successfully: exit code: 1
"""
    assert build.build_error(log) == \
        'failed to solve: process "/bin/sh -c false" did not complete successfully: exit code: 1'
    assert build.build_error("#1 DONE\n") == ""


def test_buildctl_argv():
    argv = build.buildctl_argv("/tb/buildctl", "unix:///run/b.sock", Path("/ctx"), Path("/ctx/sub/Dockerfile.dev"),
                               "labctl.local/hello:1.1", build_args={"BASE_IMAGE": "labctl.local/python:3.11"},
                               cacert=Path("/etc/ssl/certs/ca-certificates.crt"))
    assert argv[:4] == ["/tb/buildctl", "--addr", "unix:///run/b.sock", "build"]
    joined = " ".join(argv)
    for part in ["--frontend dockerfile.v0", "--local context=/ctx", "--local dockerfile=/ctx/sub",
                 "--opt filename=Dockerfile.dev", "--opt image-resolve-mode=local",
                 "--opt build-arg:BASE_IMAGE=labctl.local/python:3.11",
                 "--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt",
                 "--output type=image,name=labctl.local/hello:1.1,unpack=true"]:
        assert part in joined
    assert "--no-cache" not in argv
    assert "--no-cache" in build.buildctl_argv("b", "a", Path("/c"), Path("/c/Dockerfile"), "x:1", build_args={},
                                               cacert=None, no_cache=True)


def test_docker_build_argv():
    argv = build.docker_build_argv("docker", Path("/ctx"), Path("/ctx/Dockerfile"), "labctl.local/hello:1.1",
                                   build_args={"APP_VERSION": "1.1"}, cacert=Path("/ca.pem"))
    assert argv == ["docker", "build", "--progress=plain", "-t", "labctl.local/hello:1.1", "-f", "/ctx/Dockerfile",
                    "--build-arg", "APP_VERSION=1.1", "--secret", "id=cacert,src=/ca.pem", "/ctx"]


def test_host_ca_bundle_prefers_the_environment(tmp_path, monkeypatch):
    bundle = tmp_path / "corp.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert build.host_ca_bundle() == bundle
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    assert build.host_ca_bundle() != tmp_path / "missing.pem"


def test_sim_needs_no_builder():
    assert build.builder_for("sim") is None


def test_local_provider_addresses_may_be_paths():
    builder = build.BuildKitBuilder(Path("/state/buildkit/buildkitd.sock"), Path("/state/containerd/containerd.sock"))
    assert builder.buildkit_address == "unix:///state/buildkit/buildkitd.sock"
    assert builder.containerd_address == "/state/containerd/containerd.sock"
    assert build.BuildKitBuilder("unix:///b.sock", "unix:///c.sock").containerd_address == "/c.sock"
