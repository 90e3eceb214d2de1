import hashlib
import json
import os
import tarfile

import pytest

from labctl.errors import UsageError
from labctl.images import archive

pytestmark = pytest.mark.unit


def _members(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


def test_write_image_reads_back_with_matching_digests(tmp_path):
    binary = tmp_path / "coredns"
    binary.write_bytes(b"\x7fELF pretend binary")
    binary.chmod(0o755)
    out = tmp_path / "out" / "coredns.tar"

    info = archive.write_image(out, "labctl.local/coredns:1.15.0", {"/coredns": binary, "/etc/motd": b"hi\n"},
                               entrypoint=["/coredns"], user="65532:65532", dirs={"/tmp": 0o1777})

    members = _members(out)
    manifest = json.loads(members["manifest.json"][1])
    assert len(manifest) == 1 and manifest[0]["RepoTags"] == ["labctl.local/coredns:1.15.0"]
    config_bytes = members[manifest[0]["Config"]][1]
    # The image id is the config's sha256, and its file is named after it.
    assert manifest[0]["Config"] == f"blobs/sha256/{hashlib.sha256(config_bytes).hexdigest()}"
    assert info.image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    config = json.loads(config_bytes)
    assert config["os"] == "linux" and config["architecture"] == archive.host_architecture()
    assert config["config"]["Entrypoint"] == ["/coredns"]
    assert config["config"]["User"] == "65532:65532"
    assert "PATH=" + archive.DEFAULT_PATH in config["config"]["Env"]

    (layer_name,) = manifest[0]["Layers"]
    layer_bytes = members[layer_name][1]
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    assert info.diff_ids == [diff_id]
    assert len(config["history"]) == 1

    layer = tarfile.open(fileobj=__import__("io").BytesIO(layer_bytes))
    entries = {m.name: m for m in layer.getmembers()}
    assert entries["coredns"].mode == 0o755 and entries["coredns"].uid == 0
    assert layer.extractfile("coredns").read() == b"\x7fELF pretend binary"
    assert entries["etc"].isdir() and entries["etc/motd"].mode == 0o644
    assert entries["tmp"].isdir() and entries["tmp"].mode == 0o1777
    assert {m.mtime for m in entries.values()} == {archive.EPOCH}


def test_same_inputs_give_the_same_image(tmp_path):
    files = {"/bin/pause": b"pause"}
    a = archive.write_image(tmp_path / "a.tar", "labctl.local/pause:1", files, entrypoint=["/bin/pause"])
    b = archive.write_image(tmp_path / "b.tar", "labctl.local/pause:1", files, entrypoint=["/bin/pause"])
    c = archive.write_image(tmp_path / "c.tar", "labctl.local/pause:1", {"/bin/pause": b"other"},
                            entrypoint=["/bin/pause"])
    assert a.image_id == b.image_id
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert c.image_id != a.image_id and c.diff_ids != a.diff_ids


def test_read_archive_gives_manifest_and_config(tmp_path):
    archive.write_image(tmp_path / "x.tar", "labctl.local/x:2", {"/x": b"x"}, cmd=["/x", "--serve"],
                        workdir="/srv", env={"MODE": "fast"}, labels={"org.example": "1"})
    entry = archive.read_archive(tmp_path / "x.tar")
    assert entry["RepoTags"] == ["labctl.local/x:2"]
    cfg = entry["config"]["config"]
    assert cfg["Cmd"] == ["/x", "--serve"] and cfg["WorkingDir"] == "/srv"
    assert "MODE=fast" in cfg["Env"] and cfg["Labels"] == {"org.example": "1"}
    assert "Entrypoint" not in cfg and "User" not in cfg


def test_read_archive_rejects_other_files(tmp_path):
    junk = tmp_path / "junk.tar"
    with tarfile.open(junk, "w") as tar:
        tar.add(__file__, arcname="hello.py")
    with pytest.raises(UsageError, match="not a docker-archive"):
        archive.read_archive(junk)


@pytest.mark.parametrize("path", ["relative/x", "/", "/a/../etc/passwd"])
def test_image_paths_must_be_absolute_files(tmp_path, path):
    with pytest.raises(UsageError):
        archive.write_image(tmp_path / "x.tar", "labctl.local/x:1", {path: b"x"})


def test_layer_from_dir_keeps_owners_links_and_times_and_empties_dev(tmp_path):
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "dev/null-ish").write_text("device stand-in")
    (root / "usr/bin/python3.11").write_bytes(b"py")
    (root / "usr/bin/python3.11").chmod(0o755)
    (root / "usr/bin/python3").symlink_to("python3.11")
    os.link(root / "usr/bin/python3.11", root / "usr/bin/python-hard")
    (root / "etc").mkdir()
    (root / "etc/shadow").write_text("root:*:1::::::\n")
    (root / "etc/shadow").chmod(0o640)
    os.utime(root / "etc/shadow", (1_600_000_000.7, 1_600_000_000.7))

    layer = archive.layer_from_dir(tmp_path / "layer.tar", root)

    data = (tmp_path / "layer.tar").read_bytes()
    assert layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest() and layer.size == len(data)
    with tarfile.open(tmp_path / "layer.tar") as tar:
        names = tar.getnames()
        m = {x.name: x for x in tar.getmembers()}
    assert "dev" in names and "dev/null-ish" not in names
    assert m["usr/bin/python3"].issym() and m["usr/bin/python3"].linkname == "python3.11"
    hard = [n for n in ("usr/bin/python-hard", "usr/bin/python3.11") if m[n].islnk()]
    assert len(hard) == 1  # the second name of the same inode is a hard link, not a second copy
    assert m["etc/shadow"].mode == 0o640 and m["etc/shadow"].mtime == 1_600_000_000
    # Parents come before their children: a runtime extracting in order never meets a missing folder.
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/python3")
