import pytest

from labctl.errors import EnvironmentProblem
from labctl.images import archive, base

pytestmark = pytest.mark.unit

DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

NODESOURCE = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/nodesource.gpg
"""

UBUNTU_SOURCES = """\
Types: deb
URIs: http://archive.ubuntu.com/ubuntu/
Suites: noble noble-updates noble-backports
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg

Types: deb
URIs: http://security.ubuntu.com/ubuntu/
Suites: noble-security
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg
"""

KNOWN = frozenset({"bookworm", "trixie", "sid", "stable", "jammy", "noble"})


def test_deb822_entries():
    sources = base.parse_deb822(DEBIAN_SOURCES)
    assert [s.uris for s in sources] == [("http://deb.debian.org/debian",), ("http://deb.debian.org/debian-security",)]
    assert sources[0].suites == ("bookworm", "bookworm-updates")
    assert sources[0].signed_by == "/usr/share/keyrings/debian-archive-keyring.gpg"


def test_deb822_inline_key_and_disabled_entries():
    text = ("Types: deb\nURIs: http://mirror.example/debian\nSuites: trixie\nComponents: main\nEnabled: no\n"
            "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n")
    (src,) = base.parse_deb822(text)
    assert not src.enabled and src.signed_by is None
    assert base.choose_mirror([src], "debian", KNOWN) is None


def test_one_line_entries_with_options_and_comments():
    text = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/etc/apt/keyrings/x.gpg] http://ftp.fr.debian.org/debian/ trixie main contrib
deb-src http://ftp.fr.debian.org/debian/ trixie main
deb cdrom:[Debian GNU/Linux 12]/ bookworm main
"""
    sources = base.parse_one_line(text)
    assert [(s.types, s.uris, s.suites, s.components) for s in sources] == [
        (("deb",), ("http://ftp.fr.debian.org/debian/",), ("trixie",), ("main", "contrib")),
        (("deb-src",), ("http://ftp.fr.debian.org/debian/",), ("trixie",), ("main",)),
        (("deb",), ("cdrom:[Debian GNU/Linux 12]/",), ("bookworm",), ("main",)),
    ]
    assert sources[0].signed_by == "/etc/apt/keyrings/x.gpg"
    # debootstrap cannot read a disc, nor a source package entry.
    assert base.choose_mirror(sources[1:], "debian", KNOWN) is None


def test_debian_machine_uses_its_mirror_with_the_pinned_suite():
    sources = base.parse_deb822(NODESOURCE) + base.parse_deb822(DEBIAN_SOURCES)
    mirror = base.choose_mirror(sources, "debian", KNOWN)
    # The third-party repository comes first but is not an archive debootstrap knows; -security is passed over.
    assert mirror == base.Mirror("http://deb.debian.org/debian", "bookworm", ("main",),
                                 "/usr/share/keyrings/debian-archive-keyring.gpg")


def test_trixie_machine_still_builds_bookworm():
    sources = base.parse_one_line("deb http://mirror.example/debian trixie main\n")
    assert base.choose_mirror(sources, "debian", KNOWN).suite == "bookworm"


def test_ubuntu_machine_uses_its_own_release_with_universe():
    mirror = base.choose_mirror(base.parse_deb822(UBUNTU_SOURCES), "ubuntu", KNOWN)
    assert mirror.uri == "http://archive.ubuntu.com/ubuntu/" and mirror.suite == "noble"
    assert mirror.components == ("main", "universe")


def test_no_mirror_on_other_systems_or_without_main():
    assert base.choose_mirror(base.parse_deb822(DEBIAN_SOURCES), "", KNOWN) is None
    assert base.choose_mirror(base.parse_one_line("deb http://m.example/debian bookworm contrib\n"),
                              "debian", KNOWN) is None


