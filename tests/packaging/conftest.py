"""Fixtures for the packaging tests. Those marked `fleet` need root and take minutes: they build the
packages (or take them from $GITOPS_TEST_DIST, as `make test-packages` does after `make packages`),
unpack the cached Debian 12 image and install into isolated hosts from a local signed repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import aptrepo, image, netns
from tests.harness.dist import deb

REPO = image.REPO_ROOT
DIST_ENV = "GITOPS_TEST_DIST"
# What an air-gapped site mirrors besides our packages: the agent's Debian dependencies that a minimal
# system lacks. The rest (python3, git, openssh-client) is in the image.
MIRRORED_DEPENDENCIES = ["python3-apt", "python-apt-common", "distro-info-data"]
REPO_IN_HOST = Path("/srv/gitops-repo")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: packaging fleet tests need root (chroot, namespaces, mounts)")
    missing = [tool for tool in ("debootstrap", "zstd", "dpkg-deb", "apt-ftparchive", "gpg", "unshare",
                                 "nsenter", "ip", "systemd-nspawn", "lintian", "rpmbuild", "createrepo_c")
               if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run `bash .ci/system-deps` (as root)")


@pytest.fixture(scope="session")
def fleet_root() -> None:
    _need_root()


@pytest.fixture(scope="session")
def dist(fleet_root: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built packages: $GITOPS_TEST_DIST if set, else built now from this tree."""
    if os.environ.get(DIST_ENV):
        path = Path(os.environ[DIST_ENV]).resolve()
        assert list(path.glob("gitops-agent_*.deb")), f"no gitops-agent .deb in {path}"
        return path
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "packaging/build.py"), "--out", str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def image_root(fleet_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    started = time.monotonic()
    tarball = image.ensure_image()
    root = image.extract(tarball, tmp_path_factory.mktemp("image") / "root")
    print(f"\nimage {tarball.name}: ready and extracted in {time.monotonic() - started:.1f}s")
    yield root
    image.remove_tree(root)


@pytest.fixture(scope="session")
def signing_key(fleet_root: None, tmp_path_factory: pytest.TempPathFactory) -> aptrepo.SigningKey:
    return aptrepo.throwaway_key(tmp_path_factory.mktemp("gnupg"))


@pytest.fixture(scope="session")
def apt_repo(dist: Path, signing_key: aptrepo.SigningKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    deps = aptrepo.download_debs(MIRRORED_DEPENDENCIES, image.cache_dir() / "debs")
    debs = [deb(dist, "gitops-agent"), deb(dist, "gitops-collector"), *deps]
    return aptrepo.build_apt_repo(tmp_path_factory.mktemp("aptrepo") / "repo", debs, signing_key)


@pytest.fixture(scope="session")
def bridge(fleet_root: None) -> Iterator[netns.Bridge]:
    with netns.Bridge("gapkg0", "10.213.7.1/24") as created:
        yield created


def seed_host(upper: Path, apt_repo: Path) -> None:
    """Before a host starts: its only apt source is the local signed repository."""
    shutil.copytree(apt_repo, upper / REPO_IN_HOST.relative_to("/"))
    sources = upper / "etc/apt/sources.list.d"
    sources.mkdir(parents=True, exist_ok=True)
    (sources / "gitops-agent.sources").write_text(aptrepo.apt_source(REPO_IN_HOST), encoding="utf-8")


@pytest.fixture
def make_host(image_root: Path, apt_repo: Path, bridge: netns.Bridge,
              tmp_path: Path) -> Iterator[object]:
    """make_host(name, index) -> a started netns host seeded with the local repository."""
    hosts: list[netns.Host] = []

    def make(name: str, index: int) -> netns.Host:
        workdir = tmp_path / name
        seed_host(workdir / "upper", apt_repo)
        host = netns.Host.start(name, lower=image_root, workdir=workdir, bridge=bridge,
                                address=f"10.213.7.{10 + index}")
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.stop()