def test_read_sources_ignores_files_apt_ignores(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://one.example/debian bookworm main\n")
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a.sources").write_text(DEBIAN_SOURCES)
    (d / "b.list.disabled").write_text("deb http://never.example/debian bookworm main\n")
    uris = [s.uris[0] for s in base.read_sources(tmp_path)]
    assert uris == ["http://one.example/debian", "http://deb.debian.org/debian",
                    "http://deb.debian.org/debian-security"]


@pytest.mark.parametrize("text, family", [
    ('ID=debian\nVERSION_CODENAME=bookworm\n', "debian"),
    ('ID=ubuntu\nID_LIKE=debian\n', "ubuntu"),
    ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', "ubuntu"),
    ('ID=fedora\n', ""),
])
def test_os_family(text, family):
    assert base.os_family(text) == family


def test_mirror_override_from_the_environment(monkeypatch):
    monkeypatch.setenv(base.MIRROR_ENV, "http://mirror.internal/debian")
    assert base.machine_mirror() == base.Mirror("http://mirror.internal/debian", "bookworm")


DPKG_STATUS = """\
Package: python3
Status: install ok installed
Priority: optional
Version: 3.11.2-1+b1
Description: interactive high-level object-oriented language (default version)
 Python, the high-level, interactive object oriented language,
 Version: 9.9 (a description line, not a field)

Package: removed-thing
Status: deinstall ok config-files
Version: 1.0-1

Package: redis-server
Status: install ok installed
Version: 5:7.0.15-1~deb12u1
"""


def test_installed_packages():
    assert base.installed_packages(DPKG_STATUS) == {"python3": "3.11.2-1+b1", "redis-server": "5:7.0.15-1~deb12u1"}


@pytest.mark.parametrize("version, tag", [
    ("3.11.2-1+b1", "3.11"), ("5:7.0.15-1~deb12u1", "7.0"), ("15+248", "15"), ("3.12.3-0ubuntu2", "3.12"),
])
def test_tag_version(version, tag):
    assert base.tag_version(version) == tag


def test_tag_version_needs_a_number():
    with pytest.raises(ValueError):
        base.tag_version("git-snapshot")


def test_cache_key_follows_what_decides_the_content():
    cfg = base.python_config()
    key = base.cache_key(suite="bookworm", packages=["python3", "ca-certificates"], architecture="amd64",
                         repository="labctl.local/python", config=cfg)
    same = base.cache_key(suite="bookworm", packages=["ca-certificates", "python3", "python3"],
                          architecture="amd64", repository="labctl.local/python", config=cfg)
    assert key == same and len(key) == 16
    others = [
        base.cache_key(suite="trixie", packages=["python3", "ca-certificates"], architecture="amd64",
                       repository="labctl.local/python", config=cfg),
        base.cache_key(suite="bookworm", packages=["python3"], architecture="amd64",
                       repository="labctl.local/python", config=cfg),
        base.cache_key(suite="bookworm", packages=["python3", "ca-certificates"], architecture="arm64",
                       repository="labctl.local/python", config=cfg),
        base.cache_key(suite="bookworm", packages=["python3", "ca-certificates"], architecture="amd64",
                       repository="labctl.local/python", config=archive.ImageConfig(cmd=["bash"])),
    ]
    assert key not in others and len(set(others)) == len(others)


def test_mounts_under_finds_nested_mounts_deepest_first():
    mountinfo = (
        "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "90 22 0:5 / /cache/images/.staging/x/rootfs/proc rw - proc proc rw\n"
        "91 90 0:6 / /cache/images/.staging/x/rootfs/proc/sys/fs/binfmt_misc rw - binfmt_misc b rw\n"
        "92 22 0:7 / /cache/images/.staging/y/rootfs\\040two/sys rw - sysfs sysfs rw\n"
        "93 22 0:8 / /cache/images/.staging/xy/rootfs/proc rw - proc proc rw\n"
    )
    assert base.mounts_under(mountinfo, "/cache/images/.staging/x/") == [
        "/cache/images/.staging/x/rootfs/proc/sys/fs/binfmt_misc",
        "/cache/images/.staging/x/rootfs/proc",
    ]
    assert base.mounts_under(mountinfo, "/cache/images/.staging/y/rootfs two") == [
        "/cache/images/.staging/y/rootfs two/sys"]


def test_tidy_rootfs_removes_caches_and_host_files(tmp_path):
    root = tmp_path
    keep = ["etc/passwd", "usr/lib/python3.11/os.py", "var/lib/dpkg/status", "var/log/apt"]
    drop = ["var/cache/apt/pkgcache.bin", "var/cache/apt/archives/python3_3.11.deb",
            "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease", "var/log/dpkg.log",
            "var/log/apt/history.log", "etc/resolv.conf", "etc/hostname", "tmp/junk/x",
            "usr/lib/python3.11/EXTERNALLY-MANAGED"]
    for rel in keep[:-1] + drop:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    base.tidy_rootfs(root)
    assert all((root / rel).exists() for rel in keep)
    assert not any((root / rel).exists() for rel in drop)
    assert (root / "tmp").is_dir() and not any((root / "tmp").iterdir())


def test_a_cached_tar_is_reused_without_building(tmp_path, monkeypatch):
    mirror = base.Mirror("http://deb.debian.org/debian", "bookworm")
    cfg = base.python_config()
    key = base.cache_key(suite="bookworm", packages=base.PYTHON_PACKAGES, architecture=archive.host_architecture(),
                         repository=base.PYTHON_REPOSITORY, config=cfg)
    folder = tmp_path / f"python-bookworm-{key}"
    info = archive.write_image(folder / "image.tar", "labctl.local/python:3.11", {"/x": b"x"})
    (folder / "meta.json").write_text(
        f'{{"tag": "labctl.local/python:3.11", "image_id": "{info.image_id}", "size": {info.size}}}')

    def no_debootstrap(*args, **kwargs):
        raise AssertionError("debootstrap ran although the cache holds the image")

    monkeypatch.setattr(base, "_debootstrap", no_debootstrap)
    img = base.python_base(root=tmp_path, mirror=mirror)
    assert (img.tag, img.tar, img.built) == ("labctl.local/python:3.11", folder / "image.tar", False)

    # A truncated tar is not trusted: the image is built again.
    with open(folder / "image.tar", "r+b") as f:
        f.truncate(100)
    with pytest.raises(AssertionError, match="debootstrap ran"):
        base.python_base(root=tmp_path, mirror=mirror)


def test_building_without_debootstrap_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("LABCTL_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(EnvironmentProblem, match="debootstrap") as e:
        base.python_base(root=tmp_path / "images", mirror=base.Mirror("http://m.example/debian", "bookworm"))
    assert "apt-get install debootstrap" in e.value.hint
